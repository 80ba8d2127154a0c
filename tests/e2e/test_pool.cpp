// The supervised pool: start, readiness, worker death with respawn, init failure.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include <tessera/client.hpp>

using namespace std::chrono_literals;
using tessera::Client;
using tessera::Outcome;
using tessera::TileResult;

namespace {

const std::string& kWorker = tessera::test::kExampleWorker;

tessera::ClientOptions opts() {
  tessera::ClientOptions o;
  o.arena.classes = {{4096, 2048}, {65536, 64}};
  o.arena.n_rings = 16;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  o.worker_window = 16;
  o.wait.spin_ns = 20'000;
  return o;
}

tessera::PoolSpec spec(int count, std::vector<std::string> init = {}, std::string exe = kWorker) {
  tessera::PoolSpec p;
  p.argv = {std::move(exe)};
  p.count = count;
  p.init_scripts = std::move(init);
  return p;
}

std::uint64_t submit(Client& c, std::uint32_t s, int i, std::uint32_t op = 0) {
  tessera::InputBlock in;
  EXPECT_TRUE(c.alloc(8 * 8 * 3, in, 5s).has_value());
  for (std::size_t k = 0; k < in.bytes().size() && k < 192; ++k) in.bytes()[k] = std::byte{10};
  auto r = c.submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .x = i, .op = op});
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? *r : 0;
}

}  // namespace

TEST(Pool, StartsWorkersThatReportReady) {
  auto c = Client::embedded(opts()).value();
  auto r = c->start_pool(spec(2));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto ws = c->workers();
  ASSERT_EQ(ws.size(), 2u);
  for (auto& w : ws) {
    EXPECT_TRUE(w.alive);
    EXPECT_GT(w.pid, 0);
  }
}

TEST(Pool, InitFailureFailsLoudlyWithTheWorkersMessage) {
  auto c = Client::embedded(opts()).value();
  auto r = c->start_pool(spec(1, {"load-model-that-does-not-exist"}));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("unknown script"), std::string::npos) << r.error().message;
}

TEST(Pool, MissingWorkerExecutableIsAClearError) {
  auto c = Client::embedded(opts()).value();
  auto r = c->start_pool(spec(1, {}, "/nonexistent/tessera-worker"));
  ASSERT_FALSE(r.has_value());
  EXPECT_FALSE(r.error().message.empty());
}

TEST(Pool, KilledWorkerIsRespawnedAndEveryTileHasExactlyOneOutcome) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(2);
  sp.max_retries = 2;
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 128}).value();
  constexpr int kTiles = 2000;
  std::vector<TileResult> got;
  std::set<std::uint64_t> seen;
  std::size_t delivered = 0, completed = 0;
  auto absorb = [&] {
    for (auto& r : got) {
      EXPECT_TRUE(seen.insert(r.seq).second) << "duplicate outcome for " << r.seq;
      EXPECT_EQ(r.seq, delivered) << "out of order";
      ++delivered;
      if (r.outcome == Outcome::completed) {
        ++completed;
      } else {
        ADD_FAILURE() << "tile " << r.seq << ": " << r.error;
      }
    }
    got.clear();
  };
  const int first_pid = c->workers()[0].pid;
  for (int i = 0; i < kTiles; ++i) {
    submit(*c, s, i);
    if (i == kTiles / 3) {
      ASSERT_TRUE(c->kill_worker(0).has_value());
    }
    c->poll(got, 256, 0ms);
    absorb();
  }
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (delivered < kTiles && std::chrono::steady_clock::now() < end) {
    c->poll(got, 256, 20ms);
    absorb();
  }
  EXPECT_EQ(delivered, static_cast<std::size_t>(kTiles));
  EXPECT_EQ(completed, static_cast<std::size_t>(kTiles));
  // The dead worker came back (a new process).
  const auto end2 = std::chrono::steady_clock::now() + 20s;
  while (!(c->workers()[0].alive && c->workers()[0].pid != first_pid) && std::chrono::steady_clock::now() < end2) {
    c->poll(got, 1, 20ms);
  }
  EXPECT_TRUE(c->workers()[0].alive);
  EXPECT_NE(c->workers()[0].pid, first_pid);
  EXPECT_GE(c->workers()[0].restarts, 1u);
  EXPECT_EQ(tessera::Slab::count_held(c->arena(), tessera::kNoSlot), 0u);
}

namespace {

// Polls until `n` outcomes arrived (or `timeout`); checks that none is a duplicate.
std::vector<TileResult> collect(Client& c, std::size_t n, std::chrono::seconds timeout) {
  std::vector<TileResult> all, got;
  std::set<std::pair<std::uint32_t, std::uint64_t>> seen;
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (all.size() < n && std::chrono::steady_clock::now() < end) {
    c.poll(got, 256, 20ms);
    for (auto& r : got) {
      EXPECT_TRUE(seen.insert({r.stream, r.seq}).second) << "second outcome for tile " << r.seq;
      all.push_back(std::move(r));
    }
    got.clear();
  }
  return all;
}

bool alive_pid(int pid) { return ::kill(pid, 0) == 0; }

// A child process the test owns (a `sleep`), killed and reaped at the end.
struct Bystander {
  pid_t pid = -1;
  Bystander() {
    pid = ::fork();
    if (pid == 0) {
      ::execl("/bin/sleep", "sleep", "60", nullptr);
      ::_exit(127);
    }
  }
  ~Bystander() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st = 0;
      ::waitpid(pid, &st, 0);
    }
  }
  bool running() const {
    int st = 0;
    return ::waitpid(pid, &st, WNOHANG) == 0;
  }
};

}  // namespace

// Issue 11 item 4: a worker that dies on a tile (here the example worker's op 7,
// `_exit(42)`) is respawned every time; the tile fails as poison once its worker died
// on it max_retries + 1 times, and no other tile pays for it.
TEST(Pool, PoisonTilesFailAsPoisonAndEveryOtherTileCompletes) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(2);
  sp.max_retries = 1;  // poison after 2 deaths
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.max_in_flight = 128}).value();
  constexpr int kTiles = 300;
  std::set<std::uint64_t> poison;
  std::vector<TileResult> got;
  std::vector<TileResult> all;
  for (int i = 0; i < kTiles; ++i) {
    const bool bad = i % 12 == 5;  // 25 of 300
    const std::uint64_t seq = submit(*c, s, i, bad ? 7 : 0);
    if (bad) poison.insert(seq);
    c->poll(got, 256, 0ms);
    for (auto& r : got) all.push_back(std::move(r));
    got.clear();
  }
  auto rest = collect(*c, kTiles - all.size(), 90s);
  for (auto& r : rest) all.push_back(std::move(r));
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kTiles));
  std::set<std::uint64_t> seen;
  std::size_t completed = 0, poisoned = 0;
  for (const auto& r : all) {
    EXPECT_TRUE(seen.insert(r.seq).second) << "second outcome for " << r.seq;
    if (poison.count(r.seq)) {
      EXPECT_EQ(r.outcome, Outcome::failed);
      EXPECT_EQ(r.status, tessera::TileStatus::WorkerDied);
      EXPECT_NE(r.error.find("worker died on this tile 2 times"), std::string::npos) << r.error;
      EXPECT_NE(r.error.find("exit"), std::string::npos) << r.error;
      ++poisoned;
    } else {
      EXPECT_EQ(r.outcome, Outcome::completed) << "tile " << r.seq << ": " << r.error;
      if (r.outcome == Outcome::completed) ++completed;
    }
  }
  EXPECT_EQ(poisoned, poison.size());
  EXPECT_EQ(completed, kTiles - poison.size());
  // The pool still serves.
  const std::uint64_t after = submit(*c, s, 0);
  auto last = collect(*c, 1, 30s);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].seq, after);
  EXPECT_EQ(last[0].outcome, Outcome::completed) << last[0].error;
  for (const auto& w : c->workers()) EXPECT_GE(w.restarts, 1u);
}

// Issue 11 item 4: deaths after readiness are not start failures. Killed right after
// each respawn (well within the supervisor's 1 s crash-loop window), the worker comes
// back every time and every tile completes.
TEST(Pool, AWorkerKilledRightAfterEachRespawnIsNeverGivenUp) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(1);
  sp.max_retries = 10;
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.max_in_flight = 64}).value();
  std::vector<TileResult> all, got;
  int kills = 0;
  int last_pid = c->workers()[0].pid;
  for (int round = 0; round < 6; ++round) {
    for (int i = 0; i < 8; ++i) submit(*c, s, i);
    ASSERT_TRUE(c->kill_worker(0).has_value());
    ++kills;
    // Wait for the respawn (a new pid), then kill again at once.
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (!(c->workers()[0].alive && c->workers()[0].pid != last_pid) && std::chrono::steady_clock::now() < end) {
      c->poll(got, 256, 5ms);
      for (auto& r : got) all.push_back(std::move(r));
      got.clear();
    }
    ASSERT_TRUE(c->workers()[0].alive) << "worker given up after " << kills << " kills";
    last_pid = c->workers()[0].pid;
  }
  auto rest = collect(*c, 48 - all.size(), 30s);
  for (auto& r : rest) all.push_back(std::move(r));
  ASSERT_EQ(all.size(), 48u);
  for (const auto& r : all) EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
}

// Issue 11 item 1: with no live worker left and none coming back, submit and alloc
// fail at the call with `unavailable`, and every tile in flight got a failed outcome
// naming the cause. Here the respawn keeps failing (the command refuses to start a
// second time), so the pool gives up after its start failures.
TEST(Pool, WhenThePoolGivesUpEveryTileFailsAndSubmitFailsAtTheCall) {
  const auto flag = std::filesystem::temp_directory_path() /
                    ("tessera-pool-once-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()));
  auto c = Client::embedded(opts()).value();
  tessera::PoolSpec sp;
  sp.argv = {"/bin/sh", "-c", "if [ -e '" + flag.string() + "' ]; then exit 3; fi; : > '" + flag.string() + "'; exec " + kWorker};
  sp.count = 1;
  sp.env["PATH"] = "/usr/bin:/bin";
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.max_in_flight = 64}).value();
  for (int i = 0; i < 20; ++i) submit(*c, s, i, 4);  // slow: still in flight at the kill
  ASSERT_TRUE(c->kill_worker(0).has_value());
  auto all = collect(*c, 20, 30s);
  std::filesystem::remove(flag);
  ASSERT_EQ(all.size(), 20u);
  std::size_t failed = 0;
  for (const auto& r : all) {
    if (r.outcome == Outcome::completed) continue;  // answered before the kill
    ++failed;
    EXPECT_EQ(r.outcome, Outcome::failed);
    EXPECT_NE(r.error.find("gave up"), std::string::npos) << r.error;
  }
  EXPECT_GT(failed, 0u);
  tessera::InputBlock in;
  auto a = c->alloc(192, in, 1s);
  ASSERT_FALSE(a.has_value());
  EXPECT_EQ(a.error().code, tessera::Errc::unavailable) << a.error().message;
  ASSERT_EQ(c->try_alloc(192, in), tessera::AllocStatus::ok);
  auto q = c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}});
  ASSERT_FALSE(q.has_value());
  EXPECT_EQ(q.error().code, tessera::Errc::unavailable);
  EXPECT_NE(q.error().message.find("gave up"), std::string::npos) << q.error().message;
}

TEST(Pool, WithNoRingsStartFailsAndSubmitFailsAtTheCall) {
  auto o = opts();
  o.arena.n_rings = 0;
  auto c = Client::embedded(o);
  if (!c) GTEST_SKIP() << "an arena without rings is refused at creation: " << c.error().message;
  ASSERT_FALSE((*c)->start_pool(spec(1)).has_value());
  auto s = (*c)->open_stream().value();
  tessera::InputBlock in;
  auto a = (*c)->alloc(192, in, 1s);
  ASSERT_FALSE(a.has_value());
  EXPECT_EQ(a.error().code, tessera::Errc::unavailable) << a.error().message;
  ASSERT_EQ((*c)->try_alloc(192, in), tessera::AllocStatus::ok);
  auto q = (*c)->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}});
  ASSERT_FALSE(q.has_value());
  EXPECT_EQ(q.error().code, tessera::Errc::unavailable) << q.error().message;
}

// Issue 11 item 11: a stopped worker holding tiles is killed after stall_timeout and
// its tiles complete elsewhere; a slow but working one (op 4, 50 ms a tile) is not.
TEST(Pool, AStoppedWorkerHoldingTilesIsKilledAfterTheStallTimeout) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(2);
  sp.stall_timeout = 400ms;
  sp.max_retries = 2;
  ASSERT_TRUE(c->start_pool(sp).has_value());
  const int stopped = c->workers()[0].pid;
  ASSERT_EQ(::kill(stopped, SIGSTOP), 0);
  auto s = c->open_stream({.max_in_flight = 64}).value();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 40; ++i) submit(*c, s, i);
  auto all = collect(*c, 40, 30s);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(all.size(), 40u);
  for (const auto& r : all) EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
  EXPECT_FALSE(alive_pid(stopped) && c->workers()[0].pid == stopped) << "the stopped worker was not replaced";
  EXPECT_GE(c->workers()[0].restarts, 1u);
  EXPECT_LT(took, 20s);
}

TEST(Pool, ASlowWorkerThatKeepsAnsweringIsNotAStall) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(1);
  sp.stall_timeout = 300ms;
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.max_in_flight = 64}).value();
  for (int i = 0; i < 16; ++i) submit(*c, s, i, 4);  // 16 x 50 ms in one worker's window: 800 ms
  auto all = collect(*c, 16, 30s);
  ASSERT_EQ(all.size(), 16u);
  for (const auto& r : all) EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
  EXPECT_EQ(c->workers()[0].restarts, 0u);
}

TEST(Pool, AHungHandlerIsKilledAndItsTileFailsAsPoison) {
  auto c = Client::embedded(opts()).value();
  auto sp = spec(2);
  sp.stall_timeout = 300ms;
  sp.max_retries = 1;
  ASSERT_TRUE(c->start_pool(sp).has_value());
  auto s = c->open_stream({.max_in_flight = 64}).value();
  const std::uint64_t hung = submit(*c, s, 0, 8);
  for (int i = 1; i < 20; ++i) submit(*c, s, i);
  auto all = collect(*c, 20, 30s);
  ASSERT_EQ(all.size(), 20u);
  for (const auto& r : all) {
    if (r.seq == hung) {
      EXPECT_EQ(r.outcome, Outcome::failed);
      EXPECT_NE(r.error.find("worker died on this tile 2 times"), std::string::npos) << r.error;
      EXPECT_NE(r.error.find("stalled"), std::string::npos) << r.error;
    } else {
      EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
    }
  }
}

// Issue 11 item 16: the pool signals only the processes it spawned (through their
// pidfd); a pid reported through set_worker_pid is shown, never signalled.
TEST(Pool, AForgedWorkerPidIsNeverSignalled) {
  Bystander victim;
  ASSERT_GT(victim.pid, 0);
  auto c = Client::embedded(opts()).value();
  ASSERT_TRUE(c->start_pool(spec(1)).has_value());
  const int real = c->workers()[0].pid;
  c->set_worker_pid(0, victim.pid);  // a pool worker: ignored
  EXPECT_EQ(c->workers()[0].pid, real);
  ASSERT_TRUE(c->kill_worker(0).has_value());
  auto ext = c->add_external_worker("external").value();
  c->set_worker_pid(ext.index, victim.pid);  // the caller's own worker: shown only
  auto k = c->kill_worker(ext.index);
  ASSERT_FALSE(k.has_value());
  EXPECT_EQ(k.error().code, tessera::Errc::invalid_argument);
  const auto end = std::chrono::steady_clock::now() + 20s;
  std::vector<TileResult> got;
  while (!(c->workers()[0].alive && c->workers()[0].pid != real) && std::chrono::steady_clock::now() < end) c->poll(got, 1, 20ms);
  EXPECT_TRUE(c->workers()[0].alive);
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(victim.running()) << "the forged pid's process was killed";
}

// Issue 11 item 18: a result that arrives after its tile's deadline is failed as
// `Deadline`, never delivered as completed (here the client does not look at its
// rings until well after the deadline, so the answer is already there).
TEST(Pool, AResultArrivingAfterItsDeadlineFailsAsDeadline) {
  auto c = Client::embedded(opts()).value();
  ASSERT_TRUE(c->start_pool(spec(1)).has_value());
  auto s = c->open_stream({.max_in_flight = 64}).value();
  tessera::InputBlock in;
  ASSERT_TRUE(c->alloc(192, in, 5s).has_value());
  auto q = c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .op = 2, .deadline = 30ms});
  ASSERT_TRUE(q.has_value());
  std::this_thread::sleep_for(150ms);  // the worker answered in microseconds; the deadline passed since
  auto all = collect(*c, 1, 10s);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].outcome, Outcome::failed);
  EXPECT_EQ(all[0].status, tessera::TileStatus::Deadline);
  EXPECT_NE(all[0].error.find("deadline exceeded"), std::string::npos) << all[0].error;
  // On time: delivered as completed.
  ASSERT_TRUE(c->alloc(192, in, 5s).has_value());
  ASSERT_TRUE(c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .op = 2, .deadline = 10s}).has_value());
  all = collect(*c, 1, 10s);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].outcome, Outcome::completed) << all[0].error;
  EXPECT_EQ(tessera::Slab::count_held(c->arena(), tessera::kNoSlot), 1u);  // only the result block we hold
}

// Issue 11 item 15: "forever" (nanoseconds::max()) never wraps into the past.
TEST(Pool, ForeverTimeoutsWaitInsteadOfReturningAtOnce) {
  auto c = Client::embedded(opts()).value();
  ASSERT_TRUE(c->start_pool(spec(1)).has_value());
  constexpr auto kForever = std::chrono::nanoseconds::max();
  auto s = c->open_stream({.max_in_flight = 1}).value();
  tessera::InputBlock in;
  ASSERT_TRUE(c->alloc(192, in, kForever).has_value());
  ASSERT_TRUE(c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .op = 4, .deadline = kForever}).has_value());
  // The stream is full: submit must wait for the slow tile (its outcome delivered by a
  // poll in between is not needed: a full stream of finished tiles fails fast).
  std::vector<TileResult> got;
  EXPECT_EQ(c->poll(got, 1, kForever), 1u);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::completed) << got[0].error;
  ASSERT_TRUE(c->alloc(192, in, kForever).has_value());
  ASSERT_TRUE(c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .op = 4}).has_value());
  ASSERT_TRUE(c->alloc(192, in, kForever).has_value());
  auto q = c->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {8, 8, 3}, .op = 2}, tessera::SubmitMode::block, kForever);
  EXPECT_FALSE(!q.has_value() && q.error().code == tessera::Errc::timeout) << "a forever submit timed out at once";
}
