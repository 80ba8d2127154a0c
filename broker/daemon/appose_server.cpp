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
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <time.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <tessera/appose.hpp>
#include <tessera/appose_router.hpp>

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

// The record of owned output segments, so that a broker killed with SIGKILL (which
// cannot clean up) leaves nothing behind for long: every adopted name is appended as
// "+name", every release as "-name", to <dir>/appose-owned-<pid> (dir: per user,
// mode 0700). A clean exit removes the file; the next `--appose` start unlinks what
// the files of dead brokers still list. Appending one short line per segment with
// O_APPEND is one write(2), atomic against a crash mid-record.
class OwnedRecord {
 public:
  OwnedRecord() {
    const char* base = std::getenv("XDG_RUNTIME_DIR");
    dir_ = fmt::format("{}/tessera-{}", (base != nullptr && *base != '\0') ? base : "/tmp", ::getuid());
    if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST) {
      spdlog::warn("cannot create {}: {}; output segments of a killed broker are not recovered", dir_, std::strerror(errno));
      return;
    }
    struct stat st {};
    if (::lstat(dir_.c_str(), &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::getuid() || (st.st_mode & 0077) != 0) {
      spdlog::warn("{} is not a private directory of this user: output segments of a killed broker are not recovered", dir_);
      return;
    }
    path_ = fmt::format("{}/appose-owned-{}", dir_, ::getpid());
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd_ < 0) spdlog::warn("cannot write {}: {}", path_, std::strerror(errno));
  }
  ~OwnedRecord() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(path_.c_str());
    }
  }
  OwnedRecord(const OwnedRecord&) = delete;
  OwnedRecord& operator=(const OwnedRecord&) = delete;

  void note(char sign, const std::string& name) {
    if (fd_ < 0) return;
    const std::string line = sign + name + "\n";
    [[maybe_unused]] const auto n = ::write(fd_, line.data(), line.size());
  }

  // Unlinks the segments that the records of dead brokers still own; returns how many.
  std::size_t recover() {
    std::size_t unlinked = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
      const std::string file = e.path().filename().string();
      if (!file.starts_with("appose-owned-")) continue;
      const long pid = std::strtol(file.c_str() + 13, nullptr, 10);
      if (pid <= 0 || pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
      std::ifstream in(e.path());
      std::set<std::string> owned;
      for (std::string line; std::getline(in, line);) {
        if (line.size() < 2) continue;
        if (line[0] == '+') owned.insert(line.substr(1));
        else if (line[0] == '-') owned.erase(line.substr(1));
      }
      for (const auto& name : owned) {
        // Only Appose names: a damaged record never makes us unlink anything else.
        if (ap::is_shm_name(name) && boost::interprocess::shared_memory_object::remove(name.c_str())) ++unlinked;
      }
      std::filesystem::remove(e.path(), ec);
      spdlog::info("recovered the output segments of dead broker pid {}: {} unlinked", pid, owned.size());
    }
    return unlinked;
  }

 private:
  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

// Segments named in forwarded outputs: the broker owns them from then on, so it adopts
// only segments a pool worker could have created: an Appose name (psm_ + hex, see
// appose::is_shm_name), a regular object in /dev/shm owned by this user, changed no
// earlier than this broker started (tmpfs stamps with the coarse real-time clock, read
// here from the same clock). Anything else is refused with a clear error and left
// untouched, so another application's segment is never unlinked.
class OutputSegments {
 public:
  explicit OutputSegments(OwnedRecord& record) : record_(record) { ::clock_gettime(CLOCK_REALTIME_COARSE, &started_); }

  // Checks every shm object in `v`; returns an error naming the first bad field.
  std::optional<std::string> adopt(const json::value& v, const std::string& path) {
    std::vector<ap::ShmRef> refs;
    if (auto e = ap::collect_shm_refs(v, path, refs)) return e;
    for (const auto& r : refs) {
      if (auto e = check(r)) return e;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& r : refs) {
      if (names_.insert(r.name).second) record_.note('+', r.name);
    }
    return std::nullopt;
  }

  // Why the broker may not own `r`'s segment, or nullopt.
  std::optional<std::string> check(const ap::ShmRef& r) const {
    const std::string posix = "/" + r.name;
    const int fd = ::shm_open(posix.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) return fmt::format("{} names segment '{}' which cannot be opened ({})", r.path, r.name, std::strerror(errno));
    struct stat st {};
    const int rc = ::fstat(fd, &st);
    ::close(fd);
    if (rc < 0) return fmt::format("{}: segment '{}' cannot be inspected ({})", r.path, r.name, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return fmt::format("{}: '{}' is not a shared-memory segment", r.path, r.name);
    if (st.st_uid != ::geteuid())
      return fmt::format("{}: segment '{}' belongs to uid {}, not to this broker: not adopted, left untouched", r.path, r.name,
                         st.st_uid);
    const bool older = st.st_ctim.tv_sec < started_.tv_sec ||
                       (st.st_ctim.tv_sec == started_.tv_sec && st.st_ctim.tv_nsec < started_.tv_nsec);
    if (older)
      return fmt::format("{}: segment '{}' existed before this broker started, so no pool worker created it: not adopted, "
                         "left untouched",
                         r.path, r.name);
    if (st.st_size < r.rsize)
      return fmt::format("{}: segment '{}' has {} bytes, fewer than its rsize {}", r.path, r.name, st.st_size, r.rsize);
    return std::nullopt;
  }

  std::size_t release(const std::vector<std::string>& names) {
    std::size_t n = 0;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& name : names) {
      if (names_.erase(name) == 0) continue;
      record_.note('-', name);
      if (boost::interprocess::shared_memory_object::remove(name.c_str())) ++n;
    }
    return n;
  }

  std::size_t release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (const auto& name : names_) {
      n += boost::interprocess::shared_memory_object::remove(name.c_str()) ? 1 : 0;
      record_.note('-', name);
    }
    names_.clear();
    return n;
  }

  std::size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return names_.size();
  }

 private:
  OwnedRecord& record_;
  timespec started_{};
  std::mutex mu_;
  std::set<std::string> names_;
};

// Runs the blocking operations (workers.start waits for its workers) off the request
// thread, on at most kThreads threads that are joined at shutdown: a burst of requests
// queues (at most kMaxQueued) instead of starting a thread each. A request that cannot
// be queued, or whose thread cannot be created, is refused with the reason, which the
// caller answers as that request's FAILURE; the broker goes on.
class BlockingOps {
 public:
  static constexpr std::size_t kThreads = 2;
  static constexpr std::size_t kMaxQueued = 1024;

  BlockingOps() = default;
  BlockingOps(const BlockingOps&) = delete;
  BlockingOps& operator=(const BlockingOps&) = delete;
  ~BlockingOps() { stop(); }

  // nullopt when `job` will run; otherwise why not.
  std::optional<std::string> post(std::function<void()> job) {
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return std::string("broker is shutting down");
    if (jobs_.size() >= kMaxQueued)
      return fmt::format("{} blocking requests are already waiting: try again later", jobs_.size());
    jobs_.push_back(std::move(job));
    if (idle_ == 0 && threads_.size() < kThreads) {
      try {
        threads_.emplace_back([this] { run(); });
      } catch (const std::system_error& e) {
        if (threads_.empty()) {  // nobody would ever run it
          jobs_.pop_back();
          return fmt::format("cannot start a thread for it: {}", e.what());
        }
        spdlog::warn("cannot start another blocking-operation thread ({}): queued for the {} running", e.what(),
                     threads_.size());
      }
    }
    cv_.notify_one();
    return std::nullopt;
  }

  // Runs what is queued, then joins every thread.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  std::size_t threads() {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_.size();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;
  bool stopping_ = false;
};

// Service.init() of the host: appose writes the script to a file named by
// APPOSE_INIT_SCRIPT in its worker's environment -- here, the broker's. The broker
// reads and deletes it (the Appose convention) and runs it as the first init step of
// every pool worker, respawns included, wrapped so that its top-level names are
// exported to later tasks as an init script's are (`task.export`, which both the
// reference worker and tessera.worker provide). The text travels as a bytes literal
// of its UTF-8, so any content survives.
std::optional<std::string> take_host_init_script() {
  const char* path = std::getenv("APPOSE_INIT_SCRIPT");
  if (path == nullptr || *path == '\0') return std::nullopt;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    spdlog::warn("APPOSE_INIT_SCRIPT={} cannot be read: ignored", path);
    return std::nullopt;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  ::unlink(path);
  ::unsetenv("APPOSE_INIT_SCRIPT");
  std::string lit = "b\"";
  for (const unsigned char c : ss.str()) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') lit.push_back(static_cast<char>(c));
    else lit += fmt::format("\\x{:02x}", c);
  }
  lit += "\"";
  return "__tessera_init = {}\n"
         "exec(compile(" + lit + ".decode('utf-8'), '<appose init script>', 'exec'), __tessera_init)\n"
         "__tessera_init.pop('__builtins__', None)\n"
         "task.export(**__tessera_init)\n";
}

// Which pool worker runs a session's tasks: the first task of a session picks the
// live worker with the fewest sessions; later ones go to the same worker, so state a
// script keeps there (task.export, a loaded model) is seen by the next task.
class Sessions {
 public:
  void add_workers(const json::array& ids) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& v : ids) {
      if (v.is_int64()) live_.insert(static_cast<int>(v.get_int64()));
    }
  }
  void remove_worker(int w) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(w);
    std::erase_if(sessions_, [w](const auto& kv) { return kv.second == w; });
  }
  std::vector<int> live() {
    std::lock_guard<std::mutex> lock(mu_);
    return {live_.begin(), live_.end()};
  }
  // -1 if there is no live worker.
  int pick(const std::string& session) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = sessions_.find(session); it != sessions_.end()) return it->second;
    int best = -1;
    std::size_t best_n = 0;
    for (int w : live_) {
      const auto n = static_cast<std::size_t>(std::count_if(sessions_.begin(), sessions_.end(),
                                                            [w](const auto& kv) { return kv.second == w; }));
      if (best < 0 || n < best_n) {
        best = w;
        best_n = n;
      }
    }
    if (best >= 0) sessions_[session] = best;
    return best;
  }

 private:
  std::mutex mu_;
  std::set<int> live_;
  std::map<std::string, int> sessions_;
};

// A request field that must be an integer in [min, max]; the error names the op and field.
std::optional<std::string> read_int(const json::object& in, const char* op, const char* key, std::int64_t min,
                                    std::int64_t max, std::optional<std::int64_t>& out) {
  ap::IntField f = ap::int_field(in, key, min, max);
  if (f.error) return std::string(op) + ": " + *f.error;
  out = f.value;
  return std::nullopt;
}

constexpr std::int64_t kMaxMs = 7LL * 24 * 3600 * 1000;  // a week: any longer is a mistake
constexpr std::int64_t kMaxStartCount = 256;              // workers per workers.start

Result<ApposeWorkerSpec> spec_from(const json::object& in) {
  ApposeWorkerSpec s;
  const auto* argv = in.if_contains("argv");
  if (argv == nullptr || !argv->is_array() || argv->get_array().empty()) {
    return fail(Errc::invalid_argument, "workers.start: 'argv' must be a non-empty array of strings");
  }
  for (const auto& a : argv->get_array()) {
    if (!a.is_string()) return fail(Errc::invalid_argument, "workers.start: 'argv' must contain strings only");
    if (auto e = ap::check_c_string(a.get_string(), "argv")) return fail(Errc::invalid_argument, "workers.start: " + *e);
    s.argv.emplace_back(a.get_string());
  }
  if (const auto* env = in.if_contains("env"); env != nullptr && env->is_object()) {
    for (const auto& kv : env->get_object()) {
      if (!kv.value().is_string()) continue;
      const std::string field = "env." + std::string(kv.key());
      if (kv.key().empty() || kv.key().find('=') != std::string_view::npos)
        return fail(Errc::invalid_argument, "workers.start: '" + field + "' is not a valid variable name");
      if (auto e = ap::check_c_string(kv.key(), field)) return fail(Errc::invalid_argument, "workers.start: " + *e);
      if (auto e = ap::check_c_string(kv.value().get_string(), field)) return fail(Errc::invalid_argument, "workers.start: " + *e);
      s.env[std::string(kv.key())] = std::string(kv.value().get_string());
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
  std::optional<std::int64_t> v;
  const auto field = [&](const char* key, std::int64_t min, std::int64_t max) -> std::optional<std::string> {
    return read_int(in, "workers.start", key, min, max, v);
  };
  if (auto e = field("ready_timeout_ms", 0, kMaxMs)) return fail(Errc::invalid_argument, *e);
  if (v) s.ready_timeout = std::chrono::milliseconds(*v);
  if (auto e = field("task_deadline_ms", 0, kMaxMs)) return fail(Errc::invalid_argument, *e);
  if (v) s.task_deadline = std::chrono::milliseconds(*v);
  if (auto e = field("cancel_grace_ms", 0, kMaxMs)) return fail(Errc::invalid_argument, *e);
  if (v) s.cancel_grace = std::chrono::milliseconds(*v);
  if (auto e = field("max_task_retries", 0, 1000)) return fail(Errc::invalid_argument, *e);
  if (v) s.max_task_retries = static_cast<int>(*v);
  if (auto e = field("max_start_failures", 0, 1000)) return fail(Errc::invalid_argument, *e);
  if (v) s.max_start_failures = static_cast<int>(*v);
  return s;
}

json::object stats_json(const RouterStats& s) {
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
  OwnedRecord record;
  if (const std::size_t n = record.recover(); n != 0) {
    spdlog::info("unlinked {} output segment(s) left by a killed broker", n);
  }
  OutputSegments segments(record);
  Sessions sessions;
  const std::optional<std::string> host_init = take_host_init_script();
  RouterOptions so;
  so.loop = opts.loop;
  auto created = ApposeRouter::create(so);
  if (!created) {
    spdlog::critical("cannot start the supervisor: {}", created.error().message);
    return 1;
  }
  std::unique_ptr<ApposeRouter> sup = std::move(*created);
  std::atomic<bool> accepting{true};
  BlockingOps ops;  // workers.start: bounded threads, joined before `sup` goes
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
      o["blocking_threads"] = ops.threads();
      r.outputs = std::move(o);
      host.emit(std::move(r));
    } else if (op == "workers.start") {
      auto spec = spec_from(req.inputs);
      if (!spec) {
        host.emit(failure(id, spec.error().message));
        return;
      }
      if (host_init) spec->init_scripts.insert(spec->init_scripts.begin(), *host_init);
      std::optional<std::int64_t> n;
      if (auto e = read_int(req.inputs, "workers.start", "count", 1, kMaxStartCount, n)) {
        host.emit(failure(id, *e));
        return;
      }
      const int count = static_cast<int>(n.value_or(1));
      auto refused = ops.post([&, id, count, s = std::move(*spec)] {
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
        sessions.add_workers(ids);
        ap::Response r = make(id, ap::ResponseType::completion);
        r.outputs = json::object{{"workers", ids}, {"pids", pids}};
        host.emit(std::move(r));
      });
      if (refused) host.emit(failure(id, "workers.start: " + *refused));
    } else if (op == "worker.run") {
      const auto* script = req.inputs.if_contains("script");
      if (script == nullptr || !script->is_string()) {
        host.emit(failure(id, "worker.run: inputs.script must be a string"));
        return;
      }
      json::object inner;
      if (const auto* in = req.inputs.if_contains("inputs"); in != nullptr && in->is_object()) inner = in->get_object();
      std::optional<std::int64_t> pinned;
      if (auto e = read_int(req.inputs, "worker.run", "worker", -1, INT32_MAX, pinned)) {
        host.emit(failure(id, *e));
        return;
      }
      int worker = static_cast<int>(pinned.value_or(-1));
      if (const auto* s = req.inputs.if_contains("session"); s != nullptr && !s->is_null() && worker < 0) {
        const std::string key = s->is_string() ? std::string(s->get_string()) : ap::to_ascii_json(*s);
        worker = sessions.pick(key);
        if (worker < 0) {
          host.emit(failure(id, "worker.run: no live worker for session '" + key + "'"));
          return;
        }
      }
      std::optional<std::string> queue;
      if (const auto* q = req.inputs.if_contains("queue"); q != nullptr && q->is_string()) queue = std::string(q->get_string());
      auto sub = sup->submit(worker, std::string(script->get_string()), std::move(inner), std::move(queue),
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
    } else if (op == "workers.stop") {
      std::vector<int> which;
      if (const auto* a = req.inputs.if_contains("workers"); a != nullptr && a->is_array()) {
        for (std::size_t i = 0; i < a->get_array().size(); ++i) {
          const json::value& v = a->get_array()[i];
          if (!v.is_int64() || v.get_int64() < 0 || v.get_int64() > INT32_MAX) {
            host.emit(failure(id, fmt::format("workers.stop: 'workers[{}]' must be a worker id (an integer in 0..{}), got {}", i,
                                              INT32_MAX, ap::to_ascii_json(v))));
            return;
          }
          which.push_back(static_cast<int>(v.get_int64()));
        }
      } else {
        which = sessions.live();
      }
      json::array stopped;
      std::string errors;
      for (int w : which) {
        if (auto r = sup->remove_worker(w); r) {
          sessions.remove_worker(w);
          stopped.push_back(w);
        } else {
          errors += (errors.empty() ? "" : "; ") + r.error().message;
        }
      }
      if (!errors.empty()) {
        host.emit(failure(id, "workers.stop: " + errors));
      } else {
        ap::Response r = make(id, ap::ResponseType::completion);
        r.outputs = json::object{{"stopped", std::move(stopped)}};
        host.emit(std::move(r));
      }
    } else if (op == "shutdown") {
      host.emit(make(id, ap::ResponseType::completion));
      shutdown_requested = true;
    } else {
      host.emit(failure(id, "unknown operation '" + op +
                                "'; known: ping, stats, workers.start, workers.stop, worker.run, shm.release, shutdown"));
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
  ops.stop();
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
