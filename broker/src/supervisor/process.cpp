// Worker process spawning. Everything the child needs is prepared before the clone;
// the child (clone with CLONE_VM | CLONE_VFORK, like posix_spawn, so spawning does not
// copy a large host's page tables) calls only async-signal-safe functions until execve.
#include "process.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include <fmt/format.h>

extern char** environ;

namespace tessera::detail {

const std::vector<std::string>& default_env_allow() {
  static const std::vector<std::string> allow = {"PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TMPDIR",
                                                 "PYTHONPATH", "TZ", "USER", "LOGNAME"};
  return allow;
}

namespace {

bool allowed(std::string_view name, const std::vector<std::string>& allow) {
  for (const auto& a : allow) {
    if (!a.empty() && a.back() == '*') {
      if (name.substr(0, a.size() - 1) == std::string_view(a).substr(0, a.size() - 1)) return true;
    } else if (name == a) {
      return true;
    }
  }
  return false;
}

int raw_pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

std::string resolve_executable(const std::string& argv0, const std::vector<std::string>& env) {
  if (argv0.find('/') != std::string::npos) return argv0;
  std::string path;
  for (const auto& kv : env) {
    if (kv.rfind("PATH=", 0) == 0) path = kv.substr(5);
  }
  if (path.empty()) path = "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto end = path.find(':', start);
    const std::string dir = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    // An empty PATH entry means the current directory.
    const std::string cand = (dir.empty() ? std::string(".") : dir) + "/" + argv0;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return argv0;  // execve reports ENOENT
}

constexpr int kMaxPassFds = 64;

// Everything the child needs, prepared by the parent; the child only reads it and keeps
// its own copies on its own stack (it shares the parent's memory until execve).
struct ChildArgs {
  const char* exe;
  char** argv;
  char** envp;
  int in, out, err, exec_err;
  int npass;
  int pass[kMaxPassFds];
  int low;      // first fd number the child may use for scratch copies
  pid_t parent;
};

// Sanitizer runtimes keep per-thread state (shadow stacks, interceptor state) that a
// CLONE_VM child would share with the host's suspended thread, so sanitized builds fork;
// the child runs the same child_main either way.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSpawnWithCloneVm = false;
#else
constexpr bool kSpawnWithCloneVm = true;
#endif

// The child between clone and execve: async-signal-safe calls only, no writes to memory
// it shares with the parent other than its own stack (and errno).
int child_main(void* arg) {
  const ChildArgs& a = *static_cast<const ChildArgs*>(arg);
  const int ee = a.exec_err;
  auto die = [ee](int e) {
    [[maybe_unused]] auto n = ::write(ee, &e, sizeof e);
    ::_exit(127);
  };
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) ::sigaction(s, &dfl, nullptr);  // fails harmlessly for KILL/STOP
  ::setpgid(0, 0);                        // own process group: the whole tree can be signalled
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);     // die with the broker (its spawning thread)
  if (::getppid() != a.parent) ::_exit(127);  // the parent died before prctl took effect
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // Copies above every target number, so the dup2s below never clobber a source.
  const int c_in = ::fcntl(a.in, F_DUPFD_CLOEXEC, a.low);
  const int c_out = ::fcntl(a.out, F_DUPFD_CLOEXEC, a.low);
  const int c_err = ::fcntl(a.err, F_DUPFD_CLOEXEC, a.low);
  const int c_ee = ::fcntl(ee, F_DUPFD_CLOEXEC, a.low);
  if (c_in < 0 || c_out < 0 || c_err < 0 || c_ee < 0) die(errno);
  auto die2 = [c_ee](int e) {
    [[maybe_unused]] auto n = ::write(c_ee, &e, sizeof e);
    ::_exit(127);
  };
  int pass[kMaxPassFds];
  for (int i = 0; i < a.npass; ++i) {
    pass[i] = ::fcntl(a.pass[i], F_DUPFD_CLOEXEC, a.low);
    if (pass[i] < 0) die2(errno);
  }
  if (::dup2(c_in, 0) < 0 || ::dup2(c_out, 1) < 0 || ::dup2(c_err, 2) < 0) die2(errno);
  for (int i = 0; i < a.npass; ++i) {
    if (::dup2(pass[i], 3 + i) < 0) die2(errno);  // dup2 clears CLOEXEC
  }
  // Everything else is closed at exec, whatever the parent forgot to mark.
  if (::syscall(SYS_close_range, a.low, ~0u, CLOSE_RANGE_CLOEXEC) < 0) {
    for (int fd = a.low; fd < 65536; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  ::execve(a.exe, a.argv, a.envp);
  die2(errno);
  return 127;
}

}  // namespace

std::vector<std::string> scrubbed_environment(const std::map<std::string, std::string>& add,
                                              const std::vector<std::string>& extra_allow, char** parent) {
  if (parent == nullptr) parent = environ;
  std::vector<std::string> allow = default_env_allow();
  allow.insert(allow.end(), extra_allow.begin(), extra_allow.end());
  std::vector<std::string> out;
  for (char** e = parent; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string name(kv.substr(0, eq));
    if (add.count(name) != 0) continue;  // explicit additions win
    if (allowed(name, allow)) out.emplace_back(kv);
  }
  for (const auto& [k, v] : add) out.push_back(k + "=" + v);
  return out;
}

void ChildProcess::close_all() noexcept {
  for (int* fd : {&pidfd, &stdin_fd, &stdout_fd, &stderr_fd}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

Result<ChildProcess> spawn_process(const SpawnSpec& spec) {
  if (spec.argv.empty()) return fail(Errc::invalid_argument, "worker argv is empty");
  for (int fd : spec.pass_fds) {
    if (::fcntl(fd, F_GETFD) < 0) return fail(Errc::invalid_argument, fmt::format("pass_fds: fd {} is not open", fd));
  }
  // --- everything the child needs, prepared before the clone ---
  const std::vector<std::string> env = scrubbed_environment(spec.env, spec.env_allow);
  const std::string exe = resolve_executable(spec.argv[0], env);
  std::vector<char*> argv;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const int npass = static_cast<int>(spec.pass_fds.size());
  const int low = 3 + npass;  // first fd number the child may use for scratch copies

  int in[2], out[2], err[2], exec_err[2];
  if (::pipe2(in, O_CLOEXEC) < 0) return fail(Error::sys("pipe2"));
  if (::pipe2(out, O_CLOEXEC) < 0) {
    const int e = errno;
    ::close(in[0]); ::close(in[1]);
    return fail(Error::sys("pipe2", e));
  }
  if (::pipe2(err, O_CLOEXEC) < 0) {
    const int e = errno;
    for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
    return fail(Error::sys("pipe2", e));
  }
  if (::pipe2(exec_err, O_CLOEXEC) < 0) {
    const int e = errno;
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) ::close(fd);
    return fail(Error::sys("pipe2", e));
  }
  if (npass > kMaxPassFds) {
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1], exec_err[0], exec_err[1]}) ::close(fd);
    return fail(Errc::invalid_argument, fmt::format("pass_fds: at most {} descriptors", kMaxPassFds));
  }
  ChildArgs ca{};
  ca.exe = exe.c_str();
  ca.argv = argv.data();
  ca.envp = envp.data();
  ca.in = in[0];
  ca.out = out[1];
  ca.err = err[1];
  ca.exec_err = exec_err[1];
  ca.npass = npass;
  for (int i = 0; i < npass; ++i) ca.pass[i] = spec.pass_fds[static_cast<std::size_t>(i)];
  ca.low = low;
  ca.parent = ::getpid();

  // clone(CLONE_VM | CLONE_VFORK) on a small stack of its own, as posix_spawn does: no
  // copy of the host's page tables, so the cost does not grow with the host's size (a
  // fork of a multi-GB JVM took hundreds of ms). Every signal is blocked around the clone
  // so no handler of the host runs in the child while it shares the host's memory; the
  // child resets the handlers before it unblocks (docs/java.md, docs/design).
  sigset_t all, old;
  sigfillset(&all);
  pid_t pid = -1;
  int clone_errno = 0;
  if constexpr (kSpawnWithCloneVm) {
    constexpr std::size_t kStack = 64 * 1024;
    void* stack = ::mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
      const int e = errno;
      for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1], exec_err[0], exec_err[1]}) ::close(fd);
      return fail(Error::sys("mmap", e));
    }
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = ::clone(&child_main, static_cast<char*>(stack) + kStack, CLONE_VM | CLONE_VFORK | SIGCHLD, &ca);
    clone_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    ::munmap(stack, kStack);  // the child has exec'd or exited: CLONE_VFORK waited for that
  } else {
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = ::fork();
    if (pid == 0) ::_exit(child_main(&ca));  // child_main execs or _exits; this is belt and braces
    clone_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  if (pid < 0) {
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1], exec_err[0], exec_err[1]}) ::close(fd);
    return fail(Error::sys("clone", clone_errno));
  }
  // ---- parent ----
  for (int fd : {in[0], out[1], err[1], exec_err[1]}) ::close(fd);
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(exec_err[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(exec_err[0]);
  if (n == static_cast<ssize_t>(sizeof child_errno)) {
    for (int fd : {in[1], out[0], err[0]}) ::close(fd);
    int st = 0;
    ::waitpid(pid, &st, 0);
    return fail(Errc::system, fmt::format("cannot start worker '{}': {}", spec.argv[0], std::strerror(child_errno)));
  }
  ChildProcess c;
  c.pid = pid;
  c.pidfd = raw_pidfd_open(pid);
  c.stdin_fd = in[1];
  c.stdout_fd = out[0];
  c.stderr_fd = err[0];
  if (c.pidfd < 0) {
    const int e = errno;
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    c.close_all();
    return fail(Error::sys("pidfd_open", e));
  }
  ::fcntl(c.stdin_fd, F_SETPIPE_SZ, 1 << 20);  // best effort: room for queued requests
  for (int fd : {c.stdin_fd, c.stdout_fd, c.stderr_fd}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return c;
}

std::string ExitStatus::describe() const {
  if (exited) return fmt::format("exit code {}", code);
  return fmt::format("killed by signal {} ({})", signal, ::strsignal(signal));
}

Result<ExitStatus> reap_process(const ChildProcess& child, bool block) {
  siginfo_t si{};
  int rc;
  do {
    rc = ::waitid(P_PIDFD, static_cast<id_t>(child.pidfd), &si, WEXITED | (block ? 0 : WNOHANG));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return fail(Error::sys("waitid"));
  if (si.si_pid == 0) return fail(Errc::not_ready, "worker has not exited");
  ExitStatus st;
  if (si.si_code == CLD_EXITED) {
    st.exited = true;
    st.code = si.si_status;
  } else {
    st.exited = false;
    st.signal = si.si_status;
  }
  return st;
}

int pidfd_send(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

}  // namespace tessera::detail
