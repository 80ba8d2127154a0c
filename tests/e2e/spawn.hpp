// Test-side launcher for worker processes attached to a client's arena through
// Client::add_external_worker (the pool-less path): fd 3 = arena, stdin = a pipe
// the test keeps open (EOF = graceful stop). Always killed and reaped.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <tessera/client.hpp>

namespace tessera::test {

struct SpawnedWorker {
  int pid = -1;
  int stdin_w = -1;
  SpawnedWorker() = default;
  SpawnedWorker(SpawnedWorker&& o) noexcept : pid(o.pid), stdin_w(o.stdin_w) { o.pid = -1; o.stdin_w = -1; }
  SpawnedWorker& operator=(SpawnedWorker&&) = delete;
  ~SpawnedWorker() { kill_and_reap(); }
  void kill_and_reap() {
    if (stdin_w >= 0) ::close(stdin_w);
    stdin_w = -1;
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st = 0;
      ::waitpid(pid, &st, 0);
    }
    pid = -1;
  }
  // Closes stdin and waits for a clean exit; returns the exit status (or -1).
  int stop() {
    if (stdin_w >= 0) ::close(stdin_w);
    stdin_w = -1;
    int st = 0;
    if (pid > 0 && ::waitpid(pid, &st, 0) == pid) {
      pid = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    return -1;
  }
};

inline SpawnedWorker spawn_worker(const Client::ExternalWorker& ew, const std::vector<std::string>& argv) {
  SpawnedWorker sw;
  int in[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return sw;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in[0], 0);
    if (ew.arena_fd == 3) ::fcntl(3, F_SETFD, 0);  // dup2(3, 3) would keep close-on-exec
    else ::dup2(ew.arena_fd, 3);                     // dup2 clears close-on-exec on the copy
    ::setenv("TESSERA_ARENA_FD", "3", 1);
    ::setenv("TESSERA_SLOT", std::to_string(ew.slot).c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(in[0]);
  sw.pid = pid;
  sw.stdin_w = in[1];
  return sw;
}

}  // namespace tessera::test
