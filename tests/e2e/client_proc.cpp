// A client process for the broker-server tests: connects to a running broker,
// submits tiles and either collects them (exit 0 when all completed correctly) or
// holds them and waits to be killed (mode "hold"). Mode "flood" speaks the wire
// protocol by hand: hello, then TILES pings without reading a single answer, then
// it stops itself (SIGSTOP) like a client that never reads again.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <tessera/client.hpp>

using namespace std::chrono_literals;

namespace {
int flood(const char* path, int pings) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 3;
  const std::string hello = "{\"type\":\"hello\",\"version\":1}\n";
  if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(hello.size())) return 4;
  // Wait for the broker's hello (its arena descriptor is kept open, unused).
  std::string got;
  char buf[4096];
  while (got.find('\n') == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return 5;
    got.append(buf, static_cast<std::size_t>(n));
  }
  if (got.find("\"hello\"") == std::string::npos) return 6;
  std::string lines;
  for (int i = 0; i < pings; ++i) lines += "{\"type\":\"ping\",\"id\":" + std::to_string(i) + "}\n";
  (void)::send(fd, lines.data(), lines.size(), MSG_NOSIGNAL);  // the broker may already have dropped us
  std::printf("stopping\n");
  std::fflush(stdout);
  ::raise(SIGSTOP);
  for (;;) pause();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SOCKET TILES collect|hold|flood\n", argv[0]);
    return 2;
  }
  const int tiles = std::atoi(argv[2]);
  if (std::strcmp(argv[3], "flood") == 0) return flood(argv[1], tiles);
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
