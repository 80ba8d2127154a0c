// ProcessSupervisor: the worker process lifecycle. All state lives on the
// event-loop thread; the public API posts closures to it. See docs/design/broker.md.
#include <tessera/process_supervisor.hpp>

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "process.hpp"

namespace tessera {

namespace ap = appose;
using namespace std::chrono_literals;

std::string describe_exit(const WorkerEvent& e) {
  std::string s = e.signal != 0 ? "killed by signal " + std::to_string(e.signal)
                                : "exited with code " + std::to_string(e.exit_code);
  if (!e.message.empty()) s += " (" + e.message + ")";
  if (!e.stderr_tail.empty()) {
    s += "; last stderr lines:";
    for (const auto& l : e.stderr_tail) s += "\n  " + l;
  }
  return s;
}

const char* to_string(WorkerEventKind k) noexcept {
  switch (k) {
    case WorkerEventKind::ready: return "ready";
    case WorkerEventKind::died: return "died";
    case WorkerEventKind::respawned: return "respawned";
    case WorkerEventKind::gave_up: return "gave_up";
  }
  return "?";
}

namespace {

enum class WState : std::uint8_t { starting, ready, dead, stopping, gave_up, removed };

struct Worker {
  int id = -1;
  WorkerSpec spec;
  std::string name;
  detail::ChildProcess proc;
  WState state = WState::dead;
  EventLoop::Id out_watch = 0, err_watch = 0, pid_watch = 0;
  EventLoop::Id ready_timer = 0, flush_timer = 0, respawn_timer = 0, kill_timer = 0;
  ap::LineFramer out_framer, err_framer;
  std::deque<std::string> err_tail;
  std::string outbox;           // request bytes the pipe did not take yet
  std::size_t init_step = 0;
  std::string init_task;
  std::string init_error;
  int start_failures = 0;
  bool first_start = true;      // add_worker(): a failure is returned, never retried
  bool ever_ready = false;
  bool respawn_requested = false;
  bool removing = false;            // remove_worker(): stopped for good once it exits
  bool killed_by_us = false;        // policy kill / stop: not a crash of its own
  std::chrono::steady_clock::time_point ready_at{};
  std::vector<std::function<void(Result<void>)>> waiters;

  bool alive() const { return state == WState::starting || state == WState::ready || state == WState::stopping; }
};

std::string join_tail(const std::deque<std::string>& tail) {
  std::string s;
  for (const auto& l : tail) {
    s += l;
    s += '\n';
  }
  return s;
}

}  // namespace

class ProcessSupervisor::Impl {
 public:
  ProcessOptions opt;
  std::unique_ptr<EventLoop> loop;
  std::thread thread;
  std::thread::id loop_tid;
  mutable std::shared_mutex api_mu;  // shared: API calls in flight; exclusive: final stop
  bool finished = false;             // guarded by api_mu
  std::mutex handler_mu;
  std::function<void(const WorkerEvent&)> handler;

  // ---- loop-thread state ----
  std::map<int, std::unique_ptr<Worker>> workers;
  int next_worker = 0;
  ProcessObserver* observer = nullptr;  // the task router, if any
  ProcessStats st;
  bool shutting_down = false;
  bool stopping_workers = false;
  std::function<void()> shutdown_done;
  std::mt19937_64 rng{std::random_device{}()};
  // Runs f on the loop thread and returns its result.
  template <class F>
  auto call(F&& f) const -> decltype(f()) {
    using R = decltype(f());
    if (std::this_thread::get_id() == loop_tid) return f();
    std::shared_lock<std::shared_mutex> lock(api_mu);
    if (finished) return f();  // loop thread gone: nothing runs concurrently with us
    std::promise<R> p;
    auto fut = p.get_future();
    loop->post([&] {
      if constexpr (std::is_void_v<R>) {
        f();
        p.set_value();
      } else {
        p.set_value(f());
      }
    });
    return fut.get();
  }

  std::string new_id() {
    return fmt::format("{:016x}{:016x}", rng(), rng());
  }

  void emit(WorkerEvent ev) {
    std::function<void(const WorkerEvent&)> h;
    {
      std::lock_guard<std::mutex> lock(handler_mu);
      h = handler;
    }
    if (h) h(ev);
  }

  Worker* find_worker(int id) {
    auto it = workers.find(id);
    return it == workers.end() ? nullptr : it->second.get();
  }

  // ---------------------------------------------------------------- writing
  void write_line(Worker& w, const std::string& line) {
    if (w.proc.stdin_fd < 0) return;
    if (w.outbox.empty()) {
      const ssize_t n = ::write(w.proc.stdin_fd, line.data(), line.size());
      if (n == static_cast<ssize_t>(line.size())) return;
      if (n < 0 && errno == EPIPE) {
        consume_sigpipe();
        return;  // the pidfd reports the death
      }
      w.outbox.append(line, n > 0 ? static_cast<std::size_t>(n) : 0, std::string::npos);
    } else {
      w.outbox.append(line);
    }
    if (w.outbox.size() > (64u << 20)) {
      spdlog::error("[{}] does not read its stdin ({} bytes queued): killing it", w.name, w.outbox.size());
      kill_group(w);
      return;
    }
    schedule_flush(w);
  }

  void schedule_flush(Worker& w) {
    if (w.flush_timer != 0) return;
    const int id = w.id;
    auto t = loop->add_timer(1ms, [this, id] {
      Worker* wp = find_worker(id);
      if (wp == nullptr) return;
      wp->flush_timer = 0;
      if (wp->proc.stdin_fd < 0) {
        wp->outbox.clear();
        return;
      }
      const ssize_t n = ::write(wp->proc.stdin_fd, wp->outbox.data(), wp->outbox.size());
      if (n > 0) wp->outbox.erase(0, static_cast<std::size_t>(n));
      if (n < 0 && errno == EPIPE) {
        consume_sigpipe();
        wp->outbox.clear();
      }
      if (!wp->outbox.empty()) schedule_flush(*wp);
    });
    if (t) w.flush_timer = *t;
  }

  static void consume_sigpipe() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    timespec zero{0, 0};
    ::sigtimedwait(&s, nullptr, &zero);
  }

  void kill_group(Worker& w, int sig = SIGKILL) {
    if (w.proc.pid <= 0 || !w.alive()) return;
    w.killed_by_us = true;
    if (::killpg(w.proc.pid, sig) < 0) detail::pidfd_send(w.proc.pidfd, sig);
  }

  // ---------------------------------------------------------------- workers
  void start_worker(Worker& w) {
    w.respawn_timer = 0;
    w.respawn_requested = false;
    w.killed_by_us = false;
    auto c = detail::spawn_process({w.spec.argv, w.spec.env, w.spec.env_allow, w.spec.pass_fds});
    if (!c) {
      on_start_failure(w, c.error().message);
      return;
    }
    w.proc = *c;
    w.state = WState::starting;
    w.out_framer = ap::LineFramer(opt.max_line);
    w.err_framer = ap::LineFramer(opt.max_line);
    w.err_tail.clear();
    w.outbox.clear();
    w.init_error.clear();
    w.init_task.clear();
    const int id = w.id;
    auto o = loop->watch_readable(w.proc.stdout_fd, [this, id] { on_readable(id, false); });
    auto e = loop->watch_readable(w.proc.stderr_fd, [this, id] { on_readable(id, true); });
    auto p = loop->watch_readable(w.proc.pidfd, [this, id] { on_exit(id); });
    if (!o || !e || !p) {
      spdlog::error("[{}] cannot watch its pipes: killing it", w.name);
      if (o) w.out_watch = *o;
      if (e) w.err_watch = *e;
      kill_group(w);
      reap_now(w);
      return;
    }
    w.out_watch = *o;
    w.err_watch = *e;
    w.pid_watch = *p;
    spdlog::info("[{}] started, pid {}", w.name, w.proc.pid);
    auto t = loop->add_timer(w.spec.ready_timeout, [this, id] {
      Worker* wp = find_worker(id);
      if (wp == nullptr || wp->state != WState::starting) return;
      wp->ready_timer = 0;
      wp->init_error = fmt::format("not ready within {} ms (init step {} of {})", wp->spec.ready_timeout.count(),
                                   wp->init_step + 1, wp->spec.init_scripts.size());
      kill_group(*wp);
    });
    if (t) w.ready_timer = *t;
    w.init_step = 0;
    next_init_step(w);
  }

  // Used only when watches could not be set up: blocks on the (killed) child.
  void reap_now(Worker& w) {
    (void)detail::reap_process(w.proc, true);
    cancel_watches(w);
    w.proc.close_all();
    w.state = WState::dead;
    on_start_failure(w, "cannot watch worker pipes");
  }

  void next_init_step(Worker& w) {
    if (w.init_step < w.spec.init_scripts.size()) {
      w.init_task = fmt::format("init-{}-{}-{}", w.id, w.init_step, new_id());
      ap::Request r;
      r.task = w.init_task;
      r.script = w.spec.init_scripts[w.init_step];
      write_line(w, ap::encode(r));
      return;
    }
    w.init_task.clear();
    if (w.ready_timer != 0) loop->cancel(w.ready_timer);
    w.ready_timer = 0;
    w.state = WState::ready;
    w.ready_at = std::chrono::steady_clock::now();
    const bool again = w.ever_ready;
    w.ever_ready = true;
    w.first_start = false;
    spdlog::info("[{}] ready (pid {})", w.name, w.proc.pid);
    WorkerEvent ev;
    ev.kind = again ? WorkerEventKind::respawned : WorkerEventKind::ready;
    ev.worker = w.id;
    ev.pid = w.proc.pid;
    emit(ev);
    auto waiters = std::move(w.waiters);
    w.waiters.clear();
    for (auto& cb : waiters) cb({});
    if (shutting_down) {
      stop_worker(w);
      return;
    }
    if (observer != nullptr) observer->on_ready(w.id);
  }

  void on_start_failure(Worker& w, const std::string& why) {
    ++w.start_failures;
    w.state = WState::dead;
    spdlog::error("[{}] failed to start ({} of {}): {}", w.name, w.start_failures, w.spec.max_start_failures, why);
    if (w.first_start) {
      w.state = WState::removed;
      fail_waiters(w, fail(Errc::worker_failed, why));
      return;
    }
    if (shutting_down) {
      fail_waiters(w, fail(Errc::closed, "supervisor is shutting down"));
      return;
    }
    if (w.start_failures >= w.spec.max_start_failures) {
      w.state = WState::gave_up;
      const std::string msg =
          fmt::format("{} gave up after {} consecutive start failures; last: {}", w.name, w.start_failures, why);
      WorkerEvent ev;
      ev.kind = WorkerEventKind::gave_up;
      ev.worker = w.id;
      ev.message = msg;
      ev.stderr_tail.assign(w.err_tail.begin(), w.err_tail.end());
      emit(ev);
      fail_waiters(w, fail(Errc::worker_failed, msg));
      if (observer != nullptr) observer->on_unavailable(w.id, false);
      return;
    }
    if (opt.auto_respawn || !w.waiters.empty()) {
      schedule_respawn(w);
    } else {
      fail_waiters(w, fail(Errc::worker_failed, why));
    }
  }

  void fail_waiters(Worker& w, Result<void> r) {
    auto waiters = std::move(w.waiters);
    w.waiters.clear();
    for (auto& cb : waiters) cb(r);
  }

  void schedule_respawn(Worker& w) {
    if (w.respawn_timer != 0) return;
    auto delay = opt.respawn_backoff;
    for (int i = 1; i < w.start_failures && delay < opt.respawn_backoff_max; ++i) delay *= 2;
    delay = std::min(delay, opt.respawn_backoff_max);
    const int id = w.id;
    spdlog::info("[{}] respawning in {} ms", w.name, delay.count());
    auto t = loop->add_timer(delay, [this, id] {
      Worker* wp = find_worker(id);
      if (wp == nullptr || wp->alive() || shutting_down) return;
      wp->respawn_timer = 0;
      ++st.respawns;
      start_worker(*wp);
    });
    if (t) w.respawn_timer = *t;
  }

  void cancel_watches(Worker& w) {
    for (EventLoop::Id* id : {&w.out_watch, &w.err_watch, &w.pid_watch}) {
      if (*id != 0) loop->cancel(*id);
      *id = 0;
    }
  }

  void on_readable(int id, bool is_err) {
    Worker* w = find_worker(id);
    if (w == nullptr) return;
    drain(*w, is_err);
  }

  // Reads until EAGAIN or EOF and handles every complete line.
  void drain(Worker& w, bool is_err) {
    const int fd = is_err ? w.proc.stderr_fd : w.proc.stdout_fd;
    if (fd < 0) return;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        feed(w, is_err, std::string_view(buf, static_cast<std::size_t>(n)));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) {  // EOF: stop watching (level-triggered would spin)
        EventLoop::Id& watch = is_err ? w.err_watch : w.out_watch;
        if (watch != 0) loop->cancel(watch);
        watch = 0;
        auto rest = is_err ? w.err_framer.finish() : w.out_framer.finish();
        if (rest) handle_line(w, is_err, *rest);
      }
      return;
    }
  }

  void feed(Worker& w, bool is_err, std::string_view bytes) {
    const int id = w.id;
    auto& framer = is_err ? w.err_framer : w.out_framer;
    framer.feed(
        bytes,
        [&](std::string_view line) {
          if (find_worker(id) != nullptr) handle_line(w, is_err, line);
        },
        [&](std::size_t n) {
          ++st.overlong_lines;
          spdlog::warn("[{}] {} line of {} bytes exceeds the {} byte limit: discarded", w.name,
                       is_err ? "stderr" : "stdout", n, opt.max_line);
        });
  }

  void handle_line(Worker& w, bool is_err, std::string_view line) {
    if (is_err) {
      ++st.stderr_lines;
      spdlog::info("[{} pid {}] {}", w.name, w.proc.pid, line);
      w.err_tail.emplace_back(line);
      while (w.err_tail.size() > opt.stderr_tail_lines) w.err_tail.pop_front();
      return;
    }
    auto parsed = ap::parse_response(line);
    if (!parsed) {
      if (parsed.error().code == ap::ParseErrc::blank) {
        ++st.blank_lines;
      } else {
        ++st.bad_lines;
        spdlog::warn("[{}] ignored stdout line ({}): {}", w.name, ap::to_string(parsed.error().code),
                     parsed.error().message);
      }
      return;
    }
    ap::Response& r = parsed.value();
    if (!w.init_task.empty() && r.task == w.init_task) {
      on_init_response(w, r);
      return;
    }
    if (observer != nullptr) {
      observer->on_response(w.id, std::move(r));
      return;
    }
    ++st.unknown_task_lines;
    spdlog::warn("[{}] {} for unknown task '{}' ignored", w.name, ap::to_string(r.type), r.task);
  }

  void on_init_response(Worker& w, const ap::Response& r) {
    if (w.state != WState::starting) return;
    if (r.type == ap::ResponseType::completion) {
      ++w.init_step;
      next_init_step(w);
    } else if (ap::is_terminal(r.type)) {
      w.init_error = fmt::format("init script {} of {} failed: {}", w.init_step + 1, w.spec.init_scripts.size(),
                                 r.error.value_or(ap::to_string(r.type)));
      kill_group(w);
    }
  }

  void on_exit(int id) {
    Worker* wp = find_worker(id);
    if (wp == nullptr) return;
    Worker& w = *wp;
    // Drain the pipes before declaring the death: lines written just before exit count.
    drain(w, false);
    drain(w, true);
    if (auto rest = w.out_framer.finish()) handle_line(w, false, *rest);
    if (auto rest = w.err_framer.finish()) handle_line(w, true, *rest);
    cancel_watches(w);
    auto status = detail::reap_process(w.proc, false);
    if (!status && status.error().code == Errc::not_ready) return;  // spurious wake-up
    detail::ExitStatus es;
    if (status) es = *status;
    for (EventLoop::Id* t : {&w.ready_timer, &w.flush_timer, &w.kill_timer}) {
      if (*t != 0) loop->cancel(*t);
      *t = 0;
    }
    const pid_t pid = w.proc.pid;
    w.proc.close_all();
    w.proc.pid = -1;
    w.outbox.clear();
    const WState was = w.state;
    w.state = WState::dead;
    ++st.worker_deaths;
    const std::string tail = join_tail(w.err_tail);
    const std::string why = fmt::format("{} (pid {}) died: {}", w.name, pid, es.describe());
    if (was == WState::stopping) spdlog::info("{}", why);
    else spdlog::warn("{}", why);
    WorkerEvent ev;
    ev.kind = WorkerEventKind::died;
    ev.worker = w.id;
    ev.pid = pid;
    ev.exit_code = es.exited ? es.code : -1;
    ev.signal = es.exited ? 0 : es.signal;
    ev.stderr_tail.assign(w.err_tail.begin(), w.err_tail.end());
    emit(ev);
    const std::string report = tail.empty() ? why : why + "; last stderr lines:\n" + tail;
    // The subscriber gives every task it held exactly one outcome.
    const bool did_work = observer != nullptr && observer->on_died(w.id, report);
    if (w.removing) {  // remove_worker(): never respawned; work pinned to it fails
      w.state = WState::removed;
      fail_waiters(w, fail(Errc::closed, fmt::format("{} was removed", w.name)));
      if (observer != nullptr) {
        observer->on_unavailable(w.id, true);
        observer->on_settled();
      }
      check_shutdown();
      return;
    }
    const bool short_lived = was == WState::ready && !w.respawn_requested && !w.killed_by_us && !did_work &&
                             std::chrono::steady_clock::now() - w.ready_at < opt.min_uptime;
    if (was == WState::ready && !short_lived) w.start_failures = 0;  // it ran fine for a while
    if (was == WState::starting || (short_lived && !shutting_down)) {
      on_start_failure(w, w.init_error.empty() ? report : w.init_error + (tail.empty() ? "" : "; last stderr lines:\n" + tail));
    } else if (shutting_down) {
      // expected
    } else if (opt.auto_respawn || w.respawn_requested || !w.waiters.empty()) {
      schedule_respawn(w);
    }
    if (observer != nullptr) observer->on_settled();
    check_shutdown();
  }

  // ---------------------------------------------------------------- shutdown
  void begin_shutdown(std::function<void()> done) {
    if (shutting_down) {
      auto prev = std::move(shutdown_done);
      shutdown_done = [prev, done] {
        if (prev) prev();
        done();
      };
      check_shutdown();
      return;
    }
    shutting_down = true;
    shutdown_done = std::move(done);
    if (observer != nullptr) observer->on_shutdown();
    check_shutdown();
  }

  void check_shutdown() {
    if (!shutting_down) return;
    if (observer != nullptr && !observer->idle()) return;
    if (!stopping_workers) {
      stopping_workers = true;
      for (auto& [id, w] : workers) {
        if (w->respawn_timer != 0) loop->cancel(w->respawn_timer);
        w->respawn_timer = 0;
        fail_waiters(*w, fail(Errc::closed, "supervisor is shutting down"));
        if (w->alive()) stop_worker(*w);
      }
    }
    for (auto& [id, w] : workers) {
      if (w->alive()) return;
    }
    if (shutdown_done) {
      auto done = std::move(shutdown_done);
      shutdown_done = nullptr;
      done();
    }
  }

  void stop_worker(Worker& w) {
    if (w.state == WState::stopping) return;
    w.state = WState::stopping;
    if (w.proc.stdin_fd >= 0) ::close(w.proc.stdin_fd);  // EOF: graceful exit
    w.proc.stdin_fd = -1;
    const int id = w.id;
    auto t = loop->add_timer(opt.stop_grace, [this, id] {
      Worker* wp = find_worker(id);
      if (wp == nullptr || !wp->alive()) return;
      wp->kill_timer = 0;
      spdlog::warn("[{}] did not exit within {} ms of stdin EOF: killing it", wp->name, opt.stop_grace.count());
      kill_group(*wp);
    });
    if (t) w.kill_timer = *t;
  }
};

// ---------------------------------------------------------------------------------
// Public API

ProcessSupervisor::ProcessSupervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ProcessSupervisor>> ProcessSupervisor::create(ProcessOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->opt = options;
  auto loop = EventLoop::create(options.loop);
  if (!loop) return fail(loop.error());
  impl->loop = std::move(*loop);
  impl->st.backend = impl->loop->backend();
  Impl* raw = impl.get();
  std::promise<void> started;
  auto fut = started.get_future();
  impl->thread = std::thread([raw, &started] {
    // Writes to a dead worker's stdin must give EPIPE, not kill the process.
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
    raw->loop_tid = std::this_thread::get_id();
    started.set_value();
    if (auto r = raw->loop->run(); !r) spdlog::critical("supervisor event loop failed: {}", r.error().message);
  });
  fut.wait();
  return std::unique_ptr<ProcessSupervisor>(new ProcessSupervisor(std::move(impl)));
}

ProcessSupervisor::~ProcessSupervisor() { shutdown(); }

LoopBackend ProcessSupervisor::backend() const noexcept { return impl_->loop->backend(); }

Result<int> ProcessSupervisor::add_worker(WorkerSpec spec) {
  Impl& im = *impl_;
  if (std::this_thread::get_id() == im.loop_tid) {
    return fail(Errc::invalid_argument, "add_worker() must not be called from a supervisor callback");
  }
  if (spec.argv.empty()) return fail(Errc::invalid_argument, "worker argv is empty");
  auto p = std::make_shared<std::promise<Result<int>>>();
  auto fut = p->get_future();
  im.call([&] {
    if (im.shutting_down) {
      p->set_value(fail(Errc::closed, "supervisor is shutting down"));
      return;
    }
    auto w = std::make_unique<Worker>();
    w->id = im.next_worker++;
    w->name = spec.name.empty() ? fmt::format("worker-{}", w->id) : spec.name;
    w->spec = std::move(spec);
    const int id = w->id;
    if (im.observer != nullptr) im.observer->on_registered(id);
    w->waiters.push_back([p, id](Result<void> r) {
      if (r) p->set_value(id);
      else p->set_value(fail(r.error()));
    });
    Worker& ref = *w;
    im.workers.emplace(id, std::move(w));
    im.start_worker(ref);
  });
  return fut.get();
}

Result<void> ProcessSupervisor::respawn(int worker) {
  Impl& im = *impl_;
  if (std::this_thread::get_id() == im.loop_tid) {
    return fail(Errc::invalid_argument, "respawn() must not be called from a supervisor callback");
  }
  auto p = std::make_shared<std::promise<Result<void>>>();
  auto fut = p->get_future();
  im.call([&] {
    Worker* w = im.find_worker(worker);
    if (w == nullptr || w->state == WState::removed) {
      p->set_value(fail(Errc::not_found, fmt::format("no worker {}", worker)));
      return;
    }
    if (im.shutting_down) {
      p->set_value(fail(Errc::closed, "supervisor is shutting down"));
      return;
    }
    if (w->state == WState::gave_up) {
      p->set_value(fail(Errc::worker_failed, fmt::format("{} gave up; not restarting it", w->name)));
      return;
    }
    w->waiters.push_back([p](Result<void> r) { p->set_value(std::move(r)); });
    if (w->alive()) {
      w->respawn_requested = true;
      im.kill_group(*w);
    } else if (w->respawn_timer == 0) {
      ++im.st.respawns;
      im.start_worker(*w);
    }
  });
  return fut.get();
}

Result<void> ProcessSupervisor::remove_worker(int worker) {
  Impl& im = *impl_;
  return im.call([&]() -> Result<void> {
    Worker* w = im.find_worker(worker);
    if (w == nullptr || w->state == WState::removed) return fail(Errc::not_found, fmt::format("no worker {}", worker));
    w->removing = true;
    if (w->respawn_timer != 0) im.loop->cancel(w->respawn_timer);
    w->respawn_timer = 0;
    if (w->alive()) {
      im.stop_worker(*w);  // stdin EOF: it finishes what it holds, then exits (killed after stop_grace)
    } else {
      w->state = WState::removed;
      if (im.observer != nullptr) im.observer->on_unavailable(worker, true);
    }
    return {};
  });
}

void ProcessSupervisor::set_event_handler(std::function<void(const WorkerEvent&)> handler) {
  std::lock_guard<std::mutex> lock(impl_->handler_mu);
  impl_->handler = std::move(handler);
}

Result<void> ProcessSupervisor::kill_worker(int worker, int sig) {
  return impl_->call([&]() -> Result<void> {
    Worker* w = impl_->find_worker(worker);
    if (w == nullptr || !w->alive() || w->proc.pidfd < 0) {
      return fail(Errc::not_found, fmt::format("worker {} is not running", worker));
    }
    if (detail::pidfd_send(w->proc.pidfd, sig) < 0) return fail(Error::sys("pidfd_send_signal"));
    return {};
  });
}

int ProcessSupervisor::worker_pid(int worker) const {
  return impl_->call([&] {
    Worker* w = impl_->find_worker(worker);
    return (w != nullptr && w->alive()) ? static_cast<int>(w->proc.pid) : -1;
  });
}

ProcessStats ProcessSupervisor::stats() const {
  return impl_->call([&] {
    ProcessStats s = impl_->st;
    s.workers = 0;
    s.workers_ready = 0;
    for (auto& [id, w] : impl_->workers) {
      if (w->state != WState::removed) ++s.workers;
      if (w->state == WState::ready) ++s.workers_ready;
    }
    return s;
  });
}

void ProcessSupervisor::shutdown() {
  Impl& im = *impl_;
  {
    std::shared_lock<std::shared_mutex> lock(im.api_mu);
    if (im.finished) return;
  }
  if (std::this_thread::get_id() == im.loop_tid) {
    spdlog::error("ProcessSupervisor::shutdown() called from a supervisor callback: ignored");
    return;
  }
  std::promise<void> done;
  auto fut = done.get_future();
  im.call([&] { im.begin_shutdown([&done] { done.set_value(); }); });
  fut.wait();
  std::unique_lock<std::shared_mutex> lock(im.api_mu);
  if (im.finished) return;
  im.loop->stop();
  if (im.thread.joinable()) im.thread.join();
  im.finished = true;
}

void ProcessSupervisor::subscribe(ProcessObserver* observer) {
  impl_->call([&] { impl_->observer = observer; });
}

bool ProcessSupervisor::on_loop_thread() const { return std::this_thread::get_id() == impl_->loop_tid; }

void ProcessSupervisor::run_on_loop(const std::function<void()>& f) const { impl_->call(f); }

bool ProcessSupervisor::post(std::function<void()> f) {
  std::shared_lock<std::shared_mutex> lock(impl_->api_mu);
  if (impl_->finished) return false;
  impl_->loop->post(std::move(f));
  return true;
}

EventLoop& ProcessSupervisor::loop() { return *impl_->loop; }

bool ProcessSupervisor::send(int worker, const std::string& line) {
  Worker* w = impl_->find_worker(worker);
  if (w == nullptr || !w->alive()) return false;
  impl_->write_line(*w, line);
  return true;
}

void ProcessSupervisor::kill_for_policy(int worker, bool respawn) {
  Worker* w = impl_->find_worker(worker);
  if (w == nullptr) return;
  if (respawn) w->respawn_requested = true;
  impl_->kill_group(*w);
}

std::string ProcessSupervisor::worker_name(int worker) const {
  Worker* w = impl_->find_worker(worker);
  return w == nullptr ? fmt::format("worker-{}", worker) : w->name;
}

bool ProcessSupervisor::auto_respawn() const noexcept { return impl_->opt.auto_respawn; }

void ProcessSupervisor::check_shutdown() { impl_->check_shutdown(); }

}  // namespace tessera
