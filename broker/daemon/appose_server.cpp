// `tessera-broker --appose`: the broker as a conforming Appose worker on its own
// stdin/stdout, so an unmodified Appose host can drive it. See docs/protocol.md.
#include "daemon.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <tessera/appose.hpp>
#include <tessera/supervisor.hpp>

namespace tessera::daemon {

namespace json = boost::json;
namespace ap = appose;

namespace {

// One writer for the protocol stream: every response is one write(2) of one line.
class ProtocolOut {
 public:
  explicit ProtocolOut(int fd) : fd_(fd) {}
  void write_line(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;  // host gone: nothing left to tell it
      }
      off += static_cast<std::size_t>(n);
    }
  }

 private:
  std::mutex mu_;
  int fd_;
};

// Host-side tasks: the broker's own state machine per host task id, so the host
// sees LAUNCH -> UPDATE* -> exactly one terminal whatever happens below.
class HostTasks {
 public:
  explicit HostTasks(ProtocolOut& out) : out_(out) {}

  bool begin(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return tasks_.emplace(id, Entry{}).second;
  }
  void set_sup_task(const std::string& id, const std::string& sup) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = tasks_.find(id); it != tasks_.end()) it->second.sup_task = sup;
  }
  std::string sup_task(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tasks_.find(id);
    return it == tasks_.end() ? std::string() : it->second.sup_task;
  }
  void emit(ap::Response r) {
    std::string lines;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = tasks_.find(r.task);
      if (it == tasks_.end()) return;
      const ap::Verdict v = it->second.sm.on_response(r.type);
      if (ap::is_drop(v)) return;
      if (v == ap::Verdict::forward_after_launch) {
        ap::Response l;
        l.task = r.task;
        l.type = ap::ResponseType::launch;
        lines = ap::encode(l);
      }
      lines += ap::encode(r);
      if (ap::is_terminal(r.type)) tasks_.erase(it);
      // Written under the lock so that a task's lines keep their order.
      out_.write_line(lines);
    }
  }
  std::vector<std::string> open_ids() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> ids;
    for (auto& [id, e] : tasks_) ids.push_back(id);
    return ids;
  }

 private:
  struct Entry {
    ap::TaskStateMachine sm;
    std::string sup_task;
  };
  ProtocolOut& out_;
  std::mutex mu_;
  std::map<std::string, Entry> tasks_;
};

ap::Response make(const std::string& task, ap::ResponseType t) {
  ap::Response r;
  r.task = task;
  r.type = t;
  return r;
}

ap::Response failure(const std::string& task, std::string error) {
  ap::Response r = make(task, ap::ResponseType::failure);
  r.error = std::move(error);
  return r;
}

// Segments named in forwarded outputs: the broker owns them from then on.
class OutputSegments {
 public:
  // Checks every shm object in `v`; returns an error naming the first bad field.
  std::optional<std::string> adopt(const json::value& v, const std::string& path) {
    if (const auto* o = v.if_object()) {
      const auto* t = o->if_contains("appose_type");
      if (t != nullptr && t->is_string() && t->get_string() == "shm") {
        const auto* name = o->if_contains("name");
        const auto* rsize = o->if_contains("rsize");
        if (name == nullptr || !name->is_string()) return path + ".name is missing or not a string";
        const std::string n(name->get_string());
        if (n.empty() || n.find('/') != std::string::npos || n.size() > 250) return path + ".name is not a valid segment name";
        // Boost.Interprocess names the POSIX segment the same way Appose does (/name in
        // /dev/shm; glibc's shm_open adds O_NOFOLLOW); it throws, so catch at this boundary.
        namespace bip = boost::interprocess;
        bip::offset_t size = -1;
        try {
          bip::shared_memory_object seg(bip::open_only, n.c_str(), bip::read_only);
          if (!seg.get_size(size)) size = -1;
        } catch (const bip::interprocess_exception& e) {
          return fmt::format("{} names segment '{}' which does not exist ({})", path, n, e.what());
        }
        const std::int64_t want = (rsize != nullptr && rsize->is_int64()) ? rsize->get_int64()
                                  : (rsize != nullptr && rsize->is_uint64()) ? static_cast<std::int64_t>(rsize->get_uint64())
                                                                            : -1;
        if (size < 0 || want < 0 || static_cast<std::int64_t>(size) < want) {
          return fmt::format("{}: segment '{}' is smaller than its rsize or rsize is invalid", path, n);
        }
        std::lock_guard<std::mutex> lock(mu_);
        names_.insert(n);
        return std::nullopt;
      }
      for (const auto& kv : *o) {
        if (auto e = adopt(kv.value(), path + "." + std::string(kv.key()))) return e;
      }
    } else if (const auto* a = v.if_array()) {
      for (std::size_t i = 0; i < a->size(); ++i) {
        if (auto e = adopt((*a)[i], fmt::format("{}[{}]", path, i))) return e;
      }
    }
    return std::nullopt;
  }

  std::size_t release(const std::vector<std::string>& names) {
    std::size_t n = 0;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& name : names) {
      if (names_.erase(name) != 0 && boost::interprocess::shared_memory_object::remove(name.c_str())) ++n;
    }
    return n;
  }

  std::size_t release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (const auto& name : names_) n += boost::interprocess::shared_memory_object::remove(name.c_str()) ? 1 : 0;
    names_.clear();
    return n;
  }

  std::size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return names_.size();
  }

 private:
  std::mutex mu_;
  std::set<std::string> names_;
};

template <class T>
std::optional<T> get_num(const json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_int64()) return static_cast<T>(v->get_int64());
  if (v->is_uint64()) return static_cast<T>(v->get_uint64());
  if (v->is_double()) return static_cast<T>(v->get_double());
  return std::nullopt;
}

Result<WorkerSpec> spec_from(const json::object& in) {
  WorkerSpec s;
  const auto* argv = in.if_contains("argv");
  if (argv == nullptr || !argv->is_array() || argv->get_array().empty()) {
    return fail(Errc::invalid_argument, "workers.start: 'argv' must be a non-empty array of strings");
  }
  for (const auto& a : argv->get_array()) {
    if (!a.is_string()) return fail(Errc::invalid_argument, "workers.start: 'argv' must contain strings only");
    s.argv.emplace_back(a.get_string());
  }
  if (const auto* env = in.if_contains("env"); env != nullptr && env->is_object()) {
    for (const auto& kv : env->get_object()) {
      if (kv.value().is_string()) s.env[std::string(kv.key())] = std::string(kv.value().get_string());
    }
  }
  for (const char* key : {"env_allow", "init", "init_scripts"}) {
    if (const auto* a = in.if_contains(key); a != nullptr && a->is_array()) {
      for (const auto& e : a->get_array()) {
        if (!e.is_string()) continue;
        if (std::string_view(key) == "env_allow") s.env_allow.emplace_back(e.get_string());
        else s.init_scripts.emplace_back(e.get_string());
      }
    }
  }
  if (auto v = get_num<std::int64_t>(in, "ready_timeout_ms")) s.ready_timeout = std::chrono::milliseconds(*v);
  if (auto v = get_num<std::int64_t>(in, "task_deadline_ms")) s.task_deadline = std::chrono::milliseconds(*v);
  if (auto v = get_num<std::int64_t>(in, "cancel_grace_ms")) s.cancel_grace = std::chrono::milliseconds(*v);
  if (auto v = get_num<int>(in, "max_task_retries")) s.max_task_retries = *v;
  if (auto v = get_num<int>(in, "max_start_failures")) s.max_start_failures = *v;
  return s;
}

json::object stats_json(const SupervisorStats& s) {
  json::object o;
  o["backend"] = to_string(s.backend);
  o["submitted"] = s.submitted;
  o["completed"] = s.completed;
  o["failed"] = s.failed;
  o["canceled"] = s.canceled;
  o["retried"] = s.retried;
  o["bad_lines"] = s.bad_lines;
  o["blank_lines"] = s.blank_lines;
  o["unknown_task_lines"] = s.unknown_task_lines;
  o["dropped_responses"] = s.dropped_responses;
  o["worker_deaths"] = s.worker_deaths;
  o["respawns"] = s.respawns;
  o["workers"] = s.workers;
  o["workers_ready"] = s.workers_ready;
  o["tasks_in_flight"] = s.tasks_in_flight;
  return o;
}

}  // namespace

int run_appose(const Options& opts) {
  // Protocol output on a private fd; fd 1 now points at stderr, so stray prints
  // (ours or a library's) cannot corrupt a protocol line.
  const int proto_fd = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
  if (proto_fd < 0 || ::dup2(2, 1) < 0) {
    std::fprintf(stderr, "tessera-broker: cannot set up the protocol fd: %s\n", std::strerror(errno));
    return 1;
  }
  // SIGTERM/SIGINT: graceful shutdown, like stdin EOF. Blocked before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  const int stop_fd = ::eventfd(0, EFD_CLOEXEC);
  std::thread sig_thread([&sigs, stop_fd] {
    int sig = 0;
    if (::sigwait(&sigs, &sig) == 0 && sig != SIGUSR2) {
      spdlog::info("signal {}: graceful shutdown", sig);
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(stop_fd, &one, sizeof one);
  });

  ProtocolOut out(proto_fd);
  HostTasks host(out);
  OutputSegments segments;
  SupervisorOptions so;
  so.loop = opts.loop;
  auto created = Supervisor::create(so);
  if (!created) {
    spdlog::critical("cannot start the supervisor: {}", created.error().message);
    return 1;
  }
  std::unique_ptr<Supervisor> sup = std::move(*created);
  std::atomic<bool> accepting{true};
  std::mutex ops_mu;
  std::vector<std::thread> ops;  // blocking operations (workers.start)
  std::uint64_t bad_requests = 0;
  bool shutdown_requested = false;

  auto handle_execute = [&](ap::Request& req) {
    const std::string id = req.task;
    if (!host.begin(id)) {
      spdlog::warn("duplicate task id '{}' ignored", id);
      return;
    }
    host.emit(make(id, ap::ResponseType::launch));
    if (!accepting.load(std::memory_order_relaxed)) {  // relaxed: only this thread writes it
      host.emit(failure(id, "broker is shutting down"));
      return;
    }
    const std::string& op = req.script;
    if (op == "ping") {
      ap::Response r = make(id, ap::ResponseType::completion);
      r.outputs = json::object{{"pong", true}, {"pid", static_cast<std::int64_t>(::getpid())},
                               {"backend", to_string(sup->backend())}, {"version", "0.1.0"}};
      host.emit(std::move(r));
    } else if (op == "stats") {
      ap::Response r = make(id, ap::ResponseType::completion);
      json::object o = stats_json(sup->stats());
      o["bad_requests"] = bad_requests;
      o["output_segments"] = segments.size();
      r.outputs = std::move(o);
      host.emit(std::move(r));
    } else if (op == "workers.start") {
      auto spec = spec_from(req.inputs);
      if (!spec) {
        host.emit(failure(id, spec.error().message));
        return;
      }
      const int count = get_num<int>(req.inputs, "count").value_or(1);
      std::lock_guard<std::mutex> lock(ops_mu);
      ops.emplace_back([&, id, count, s = std::move(*spec)] {
        json::array ids, pids;
        for (int i = 0; i < count; ++i) {
          auto w = sup->add_worker(s);
          if (!w) {
            host.emit(failure(id, w.error().message));
            return;
          }
          ids.push_back(*w);
          pids.push_back(sup->worker_pid(*w));
        }
        ap::Response r = make(id, ap::ResponseType::completion);
        r.outputs = json::object{{"workers", ids}, {"pids", pids}};
        host.emit(std::move(r));
      });
    } else if (op == "worker.run") {
      const auto* script = req.inputs.if_contains("script");
      if (script == nullptr || !script->is_string()) {
        host.emit(failure(id, "worker.run: inputs.script must be a string"));
        return;
      }
      json::object inner;
      if (const auto* in = req.inputs.if_contains("inputs"); in != nullptr && in->is_object()) inner = in->get_object();
      const int worker = get_num<int>(req.inputs, "worker").value_or(-1);
      auto sub = sup->submit(worker, std::string(script->get_string()), std::move(inner),
                             [&host, &segments, id](const ap::Response& r) {
                               ap::Response fwd = r;
                               fwd.task = id;
                               if (fwd.type == ap::ResponseType::completion && fwd.outputs) {
                                 if (auto bad = segments.adopt(*fwd.outputs, "outputs")) {
                                   host.emit(failure(id, "worker output rejected: " + *bad));
                                   return;
                                 }
                               }
                               host.emit(std::move(fwd));
                             });
      if (!sub) host.emit(failure(id, sub.error().message));
      else host.set_sup_task(id, *sub);
    } else if (op == "shm.release") {
      std::vector<std::string> names;
      if (const auto* a = req.inputs.if_contains("names"); a != nullptr && a->is_array()) {
        for (const auto& n : a->get_array()) {
          if (n.is_string()) names.emplace_back(n.get_string());
        }
      }
      ap::Response r = make(id, ap::ResponseType::completion);
      r.outputs = json::object{{"released", segments.release(names)}};
      host.emit(std::move(r));
    } else if (op == "shutdown") {
      host.emit(make(id, ap::ResponseType::completion));
      shutdown_requested = true;
    } else {
      host.emit(failure(id, "unknown operation '" + op +
                                "'; known: ping, stats, workers.start, worker.run, shm.release, shutdown"));
    }
  };

  // ---- read requests until EOF, `shutdown` or a signal ----
  auto on_line = [&](std::string_view line) {
    auto req = ap::parse_request(line);
    if (!req) {
      if (req.error().code != ap::ParseErrc::blank) {
        ++bad_requests;
        spdlog::warn("ignored request line ({}): {}", ap::to_string(req.error().code), req.error().message);
      }
      return;
    }
    if (req.value().type == ap::RequestType::cancel) {
      const std::string sub = host.sup_task(req.value().task);
      if (!sub.empty()) sup->cancel(sub);
      else spdlog::info("CANCEL for task '{}' ignored: unknown, finished or not a worker.run", req.value().task);
      return;
    }
    handle_execute(req.value());
  };
  auto on_overflow = [&](std::size_t len) {
    ++bad_requests;
    spdlog::warn("ignored request line of {} bytes: longer than {} bytes", len, opts.max_line);
  };
  ap::LineFramer framer(opts.max_line);
  char buf[65536];
  bool eof = false;
  while (!eof && !shutdown_requested) {
    pollfd pfds[2] = {{0, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(pfds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfds[1].revents != 0) break;
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
      if (auto rest = framer.finish()) on_line(*rest);
      break;
    }
    framer.feed(std::string_view(buf, static_cast<std::size_t>(n)), on_line, on_overflow);
  }

  // ---- graceful shutdown: stop admitting, finish or cancel, report each, stop workers ----
  accepting.store(false, std::memory_order_relaxed);  // relaxed: read by this thread only
  spdlog::info("shutting down ({})", eof ? "stdin EOF" : "requested");
  sup->shutdown();
  {
    std::lock_guard<std::mutex> lock(ops_mu);
    for (auto& t : ops) t.join();
  }
  for (const auto& id : host.open_ids()) host.emit(failure(id, "broker shut down before the task finished"));
  const std::size_t unlinked = segments.release_all();
  if (unlinked != 0) spdlog::info("unlinked {} output segment(s) the host did not release", unlinked);
  sup.reset();
  ::pthread_kill(sig_thread.native_handle(), SIGTERM);  // wake sigwait (the signal is blocked: no handler runs)
  sig_thread.join();
  ::close(stop_fd);
  ::close(proto_fd);
  return 0;
}

}  // namespace tessera::daemon
