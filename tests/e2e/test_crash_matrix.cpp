// The crash matrix (issue 11): kill -9 of {worker, client, standalone broker} x {idle,
// streaming, mid-recovery}, and SIGSTOP of a worker, with real processes only:
// `tessera-broker --listen`, the example worker it spawns, and client processes
// (client_proc.cpp). Each cell asserts exactly one outcome per accepted tile (or a clear
// `unavailable` failure at the call), no orphan process, and a clean restart (every cell
// starts a fresh broker on the same socket path); at the end no socket file and no new
// /dev/shm entry is left.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {
const std::string kBin = TESSERA_BIN_DIR;

std::int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool gone(pid_t pid) {  // no such process, or a zombie waiting for init
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(f)), {});
  const auto rp = all.rfind(')');
  return rp != std::string::npos && rp + 2 < all.size() && all[rp + 2] == 'Z';
}

bool wait_gone(const std::vector<pid_t>& pids, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (pid_t p : pids) all = all && gone(p);
    if (all) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(10ms);
  }
}

// Runs argv with stdout (and stderr, if asked) into a pipe we read; killed and reaped at the end.
struct Proc {
  pid_t pid = -1;
  int out = -1;
  std::string text;
  Proc(const std::vector<std::string>& argv, bool quiet_stderr) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return;
    pid = ::fork();
    if (pid == 0) {
      ::dup2(p[1], 1);
      if (quiet_stderr) {
        const int dn = ::open("/dev/null", O_WRONLY);
        ::dup2(dn, 2);
      }
      std::vector<char*> a;
      for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      ::execv(a[0], a.data());
      ::_exit(127);
    }
    ::close(p[1]);
    out = p[0];
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;
  ~Proc() {
    kill9();
    if (out >= 0) ::close(out);
  }
  void kill9() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st = 0;
      ::waitpid(pid, &st, 0);
      pid = -1;
    }
  }
  // Reads stdout until it contains `what` (true) or the timeout passes.
  bool read_until(const std::string& what, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (text.find(what) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd pf{out, POLLIN, 0};
      if (::poll(&pf, 1, static_cast<int>(left)) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(out, buf, sizeof buf);
      if (n <= 0) return text.find(what) != std::string::npos;
      text.append(buf, static_cast<std::size_t>(n));
    }
    return true;
  }
  // Waits for the exit (reading all output); returns the exit code, or -1 on timeout (then killed).
  int wait(std::chrono::milliseconds timeout) {
    read_until("\x01never\x01", timeout);  // until EOF or timeout
    const auto end = std::chrono::steady_clock::now() + 2s;
    int st = 0;
    while (pid > 0 && std::chrono::steady_clock::now() < end) {
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(5ms);
    }
    kill9();
    return -1;
  }
};

// One client_proc `stream` run's summary line, parsed.
std::map<std::string, std::string> summary(const std::string& text) {
  std::map<std::string, std::string> m;
  const auto at = text.find("accepted=");
  if (at == std::string::npos) return m;
  std::istringstream in(text.substr(at));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("first failure: ", 0) == 0) {
      m["first_failure"] = line.substr(15);
      continue;
    }
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      const auto eq = w.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = w.substr(0, eq);
      if (key == "call_error") {  // the rest of the line
        m[key] = line.substr(line.find("call_error=") + 11);
        break;
      }
      m[key] = w.substr(eq + 1);
    }
  }
  return m;
}

long num(const std::map<std::string, std::string>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? -1 : std::stol(it->second);
}

struct Broker {
  std::string sock;
  std::unique_ptr<Proc> proc;
  bool start(const std::string& path, std::vector<std::string> extra = {}) {
    sock = path;
    std::vector<std::string> argv = {kBin + "/tessera-broker", "--listen", sock, "-n", "2", "--log-level", "error",
                                     "--worker-cmd", kBin + "/tessera-tissue-worker"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Proc>(argv, true);
    if (!proc->read_until("listening on", 20s)) return false;
    return workers().size() == 2 || wait_workers(2, 10s);
  }
  bool wait_workers(std::size_t n, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (workers().size() != n) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }
  // The broker's live children (its workers), from /proc/PID/task/*/children.
  std::vector<pid_t> workers() const {
    std::vector<pid_t> v;
    if (!proc || proc->pid <= 0) return v;
    std::error_code ec;
    for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(proc->pid) + "/task", ec)) {
      std::ifstream f(t.path() / "children");
      pid_t p;
      while (f >> p)
        if (!gone(p)) v.push_back(p);
    }
    return v;
  }
  // SIGTERM: a clean stop (the socket file is removed).
  int stop() {
    if (!proc || proc->pid <= 0) return -1;
    ::kill(proc->pid, SIGTERM);
    return proc->wait(20s);
  }
};

std::set<std::string> shm_entries() {
  std::set<std::string> s;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/dev/shm", ec)) s.insert(e.path().filename().string());
  return s;
}

std::unique_ptr<Proc> client(const std::string& sock, int tiles, const char* mode, int op = 0, int start_ms = 0) {
  return std::make_unique<Proc>(std::vector<std::string>{kBin + "/tessera-test-client-proc", sock, std::to_string(tiles), mode,
                                                         std::to_string(op), std::to_string(start_ms)},
                                true);
}

// Every accepted tile got exactly one outcome (client_proc's own check: exit 0).
void expect_one_outcome_each(Proc& c, const std::map<std::string, std::string>& m, int rc) {
  EXPECT_EQ(rc, 0) << c.text;
  EXPECT_EQ(num(m, "accepted"), num(m, "outcomes")) << c.text;
  EXPECT_EQ(num(m, "dup"), 0) << c.text;
}

// A fresh client completes `n` tiles on the (restarted) broker.
void expect_serves(const std::string& sock, int n = 60) {
  auto c = client(sock, n, "stream");
  const int rc = c->wait(60s);
  const auto m = summary(c->text);
  EXPECT_EQ(rc, 0) << c->text;
  EXPECT_EQ(num(m, "completed"), n) << c->text;
}

}  // namespace

TEST(CrashMatrix, EveryAcceptedTileHasOneOutcomeAndNothingIsLeftBehind) {
  const fs::path dir = fs::temp_directory_path() / ("tessera-crash-" + std::to_string(::getpid()) + "-" +
                                                     std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all);
  const std::string sock = (dir / "broker.sock").string();
  const auto shm_before = shm_entries();
  std::vector<pid_t> all_workers;
  std::map<std::string, double> recovery_ms;

  auto fresh_broker = [&](Broker& b, std::vector<std::string> extra = {}) {
    // A SIGKILLed broker cannot remove its socket file; an operator (or a broker that
    // replaces stale sockets) does it before the restart.
    std::error_code ec;
    fs::remove(sock, ec);
    const bool ok = b.start(sock, std::move(extra));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    return ok;
  };

  // ---- worker x {idle, streaming, mid-recovery} ----
  {
    SCOPED_TRACE("kill -9 worker, idle");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto c = client(sock, 60, "stream", 0, 800);  // connected, idle while the worker dies
    ASSERT_TRUE(c->read_until("connected", 20s)) << c->text;
    ::kill(b.workers().at(0), SIGKILL);
    const int rc = c->wait(60s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    EXPECT_EQ(num(m, "completed"), 60) << c->text;
    EXPECT_TRUE(b.wait_workers(2, 20s));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }
  {
    SCOPED_TRACE("kill -9 worker, streaming");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto c = client(sock, 200, "stream", 4);
    std::this_thread::sleep_for(300ms);
    ::kill(b.workers().at(0), SIGKILL);
    const int rc = c->wait(60s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    EXPECT_EQ(num(m, "completed"), 200) << c->text;  // one death per tile at most: retried
    EXPECT_TRUE(b.wait_workers(2, 20s));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }
  {
    SCOPED_TRACE("kill -9 worker, mid-recovery");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto c = client(sock, 200, "stream", 4);
    std::this_thread::sleep_for(300ms);
    const auto w = b.workers();
    ::kill(w.at(0), SIGKILL);
    std::this_thread::sleep_for(5ms);  // the first one's recovery is under way
    ::kill(w.at(1), SIGKILL);
    const int rc = c->wait(60s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    // A tile taken by both dead workers may fail as poison; any failure says a worker died.
    EXPECT_EQ(num(m, "completed") + num(m, "failed"), 200) << c->text;
    if (num(m, "failed") > 0) {
      EXPECT_NE(m.at("first_failure").find("died"), std::string::npos) << c->text;
    }
    EXPECT_TRUE(b.wait_workers(2, 20s));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }

  // ---- client x {idle, streaming, mid-recovery} ----
  {
    SCOPED_TRACE("kill -9 client, idle / streaming / mid-recovery");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto idle = client(sock, 0, "hold");
    ASSERT_TRUE(idle->read_until("holding", 20s)) << idle->text;
    idle->kill9();
    expect_serves(sock);
    auto busy = client(sock, 150, "hold", 4);  // 150 slow tiles in flight, blocks held
    ASSERT_TRUE(busy->read_until("holding", 30s)) << busy->text;
    busy->kill9();
    expect_serves(sock);
    auto held = client(sock, 100, "hold", 4);
    ASSERT_TRUE(held->read_until("holding", 30s)) << held->text;
    ::kill(b.workers().at(0), SIGKILL);  // the broker now waits for this client's recovery ...
    held->kill9();                        // ... and the client dies before it answers
    expect_serves(sock);
    EXPECT_TRUE(b.wait_workers(2, 20s));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }

  // ---- broker x {idle, streaming, mid-recovery} ----
  {
    SCOPED_TRACE("kill -9 broker, idle");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto c = client(sock, 50, "stream", 0, 600);
    ASSERT_TRUE(c->read_until("connected", 20s)) << c->text;
    const auto w = b.workers();
    b.proc->kill9();
    const int rc = c->wait(30s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    EXPECT_EQ(num(m, "accepted"), 0) << c->text;  // it learned of the loss before its first call
    EXPECT_EQ(m.count("call_error") ? m.at("call_error").rfind("unavailable", 0) : 1, 0u) << c->text;
    EXPECT_TRUE(wait_gone(w, 5s)) << "workers outlived their broker";
  }
  for (const bool mid_recovery : {false, true}) {
    SCOPED_TRACE(mid_recovery ? "kill -9 broker, mid-recovery" : "kill -9 broker, streaming");
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    auto c = client(sock, 400, "stream", 4);
    std::this_thread::sleep_for(400ms);
    const auto w = b.workers();
    if (mid_recovery) {
      ::kill(w.at(0), SIGKILL);
      std::this_thread::sleep_for(5ms);
    }
    const std::int64_t killed_at = monotonic_ns();
    b.proc->kill9();
    const int rc = c->wait(30s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    EXPECT_GT(num(m, "failed"), 0) << c->text;
    EXPECT_NE(c->text.find("broker connection lost"), std::string::npos) << c->text;
    EXPECT_EQ(m.count("call_error") ? m.at("call_error").rfind("unavailable", 0) : 1, 0u) << c->text;
    // Bound (docs/guarantees.md): every tile in flight has its outcome within 1 s of the loss.
    const double ms = static_cast<double>(num(m, "last_outcome_ns") - killed_at) / 1e6;
    recovery_ms[mid_recovery ? "broker-mid-recovery" : "broker-streaming"] = ms;
    EXPECT_LE(ms, 1000.0) << c->text;
    EXPECT_TRUE(wait_gone(w, 5s)) << "workers outlived their broker";
  }

  // ---- SIGSTOP of a worker: the stall watchdog kills it, its tiles complete elsewhere ----
  {
    SCOPED_TRACE("SIGSTOP worker");
    Broker b;
    ASSERT_TRUE(fresh_broker(b, {"--stall-timeout-ms", "500"}));
    auto c = client(sock, 200, "stream", 4);
    std::this_thread::sleep_for(300ms);
    const pid_t stopped = b.workers().at(0);
    ::kill(stopped, SIGSTOP);
    const int rc = c->wait(60s);
    const auto m = summary(c->text);
    expect_one_outcome_each(*c, m, rc);
    EXPECT_EQ(num(m, "completed"), 200) << c->text;
    EXPECT_TRUE(wait_gone({stopped}, 5s)) << "the stopped worker was not killed";
    EXPECT_TRUE(b.wait_workers(2, 20s));
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }

  // ---- nothing left behind ----
  {
    Broker b;
    ASSERT_TRUE(fresh_broker(b));
    expect_serves(sock);
    for (pid_t p : b.workers()) all_workers.push_back(p);
    EXPECT_EQ(b.stop(), 0);
  }
  EXPECT_FALSE(fs::exists(sock)) << "a cleanly stopped broker left its socket file";
  EXPECT_TRUE(wait_gone(all_workers, 5s)) << "orphan worker processes";
  std::vector<std::string> leaked;
  for (const auto& e : shm_entries())
    if (!shm_before.count(e)) leaked.push_back(e);
  EXPECT_TRUE(leaked.empty()) << "new /dev/shm entries: " << (leaked.empty() ? "" : leaked.front());
  for (const auto& [k, v] : recovery_ms) std::printf("crash matrix: %s: last outcome %.1f ms after the kill\n", k.c_str(), v);
  std::error_code ec;
  fs::remove_all(dir, ec);
}
