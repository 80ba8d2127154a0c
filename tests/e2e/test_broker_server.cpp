// The standalone broker with clients in other processes (and in this one):
// sharing the pool, worker death with every client's recovery, and a client
// killed with -9 whose blocks all come back.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include <tessera/broker_server.hpp>

using namespace std::chrono_literals;

namespace {
const std::string kBin = TESSERA_BIN_DIR;

std::string unique_socket() {
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() /
             ("tessera-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
  return (dir / "broker.sock").string();
}

struct Server {
  std::unique_ptr<tessera::BrokerServer> srv;
  std::string path;
  explicit Server(int workers, bool allow_client_kill = false) {
    path = unique_socket();
    tessera::BrokerServerOptions o;
    o.arena.classes = {{4096, 1024}};
    o.arena.n_rings = 32;
    o.arena.ring_capacity = 64;
    o.arena.prefault = false;
    o.pool.argv = {kBin + "/tessera-tissue-worker"};
    o.pool.count = workers;
    o.pool.max_retries = 3;
    o.socket_path = path;
    o.allow_client_kill = allow_client_kill;
    auto s = tessera::BrokerServer::start(o);
    EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message);
    if (s) srv = std::move(*s);
  }
  ~Server() {
    if (srv) srv->stop();
    std::filesystem::remove_all(std::filesystem::path(path).parent_path());
  }
};

// Runs client_proc; returns its pid. Its stdout goes to `out_fd` if >= 0.
pid_t run_client(const std::string& sock, int tiles, const char* mode, int out_fd = -1) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (out_fd >= 0) dup2(out_fd, 1);
    const std::string exe = kBin + "/tessera-test-client-proc";
    const std::string n = std::to_string(tiles);
    execl(exe.c_str(), exe.c_str(), sock.c_str(), n.c_str(), mode, nullptr);
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  int st = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    std::this_thread::sleep_for(10ms);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  return -1;
}
}  // namespace

TEST(BrokerServer, TwoClientProcessesShareThePool) {
  Server s(2);
  ASSERT_TRUE(s.srv);
  const pid_t a = run_client(s.path, 1000, "collect");
  const pid_t b = run_client(s.path, 1000, "collect");
  EXPECT_EQ(wait_exit(a, 60s), 0);
  EXPECT_EQ(wait_exit(b, 60s), 0);
  const auto st = s.srv->stats();
  EXPECT_EQ(st.clients_connected, 2u);
  EXPECT_EQ(tessera::Slab::count_held(s.srv->arena(), tessera::kNoSlot), 0u);
}

TEST(BrokerServer, ConnectWithoutABrokerIsAClearError) {
  auto c = tessera::Client::connect("/nonexistent-dir/tessera.sock");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code, tessera::Errc::unavailable);
  EXPECT_NE(c.error().message.find("no broker"), std::string::npos);
}

TEST(BrokerServer, KilledClientsBlocksAllComeBack) {
  Server s(2);
  ASSERT_TRUE(s.srv);
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t c = run_client(s.path, 200, "hold", pipefd[1]);
  close(pipefd[1]);
  char buf[16] = {};
  ASSERT_GT(read(pipefd[0], buf, sizeof buf), 0);  // "holding": 200 tiles submitted, none collected
  close(pipefd[0]);
  EXPECT_GT(tessera::Slab::count_held(s.srv->arena(), tessera::kNoSlot), 0u);
  kill(c, SIGKILL);
  waitpid(c, nullptr, 0);
  const auto end = std::chrono::steady_clock::now() + 15s;
  while (tessera::Slab::count_held(s.srv->arena(), tessera::kNoSlot) != 0 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(tessera::Slab::count_held(s.srv->arena(), tessera::kNoSlot), 0u) << "blocks of the dead client leaked";
  EXPECT_EQ(s.srv->stats().clients_gone, 1u);
  // The pool still serves a new client.
  EXPECT_EQ(wait_exit(run_client(s.path, 300, "collect"), 60s), 0);
}

TEST(BrokerServer, WorkerDeathIsRecoveredByEveryClient) {
  Server s(2, /*allow_client_kill=*/true);
  ASSERT_TRUE(s.srv);
  auto c = tessera::Client::connect(s.path);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  auto st = (*c)->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 128}).value();
  std::vector<tessera::TileResult> got;
  std::size_t delivered = 0, completed = 0;
  auto absorb = [&] {  // check and release each result at once (the arena is small)
    for (auto& r : got) {
      EXPECT_EQ(r.seq, delivered) << "out of order";
      ++delivered;
      if (r.outcome == tessera::Outcome::completed) {
        ++completed;
      } else {
        ADD_FAILURE() << r.error;
      }
    }
    got.clear();
  };
  for (int i = 0; i < 2000; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE((*c)->alloc(16 * 16 * 3, in, 10s).has_value());
    std::memset(in.bytes().data(), 20, 16 * 16 * 3);
    ASSERT_TRUE((*c)->submit(st, in, {.dtype = tessera::DType::UInt8, .shape = {16, 16, 3}}).has_value());
    if (i == 700) {
      ASSERT_TRUE((*c)->kill_worker(0).has_value());
    }
    (*c)->poll(got, 128, 0ms);
    absorb();
  }
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (delivered < 2000 && std::chrono::steady_clock::now() < end) {
    (*c)->poll(got, 128, 20ms);
    absorb();
  }
  ASSERT_EQ(delivered, 2000u);
  EXPECT_EQ(completed, 2000u);
  const auto end2 = std::chrono::steady_clock::now() + 20s;
  while (s.srv->stats().respawns < 1 && std::chrono::steady_clock::now() < end2) std::this_thread::sleep_for(10ms);
  EXPECT_GE(s.srv->stats().worker_deaths, 1u);
  EXPECT_GE(s.srv->stats().respawns, 1u);
}
