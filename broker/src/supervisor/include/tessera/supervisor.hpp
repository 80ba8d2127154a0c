// Worker supervision: a pool of Appose-speaking worker processes driven by one
// event-loop thread. Thread-safe; see docs/design/broker.md for the guarantees
// (exactly one terminal outcome per task, death detection, retries, cancel
// escalation, graceful shutdown).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include <tessera/appose.hpp>
#include <tessera/event_loop.hpp>
#include <tessera/result.hpp>

namespace tessera {

struct WorkerSpec {
  std::vector<std::string> argv;                 // argv[0] is looked up in the worker's PATH
  std::map<std::string, std::string> env;        // explicit additions (override inherited values)
  std::vector<std::string> env_allow;            // extra inherited names; "PREFIX_*" matches a prefix
  std::vector<int> pass_fds;                     // dup'ed into the worker as fds 3, 4, ... in order
  std::vector<std::string> init_scripts;         // EXECUTEd in order; each must COMPLETE (they append)
  std::chrono::milliseconds ready_timeout{10'000};  // spawn + all init scripts
  int max_task_retries = 1;                      // re-runs of a task whose worker died
  int max_start_failures = 3;                    // consecutive failed starts before giving up
  std::chrono::milliseconds cancel_grace{1'000}; // CANCEL, then kill + respawn after this
  std::chrono::milliseconds task_deadline{0};    // 0 = none; counted from first dispatch
  std::string name;                              // shown in logs; default "worker-<id>"
};

enum class WorkerEventKind : std::uint8_t { ready, died, respawned, gave_up };
const char* to_string(WorkerEventKind k) noexcept;

struct WorkerEvent {
  WorkerEventKind kind = WorkerEventKind::ready;
  int worker = -1;
  pid_t pid = -1;
  int exit_code = -1;   // died: valid when signal == 0
  int signal = 0;       // died: the signal that killed it, or 0
  std::vector<std::string> stderr_tail;
  std::string message;
};

// "killed by signal 9 (...)" / "exited with code 3", plus the last stderr lines: the
// reason given for every tile or task a dead worker held.
std::string describe_exit(const WorkerEvent& e);

// Receives LAUNCH, UPDATEs and exactly one terminal response for a task (its
// `task` field is the id returned by submit()). Runs on the supervisor thread:
// it must not block and must not call add_worker()/respawn()/shutdown().
using TaskCallback = std::function<void(const appose::Response&)>;

struct SupervisorOptions {
  LoopChoice loop = LoopChoice::automatic;
  bool auto_respawn = true;  // off: the owner calls respawn() itself (e.g. after recovering rings)
  std::chrono::milliseconds respawn_backoff{50};       // doubles per consecutive start failure
  std::chrono::milliseconds respawn_backoff_max{2'000};
  // A worker that dies sooner than this after becoming ready counts as a failed
  // start (crash loop detection for workers without init scripts).
  std::chrono::milliseconds min_uptime{1'000};
  std::size_t stderr_tail_lines = 20;
  std::size_t max_line = 16u << 20;                    // longest accepted protocol line
  std::chrono::milliseconds shutdown_grace{5'000};     // in-flight tasks may finish this long
  std::chrono::milliseconds stop_grace{2'000};         // after stdin EOF, before SIGKILL
};

struct SupervisorStats {
  LoopBackend backend = LoopBackend::epoll;
  std::uint64_t submitted = 0, completed = 0, failed = 0, canceled = 0, retried = 0;
  std::uint64_t bad_lines = 0;            // malformed / wrong-typed / unknown-type stdout lines
  std::uint64_t blank_lines = 0;
  std::uint64_t unknown_task_lines = 0;   // valid responses naming no live task
  std::uint64_t dropped_responses = 0;    // late / duplicate / contradictory (state machine)
  std::uint64_t overlong_lines = 0;
  std::uint64_t stderr_lines = 0;
  std::uint64_t worker_deaths = 0, respawns = 0, deadline_kills = 0, cancel_kills = 0;
  int workers = 0, workers_ready = 0;
  int tasks_in_flight = 0, tasks_queued = 0;
};

class Supervisor {
 public:
  static Result<std::unique_ptr<Supervisor>> create(SupervisorOptions options = {});
  ~Supervisor();  // shutdown()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Spawns a worker and returns once it is ready (all init scripts COMPLETEd) or
  // with the worker's own error (FAILURE text, exit status, stderr tail).
  Result<int> add_worker(WorkerSpec spec);
  // worker -1: least loaded ready worker. Returns the task id at once (one hop to
  // the loop thread, no round trip); problems found there (no such worker, the
  // worker gave up) arrive through `cb` as LAUNCH + FAILURE. Fails synchronously
  // only once shutdown() has begun.
  Result<std::string> submit(int worker, std::string script, boost::json::object inputs, TaskCallback cb);
  // The same, with the Appose `queue` of the EXECUTE (e.g. "main"), forwarded to the worker.
  Result<std::string> submit(int worker, std::string script, boost::json::object inputs,
                             std::optional<std::string> queue, TaskCallback cb);
  // Cooperative CANCEL; after cancel_grace the worker is killed (and respawned if
  // auto_respawn). The task reports CANCELATION exactly once (or its real terminal
  // if that arrived first). Unknown or finished ids are ignored.
  void cancel(const std::string& task);
  // Restarts a dead (or running: it is killed first) worker, with backoff on
  // repeated start failures; "gave up" after max_start_failures.
  Result<void> respawn(int worker);
  // Stops a worker for good: stdin EOF (it finishes the tasks it holds), SIGKILL after
  // stop_grace, never respawned; queued tasks pinned to it fail. Unknown id: not_found.
  Result<void> remove_worker(int worker);
  void set_event_handler(std::function<void(const WorkerEvent&)> handler);
  Result<void> kill_worker(int worker, int sig);
  int worker_pid(int worker) const;  // -1 if unknown or not running
  SupervisorStats stats() const;
  LoopBackend backend() const noexcept;
  // Stops admitting work, lets in-flight tasks finish (shutdown_grace), cancels the
  // rest, reports each, closes worker stdin, kills stragglers. Idempotent.
  void shutdown();

  class Impl;

 private:
  explicit Supervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
