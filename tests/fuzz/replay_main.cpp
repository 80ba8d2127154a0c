// The replayer that stands in for libFuzzer's driver in ordinary builds: linked with a
// fuzz target's source, `<target>_replay DIR|FILE...` runs LLVMFuzzerTestOneInput once
// on every file (the target's own property checks abort on a violation). Every build,
// the sanitizer presets included, replays each target's seed corpus as a ctest.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

#include <filesystem>
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  std::size_t n = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(argv[i])) {
      for (const auto& e : std::filesystem::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.emplace_back(argv[i]);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
      ++n;
    }
  }
  std::printf("replayed %zu input(s)\n", n);
  return n > 0 ? 0 : 1;
}
