// `tessera bench [ARGS...]`: runs the benchmark suite (tessera-bench, built next to
// this executable) with ARGS passed through, e.g. `tessera bench --quick --out FILE`.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "subcommand.hpp"

namespace tessera::cli {

Subcommand add_bench(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand("bench", "Run the benchmark suite (arguments go to tessera-bench; try `tessera bench --help`)");
  app->prefix_command();  // everything after `bench` is passed through untouched
  app->set_help_flag();   // so is --help
  return {app, [app] {
            std::error_code ec;
            const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
            const std::string exe = (self.parent_path() / "tessera-bench").string();
            std::vector<std::string> args = app->remaining();
            std::vector<char*> argv;
            argv.push_back(const_cast<char*>(exe.c_str()));
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(exe.c_str(), argv.data());
            std::fprintf(stderr, "tessera bench: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
            return 127;
          }};
}

}  // namespace tessera::cli
