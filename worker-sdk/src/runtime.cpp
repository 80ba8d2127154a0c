// Worker runtime: protocol descriptor hygiene, the Appose request loop, serve().
#include <tessera/runtime.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <tessera/appose.hpp>

namespace tessera {
namespace {

std::atomic<bool> g_signal_stop{false};
std::atomic<Worker*> g_signal_worker{nullptr};

extern "C" void on_stop_signal(int) {
  g_signal_stop.store(true, std::memory_order_relaxed);  // relaxed: a flag polled by both loops
  if (Worker* w = g_signal_worker.load(std::memory_order_relaxed)) w->request_stop();  // relaxed: set once before
}

void log_err(const std::string& s) noexcept {
  const std::string line = "tessera-worker[" + std::to_string(getpid()) + "]: " + s + "\n";
  (void)!::write(2, line.data(), line.size());
}

appose::Response resp(const std::string& task, appose::ResponseType t) {
  appose::Response r;
  r.task = task;
  r.type = t;
  return r;
}

}  // namespace

struct WorkerRuntime::State {
  RuntimeOptions opts;
  std::mutex write_mu;
  std::thread proto;
  std::atomic<bool> stop{false};
  std::atomic<bool> eof{false};
  std::string attach_error;
  int exit_code = 0;
  std::uint64_t bad_lines = 0;
};

Result<std::unique_ptr<WorkerRuntime>> WorkerRuntime::start(RuntimeOptions opts) {
  std::unique_ptr<WorkerRuntime> rt(new WorkerRuntime());
  rt->state_ = std::make_unique<State>();
  rt->state_->opts = std::move(opts);
  // The protocol belongs to the runtime: keep a private close-on-exec copy of fd 1 and point
  // fd 1 at stderr, so nothing else (printf, print(), native libraries, children) can write to it.
  rt->proto_fd_ = fcntl(1, F_DUPFD_CLOEXEC, 3);
  if (rt->proto_fd_ < 0) return fail(Error::sys("runtime: dup protocol fd"));
  if (dup2(2, 1) < 0) return fail(Error::sys("runtime: redirect fd 1 to stderr"));
  std::fflush(stdout);

  auto w = Worker::from_env(rt->state_->opts.worker);
  if (w) {
    rt->worker_ = std::move(*w);
  } else {
    rt->state_->attach_error = w.error().message;
    if (rt->state_->opts.require_arena) return fail(std::move(w).error());
    log_err("running without an arena: " + rt->state_->attach_error);
  }

  g_signal_worker.store(rt->worker_.get(), std::memory_order_relaxed);  // relaxed: read by the handler only
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  // Appose's init-script convention: run it (as a script) before reading requests, then delete it.
  if (const char* path = std::getenv("APPOSE_INIT_SCRIPT"); path != nullptr && *path != '\0') {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    ::unlink(path);
    if (rt->state_->opts.on_script) {
      auto r = rt->state_->opts.on_script(ss.str(), {});
      if (!r) return fail(Errc::worker_failed, "init script failed: " + r.error().message);
    }
  }

  WorkerRuntime* self = rt.get();
  rt->state_->proto = std::thread([self] {
    State& st = *self->state_;
    appose::LineFramer framer(1u << 20);
    auto handle_line = [&](std::string_view line) {
      auto req = appose::parse_request(line);
      if (!req) {
        if (req.error().code != appose::ParseErrc::blank) {
          ++st.bad_lines;
          log_err(std::string("ignoring request line (") + appose::to_string(req.error().code) + "): " + req.error().message);
        }
        return;
      }
      const appose::Request& rq = req.value();
      if (rq.type == appose::RequestType::cancel) {
        log_err("No such task: " + rq.task + " (scripts here finish synchronously)");
        return;
      }
      self->write_line(appose::encode(resp(rq.task, appose::ResponseType::launch)));
      appose::Response done = resp(rq.task, appose::ResponseType::completion);
      if (rq.script == "tessera.ready" || rq.script.empty()) {
        if (self->worker_ == nullptr) {
          done.type = appose::ResponseType::failure;
          done.error = "worker is not attached to a Tessera arena: " + st.attach_error;
        } else {
          boost::json::object o;
          o["pid"] = static_cast<std::int64_t>(getpid());
          o["slot"] = static_cast<std::int64_t>(self->worker_->slot());
          done.outputs = std::move(o);
        }
      } else if (rq.script == "tessera.stats") {
        boost::json::object o;
        if (self->worker_ != nullptr) {
          const auto s = self->worker_->stats();
          o["taken"] = s.taken;
          o["published"] = s.published;
          o["failed"] = s.failed;
          o["canceled"] = s.canceled;
          o["rejected"] = s.rejected;
        }
        o["bad_request_lines"] = st.bad_lines;
        done.outputs = std::move(o);
      } else if (rq.script == "tessera.stop") {
        self->request_stop();
        done.outputs = boost::json::object{};
      } else if (st.opts.on_script) {
        ScriptResult r = [&]() -> ScriptResult {
          try {
            return st.opts.on_script(rq.script, rq.inputs);
          } catch (const std::exception& e) {
            return fail(Errc::worker_failed, e.what());
          }
        }();
        if (r) {
          done.outputs = std::move(r.value());
        } else {
          done.type = appose::ResponseType::failure;
          done.error = r.error().message;
        }
      } else {
        done.type = appose::ResponseType::failure;
        done.error = "unknown script '" + rq.script + "': this worker runs tessera.ready, tessera.stats and tessera.stop";
      }
      self->write_line(appose::encode(done));
    };
    char buf[65536];
    while (!st.stop.load(std::memory_order_relaxed) && !g_signal_stop.load(std::memory_order_relaxed)) {  // relaxed: flags
      pollfd p{0, POLLIN, 0};
      const int pr = ::poll(&p, 1, 100);
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) continue;
      const ssize_t n = ::read(0, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {  // EOF: graceful shutdown
        if (auto last = framer.finish()) handle_line(*last);
        st.eof.store(true, std::memory_order_relaxed);  // relaxed: a flag
        break;
      }
      framer.feed(std::string_view(buf, static_cast<std::size_t>(n)), handle_line, [&](std::size_t dropped) {
        ++st.bad_lines;
        log_err("ignoring an over-long request line (" + std::to_string(dropped) + " bytes)");
      });
    }
    self->request_stop();
  });
  return rt;
}

WorkerRuntime::~WorkerRuntime() {
  request_stop();
  if (state_ && state_->proto.joinable()) state_->proto.join();
  g_signal_worker.store(nullptr, std::memory_order_relaxed);  // relaxed: handler-only reader
  if (proto_fd_ >= 0) ::close(proto_fd_);
}

bool WorkerRuntime::stopping() const noexcept {
  // relaxed: flags; nothing is published through them.
  return state_->stop.load(std::memory_order_relaxed) || g_signal_stop.load(std::memory_order_relaxed);
}

void WorkerRuntime::request_stop() noexcept {
  if (!state_) return;
  state_->stop.store(true, std::memory_order_relaxed);  // relaxed: a flag
  if (worker_) worker_->request_stop();
}

int WorkerRuntime::finish() {
  if (state_->proto.joinable()) state_->proto.join();
  return state_->exit_code;
}

void WorkerRuntime::write_line(const std::string& line) noexcept {
  std::lock_guard<std::mutex> lk(state_->write_mu);  // one writer at a time; one write(2) per line
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(proto_fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the host went away; EOF on stdin will follow
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

int serve(const TileHandler& handler, ServeOptions opts) {
  auto rt = WorkerRuntime::start(std::move(opts.runtime));
  if (!rt) {
    log_err("cannot start: " + rt.error().message);
    return 2;
  }
  Worker* w = (*rt)->worker();
  if (w != nullptr) {
    std::vector<Tile> batch;
    batch.reserve(opts.max_batch);
    while (!(*rt)->stopping()) {
      const TakeStatus st = w->take(batch, opts.max_batch, opts.take_timeout);
      if (st == TakeStatus::stopped) break;
      for (Tile& t : batch) {
        try {
          handler(*w, t);
        } catch (const std::exception& e) {
          if (t.pending()) w->fail(t, TileStatus::HandlerError, e.what());
        } catch (...) {
          if (t.pending()) w->fail(t, TileStatus::HandlerError, "handler threw a non-standard exception");
        }
        if (t.pending()) w->fail(t, TileStatus::HandlerError, "handler returned without answering the tile");
      }
    }
  }
  return (*rt)->finish();
}

}  // namespace tessera
