// The standalone broker (`tessera-broker --listen`) under faults and hostile
// clients: a client that never reads, descriptors pushed at the broker, stale and
// foreign files at the socket path, idle connections, a client that takes more
// than its share of the arena, and kill_worker from a client.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include <tessera/broker_server.hpp>
#include <tessera/slab.hpp>

#include "wire.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {
const std::string kBin = TESSERA_BIN_DIR;

// A fresh 0700 directory per test; removed by the fixture.
struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("tessera-listen-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string sock(const char* name = "broker.sock") const { return (dir / name).string(); }
};

tessera::BrokerServerOptions options(const std::string& path, int workers = 1) {
  tessera::BrokerServerOptions o;
  o.arena.classes = {{4096, 64}};
  o.arena.n_rings = 32;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  o.pool.argv = {kBin + "/tessera-tissue-worker"};
  o.pool.count = workers;
  o.pool.max_retries = 3;
  o.socket_path = path;
  return o;
}

// Bytes received on a socket past the last line read_until returned (a later call on the
// same socket starts with them). Keyed by descriptor, reset when connect_raw opens one.
std::map<int, std::string>& unread() {
  static std::map<int, std::string> m;
  return m;
}

int connect_raw(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  unread().erase(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// All of `s` (a blocking send returns short when a signal interrupts it).
bool send_text(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads lines until one contains `needle` (returned) or EOF/timeout (empty).
std::string read_until(int fd, const std::string& needle, std::chrono::milliseconds timeout, bool* eof = nullptr) {
  std::string& buf = unread()[fd];
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    for (std::size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1)) {
      std::string line = buf.substr(0, nl);
      if (line.find(needle) != std::string::npos) {
        buf.erase(0, nl + 1);
        return line;
      }
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    int got_fd = -1;
    const ssize_t n = tessera::wire::recv_some(fd, buf, &got_fd);
    if (got_fd >= 0) ::close(got_fd);
    if (n <= 0) {
      if (eof != nullptr) *eof = true;
      return {};
    }
  }
  return {};
}

// Connects and completes the hello; returns the socket (or -1).
int hello_raw(const std::string& path) {
  const int fd = connect_raw(path);
  if (fd < 0) return -1;
  if (!send_text(fd, "{\"type\":\"hello\",\"version\":1}\n") || read_until(fd, "\"hello\"", 10s).empty()) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::size_t count_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

// `tessera-broker --listen PATH` as a child process; waits for "listening" or exit.
struct BrokerProc {
  pid_t pid = -1;
  int out = -1;
  std::string first_line;
  int exit_code = -1;
  BrokerProc(const std::string& path, std::chrono::seconds timeout = 30s) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return;
    pid = fork();
    if (pid == 0) {
      dup2(p[1], 1);
      dup2(p[1], 2);
      const std::string exe = kBin + "/tessera-broker";
      const std::string worker = kBin + "/tessera-tissue-worker";
      execl(exe.c_str(), exe.c_str(), "--listen", path.c_str(), "-n", "1", "--class", "4096:64", "--worker-cmd", worker.c_str(),
            nullptr);
      _exit(127);
    }
    close(p[1]);
    out = p[0];
    std::string buf;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      pollfd q{out, POLLIN, 0};
      if (::poll(&q, 1, 50) > 0) {
        char b[512];
        const ssize_t n = read(out, b, sizeof b);
        if (n <= 0) break;
        buf.append(b, static_cast<std::size_t>(n));
        if (buf.rfind("listening on", 0) == 0 || buf.find("\nlistening on") != std::string::npos) {
          first_line = buf;
          return;
        }
      }
    }
    first_line = buf;
    int st = 0;
    if (waitpid(pid, &st, 0) == pid) exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid = -1;
  }
  bool listening() const { return pid > 0; }
  void kill9() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
  int term() {
    if (pid <= 0) return exit_code;
    kill(pid, SIGTERM);
    int st = 0;
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < end) {
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(10ms);
    }
    kill9();
    return -1;
  }
  ~BrokerProc() {
    kill9();
    if (out >= 0) close(out);
  }
};

bool is_socket(const std::string& p) {
  struct stat sb{};
  return ::lstat(p.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode);
}
}  // namespace

// ---------------- the socket path (issue items 3, 10, 19) ----------------

TEST(ListenPath, RegularFileAtThePathIsRefusedAndKept) {
  TempDir d;
  const std::string path = d.sock();
  { std::ofstream(path) << "precious"; }
  auto s = tessera::BrokerServer::start(options(path));
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find(path), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("not a socket"), std::string::npos) << s.error().message;
  std::ifstream in(path);
  std::string text;
  in >> text;
  EXPECT_EQ(text, "precious") << "the broker removed or changed a file it did not create";
}

TEST(ListenPath, DirectoryAtThePathIsRefusedAndKept) {
  TempDir d;
  const std::string path = d.sock();
  fs::create_directory(path);
  { std::ofstream(fs::path(path) / "inside") << "x"; }
  auto s = tessera::BrokerServer::start(options(path));
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find("not a socket"), std::string::npos) << s.error().message;
  EXPECT_TRUE(fs::is_directory(path));
  EXPECT_TRUE(fs::exists(fs::path(path) / "inside"));
}

TEST(ListenPath, LiveBrokersSocketIsRefusedAndKeepsServing) {
  TempDir d;
  const std::string path = d.sock();
  auto first = tessera::BrokerServer::start(options(path));
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto second = tessera::BrokerServer::start(options(path));
  ASSERT_FALSE(second.has_value());
  EXPECT_NE(second.error().message.find("another broker is listening on " + path), std::string::npos) << second.error().message;
  ASSERT_TRUE(is_socket(path)) << "the failed start removed the live broker's socket";
  auto c = tessera::Client::connect(path);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  // The same through the daemon: a clear error, exit code 1.
  BrokerProc p(path);
  EXPECT_FALSE(p.listening());
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.first_line.find("another broker is listening"), std::string::npos) << p.first_line;
  EXPECT_TRUE(is_socket(path));
}

TEST(ListenPath, StaleSocketIsReplaced) {
  TempDir d;
  const std::string path = d.sock();
  {  // a socket nobody accepts on: bound, then closed without unlink
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
  }
  ASSERT_TRUE(is_socket(path));
  auto s = tessera::BrokerServer::start(options(path));
  ASSERT_TRUE(s.has_value()) << s.error().message;
  auto c = tessera::Client::connect(path);
  EXPECT_TRUE(c.has_value()) << c.error().message;
}

TEST(ListenPath, SocketIsOwnerOnlyAndRemovedOnlyIfStillOurs) {
  TempDir d;
  const std::string path = d.sock();
  {
    auto s = tessera::BrokerServer::start(options(path));
    ASSERT_TRUE(s.has_value()) << s.error().message;
    struct stat sb{};
    ASSERT_EQ(::lstat(path.c_str(), &sb), 0);
    EXPECT_EQ(sb.st_mode & 07777, 0600u) << std::oct << (sb.st_mode & 07777);
    (*s)->stop();
    EXPECT_FALSE(fs::exists(path)) << "stop() must remove the socket it created";
  }
  {
    auto s = tessera::BrokerServer::start(options(path));
    ASSERT_TRUE(s.has_value()) << s.error().message;
    // Someone replaces the path while the broker runs: stop() must leave theirs.
    fs::remove(path);
    { std::ofstream(path) << "theirs"; }
    (*s)->stop();
    EXPECT_TRUE(fs::exists(path)) << "stop() removed a file it did not create";
  }
}

TEST(ListenPath, SigkilledBrokersSocketIsReplacedByTheNextStart) {
  TempDir d;
  const std::string path = d.sock();
  BrokerProc first(path);
  ASSERT_TRUE(first.listening()) << first.first_line;
  first.kill9();
  ASSERT_TRUE(is_socket(path)) << "expected the killed broker's socket file to stay behind";
  BrokerProc second(path);
  ASSERT_TRUE(second.listening()) << second.first_line;
  auto c = tessera::Client::connect(path);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  c->reset();
  EXPECT_EQ(second.term(), 0);
  EXPECT_FALSE(fs::exists(path));
}

// ---------------- descriptors pushed at the broker (item 5) ----------------

TEST(ListenWire, EveryUnexpectedDescriptorIsClosed) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  auto send_with_fds = [&](int n_fds) {
    const char byte = 'x';
    iovec iov{const_cast<char*>(&byte), 1};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(4 * sizeof(int))] = {};
    mh.msg_control = ctl;
    mh.msg_controllen = CMSG_SPACE(static_cast<std::size_t>(n_fds) * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(static_cast<std::size_t>(n_fds) * sizeof(int));
    for (int i = 0; i < n_fds; ++i) std::memcpy(CMSG_DATA(c) + static_cast<std::size_t>(i) * sizeof(int), &devnull, sizeof(int));
    return sendmsg(sv[0], &mh, 0) == 1;
  };
  const std::size_t before = count_fds();
  std::string buf;
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(send_with_fds(2));
    ASSERT_EQ(tessera::wire::recv_some(sv[1], buf, nullptr), 1);  // none expected: both closed
  }
  EXPECT_EQ(count_fds(), before) << "recv_some leaked descriptors";
  // One expected: the first is kept, the other closed.
  ASSERT_TRUE(send_with_fds(4));
  int got = -1;
  ASSERT_EQ(tessera::wire::recv_some(sv[1], buf, &got), 1);
  ASSERT_GE(got, 0);
  EXPECT_EQ(count_fds(), before + 1);
  close(got);
  close(devnull);
  close(sv[0]);
  close(sv[1]);
}

TEST(ListenWire, BrokerClosesDescriptorsAClientSends) {
  TempDir d;
  auto s = tessera::BrokerServer::start(options(d.sock()));
  ASSERT_TRUE(s.has_value()) << s.error().message;
  const int fd = hello_raw(d.sock());
  ASSERT_GE(fd, 0);
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const std::size_t before = count_fds();  // the broker runs in this process
  for (int i = 0; i < 300; ++i) {
    const std::string line = "{\"type\":\"ping\",\"id\":" + std::to_string(i) + "}\n";
    iovec iov{const_cast<char*>(line.data()), line.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(2 * sizeof(int))] = {};
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    std::memcpy(CMSG_DATA(c), &devnull, sizeof(int));
    std::memcpy(CMSG_DATA(c) + sizeof(int), &devnull, sizeof(int));
    ASSERT_EQ(sendmsg(fd, &mh, MSG_NOSIGNAL), static_cast<ssize_t>(line.size()));
  }
  ASSERT_FALSE(read_until(fd, "\"id\":299", 10s).empty()) << "the broker did not answer every ping";
  EXPECT_EQ(count_fds(), before) << "the broker kept descriptors a client sent it";
  close(devnull);
  close(fd);
}

// ---------------- a client that never reads (item 2) ----------------

TEST(ListenSlowClient, StoppedClientIsDisconnectedAndOthersAreServed) {
  TempDir d;
  auto o = options(d.sock(), 2);
  o.arena.classes = {{4096, 1024}};
  o.allow_client_kill = true;
  o.client_backlog = 64 * 1024;
  o.recover_timeout = 2s;
  auto s = tessera::BrokerServer::start(o);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  // A: a real process that floods pings, never reads an answer, then stops itself.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t a = fork();
  if (a == 0) {
    dup2(pipefd[1], 1);
    const std::string exe = kBin + "/tessera-test-client-proc";
    execl(exe.c_str(), exe.c_str(), d.sock().c_str(), "20000", "flood", nullptr);
    _exit(127);
  }
  close(pipefd[1]);
  char buf[16] = {};
  pollfd p{pipefd[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 20000), 1);
  ASSERT_GT(read(pipefd[0], buf, sizeof buf), 0);
  close(pipefd[0]);
  int wst = 0;
  ASSERT_EQ(waitpid(a, &wst, WUNTRACED), a);
  ASSERT_TRUE(WIFSTOPPED(wst));
  // B streams tiles while workers die, so the broker broadcasts to the stopped A too.
  auto b = tessera::Client::connect(d.sock());
  ASSERT_TRUE(b.has_value()) << b.error().message;
  auto st = (*b)->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 128}).value();
  std::vector<tessera::TileResult> got;
  std::size_t delivered = 0, completed = 0;
  const int kTiles = 1000;
  for (int i = 0; i < kTiles; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE((*b)->alloc(16 * 16 * 3, in, 10s).has_value());
    std::memset(in.bytes().data(), 20, 16 * 16 * 3);
    ASSERT_TRUE((*b)->submit(st, in, {.dtype = tessera::DType::UInt8, .shape = {16, 16, 3}}).has_value());
    if (i == 300 || i == 600) {
      ASSERT_TRUE((*b)->kill_worker(i == 300 ? 0 : 1).has_value());
    }
    (*b)->poll(got, 128, 0ms);
    for (auto& r : got) completed += r.outcome == tessera::Outcome::completed ? 1 : 0;
    delivered += got.size();
    got.clear();
  }
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (delivered < kTiles && std::chrono::steady_clock::now() < end) {
    (*b)->poll(got, 128, 20ms);
    for (auto& r : got) completed += r.outcome == tessera::Outcome::completed ? 1 : 0;
    delivered += got.size();
    got.clear();
  }
  EXPECT_EQ(delivered, static_cast<std::size_t>(kTiles));
  EXPECT_EQ(completed, static_cast<std::size_t>(kTiles));
  EXPECT_TRUE(eventually([&] { return (*s)->stats().clients_too_slow == 1; }, 10s)) << "the stopped client was not disconnected";
  EXPECT_EQ((*s)->stats().clients, 1);
  EXPECT_TRUE(eventually([&] { return (*s)->stats().worker_deaths >= 2; }, 10s));
  kill(a, SIGKILL);
  waitpid(a, nullptr, 0);
}

TEST(ListenSlowClient, ReaderBehindWithinTheBacklogGetsEveryAnswerInOrder) {
  TempDir d;
  auto s = tessera::BrokerServer::start(options(d.sock()));  // client_backlog: 1 MiB
  ASSERT_TRUE(s.has_value()) << s.error().message;
  const int fd = hello_raw(d.sock());
  ASSERT_GE(fd, 0);
  // 30,000 pings before reading a byte: ~780 KB of answers, far more than the
  // socket buffer holds, so most wait in the broker's queue for the socket to drain.
  const int kPings = 30000;
  std::string lines;
  for (int i = 0; i < kPings; ++i) lines += "{\"type\":\"ping\",\"id\":" + std::to_string(i) + "}\n";
  ASSERT_TRUE(send_text(fd, lines));
  std::this_thread::sleep_for(200ms);
  std::string buf;
  int next = 0;
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (next < kPings && std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    if (tessera::wire::recv_some(fd, buf, nullptr) <= 0) break;
    for (std::size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1)) {
      const std::string want = "{\"type\":\"pong\",\"id\":" + std::to_string(next) + "}";
      ASSERT_EQ(buf.substr(0, nl), want);
      ++next;
    }
  }
  EXPECT_EQ(next, kPings);
  EXPECT_EQ((*s)->stats().clients_too_slow, 0u);
  EXPECT_EQ((*s)->stats().clients, 1);
  close(fd);
}

// ---------------- shared-broker limits (items 9, 16) ----------------

TEST(ListenLimits, SilentConnectionsTakeNoSlotAndAreClosed) {
  TempDir d;
  auto o = options(d.sock());
  o.hello_timeout = 500ms;
  o.max_pending = 8;
  auto s = tessera::BrokerServer::start(o);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  // 70 connections that never say hello: more than there are participant slots.
  std::vector<int> idle;
  for (int i = 0; i < 70; ++i) {
    const int fd = connect_raw(d.sock());
    if (fd >= 0) idle.push_back(fd);
  }
  EXPECT_TRUE(eventually([&] { return (*s)->stats().clients_refused >= 62; }, 5s)) << (*s)->stats().clients_refused;
  // A real client still gets in (a slot is taken only after the hello).
  auto c = tessera::Client::connect(d.sock());
  ASSERT_TRUE(c.has_value()) << c.error().message;
  // The silent ones are closed after hello_timeout, with a reason.
  std::size_t closed = 0, told = 0;
  for (int fd : idle) {
    bool eof = false;
    const std::string line = read_until(fd, "error", 5s, &eof);
    if (!line.empty()) {
      ++told;
      eof = false;
      (void)read_until(fd, "\n-never-", 5s, &eof);
    }
    closed += eof ? 1 : 0;
    close(fd);
  }
  EXPECT_EQ(closed, idle.size());
  EXPECT_EQ(told, idle.size());
  EXPECT_GE((*s)->stats().hello_timeouts, 1u);
  EXPECT_EQ((*s)->stats().clients, 1);
}

TEST(ListenLimits, MaxClientsRefusesWithAClearError) {
  TempDir d;
  auto o = options(d.sock());
  o.max_clients = 1;
  auto s = tessera::BrokerServer::start(o);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  auto first = tessera::Client::connect(d.sock());
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto second = tessera::Client::connect(d.sock(), {}, 5s);
  ASSERT_FALSE(second.has_value());
  EXPECT_NE(second.error().message.find("full"), std::string::npos) << second.error().message;
  first->reset();
  EXPECT_TRUE(eventually([&] { return (*s)->stats().clients == 0; }, 5s));
  auto third = tessera::Client::connect(d.sock());
  EXPECT_TRUE(third.has_value()) << third.error().message;
}

TEST(ListenLimits, ClientOverItsBlockShareIsDisconnectedAndOthersAllocate) {
  TempDir d;
  auto o = options(d.sock());
  o.max_blocks_percent = 50;  // of 64 blocks: 32 per client
  o.quota_interval = 50ms;
  auto s = tessera::BrokerServer::start(o);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  auto greedy = tessera::Client::connect(d.sock());
  auto other = tessera::Client::connect(d.sock());
  ASSERT_TRUE(greedy.has_value() && other.has_value());
  std::vector<tessera::InputBlock> hoard(48);
  for (auto& b : hoard) ASSERT_TRUE((*greedy)->alloc(4096, b, 1s).has_value());
  EXPECT_TRUE(eventually([&] { return (*s)->stats().clients_over_quota == 1; }, 5s));
  // The greedy client's blocks come back; the other client allocates its share.
  EXPECT_TRUE(eventually([&] { return tessera::Slab::count_held((*s)->arena(), tessera::kNoSlot) == 0; }, 5s));
  std::vector<tessera::InputBlock> mine(32);
  for (auto& b : mine) ASSERT_TRUE((*other)->alloc(4096, b, 1s).has_value());
  EXPECT_EQ((*s)->stats().clients, 1);
  mine.clear();
  hoard.clear();
}

TEST(ListenLimits, AllocFailingOnOtherClientsBlocksSaysSo) {
  TempDir d;
  auto o = options(d.sock());
  o.max_blocks_percent = 0;  // no quota: one client may take the whole arena
  auto s = tessera::BrokerServer::start(o);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  auto greedy = tessera::Client::connect(d.sock());
  auto other = tessera::Client::connect(d.sock());
  ASSERT_TRUE(greedy.has_value() && other.has_value());
  std::vector<tessera::InputBlock> hoard;
  for (;;) {
    tessera::InputBlock b;
    if ((*greedy)->try_alloc(4096, b) != tessera::AllocStatus::ok) break;
    hoard.push_back(std::move(b));
  }
  tessera::InputBlock b;
  auto r = (*other)->alloc(4096, b, 200ms);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("other participants hold"), std::string::npos) << r.error().message;
  hoard.clear();
}

TEST(ListenLimits, KillWorkerFromAClientIsRefusedUnlessGranted) {
  TempDir d;
  auto s = tessera::BrokerServer::start(options(d.sock()));
  ASSERT_TRUE(s.has_value()) << s.error().message;
  const int fd = hello_raw(d.sock());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_text(fd, "{\"type\":\"kill_worker\",\"index\":0}\n"));
  const std::string err = read_until(fd, "kill_worker refused", 10s);
  EXPECT_FALSE(err.empty());
  EXPECT_NE(err.find("--allow-client-kill"), std::string::npos) << err;
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ((*s)->stats().worker_deaths, 0u);
  EXPECT_EQ((*s)->stats().kills_refused, 1u);
  close(fd);
  // Granted: the same message kills the worker, which is respawned.
  TempDir d2;
  auto o = options(d2.sock());
  o.allow_client_kill = true;
  auto g = tessera::BrokerServer::start(o);
  ASSERT_TRUE(g.has_value()) << g.error().message;
  const int fd2 = hello_raw(d2.sock());
  ASSERT_GE(fd2, 0);
  ASSERT_TRUE(send_text(fd2, "{\"type\":\"kill_worker\",\"index\":0}\n"));
  EXPECT_FALSE(read_until(fd2, "worker_died", 10s).empty());
  ASSERT_TRUE(send_text(fd2, "{\"type\":\"recovered\",\"index\":0}\n"));
  EXPECT_FALSE(read_until(fd2, "worker_ready", 20s).empty());
  EXPECT_EQ((*g)->stats().worker_deaths, 1u);
  close(fd2);
}

TEST(ListenWire, UnknownAndEarlyMessagesGetClearErrors) {
  TempDir d;
  auto s = tessera::BrokerServer::start(options(d.sock()));
  ASSERT_TRUE(s.has_value()) << s.error().message;
  {  // before the hello: refused and closed
    const int fd = connect_raw(d.sock());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_text(fd, "{\"type\":\"recovered\",\"index\":0}\n"));
    EXPECT_NE(read_until(fd, "error", 5s).find("expected a hello"), std::string::npos);
    bool eof = false;
    (void)read_until(fd, "\n-never-", 5s, &eof);
    EXPECT_TRUE(eof);
    close(fd);
  }
  {  // a wrong protocol version
    const int fd = connect_raw(d.sock());
    ASSERT_TRUE(send_text(fd, "{\"type\":\"hello\",\"version\":99}\n"));
    EXPECT_NE(read_until(fd, "error", 5s).find("version 99"), std::string::npos);
    close(fd);
  }
  {  // after the hello: answered, the session stays
    const int fd = hello_raw(d.sock());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_text(fd, "{\"type\":\"frobnicate\"}\nnot json\n{\"type\":\"ping\",\"id\":7}\n"));
    EXPECT_NE(read_until(fd, "error", 5s).find("unknown message type 'frobnicate'"), std::string::npos);
    EXPECT_FALSE(read_until(fd, "\"pong\"", 5s).empty());
    close(fd);
  }
  EXPECT_TRUE(eventually([&] { return (*s)->stats().clients == 0; }, 5s));
}
