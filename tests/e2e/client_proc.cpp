// A client process for the broker-server and crash-matrix tests: connects to a
// running broker and submits tiles, then
//   collect: collects them (exit 0 when all completed correctly),
//   hold:    holds them and waits to be killed,
//   stream:  keeps submitting until TILES were accepted or a submit/alloc fails at the
//            call, then waits for every accepted tile's outcome and prints one line
//            `accepted=A outcomes=O completed=C failed=F canceled=X dup=D call_error=E`
//            (exit 0 when every accepted tile got exactly one outcome), and
//            `last_outcome_ns=T` (CLOCK_MONOTONIC of the last outcome, 0 if none).
//            With START_MS it prints `connected` and waits that long before submitting.
//   flood:   speaks the wire protocol by hand: hello, then TILES pings without reading
//            a single answer, then stops itself (SIGSTOP) like a client that never
//            reads again.
// Usage: client_proc SOCKET TILES collect|hold|stream|flood [OP [START_MS]]
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
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

std::int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int stream_mode(tessera::Client& c, int tiles, std::uint32_t op, int start_ms) {
  auto s = c.open_stream({.ordering = tessera::Ordering::completion, .max_in_flight = 64}).value();
  std::int64_t last_outcome_ns = 0;
  if (start_ms > 0) {
    std::printf("connected\n");
    std::fflush(stdout);
    ::usleep(static_cast<useconds_t>(start_ms) * 1000);
  }
  std::vector<tessera::TileResult> got;
  std::set<std::uint64_t> accepted, answered;
  int completed = 0, failed = 0, canceled = 0, dup = 0;
  std::string call_error = "none", first_failure;
  auto absorb = [&] {
    if (!got.empty()) last_outcome_ns = monotonic_ns();
    for (auto& r : got) {
      if (!accepted.count(r.seq) || !answered.insert(r.seq).second) ++dup;
      if (r.outcome == tessera::Outcome::completed) ++completed;
      else if (r.outcome == tessera::Outcome::failed) ++failed;
      else ++canceled;
      if (r.outcome != tessera::Outcome::completed && first_failure.empty()) first_failure = r.error;
    }
    got.clear();
  };
  for (int i = 0; i < tiles; ++i) {
    tessera::InputBlock in;
    if (auto a = c.alloc(16 * 16 * 3, in, 10s); !a) {
      call_error = std::string(tessera::errc_name(a.error().code)) + ": " + a.error().message;
      break;
    }
    std::memset(in.bytes().data(), 10, 16 * 16 * 3);
    auto q = c.submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {16, 16, 3}, .x = i, .op = op},
                      tessera::SubmitMode::block, 10s);
    if (!q) {
      call_error = std::string(tessera::errc_name(q.error().code)) + ": " + q.error().message;
      break;
    }
    accepted.insert(*q);
    c.poll(got, 64, 0ms);
    absorb();
  }
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (answered.size() < accepted.size() && std::chrono::steady_clock::now() < end) {
    c.poll(got, 64, 20ms);
    absorb();
  }
  const auto st = c.stats(s);
  std::printf("accepted=%zu outcomes=%zu completed=%d failed=%d canceled=%d dup=%d queued=%llu running=%llu call_error=%s\n",
              accepted.size(), answered.size(), completed, failed, canceled, dup, static_cast<unsigned long long>(st.queued),
              static_cast<unsigned long long>(st.running), call_error.c_str());
  std::printf("last_outcome_ns=%lld\n", static_cast<long long>(last_outcome_ns));
  if (!first_failure.empty()) std::printf("first failure: %s\n", first_failure.c_str());
  std::fflush(stdout);
  return answered.size() == accepted.size() && dup == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SOCKET TILES collect|hold|stream|flood [OP [START_MS]]\n", argv[0]);
    return 2;
  }
  const int tiles = std::atoi(argv[2]);
  if (std::strcmp(argv[3], "flood") == 0) return flood(argv[1], tiles);
  const bool hold = std::strcmp(argv[3], "hold") == 0;
  const std::uint32_t op = argc > 4 ? static_cast<std::uint32_t>(std::atoi(argv[4])) : 0;
  auto c = tessera::Client::connect(argv[1]);
  if (!c) {
    std::fprintf(stderr, "connect: %s\n", c.error().message.c_str());
    return 3;
  }
  if (std::strcmp(argv[3], "stream") == 0) return stream_mode(**c, tiles, op, argc > 5 ? std::atoi(argv[5]) : 0);
  auto s = (*c)->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 256}).value();
  std::vector<tessera::TileResult> got;
  int ok = 0, delivered = 0;
  std::string first_error;
  for (int i = 0; i < tiles; ++i) {
    tessera::InputBlock in;
    // 25 s, inside the callers' 30-s waits: under a sanitizer on a loaded machine the
    // blocks a killed client held can take more than 10 s to come back.
    if (auto a = (*c)->alloc(16 * 16 * 3, in, 25s); !a) {
      std::fprintf(stderr, "alloc: %s\n", a.error().message.c_str());
      return 4;
    }
    std::memset(in.bytes().data(), i % 2 ? 10 : 250, 16 * 16 * 3);
    auto q = (*c)->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {16, 16, 3}, .x = i, .op = op},
                          tessera::SubmitMode::block, 25s);
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
