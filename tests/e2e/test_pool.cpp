// The supervised pool: start, readiness, worker death with respawn, init failure.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

#include <set>

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
