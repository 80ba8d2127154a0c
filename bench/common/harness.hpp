// The benchmark harness shared by every bench module: clocks, latency samples and
// their percentiles, per-process CPU time, forked children with deadlines, the
// run environment (git SHA, compiler, CPU), one JSON line per result, and the
// registry that the driver walks. A new module is one more .cpp file that calls
// TESSERA_BENCH_CASE; nothing else has to change.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <signal.h>

namespace tessera::bench {

// ---------------------------------------------------------------------------------
// Clocks

inline std::uint64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// CPU seconds (user + system) used by this process so far.
double process_cpu_s() noexcept;

// A deadline that is cheap to poll from a spin loop: reads the clock every 1024 calls.
class Deadline {
 public:
  explicit Deadline(double seconds) noexcept : at_(now_ns() + static_cast<std::uint64_t>(seconds * 1e9)) {}
  [[nodiscard]] bool expired() noexcept { return (++n_ & 1023u) == 0 && now_ns() > at_; }
  [[nodiscard]] bool expired_now() const noexcept { return now_ns() > at_; }
  std::uint64_t at_ns() const noexcept { return at_; }

 private:
  std::uint64_t at_;
  std::uint32_t n_ = 0;
};

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// ---------------------------------------------------------------------------------
// Latency samples: every sample is kept (exact percentiles), sorted once at the end.

struct Summary {
  std::uint64_t count = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;  // nanoseconds
};

class Samples {
 public:
  explicit Samples(std::size_t expected = 0) { v_.reserve(expected); }
  void add(std::uint64_t ns) { v_.push_back(ns); }
  std::size_t size() const noexcept { return v_.size(); }
  // Sorts in place; call once after the measurement.
  Summary summarize();
  // `points` evenly spaced quantiles (for CDF plots), valid after summarize().
  std::vector<double> cdf(int points) const;

 private:
  std::vector<std::uint64_t> v_;
  bool sorted_ = false;
};

// ---------------------------------------------------------------------------------
// One result. Every field lands in the JSON line.

struct ProcessCpu {
  std::string role;   // "host", "worker", "single"
  double cpu_s = 0;   // user + system seconds over the process's part of the run
};

struct Record {
  std::string bench;      // case name, e.g. "tile/uds/stream"
  std::string peer;       // "tessera", "plain-ring", "uds", "floor", ...
  std::string workload;   // "pingpong", "stream", "floor", "alloc", "idle"
  std::string mode;       // "spin", "sleep", "spin-then-sleep" or "n/a"
  std::uint64_t tile_bytes = 0;  // 64 = a descriptor alone
  std::uint64_t ops = 0;         // measured operations (warm-up excluded)
  std::uint64_t warmup = 0;
  unsigned inflight = 1;
  std::optional<Summary> latency;  // per-operation latency (ns)
  std::vector<double> cdf;         // latency quantiles for plots (ns)
  double wall_s = 0;     // measured window (warm-up excluded)
  double ops_per_s = 0;
  double gb_per_s = 0;
  std::vector<ProcessCpu> cpu;  // per process, over cpu_wall_s (set-up and warm-up included)
  double cpu_wall_s = 0;
  double cacheline_rtt_after_ns = -1;  // quick ping-pong right after the measurement
  std::string note;
  std::string skipped;   // non-empty: the peer was not run, and why
  std::string failed;    // non-empty: the run broke (timeout, lost/reordered tile, ...)
};

// ---------------------------------------------------------------------------------
// Environment of the run.

struct Environment {
  std::string git_sha, compiler, flags, build_type, cpu_model, hostname_hash;
  unsigned cores = 0;
  std::string started_utc;
};
Environment detect_environment();

std::string to_json_line(const Environment& env, const Record& r);

// ---------------------------------------------------------------------------------
// Children: fork with a parent-death signal, reap with a deadline, report CPU seconds.

class Child {
 public:
  Child() = default;
  // Forks; the child runs `body` and _exits with its return value. Never returns in the child.
  static Child fork_run(const std::function<int()>& body);
  // fork + execv of `argv` with stdout redirected to `stdout_fd` (if >= 0).
  static Child spawn(const std::vector<std::string>& argv, int stdout_fd = -1, int stdin_fd = -1);
  Child(Child&& o) noexcept : pid_(o.pid_) { o.pid_ = -1; }
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  struct Exit {
    bool ok = false;         // exited with status 0
    int code = -1;           // exit status, or -signal
    bool timed_out = false;  // killed by us after the deadline
    double cpu_s = 0;        // child's user + system CPU seconds (wait4)
  };
  // Waits for the child; kills it (SIGKILL) if it outlives `timeout_s`.
  Exit wait(double timeout_s);
  int pid() const noexcept { return pid_; }
  bool running() const noexcept { return pid_ > 0; }

 private:
  explicit Child(int pid) : pid_(pid) {}
  int pid_ = -1;
};

// Interrupts blocking reads and writes of this process after `seconds`: SIGALRM is
// installed without SA_RESTART, so a stuck peer turns into EINTR + watchdog_fired()
// (a failed run) instead of a hang. One at a time; restores the old handler.
class Watchdog {
 public:
  explicit Watchdog(double seconds);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  struct sigaction old_ {};
};
bool watchdog_fired() noexcept;

// Anonymous MAP_SHARED mapping inherited by forked children (freed by munmap or exit).
class SharedMapping {
 public:
  SharedMapping() = default;
  explicit SharedMapping(std::size_t bytes, bool populate = true);
  SharedMapping(SharedMapping&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  SharedMapping& operator=(SharedMapping&& o) noexcept;
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping();
  std::byte* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }
  template <class T>
  T* as() const noexcept { return reinterpret_cast<T*>(p_); }
  bool valid() const noexcept { return p_ != nullptr; }

 private:
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

// Cross-process round trip of one shared cache line, both sides spinning (ns, p50).
// Used as a floor and, briefly, after each measurement to report where the
// hypervisor placed the two processes.
Summary cacheline_pingpong(std::uint64_t rounds, Samples* keep = nullptr);

// A process-unique token for names (pid + random), e.g. "4242-9f31c0de".
std::string unique_token();

// ---------------------------------------------------------------------------------
// Tiles: every peer moves the same bytes. The host stamps the sequence number into
// the first 8 bytes, the worker reads every byte and checks the stamp.

inline constexpr std::uint64_t kDescBytes = 64;
inline constexpr std::uint64_t kTileSizes[] = {196'608, 786'432, 1'048'576, 3'145'728};

// Writes `n` bytes of tile content from the process's source image into `dst`.
void write_tile(void* dst, std::size_t n, std::uint64_t seq) noexcept;
// Source image (max tile size) for transports that send from a buffer.
std::byte* tile_source(std::uint64_t seq, std::size_t n) noexcept;
// Reads every byte of a tile; returns the stamp (first 8 bytes). The checksum is
// published to a sink so the compiler cannot drop the read.
std::uint64_t read_tile(const void* src, std::size_t n) noexcept;

std::string human_bytes(std::uint64_t n);

// ---------------------------------------------------------------------------------
// Run context and registry.

struct Options {
  bool quick = false;
  bool smoke = false;
  bool cacheline_probe = true;     // quick ping-pong after each measurement
  double child_timeout_s = 120;
  std::string python = "/usr/bin/python3";
  std::string exe_dir;             // directory of tessera-bench (helper scripts live there)
};

class Context {
 public:
  Options opt;
  Environment env;

  // Scales a full-run count down for --quick / --smoke (never below `floor`).
  std::uint64_t count(std::uint64_t full, std::uint64_t floor = 5) const noexcept;
  std::uint64_t warmup_of(std::uint64_t count) const noexcept { return count / 10 + 2; }
  // Stores a result (adds the cache-line probe unless skipped/failed), writes its JSON line.
  void emit(Record r);
  void skip(const std::string& bench, const std::string& peer, const std::string& why);
  void progress(const std::string& what);

  std::vector<Record> records;
  std::function<void(const Record&)> on_record;
  std::function<void(const std::string&)> on_progress;
};

struct Case {
  std::string name;   // "group/peer/workload": the --filter regex matches this
  std::string about;  // one line for --list
  std::function<void(Context&)> run;
};
std::vector<Case>& registry();

struct Registrar {
  Registrar(std::string name, std::string about, std::function<void(Context&)> run);
};

#define TESSERA_BENCH_CONCAT2(a, b) a##b
#define TESSERA_BENCH_CONCAT(a, b) TESSERA_BENCH_CONCAT2(a, b)
// TESSERA_BENCH_CASE("floor/memcpy", "single-thread memcpy per tile size", fn);
#define TESSERA_BENCH_CASE(name, about, fn) \
  static const ::tessera::bench::Registrar TESSERA_BENCH_CONCAT(tessera_bench_case_, __COUNTER__){name, about, fn}

}  // namespace tessera::bench
