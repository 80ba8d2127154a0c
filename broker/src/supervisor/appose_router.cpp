// ApposeRouter: the Appose task queue on top of a ProcessSupervisor it subscribes
// to. All task state lives on the supervisor's loop thread; the public API posts
// closures to it. See docs/design/broker.md.
#include <tessera/appose_router.hpp>

#include <atomic>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace tessera {

namespace json = boost::json;
namespace ap = appose;

namespace {

enum class RState : std::uint8_t { starting, ready, down, gave_up, removed };

// What the router knows of one worker: its task policy and the tasks it holds.
struct Route {
  int id = -1;
  std::string name;
  int max_task_retries = 1;
  std::chrono::milliseconds cancel_grace{1'000};
  std::chrono::milliseconds task_deadline{0};
  RState state = RState::starting;
  std::set<std::string> tasks;           // ids in flight on this worker
  std::set<std::string> retired;         // recently finished here: late lines are "dropped"
  std::deque<std::string> retired_order; // bounds `retired`
  std::uint64_t finished_here = 0;       // terminals since it last became ready

  bool runnable() const { return state != RState::gave_up && state != RState::removed; }
};

struct Task {
  std::string id;
  std::string script;
  json::object inputs;
  std::optional<std::string> queue;  // Appose `queue` ("main"), forwarded as is
  TaskCallback cb;
  int pinned = -1;
  int worker = -1;
  int attempts = 0;
  ap::TaskStateMachine sm;
  bool cancel_requested = false;
  bool timed_out = false;
  std::chrono::milliseconds deadline{0};
  EventLoop::Id deadline_timer = 0, cancel_timer = 0;
};

}  // namespace

class ApposeRouter::Impl final : public ProcessObserver {
 public:
  RouterOptions opt;
  std::unique_ptr<ProcessSupervisor> proc;

  // ---- loop-thread state ----
  std::map<int, Route> routes;
  ApposeWorkerSpec pending;  // add_worker(): the policy on_registered() files
  int last_registered = -1;
  std::unordered_map<std::string, std::unique_ptr<Task>> tasks;
  std::deque<std::string> queue;
  RouterStats st;  // the task counters; the process ones come from proc
  bool shutting_down = false;
  std::mt19937_64 rng{std::random_device{}()};
  std::atomic<bool> closing{false};  // set when shutdown starts (any thread reads)
  std::mutex id_mu;
  std::mutex add_mu;  // one add_worker() at a time: `pending` is its hand-over
  std::mt19937_64 id_rng{std::random_device{}()};

  // Task ids for callers on other threads: 32 lowercase hex digits, like uuid4().hex.
  std::string make_id() {
    std::lock_guard<std::mutex> lock(id_mu);
    return fmt::format("{:016x}{:016x}", id_rng(), id_rng());
  }

  std::string new_id() { return fmt::format("{:016x}{:016x}", rng(), rng()); }

  Route* find_route(int id) {
    auto it = routes.find(id);
    return it == routes.end() ? nullptr : &it->second;
  }

  // ---------------------------------------------------------------- lifecycle events
  void on_registered(int worker) override {
    Route r;
    r.id = worker;
    r.name = pending.name.empty() ? fmt::format("worker-{}", worker) : pending.name;
    r.max_task_retries = pending.max_task_retries;
    r.cancel_grace = pending.cancel_grace;
    r.task_deadline = pending.task_deadline;
    routes[worker] = std::move(r);
    last_registered = worker;
  }

  void on_ready(int worker) override {
    Route* r = find_route(worker);
    if (r == nullptr) return;
    r->state = RState::ready;
    r->finished_here = 0;
    dispatch_queue();
  }

  void on_response(int worker, ap::Response r) override {
    Route* w = find_route(worker);
    auto it = tasks.find(r.task);
    if (it == tasks.end() && w != nullptr && w->retired.count(r.task) != 0) {
      ++st.dropped_responses;  // late / contradictory message after the task's terminal
      spdlog::debug("[{}] {} after the terminal of task {}: dropped", w->name, ap::to_string(r.type), r.task);
      return;
    }
    if (it == tasks.end() || it->second->worker != worker) {
      ++st.unknown_task_lines;
      spdlog::warn("[{}] {} for unknown task '{}' ignored", proc->worker_name(worker), ap::to_string(r.type), r.task);
      return;
    }
    apply(*it->second, std::move(r));
  }

  bool on_died(int worker, const std::string& report) override {
    Route* w = find_route(worker);
    if (w == nullptr) return false;
    const bool was_ready = w->state == RState::ready;
    w->state = RState::down;
    // Every task it held gets exactly one outcome.
    auto held = std::move(w->tasks);
    w->tasks.clear();
    const bool did_work = !held.empty() || (was_ready && w->finished_here != 0);
    for (const auto& tid : held) {
      auto it = tasks.find(tid);
      if (it != tasks.end()) task_lost(*it->second, *w, report);
    }
    return did_work;
  }

  void on_unavailable(int worker, bool removed) override {
    if (Route* w = find_route(worker)) w->state = removed ? RState::removed : RState::gave_up;
    fail_unrunnable_queued();
  }

  void on_settled() override { dispatch_queue(); }

  void on_shutdown() override {
    shutting_down = true;
    // relaxed: a hint for submit() on other threads; the loop re-checks shutting_down.
    closing.store(true, std::memory_order_relaxed);
    spdlog::info("router: shutting down ({} tasks in flight, {} queued)", tasks.size() - queue.size(), queue.size());
    auto queued = std::move(queue);
    queue.clear();
    for (const auto& id : queued) {
      auto it = tasks.find(id);
      if (it == tasks.end()) continue;
      ap::Response r;
      r.type = ap::ResponseType::cancelation;
      apply(*it->second, std::move(r));
    }
    if (!tasks.empty()) {
      auto timer = proc->loop().add_timer(opt.shutdown_grace, [this] {
        std::vector<std::string> ids;
        for (auto& [id, t] : tasks) ids.push_back(id);
        for (const auto& id : ids) cancel(id);
      });
      (void)timer;
    }
  }

  bool idle() const override { return tasks.empty(); }

  // ---------------------------------------------------------------- tasks
  void task_lost(Task& t, Route& w, const std::string& report) {
    w.tasks.erase(t.id);
    t.worker = -1;
    ap::Response r;
    r.task = t.id;
    if (t.cancel_requested) {
      r.type = ap::ResponseType::cancelation;
    } else if (t.timed_out) {
      r.type = ap::ResponseType::failure;
      r.error = fmt::format("task deadline of {} ms exceeded; {}", t.deadline.count(), report);
    } else if (t.attempts < w.max_task_retries && !shutting_down) {
      ++t.attempts;
      ++st.retried;
      spdlog::info("task {}: retry {} of {} after {}", t.id, t.attempts, w.max_task_retries, report);
      queue.push_front(t.id);
      return;
    } else {
      r.type = ap::ResponseType::failure;
      r.error = report;
    }
    apply(t, std::move(r));
  }

  // The only way a response reaches a task's callback: enforces the state machine.
  void apply(Task& t, ap::Response r) {
    r.task = t.id;
    const ap::Verdict v = t.sm.on_response(r.type);
    if (ap::is_drop(v)) {
      ++st.dropped_responses;
      spdlog::debug("task {}: {} dropped ({})", t.id, ap::to_string(r.type), ap::to_string(v));
      return;
    }
    if (v == ap::Verdict::forward_after_launch) {
      ap::Response launch;
      launch.task = t.id;
      launch.type = ap::ResponseType::launch;
      if (t.cb) t.cb(launch);
    }
    if (!ap::is_terminal(r.type)) {
      if (t.cb) t.cb(r);
      return;
    }
    // Terminal: retire the task before the callback (which may submit more work).
    if (t.deadline_timer != 0) proc->loop().cancel(t.deadline_timer);
    if (t.cancel_timer != 0) proc->loop().cancel(t.cancel_timer);
    if (t.worker >= 0) {
      if (Route* w = find_route(t.worker)) {
        w->tasks.erase(t.id);
        ++w->finished_here;
        w->retired.insert(t.id);
        w->retired_order.push_back(t.id);
        if (w->retired_order.size() > 4096) {
          w->retired.erase(w->retired_order.front());
          w->retired_order.pop_front();
        }
      }
    }
    switch (r.type) {
      case ap::ResponseType::completion: ++st.completed; break;
      case ap::ResponseType::failure: ++st.failed; break;
      default: ++st.canceled; break;
    }
    auto owned = std::move(tasks.at(t.id));
    tasks.erase(owned->id);
    if (owned->cb) owned->cb(r);
    proc->check_shutdown();
  }

  Route* pick_worker(const Task& t) {
    if (t.pinned >= 0) {
      Route* w = find_route(t.pinned);
      return (w != nullptr && w->state == RState::ready) ? w : nullptr;
    }
    Route* best = nullptr;
    for (auto& [id, w] : routes) {
      if (w.state != RState::ready) continue;
      if (best == nullptr || w.tasks.size() < best->tasks.size()) best = &w;
    }
    return best;
  }

  void dispatch_queue() {
    if (shutting_down) return;
    for (auto it = queue.begin(); it != queue.end();) {
      auto ti = tasks.find(*it);
      if (ti == tasks.end()) {
        it = queue.erase(it);
        continue;
      }
      Task& t = *ti->second;
      Route* w = pick_worker(t);
      if (w == nullptr) {
        ++it;
        continue;
      }
      it = queue.erase(it);
      send_task(*w, t);
    }
  }

  void send_task(Route& w, Task& t) {
    t.worker = w.id;
    w.tasks.insert(t.id);
    if (t.deadline_timer == 0 && w.task_deadline.count() > 0) {
      t.deadline = w.task_deadline;
      const std::string id = t.id;
      auto timer = proc->loop().add_timer(t.deadline, [this, id] { on_deadline(id); });
      if (timer) t.deadline_timer = *timer;
    }
    ap::Request r;
    r.task = t.id;
    r.script = t.script;
    r.inputs = t.inputs;
    r.queue = t.queue;
    proc->send(w.id, ap::encode(r));
  }

  void on_deadline(const std::string& id) {
    auto it = tasks.find(id);
    if (it == tasks.end()) return;
    Task& t = *it->second;
    t.deadline_timer = 0;
    t.timed_out = true;
    ++st.deadline_kills;
    Route* w = t.worker >= 0 ? find_route(t.worker) : nullptr;
    if (w == nullptr) {
      ap::Response r;
      r.type = ap::ResponseType::failure;
      r.error = fmt::format("task deadline of {} ms exceeded while queued", t.deadline.count());
      std::erase(queue, id);
      apply(t, std::move(r));
      return;
    }
    spdlog::warn("task {}: deadline of {} ms exceeded on {}: killing the worker", id, t.deadline.count(), w->name);
    proc->kill_for_policy(w->id, false);
  }

  void fail_unrunnable_queued() {
    for (auto it = queue.begin(); it != queue.end();) {
      auto ti = tasks.find(*it);
      if (ti == tasks.end()) {
        it = queue.erase(it);
        continue;
      }
      Task& t = *ti->second;
      bool runnable = false;
      for (auto& [id, w] : routes) {
        if (t.pinned >= 0 && id != t.pinned) continue;
        if (w.runnable()) runnable = true;
      }
      if (runnable) {
        ++it;
        continue;
      }
      it = queue.erase(it);
      ap::Response r;
      r.type = ap::ResponseType::failure;
      r.error = "no worker can run this task: every candidate gave up";
      apply(t, std::move(r));
    }
  }

  Result<std::string> submit(int worker, std::string script, json::object inputs, TaskCallback cb,
                             std::string id, std::optional<std::string> appose_queue = std::nullopt) {
    if (shutting_down) return fail(Errc::closed, "supervisor is shutting down");
    if (worker >= 0) {
      Route* w = find_route(worker);
      if (w == nullptr || w->state == RState::removed) return fail(Errc::not_found, fmt::format("no worker {}", worker));
      if (w->state == RState::gave_up) return fail(Errc::unavailable, fmt::format("{} gave up", w->name));
    } else {
      bool any = false;
      for (auto& [wid, w] : routes) any = any || w.runnable();
      if (!any) return fail(Errc::unavailable, "no workers");
    }
    auto t = std::make_unique<Task>();
    t->id = id.empty() ? new_id() : std::move(id);
    t->script = std::move(script);
    t->inputs = std::move(inputs);
    t->queue = std::move(appose_queue);
    t->cb = std::move(cb);
    t->pinned = worker;
    const std::string tid = t->id;
    tasks.emplace(tid, std::move(t));
    ++st.submitted;
    queue.push_back(tid);
    dispatch_queue();
    return tid;
  }

  void cancel(const std::string& id) {
    auto it = tasks.find(id);
    if (it == tasks.end()) return;
    Task& t = *it->second;
    if (t.worker < 0) {
      std::erase(queue, id);
      ap::Response r;
      r.type = ap::ResponseType::cancelation;
      apply(t, std::move(r));
      return;
    }
    if (t.cancel_requested) return;
    t.cancel_requested = true;
    Route* w = find_route(t.worker);
    if (w == nullptr) return;
    ap::Request r;
    r.task = id;
    r.type = ap::RequestType::cancel;
    proc->send(w->id, ap::encode(r));
    auto timer = proc->loop().add_timer(w->cancel_grace, [this, id] {
      auto ti = tasks.find(id);
      if (ti == tasks.end()) return;
      ti->second->cancel_timer = 0;
      Route* wp = ti->second->worker >= 0 ? find_route(ti->second->worker) : nullptr;
      if (wp == nullptr) return;
      ++st.cancel_kills;
      spdlog::warn("task {}: not canceled within {} ms: killing {}", id, wp->cancel_grace.count(), wp->name);
      proc->kill_for_policy(wp->id, proc->auto_respawn());
    });
    if (timer) t.cancel_timer = *timer;
  }

};

// ---------------------------------------------------------------------------------
// Public API

ApposeRouter::ApposeRouter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ApposeRouter>> ApposeRouter::create(RouterOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->opt = options;
  auto proc = ProcessSupervisor::create(options);
  if (!proc) return fail(proc.error());
  impl->proc = std::move(*proc);
  impl->proc->subscribe(impl.get());
  return std::unique_ptr<ApposeRouter>(new ApposeRouter(std::move(impl)));
}

ApposeRouter::~ApposeRouter() { shutdown(); }

LoopBackend ApposeRouter::backend() const noexcept { return impl_->proc->backend(); }

Result<int> ApposeRouter::add_worker(ApposeWorkerSpec spec) {
  Impl& im = *impl_;
  if (im.proc->on_loop_thread()) {
    return fail(Errc::invalid_argument, "add_worker() must not be called from a supervisor callback");
  }
  std::lock_guard<std::mutex> lock(im.add_mu);
  im.proc->run_on_loop([&] {
    im.pending = spec;
    im.last_registered = -1;
  });
  auto r = im.proc->add_worker(static_cast<WorkerSpec>(spec));
  if (!r) {
    // It never became a worker anyone can name: nothing may be routed to it.
    im.proc->run_on_loop([&] {
      if (Route* w = im.find_route(im.last_registered)) w->state = RState::removed;
    });
  }
  return r;
}

Result<std::string> ApposeRouter::submit(int worker, std::string script, json::object inputs, TaskCallback cb) {
  return submit(worker, std::move(script), std::move(inputs), std::nullopt, std::move(cb));
}

Result<std::string> ApposeRouter::submit(int worker, std::string script, json::object inputs,
                                         std::optional<std::string> queue, TaskCallback cb) {
  Impl& im = *impl_;
  if (im.proc->on_loop_thread()) {
    return im.submit(worker, std::move(script), std::move(inputs), std::move(cb), {}, std::move(queue));
  }
  // Fire and forget: one hop to the loop thread instead of a blocking round trip.
  // Problems found there (no such worker, ...) arrive as LAUNCH + FAILURE.
  // relaxed: a hint only; the loop thread re-checks under its own state.
  if (im.closing.load(std::memory_order_relaxed)) return fail(Errc::closed, "supervisor is shutting down");
  std::string id = im.make_id();
  const bool posted = im.proc->post([&im, worker, id, script = std::move(script), inputs = std::move(inputs),
                                     queue = std::move(queue), cb = std::move(cb)]() mutable {
    auto r = im.submit(worker, std::move(script), std::move(inputs), cb, id, std::move(queue));
    if (!r && cb) {
      ap::Response l;
      l.task = id;
      l.type = ap::ResponseType::launch;
      cb(l);
      ap::Response f;
      f.task = id;
      f.type = ap::ResponseType::failure;
      f.error = r.error().message;
      cb(f);
    }
  });
  if (!posted) return fail(Errc::closed, "supervisor is shut down");
  return id;
}

void ApposeRouter::cancel(const std::string& task) {
  impl_->proc->run_on_loop([&] { impl_->cancel(task); });
}

Result<void> ApposeRouter::respawn(int worker) { return impl_->proc->respawn(worker); }
Result<void> ApposeRouter::remove_worker(int worker) {
  Impl& im = *impl_;
  Result<void> r;
  im.proc->run_on_loop([&] {
    // Stopping: it finishes what it holds but is sent nothing new.
    if (Route* w = im.find_route(worker); w != nullptr && w->state == RState::ready) w->state = RState::down;
    r = im.proc->remove_worker(worker);
  });
  return r;
}
void ApposeRouter::set_event_handler(std::function<void(const WorkerEvent&)> handler) {
  impl_->proc->set_event_handler(std::move(handler));
}
Result<void> ApposeRouter::kill_worker(int worker, int sig) { return impl_->proc->kill_worker(worker, sig); }
int ApposeRouter::worker_pid(int worker) const { return impl_->proc->worker_pid(worker); }

RouterStats ApposeRouter::stats() const {
  const ProcessStats p = impl_->proc->stats();
  RouterStats s;
  impl_->proc->run_on_loop([&] {
    s = impl_->st;
    s.tasks_queued = static_cast<int>(impl_->queue.size());
    s.tasks_in_flight = static_cast<int>(impl_->tasks.size()) - s.tasks_queued;
  });
  const std::uint64_t unknown = s.unknown_task_lines;
  static_cast<ProcessStats&>(s) = p;
  s.unknown_task_lines += unknown;
  return s;
}

void ApposeRouter::shutdown() { impl_->proc->shutdown(); }

}  // namespace tessera
