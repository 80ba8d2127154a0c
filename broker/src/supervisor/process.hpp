// Child processes for workers: scrubbed environment, own process group,
// PR_SET_PDEATHSIG(SIGKILL), default signal dispositions, close-on-exec for
// everything except stdio and the listed pass_fds, pidfd for exit detection.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include <tessera/result.hpp>

namespace tessera::detail {

// Variables a worker inherits from the parent unless the spec says otherwise.
// An entry ending in '*' is a prefix.
const std::vector<std::string>& default_env_allow();

// "NAME=value" strings: the allowed part of `parent` (environ if null) plus `add`.
std::vector<std::string> scrubbed_environment(const std::map<std::string, std::string>& add,
                                              const std::vector<std::string>& extra_allow,
                                              char** parent = nullptr);

struct SpawnSpec {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::vector<std::string> env_allow;
  std::vector<int> pass_fds;  // dup'ed into the child as 3, 4, ... in order
};

// Parent ends of the child's stdio (close-on-exec; stdout/stderr non-blocking,
// stdin non-blocking with a 1 MiB pipe) and a pidfd. Owns nothing: see close_all().
struct ChildProcess {
  pid_t pid = -1;
  int pidfd = -1;
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  void close_all() noexcept;
};

Result<ChildProcess> spawn_process(const SpawnSpec& spec);

struct ExitStatus {
  bool exited = false;  // true: `code` is valid; false: killed by `signal`
  int code = -1;
  int signal = 0;
  std::string describe() const;
};

// Reaps the child through its pidfd (it must have exited: the pidfd was readable).
Result<ExitStatus> reap_process(const ChildProcess& child, bool block);

int pidfd_send(int pidfd, int sig) noexcept;

}  // namespace tessera::detail
