// The Appose task router: a queue of Appose tasks dispatched to the workers of a
// ProcessSupervisor it owns and subscribes to, with retries of tasks whose worker
// died, deadlines, cancel escalation and exactly one terminal outcome per task.
// Used where Appose tasks are routed (`tessera-broker --appose`); the tile path
// uses the ProcessSupervisor alone. Thread-safe; see docs/design/broker.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/json.hpp>

#include <tessera/appose.hpp>
#include <tessera/process_supervisor.hpp>
#include <tessera/result.hpp>

namespace tessera {

// A worker process plus the task policy the router applies to the tasks it runs
// (the router's knobs; the lifecycle has none of these).
struct ApposeWorkerSpec : WorkerSpec {
  int max_task_retries = 1;                      // re-runs of a task whose worker died
  std::chrono::milliseconds cancel_grace{1'000}; // CANCEL, then kill + respawn after this
  std::chrono::milliseconds task_deadline{0};    // 0 = none; counted from first dispatch
};

struct RouterOptions : ProcessOptions {
  std::chrono::milliseconds shutdown_grace{5'000};  // in-flight tasks may finish this long
};

struct RouterStats : ProcessStats {
  std::uint64_t submitted = 0, completed = 0, failed = 0, canceled = 0, retried = 0;
  std::uint64_t dropped_responses = 0;    // late / duplicate / contradictory (state machine)
  std::uint64_t deadline_kills = 0, cancel_kills = 0;
  int tasks_in_flight = 0, tasks_queued = 0;
};

// Receives LAUNCH, UPDATEs and exactly one terminal response for a task (its
// `task` field is the id returned by submit()). Runs on the supervisor thread:
// it must not block and must not call add_worker()/respawn()/shutdown().
using TaskCallback = std::function<void(const appose::Response&)>;

class ApposeRouter {
 public:
  static Result<std::unique_ptr<ApposeRouter>> create(RouterOptions options = {});
  ~ApposeRouter();  // shutdown()
  ApposeRouter(const ApposeRouter&) = delete;
  ApposeRouter& operator=(const ApposeRouter&) = delete;

  // ProcessSupervisor::add_worker(), with the worker's task policy registered first.
  Result<int> add_worker(ApposeWorkerSpec spec);
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
  // Lifecycle operations (see ProcessSupervisor); remove_worker() also fails the
  // queued tasks pinned to the worker.
  Result<void> respawn(int worker);
  Result<void> remove_worker(int worker);
  void set_event_handler(std::function<void(const WorkerEvent&)> handler);
  Result<void> kill_worker(int worker, int sig);
  int worker_pid(int worker) const;
  RouterStats stats() const;
  LoopBackend backend() const noexcept;
  // Stops admitting work, lets in-flight tasks finish (shutdown_grace), cancels the
  // rest, reports each, then stops the workers (ProcessSupervisor::shutdown()). Idempotent.
  void shutdown();

  class Impl;

 private:
  explicit ApposeRouter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
