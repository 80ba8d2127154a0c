// A client process for the broker-server tests: connects to a running broker,
// submits tiles and either collects them (exit 0 when all completed correctly) or
// holds them and waits to be killed (mode "hold").
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <tessera/client.hpp>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SOCKET TILES collect|hold\n", argv[0]);
    return 2;
  }
  const int tiles = std::atoi(argv[2]);
  const bool hold = std::strcmp(argv[3], "hold") == 0;
  auto c = tessera::Client::connect(argv[1]);
  if (!c) {
    std::fprintf(stderr, "connect: %s\n", c.error().message.c_str());
    return 3;
  }
  auto s = (*c)->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 256}).value();
  std::vector<tessera::TileResult> got;
  int ok = 0, delivered = 0;
  std::string first_error;
  for (int i = 0; i < tiles; ++i) {
    tessera::InputBlock in;
    if (!(*c)->alloc(16 * 16 * 3, in, 10s)) return 4;
    std::memset(in.bytes().data(), i % 2 ? 10 : 250, 16 * 16 * 3);
    auto q = (*c)->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {16, 16, 3}, .x = i}, tessera::SubmitMode::block, 10s);
    if (!q) {
      std::fprintf(stderr, "submit: %s\n", q.error().message.c_str());
      return 5;
    }
    if (!hold) {
      (*c)->poll(got, 256, 0ms);
    }
    for (auto& r : got) {
      ++delivered;
      const auto m = r.output.view().as<const std::uint8_t>();
      if (r.outcome == tessera::Outcome::completed && m.size() == 256 && m[0] == (r.meta.x % 2 ? 255 : 0)) ++ok;
    }
    got.clear();
  }
  if (hold) {
    std::printf("holding\n");
    std::fflush(stdout);
    for (;;) pause();
  }
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (delivered < tiles && std::chrono::steady_clock::now() < end) {
    (*c)->poll(got, 256, 20ms);
    for (auto& r : got) {
      ++delivered;
      const auto m = r.output.view().as<const std::uint8_t>();
      if (r.outcome == tessera::Outcome::completed && m.size() == 256 && m[0] == (r.meta.x % 2 ? 255 : 0)) {
        ++ok;
      } else if (first_error.empty()) {
        first_error = std::string(tessera::outcome_name(r.outcome)) + " " + r.error + " x=" + std::to_string(r.meta.x) +
                      " size=" + std::to_string(m.size()) + " m0=" + (m.empty() ? std::string("-") : std::to_string(m[0]));
      }
    }
    got.clear();
  }
  std::printf("%d/%d ok\n", ok, tiles);
  if (!first_error.empty()) std::printf("first problem: %s\n", first_error.c_str());
  return ok == tiles ? 0 : 1;
}
