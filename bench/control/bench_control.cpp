// tessera-bench-control N [--loop auto|io_uring|epoll]: control-plane benchmark,
// EXECUTE -> COMPLETION round trips through the supervisor to a trivial C++ worker
// (this executable with --trivial-worker), next to the same exchange on a bare pipe
// spawned the same way. One JSON line per result.

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <tessera/appose.hpp>
#include <tessera/appose_router.hpp>

#include "process.hpp"

namespace tessera::bench_control {

namespace ap = appose;
using Clock = std::chrono::steady_clock;

int run_trivial_worker() {
  ap::LineFramer framer;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    std::string out;
    framer.feed(
        std::string_view(buf, static_cast<std::size_t>(n)),
        [&](std::string_view line) {
          auto r = ap::parse_request(line);
          if (!r || r.value().type != ap::RequestType::execute) return;
          ap::Response resp;
          resp.task = r.value().task;
          resp.type = ap::ResponseType::launch;
          out += ap::encode(resp);
          resp.type = ap::ResponseType::completion;
          out += ap::encode(resp);
        },
        [](std::size_t) {});
    std::size_t off = 0;
    while (off < out.size()) {
      const ssize_t w = ::write(1, out.data() + off, out.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return 1;
      off += static_cast<std::size_t>(w);
    }
  }
}

namespace {

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("tessera-broker");
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  }
  return "unknown";
}

void print_result(const char* path, const char* backend, std::vector<double> us, double tasks_per_s) {
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) {
    if (us.empty()) return 0.0;
    const auto i = static_cast<std::size_t>(p * static_cast<double>(us.size() - 1));
    return us[i];
  };
  std::printf("%s\n",
              fmt::format("{{\"bench\":\"control_roundtrip\",\"path\":\"{}\",\"backend\":\"{}\",\"n\":{},"
                          "\"p50_us\":{:.1f},\"p99_us\":{:.1f},\"p999_us\":{:.1f},\"max_us\":{:.1f},"
                          "\"tasks_per_s\":{:.0f},\"compiler\":\"{}\",\"cpu\":\"{}\"}}",
                          path, backend, us.size(), pct(0.5), pct(0.99), pct(0.999), us.empty() ? 0.0 : us.back(),
                          tasks_per_s, __VERSION__, cpu_model())
                  .c_str());
  std::fflush(stdout);
}

// Bare pipe: write EXECUTE, read until that task's COMPLETION line.
int bench_direct(int n) {
  auto child = detail::spawn_process({{self_exe(), "--trivial-worker"}, {}, {}, {}});
  if (!child) {
    std::fprintf(stderr, "spawn: %s\n", child.error().message.c_str());
    return 1;
  }
  ap::LineFramer framer;
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(n));
  char buf[65536];
  const int warmup = std::min(200, n);
  const auto t_all = Clock::now();
  Clock::time_point t_measured{};
  for (int i = 0; i < warmup + n; ++i) {
    if (i == warmup) t_measured = Clock::now();
    ap::Request req;
    req.task = fmt::format("t{}", i);
    req.script = "noop";
    const std::string line = ap::encode(req);
    const auto t0 = Clock::now();
    if (::write(child->stdin_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return 1;
    bool done = false;
    while (!done) {
      pollfd p{child->stdout_fd, POLLIN, 0};
      ::poll(&p, 1, 5000);
      const ssize_t r = ::read(child->stdout_fd, buf, sizeof buf);
      if (r == 0) return 1;
      if (r < 0) continue;
      framer.feed(
          std::string_view(buf, static_cast<std::size_t>(r)),
          [&](std::string_view l) { done = done || l.find("COMPLETION") != std::string_view::npos; },
          [](std::size_t) {});
    }
    if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t_measured).count();
  (void)t_all;
  print_result("direct_pipe", "none", std::move(us), n / secs);
  ::close(child->stdin_fd);
  child->stdin_fd = -1;
  (void)detail::reap_process(*child, true);
  child->close_all();
  return 0;
}

int bench_supervisor(LoopChoice loop, int n) {
  RouterOptions so;
  so.loop = loop;
  auto sup = ApposeRouter::create(so);
  if (!sup) return 1;
  ApposeWorkerSpec spec;
  spec.argv = {self_exe(), "--trivial-worker"};
  auto w = (*sup)->add_worker(spec);
  if (!w) {
    std::fprintf(stderr, "add_worker: %s\n", w.error().message.c_str());
    return 1;
  }
  const char* backend = to_string((*sup)->backend());
  std::mutex mu;
  std::condition_variable cv;
  int finished = 0;
  auto cb = [&](const ap::Response& r) {
    if (!ap::is_terminal(r.type)) return;
    std::lock_guard<std::mutex> lock(mu);
    ++finished;
    cv.notify_all();
  };
  // Sequential round trips.
  std::vector<double> us;
  const int warmup = std::min(200, n);
  Clock::time_point t_measured{};
  for (int i = 0; i < warmup + n; ++i) {
    if (i == warmup) t_measured = Clock::now();
    const auto t0 = Clock::now();
    const int target = i + 1;
    if (!(*sup)->submit(*w, "noop", {}, cb)) return 1;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished >= target; });
    if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t_measured).count();
  print_result("supervisor", backend, std::move(us), n / secs);
  // Pipelined: up to 64 tasks in flight.
  {
    std::lock_guard<std::mutex> lock(mu);
    finished = 0;
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return i - finished < 64; });
    }
    if (!(*sup)->submit(*w, "noop", {}, cb)) return 1;
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished >= n; });
  }
  const double psecs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("%s\n", fmt::format("{{\"bench\":\"control_throughput\",\"path\":\"supervisor_pipelined\","
                                  "\"backend\":\"{}\",\"n\":{},\"in_flight\":64,\"tasks_per_s\":{:.0f}}}",
                                  backend, n, n / psecs)
                          .c_str());
  std::fflush(stdout);
  (*sup)->shutdown();
  return 0;
}

}  // namespace

}  // namespace tessera::bench_control

int main(int argc, char** argv) {
  using namespace tessera;
  CLI::App app{"tessera-bench-control: Appose EXECUTE->COMPLETION round trips, supervisor vs bare pipe"};
  int n = 3000;
  bool trivial = false;
  std::string loop = "auto";
  app.add_option("n", n, "round trips")->check(CLI::PositiveNumber);
  app.add_flag("--trivial-worker", trivial, "run as the minimal Appose worker (the benchmark's peer)")->group("");
  app.add_option("--loop", loop, "event loop back end")->check(CLI::IsMember({"auto", "io_uring", "epoll"}));
  CLI11_PARSE(app, argc, argv);
  if (trivial) return bench_control::run_trivial_worker();
  spdlog::set_default_logger(spdlog::stderr_color_mt("tessera-bench-control"));
  spdlog::set_level(spdlog::level::warn);
  const LoopChoice lc = loop == "epoll" ? LoopChoice::epoll : loop == "io_uring" ? LoopChoice::io_uring : LoopChoice::automatic;
  if (int rc = bench_control::bench_direct(n); rc != 0) return rc;
  return bench_control::bench_supervisor(lc, n);
}
