// A minimal test host for worker processes: stdin/stdout pipes for the Appose
// protocol, stderr captured in an anonymous memfd (no file to clean up), the
// client's arena handed over as fd 3. The process is always killed and reaped.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <tessera/appose.hpp>
#include <tessera/client.hpp>

namespace tessera::test {

inline const std::string kBinDir = TESSERA_BIN_DIR;

struct WorkerProc {
  int pid = -1;
  int in_w = -1;    // worker's stdin
  int out_r = -1;   // worker's stdout (protocol)
  int err_fd = -1;  // memfd holding everything the worker wrote to stderr
  std::string pending;

  WorkerProc() = default;
  WorkerProc(const WorkerProc&) = delete;
  WorkerProc& operator=(const WorkerProc&) = delete;
  WorkerProc(WorkerProc&& o) noexcept { swap(o); }
  ~WorkerProc() { kill_and_reap(); }
  void swap(WorkerProc& o) noexcept {
    std::swap(pid, o.pid);
    std::swap(in_w, o.in_w);
    std::swap(out_r, o.out_r);
    std::swap(err_fd, o.err_fd);
    std::swap(pending, o.pending);
  }

  // arena_fd < 0: no arena is handed over (TESSERA_* unset).
  static WorkerProc spawn(const std::vector<std::string>& argv, int arena_fd, std::uint32_t slot) {
    WorkerProc p;
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return p;
    p.err_fd = ::memfd_create("worker-stderr", MFD_CLOEXEC);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      if (p.err_fd >= 0) ::dup2(p.err_fd, 2);
      ::unsetenv("TESSERA_ARENA_FD");
      ::unsetenv("TESSERA_SLOT");
      if (arena_fd >= 0) {
        if (arena_fd == 3) ::fcntl(3, F_SETFD, 0);
        else ::dup2(arena_fd, 3);
        ::setenv("TESSERA_ARENA_FD", "3", 1);
        ::setenv("TESSERA_SLOT", std::to_string(slot).c_str(), 1);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    p.pid = pid;
    p.in_w = in[1];
    p.out_r = out[0];
    return p;
  }

  bool send(const std::string& bytes) const {
    std::size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::write(in_w, bytes.data() + off, bytes.size() - off);
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }
  bool execute(const std::string& task, const std::string& script) const {
    return send(R"({"task":")" + task + R"(","requestType":"EXECUTE","script":")" + script + R"(","inputs":{}})" "\n");
  }

  // Next whole protocol line (without '\n'), or nullopt on timeout/EOF.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = pending.find('\n'); nl != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd pf{out_r, POLLIN, 0};
      if (::poll(&pf, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(out_r, buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      pending.append(buf, static_cast<std::size_t>(n));
    }
  }

  // Next response of `task` that is terminal (skipping LAUNCH/UPDATE), or nullopt.
  std::optional<appose::Response> await_terminal(const std::string& task,
                                                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto line = read_line(std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
      if (!line) return std::nullopt;
      auto r = appose::parse_response(*line);
      if (!r) return std::nullopt;  // a corrupt protocol line is a failure of its own
      if (r.value().task == task && appose::is_terminal(r.value().type)) return r.value();
    }
    return std::nullopt;
  }

  std::string stderr_text() const {
    std::string s;
    if (err_fd < 0) return s;
    char buf[4096];
    off_t off = 0;
    for (;;) {
      const ssize_t n = ::pread(err_fd, buf, sizeof buf, off);
      if (n <= 0) break;
      s.append(buf, static_cast<std::size_t>(n));
      off += n;
    }
    return s;
  }

  // Waits up to `timeout` for the exit; returns the exit code, 128+signal, or -1 on timeout.
  int wait_exit(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (pid > 0) {
      int st = 0;
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (std::chrono::steady_clock::now() >= end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return -1;
  }
  int close_stdin_and_wait() {
    if (in_w >= 0) ::close(in_w);
    in_w = -1;
    return wait_exit();
  }
  void kill_and_reap() {
    if (in_w >= 0) ::close(in_w);
    if (out_r >= 0) ::close(out_r);
    in_w = out_r = -1;
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st = 0;
      ::waitpid(pid, &st, 0);
      pid = -1;
    }
    if (err_fd >= 0) ::close(err_fd);
    err_fd = -1;
  }
};

inline ClientOptions small_client_options() {
  ClientOptions o;
  o.arena.classes = {{4096, 1024}, {65536, 64}, {262144, 16}};
  o.arena.n_rings = 16;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  o.worker_window = 16;
  o.wait.spin_ns = 20'000;
  return o;
}

// A client plus worker processes attached through add_external_worker.
struct Rig {
  std::unique_ptr<Client> client;
  std::vector<WorkerProc> procs;
  std::vector<Client::ExternalWorker> ews;

  explicit Rig(ClientOptions o = small_client_options()) : client(Client::embedded(std::move(o)).value()) {}
  WorkerProc& add(const std::vector<std::string>& argv) {
    auto ew = client->add_external_worker("w").value();
    procs.push_back(WorkerProc::spawn(argv, ew.arena_fd, ew.slot));
    ews.push_back(ew);
    client->set_worker_pid(ew.index, procs.back().pid);
    return procs.back();
  }
  // Polls until `n` outcomes arrived or `timeout` passed.
  std::vector<TileResult> collect(std::size_t n, std::chrono::seconds timeout = std::chrono::seconds(30)) {
    std::vector<TileResult> out;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (out.size() < n && std::chrono::steady_clock::now() < end)
      client->poll(out, n - out.size(), std::chrono::milliseconds(20));
    return out;
  }
};

}  // namespace tessera::test
