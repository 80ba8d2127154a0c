// Worker process lifecycle: spawn (scrubbed environment, passed fds, own process
// group), init scripts + readiness, death detection, backoff/respawn, crash-loop
// give-up, stop/kill. Events (ready / died / respawned / gave_up) go to an event
// handler and to at most one loop-thread subscriber (the ApposeRouter). Routes no
// tasks of its own: the tile path (pool/) uses it alone. Thread-safe; see
// docs/design/broker.md.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

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
  int max_start_failures = 3;                    // consecutive failed starts before giving up
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

struct ProcessOptions {
  LoopChoice loop = LoopChoice::automatic;
  bool auto_respawn = true;  // off: the owner calls respawn() itself (e.g. after recovering rings)
  std::chrono::milliseconds respawn_backoff{50};       // doubles per consecutive start failure
  std::chrono::milliseconds respawn_backoff_max{2'000};
  // A worker that dies sooner than this after becoming ready, having done no work,
  // counts as a failed start (crash loop detection for workers without init scripts).
  std::chrono::milliseconds min_uptime{1'000};
  std::size_t stderr_tail_lines = 20;
  std::size_t max_line = 16u << 20;                    // longest accepted protocol line
  std::chrono::milliseconds stop_grace{2'000};         // after stdin EOF, before SIGKILL
};

struct ProcessStats {
  LoopBackend backend = LoopBackend::epoll;
  std::uint64_t bad_lines = 0;            // malformed / wrong-typed / unknown-type stdout lines
  std::uint64_t blank_lines = 0;
  std::uint64_t unknown_task_lines = 0;   // valid responses naming no live task
  std::uint64_t overlong_lines = 0;
  std::uint64_t stderr_lines = 0;
  std::uint64_t worker_deaths = 0, respawns = 0;
  int workers = 0, workers_ready = 0;
};

// A loop-thread subscriber to the lifecycle (the ApposeRouter). Every call runs on
// the supervisor thread, in the order the lifecycle saw things happen.
class ProcessObserver {
 public:
  virtual ~ProcessObserver() = default;
  virtual void on_registered(int worker) = 0;  // add_worker(): id assigned, before the spawn
  virtual void on_ready(int worker) = 0;       // all init scripts done (first start or respawn)
  // A stdout response that is not the reply to an init script.
  virtual void on_response(int worker, appose::Response r) = 0;
  // The process is gone; `report` names the exit and the stderr tail. Returns whether
  // it did work since it became ready (such a death is never a failed start).
  virtual bool on_died(int worker, const std::string& report) = 0;
  virtual void on_unavailable(int worker, bool removed) = 0;  // gave up, or remove_worker()
  virtual void on_settled() = 0;        // after a death was handled: capacity may have changed
  virtual void on_shutdown() = 0;       // shutdown() began: stop admitting work
  virtual bool idle() const = 0;        // shutdown stops the workers once this holds
};

class ProcessSupervisor {
 public:
  static Result<std::unique_ptr<ProcessSupervisor>> create(ProcessOptions options = {});
  ~ProcessSupervisor();  // shutdown()
  ProcessSupervisor(const ProcessSupervisor&) = delete;
  ProcessSupervisor& operator=(const ProcessSupervisor&) = delete;

  // Spawns a worker and returns once it is ready (all init scripts COMPLETEd) or
  // with the worker's own error (FAILURE text, exit status, stderr tail).
  Result<int> add_worker(WorkerSpec spec);
  // Restarts a dead (or running: it is killed first) worker, with backoff on
  // repeated start failures; "gave up" after max_start_failures.
  Result<void> respawn(int worker);
  // Stops a worker for good: stdin EOF (it finishes what it holds), SIGKILL after
  // stop_grace, never respawned. Unknown id: not_found.
  Result<void> remove_worker(int worker);
  void set_event_handler(std::function<void(const WorkerEvent&)> handler);
  Result<void> kill_worker(int worker, int sig);
  int worker_pid(int worker) const;  // -1 if unknown or not running
  ProcessStats stats() const;
  LoopBackend backend() const noexcept;
  // Tells the subscriber, waits until it is idle, closes worker stdin, kills
  // stragglers after stop_grace. Idempotent.
  void shutdown();

  // ---- for the one subscriber ----
  void subscribe(ProcessObserver* observer);  // before the first add_worker()
  bool on_loop_thread() const;
  // Runs f on the loop thread (inline there, or once the loop has stopped) and waits.
  void run_on_loop(const std::function<void()>& f) const;
  // Queues f for the loop thread; false once the supervisor is shut down.
  bool post(std::function<void()> f);
  // Loop thread only:
  EventLoop& loop();
  bool send(int worker, const std::string& line);  // false: no such running worker
  // Kills the worker's process group on behalf of a policy (deadline, cancel
  // escalation): not a crash of its own; `respawn` asks for a restart even when
  // the owner respawns by hand.
  void kill_for_policy(int worker, bool respawn);
  std::string worker_name(int worker) const;
  bool auto_respawn() const noexcept;
  void check_shutdown();  // the subscriber became idle

  class Impl;

 private:
  explicit ProcessSupervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
