// Shared helpers for the data-plane tests: unique names, deadlines, small arenas,
// and child processes that are always killed and reaped, even when a test fails.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <tessera/arena.hpp>

namespace tessera::test {

using namespace std::chrono_literals;

// A name no other process or concurrent test run can pick: prefix-pid-random.
inline std::string unique_name(const std::string& prefix) {
  std::uint64_t r = 0;
  if (getrandom(&r, sizeof r, 0) != static_cast<ssize_t>(sizeof r)) r = std::random_device{}();
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%d-%016llx", static_cast<int>(getpid()), static_cast<unsigned long long>(r));
  return prefix + buf;
}

// Seed for randomized tests: TESSERA_TEST_SEED overrides, so a failure can be replayed.
inline std::uint64_t test_seed(std::uint64_t fallback) {
  if (const char* s = std::getenv("TESSERA_TEST_SEED")) return std::strtoull(s, nullptr, 0);
  return fallback;
}

struct Deadline {
  explicit Deadline(std::chrono::milliseconds d) : end(std::chrono::steady_clock::now() + d) {}
  bool expired() const { return std::chrono::steady_clock::now() >= end; }
  std::chrono::steady_clock::time_point end;
};

// Polls `pred` until it holds or `timeout` passes. Returns the last value of pred().
template <class Pred>
bool wait_until(Pred&& pred, std::chrono::milliseconds timeout) {
  const Deadline d(timeout);
  while (!pred()) {
    if (d.expired()) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A small arena: quick to create, easy to exhaust.
inline ArenaConfig small_config(std::uint32_t blocks_per_class = 8) {
  ArenaConfig cfg;
  cfg.classes = {{4096, blocks_per_class}, {16384, blocks_per_class}, {65536, blocks_per_class}};
  cfg.n_rings = 4;
  cfg.ring_capacity = 16;
  cfg.n_doorbells = kMaxParticipants;  // one per participant slot
  cfg.prefault = false;
  cfg.debug_name = unique_name("tessera-test");
  return cfg;
}

// A descriptor carrying {producer (stream), seq} and an optional block handle.
inline TileDesc make_desc(std::uint64_t seq, std::uint32_t producer, std::uint64_t block = 0, std::uint32_t nbytes = 0) {
  return TileDesc(seq, producer, /*epoch*/ 0, block, nbytes, fb::DType::UInt8, /*ndim*/ 1, /*level*/ 0,
                  fb::Kind::Request, /*x*/ 0, /*y*/ 0, /*flags*/ 0, /*status*/ 0, /*op*/ 0);
}

inline std::uint32_t total_blocks(const Arena& a) {
  std::uint32_t n = 0;
  for (std::uint32_t c = 0; c < a.n_classes(); ++c) n += a.size_class(c).block_count;
  return n;
}

// Directory of the running test executable; helper binaries are built next to it.
inline std::string exe_dir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  std::string p(buf);
  return p.substr(0, p.rfind('/'));
}

// A forked+exec'd child. The destructor kills (SIGKILL) and reaps it if it still runs,
// so a failing assertion never leaves a stray process behind.
class Child {
 public:
  struct Options {
    std::vector<int> inherit_fds;   // descriptors that must survive exec (same numbers)
    bool capture_stdout = false;    // read it with read_line()/read_all()
  };

  static std::optional<Child> spawn(const std::string& path, const std::vector<std::string>& args,
                                    const Options& opt) {
    std::vector<std::string> store;
    store.push_back(path);
    store.insert(store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : store) argv.push_back(s.data());
    argv.push_back(nullptr);
    int pipefd[2] = {-1, -1};
    if (opt.capture_stdout && pipe2(pipefd, O_CLOEXEC) != 0) return std::nullopt;
    const pid_t pid = fork();
    if (pid < 0) return std::nullopt;
    if (pid == 0) {
      // Child: only async-signal-safe calls until exec.
      for (int fd : opt.inherit_fds) {
        const int fl = fcntl(fd, F_GETFD);
        if (fl >= 0) fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
      }
      if (opt.capture_stdout) dup2(pipefd[1], STDOUT_FILENO);  // dup2 clears CLOEXEC on the copy
      execv(argv[0], argv.data());
      _exit(127);
    }
    Child c;
    c.pid_ = pid;
    if (opt.capture_stdout) {
      close(pipefd[1]);
      c.out_ = pipefd[0];
    }
    return c;
  }

  Child() = default;
  Child(Child&& o) noexcept { *this = std::move(o); }
  Child& operator=(Child&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(out_, o.out_);
    std::swap(status_, o.status_);
    std::swap(buf_, o.buf_);
    return *this;
  }
  ~Child() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      waitpid(pid_, &st, 0);
    }
    if (out_ >= 0) close(out_);
  }

  pid_t pid() const { return pid_; }
  void kill(int sig) const {
    if (pid_ > 0 && !status_) ::kill(pid_, sig);
  }

  // Waits for exit; returns the raw wait status, or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    if (status_) return status_;
    const Deadline d(timeout);
    for (;;) {
      int st = 0;
      const pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        status_ = st;
        return status_;
      }
      if (r < 0 || d.expired()) return std::nullopt;
      std::this_thread::sleep_for(1ms);
    }
  }

  // Reads one line of the child's stdout (without '\n'); nullopt on EOF or timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
    const Deadline d(timeout);
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      if (!fill(d)) return std::nullopt;
    }
  }

  // Reads stdout until EOF (or timeout; then what arrived so far).
  std::string read_all(std::chrono::milliseconds timeout) {
    const Deadline d(timeout);
    while (fill(d)) {
    }
    return std::exchange(buf_, {});
  }

 private:
  bool fill(const Deadline& d) {
    if (out_ < 0) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d.end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char tmp[4096];
    const ssize_t n = read(out_, tmp, sizeof tmp);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<std::size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::optional<int> status_;
  std::string buf_;
};

inline bool exited_ok(const std::optional<int>& st) { return st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0; }

}  // namespace tessera::test
