#include "harness.hpp"

#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>

#ifndef TESSERA_BENCH_GIT_SHA
#define TESSERA_BENCH_GIT_SHA "unknown"
#endif
#ifndef TESSERA_BENCH_SOURCE_DIR
#define TESSERA_BENCH_SOURCE_DIR ""
#endif
#ifndef TESSERA_BENCH_COMPILER
#define TESSERA_BENCH_COMPILER "unknown"
#endif
#ifndef TESSERA_BENCH_FLAGS
#define TESSERA_BENCH_FLAGS ""
#endif
#ifndef TESSERA_BENCH_BUILD_TYPE
#define TESSERA_BENCH_BUILD_TYPE ""
#endif

namespace tessera::bench {

double process_cpu_s() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ---------------------------------------------------------------------------------
Summary Samples::summarize() {
  Summary s;
  if (v_.empty()) return s;
  std::sort(v_.begin(), v_.end());
  sorted_ = true;
  auto q = [&](double p) {
    const auto i = static_cast<std::size_t>(std::min<double>(static_cast<double>(v_.size() - 1),
                                                              std::floor(p * static_cast<double>(v_.size()))));
    return static_cast<double>(v_[i]);
  };
  s.count = v_.size();
  s.min = static_cast<double>(v_.front());
  s.max = static_cast<double>(v_.back());
  double sum = 0;
  for (auto x : v_) sum += static_cast<double>(x);
  s.mean = sum / static_cast<double>(v_.size());
  s.p50 = q(0.50);
  s.p90 = q(0.90);
  s.p99 = q(0.99);
  s.p999 = q(0.999);
  return s;
}

std::vector<double> Samples::cdf(int points) const {
  std::vector<double> out;
  if (v_.empty() || !sorted_ || points < 2) return out;
  out.reserve(static_cast<std::size_t>(points));
  for (int k = 0; k < points; ++k) {
    const double p = static_cast<double>(k) / (points - 1);
    const auto i = static_cast<std::size_t>(std::llround(p * static_cast<double>(v_.size() - 1)));
    out.push_back(static_cast<double>(v_[i]));
  }
  return out;
}

// ---------------------------------------------------------------------------------
namespace {
std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
  if (pclose(f) != 0) return {};
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}
}  // namespace

Environment detect_environment() {
  Environment e;
  // Prefer the checkout's state at run time (commits after configure), else the configure-time SHA.
  const std::string src = TESSERA_BENCH_SOURCE_DIR;
  if (!src.empty())
    e.git_sha = run_capture("git -C '" + src + "' describe --always --dirty --abbrev=12 2>/dev/null");
  if (e.git_sha.empty()) e.git_sha = TESSERA_BENCH_GIT_SHA;
  if (e.git_sha.empty()) e.git_sha = "unknown";
  e.compiler = TESSERA_BENCH_COMPILER;
  e.flags = TESSERA_BENCH_FLAGS;
  e.build_type = TESSERA_BENCH_BUILD_TYPE;
  std::ifstream cpu("/proc/cpuinfo");
  for (std::string line; std::getline(cpu, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      if (c != std::string::npos) e.cpu_model = line.substr(line.find_first_not_of(" \t", c + 1));
      break;
    }
  }
  if (e.cpu_model.empty()) e.cpu_model = "unknown";
  e.cores = std::max(1u, std::thread::hardware_concurrency());
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  e.started_utc = buf;
  return e;
}

std::string to_json_line(const Environment& env, const Record& r) {
  namespace json = boost::json;
  json::object o;
  o["type"] = r.skipped.empty() ? (r.failed.empty() ? "result" : "failed") : "skip";
  o["bench"] = r.bench;
  o["peer"] = r.peer;
  o["workload"] = r.workload;
  o["mode"] = r.mode;
  o["tile_bytes"] = r.tile_bytes;
  o["inflight"] = r.inflight;
  o["samples"] = r.ops;
  o["warmup"] = r.warmup;
  if (r.latency) {
    const Summary& s = *r.latency;
    json::object l;
    l["count"] = s.count;
    l["min_ns"] = s.min;
    l["mean_ns"] = s.mean;
    l["p50_ns"] = s.p50;
    l["p90_ns"] = s.p90;
    l["p99_ns"] = s.p99;
    l["p999_ns"] = s.p999;
    l["max_ns"] = s.max;
    o["latency"] = std::move(l);
  }
  if (!r.cdf.empty()) {
    json::array a;
    for (double x : r.cdf) a.emplace_back(x);
    o["cdf_ns"] = std::move(a);
  }
  o["wall_s"] = r.wall_s;
  o["ops_per_s"] = r.ops_per_s;
  o["gb_per_s"] = r.gb_per_s;
  json::object cpu;
  for (const auto& c : r.cpu) cpu[c.role] = c.cpu_s;
  o["cpu_s"] = std::move(cpu);
  o["cpu_wall_s"] = r.cpu_wall_s;
  if (r.cacheline_rtt_after_ns >= 0) o["cacheline_rtt_after_ns"] = r.cacheline_rtt_after_ns;
  if (!r.note.empty()) o["note"] = r.note;
  if (!r.skipped.empty()) o["skipped"] = r.skipped;
  if (!r.failed.empty()) o["failed"] = r.failed;
  json::object en;
  en["git_sha"] = env.git_sha;
  en["compiler"] = env.compiler;
  en["flags"] = env.flags;
  en["build_type"] = env.build_type;
  en["cpu_model"] = env.cpu_model;
  en["cores"] = env.cores;
  en["started_utc"] = env.started_utc;
  o["env"] = std::move(en);
  return json::serialize(o);
}

// ---------------------------------------------------------------------------------
Child Child::fork_run(const std::function<int()>& body) {
  std::fflush(nullptr);
  const int parent = static_cast<int>(getpid());
  const pid_t pid = fork();
  if (pid < 0) return Child{};
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);      // never outlive the driver
    if (getppid() != parent) _exit(125);   // the parent died before prctl
    int rc = 126;
    try {
      rc = body();
    } catch (...) {
      rc = 127;
    }
    std::fflush(nullptr);
    _exit(rc);
  }
  return Child{static_cast<int>(pid)};
}

Child Child::spawn(const std::vector<std::string>& argv, int stdout_fd, int stdin_fd) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(nullptr);
  const int parent = static_cast<int>(getpid());
  const pid_t pid = fork();
  if (pid < 0) return Child{};
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(125);
    if (stdout_fd >= 0) dup2(stdout_fd, STDOUT_FILENO);
    if (stdin_fd >= 0) dup2(stdin_fd, STDIN_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  return Child{static_cast<int>(pid)};
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0) (void)wait(0);
    pid_ = o.pid_;
    o.pid_ = -1;
  }
  return *this;
}

Child::~Child() {
  if (pid_ > 0) (void)wait(0);
}

Child::Exit Child::wait(double timeout_s) {
  Exit e;
  if (pid_ <= 0) return e;
  const std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>(std::max(0.0, timeout_s) * 1e9);
  int status = 0;
  rusage ru{};
  // Sleep until the child exits (a pidfd turns readable) rather than polling: a waiter that
  // woke every 500 us took the CPU from the measured process tree 2,000 times a second, and
  // the whole job of `wsi/tessera-fast` measured 0.73-0.95 s under it against 0.63-0.70 s
  // from a blocking waiter. Without pidfd_open (kernel < 5.3) it polls as before.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  for (;;) {
    const pid_t r = wait4(pid_, &status, WNOHANG, &ru);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) {
      pid_ = -1;
      if (pidfd >= 0) close(pidfd);
      return e;
    }
    const std::uint64_t now = now_ns();
    if (now >= deadline) {
      kill(pid_, SIGKILL);
      e.timed_out = true;
      while (wait4(pid_, &status, 0, &ru) < 0 && errno == EINTR) {
      }
      break;
    }
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      (void)poll(&p, 1, static_cast<int>(std::min<std::uint64_t>((deadline - now) / 1'000'000 + 1, 1000)));
    } else {
      usleep(500);
    }
  }
  if (pidfd >= 0) close(pidfd);
  pid_ = -1;
  e.cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  if (WIFEXITED(status)) e.code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) e.code = -WTERMSIG(status);
  e.ok = !e.timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return e;
}

// ---------------------------------------------------------------------------------
namespace {
volatile sig_atomic_t g_alarm = 0;  // written by the signal handler only
void on_alarm(int) { g_alarm = 1; }
}  // namespace

Watchdog::Watchdog(double seconds) {
  g_alarm = 0;
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, &old_);
  alarm(static_cast<unsigned>(seconds) + 1);
}

Watchdog::~Watchdog() {
  alarm(0);
  sigaction(SIGALRM, &old_, nullptr);
}

bool watchdog_fired() noexcept { return g_alarm != 0; }

// ---------------------------------------------------------------------------------
SharedMapping::SharedMapping(std::size_t bytes, bool populate) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0),
                 -1, 0);
  if (p == MAP_FAILED) return;
  p_ = static_cast<std::byte*>(p);
  n_ = bytes;
}

SharedMapping& SharedMapping::operator=(SharedMapping&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) munmap(p_, n_);
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

SharedMapping::~SharedMapping() {
  if (p_ != nullptr) munmap(p_, n_);
}

// ---------------------------------------------------------------------------------
namespace {
struct alignas(64) PingLine {
  std::atomic<std::uint64_t> word;
};
}  // namespace

Summary cacheline_pingpong(std::uint64_t rounds, Samples* keep) {
  SharedMapping m(4096);
  Samples local(rounds);
  Samples& s = keep != nullptr ? *keep : local;
  if (!m.valid()) return {};
  auto* line = new (m.data()) PingLine{};
  const std::uint64_t warm = rounds / 10 + 100;
  Child child = Child::fork_run([&]() -> int {
    Deadline dl(30);
    for (std::uint64_t k = 0; k < warm + rounds; ++k) {
      // acquire: pairs with the host's release store of the odd value (a pure ping, no payload).
      while (line->word.load(std::memory_order_acquire) != 2 * k + 1) {
        if (dl.expired()) return 3;
      }
      // release: answers the ping -> acquired by the host's spin.
      line->word.store(2 * k + 2, std::memory_order_release);
    }
    return 0;
  });
  Deadline dl(30);
  bool ok = child.running();
  for (std::uint64_t k = 0; ok && k < warm + rounds; ++k) {
    const std::uint64_t t0 = now_ns();
    line->word.store(2 * k + 1, std::memory_order_release);  // release: ping -> acquired by the child
    while (line->word.load(std::memory_order_acquire) != 2 * k + 2) {  // acquire: the pong
      if (dl.expired()) {
        ok = false;
        break;
      }
    }
    if (ok && k >= warm) s.add(now_ns() - t0);
  }
  const auto ex = child.wait(5);
  if (!ok || !ex.ok) return {};
  return s.summarize();
}

std::string unique_token() {
  static std::mt19937_64 rng{std::random_device{}() ^ static_cast<std::uint64_t>(getpid()) ^ now_ns()};
  return fmt::format("{}-{:08x}", getpid(), static_cast<std::uint32_t>(rng()));
}

// ---------------------------------------------------------------------------------
namespace {
constexpr std::size_t kMaxTile = 3'145'728;
std::byte* source_image() {
  static std::byte* img = [] {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, kMaxTile));
    for (std::size_t i = 0; i < kMaxTile; ++i) p[i] = static_cast<std::byte>((i * 131u) ^ (i >> 12));
    return p;
  }();
  return img;
}
std::atomic<std::uint64_t> g_sink{0};
}  // namespace

std::byte* tile_source(std::uint64_t seq, std::size_t n) noexcept {
  std::byte* img = source_image();
  if (n >= sizeof seq) std::memcpy(img, &seq, sizeof seq);
  return img;
}

void write_tile(void* dst, std::size_t n, std::uint64_t seq) noexcept {
  std::byte* img = source_image();
  std::memcpy(dst, img, std::min(n, kMaxTile));
  if (n >= sizeof seq) std::memcpy(dst, &seq, sizeof seq);
}

std::uint64_t read_tile(const void* src, std::size_t n) noexcept {
  std::uint64_t stamp = 0;
  if (n >= sizeof stamp) std::memcpy(&stamp, src, sizeof stamp);
  const auto* w = static_cast<const std::uint64_t*>(src);
  const std::size_t words = n / 8;
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  std::size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    a += w[i];
    b ^= w[i + 1];
    c += w[i + 2];
    d ^= w[i + 3];
  }
  for (; i < words; ++i) a += w[i];
  const auto* bytes = static_cast<const unsigned char*>(src);
  for (std::size_t k = words * 8; k < n; ++k) a += bytes[k];
  // relaxed: a sink that only keeps the reads alive; nobody synchronizes on it.
  g_sink.fetch_add(a + b + c + d, std::memory_order_relaxed);
  return stamp;
}

std::string human_bytes(std::uint64_t n) {
  if (n >= 1024 * 1024 && n % (1024 * 1024) == 0) return fmt::format("{} MiB", n / (1024 * 1024));
  if (n >= 1024 && n % 1024 == 0) return fmt::format("{} KiB", n / 1024);
  return fmt::format("{} B", n);
}

// ---------------------------------------------------------------------------------
std::uint64_t Context::count(std::uint64_t full, std::uint64_t floor) const noexcept {
  std::uint64_t n = full;
  if (opt.smoke) n = full / 500;
  else if (opt.quick) n = full / 8;
  return std::max(n, floor);
}

void Context::emit(Record r) {
  if (r.skipped.empty() && r.failed.empty() && opt.cacheline_probe && r.peer != "floor") {
    const Summary s = cacheline_pingpong(opt.smoke ? 200 : 2000);
    r.cacheline_rtt_after_ns = s.p50;
  }
  records.push_back(std::move(r));
  if (on_record) on_record(records.back());
}

void Context::skip(const std::string& bench, const std::string& peer, const std::string& why) {
  Record r;
  r.bench = bench;
  r.peer = peer;
  r.workload = "n/a";
  r.mode = "n/a";
  r.skipped = why;
  emit(std::move(r));
}

void Context::progress(const std::string& what) {
  if (on_progress) on_progress(what);
}

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

Registrar::Registrar(std::string name, std::string about, std::function<void(Context&)> run) {
  registry().push_back(Case{std::move(name), std::move(about), std::move(run)});
}

}  // namespace tessera::bench
