// The client data path end to end with real worker processes (the example C++
// worker), started through the pool-less external-worker path.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

#include <csignal>
#include <map>
#include <set>

#include "spawn.hpp"

using namespace std::chrono_literals;
using tessera::Client;
using tessera::Outcome;
using tessera::TileResult;

namespace {

const std::string& kWorker = tessera::test::kExampleWorker;

tessera::ClientOptions small_options() {
  tessera::ClientOptions o;
  o.arena.classes = {{4096, 2048}, {65536, 64}, {262144, 32}};
  o.arena.n_rings = 16;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  o.worker_window = 16;
  o.wait.spin_ns = 20'000;
  return o;
}

struct Pipeline {
  std::unique_ptr<Client> client;
  std::vector<tessera::test::SpawnedWorker> procs;
  std::vector<std::int32_t> ids;

  explicit Pipeline(int n_workers, tessera::ClientOptions o = small_options()) {
    client = Client::embedded(o).value();
    for (int i = 0; i < n_workers; ++i) add_worker();
  }
  void add_worker() {
    auto ew = client->add_external_worker("w").value();
    procs.push_back(tessera::test::spawn_worker(ew, {kWorker}));
    ids.push_back(ew.index);
    client->set_worker_pid(ew.index, procs.back().pid);
  }
};

// Fills a 16x16x3 uint8 tile whose left half is dark (tissue) and right half bright.
void fill_tile(std::span<std::byte> b, int salt) {
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x)
      for (int c = 0; c < 3; ++c)
        b[static_cast<std::size_t>((y * 16 + x) * 3 + c)] = static_cast<std::byte>(x < 8 ? (salt % 50) : 250);
}

std::uint64_t submit_tile(Client& c, std::uint32_t stream, int salt, std::uint32_t op = 0) {
  tessera::InputBlock in;
  EXPECT_TRUE(c.alloc(16 * 16 * 3, in, 5s).has_value());
  fill_tile(in.bytes(), salt);
  tessera::TileMeta m;
  m.dtype = tessera::DType::UInt8;
  m.shape = {16, 16, 3};
  m.x = salt;
  m.op = op;
  auto seq = c.submit(stream, in, m);
  EXPECT_TRUE(seq.has_value()) << (seq ? "" : seq.error().message);
  return seq ? *seq : ~0ULL;
}

// Polls until `n` outcomes arrived or 30 s passed.
std::vector<TileResult> collect(Client& c, std::size_t n) {
  std::vector<TileResult> out;
  out.reserve(n);
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (out.size() < n && std::chrono::steady_clock::now() < end) c.poll(out, n - out.size(), 50ms);
  return out;
}

}  // namespace

TEST(ClientPipeline, MasksComeBackCorrectAndInSubmissionOrder) {
  Pipeline p(2);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 64}).value();
  constexpr int kTiles = 500;
  std::vector<TileResult> got;
  for (int i = 0; i < kTiles; ++i) {
    submit_tile(*p.client, s, i);
    p.client->poll(got, 64, 0ms);
  }
  auto rest = collect(*p.client, kTiles - got.size());
  for (auto& r : rest) got.push_back(std::move(r));
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kTiles));
  for (int i = 0; i < kTiles; ++i) {
    const auto& r = got[static_cast<std::size_t>(i)];
    ASSERT_EQ(r.seq, static_cast<std::uint64_t>(i)) << "delivered out of submission order";
    ASSERT_EQ(r.outcome, Outcome::completed) << r.error << " status " << static_cast<int>(r.status);
    const auto mask = r.output.view().as<const std::uint8_t>();
    ASSERT_EQ(mask.size(), 256u);
    EXPECT_EQ(mask[0], 255) << "dark pixel must be tissue";
    EXPECT_EQ(mask[15], 0) << "bright pixel must be glass";
    EXPECT_EQ(r.meta.x, i);
  }
  // Every worker did some of the work.
  for (const auto& w : p.client->workers()) EXPECT_GT(w.completed, 0u) << "worker " << w.index;
}

TEST(ClientPipeline, HandlerErrorFailsOnlyThatTileWithTheWorkersMessage) {
  Pipeline p(1);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  submit_tile(*p.client, s, 1, 0);
  submit_tile(*p.client, s, 2, 3);  // op 3 throws
  submit_tile(*p.client, s, 3, 0);
  auto got = collect(*p.client, 3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].outcome, Outcome::completed);
  EXPECT_EQ(got[1].outcome, Outcome::failed);
  EXPECT_NE(got[1].error.find("op 3 always fails"), std::string::npos) << got[1].error;
  EXPECT_EQ(got[2].outcome, Outcome::completed);
}

TEST(ClientPipeline, WrongShapeForTheHandlerIsAFailedTileNotACrash) {
  Pipeline p(1);
  auto s = p.client->open_stream().value();
  tessera::InputBlock in;
  ASSERT_TRUE(p.client->alloc(100, in, 5s).has_value());
  tessera::TileMeta m;
  m.dtype = tessera::DType::Float32;
  m.shape = {5, 5};
  ASSERT_TRUE(p.client->submit(s, in, m).has_value());
  submit_tile(*p.client, s, 7);
  auto got = collect(*p.client, 2);
  ASSERT_EQ(got.size(), 2u);
  int failed = 0, completed = 0;
  for (auto& r : got) {
    if (r.outcome == Outcome::failed) {
      ++failed;
      EXPECT_NE(r.error.find("mask needs uint8"), std::string::npos) << r.error;
    }
    if (r.outcome == Outcome::completed) ++completed;
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(completed, 1);
}

TEST(ClientPipeline, BadCallsGetClearErrorsAtTheCall) {
  Pipeline p(1);
  auto s = p.client->open_stream().value();
  tessera::InputBlock in;
  ASSERT_TRUE(p.client->alloc(64, in, 5s).has_value());
  tessera::TileMeta m;
  m.shape = {1000, 1000, 3};  // far larger than the block
  auto r = p.client->submit(s, in, m);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, tessera::Errc::invalid_argument);
  EXPECT_NE(r.error().message.find("bytes"), std::string::npos);
  // Closed stream.
  auto r2 = p.client->submit(99, in, {.shape = {4}});
  ASSERT_FALSE(r2.has_value());
  EXPECT_EQ(r2.error().code, tessera::Errc::closed);
  // Oversized allocation.
  tessera::InputBlock big;
  auto r3 = p.client->alloc(1ULL << 30, big, 10ms);
  ASSERT_FALSE(r3.has_value());
  EXPECT_EQ(r3.error().code, tessera::Errc::invalid_argument);
  // A moved-from (stale) block.
  tessera::InputBlock moved = std::move(in);
  auto r4 = p.client->submit(s, in, {.shape = {4}});
  ASSERT_FALSE(r4.has_value());
  EXPECT_EQ(r4.error().code, tessera::Errc::stale_handle);
}

TEST(ClientPipeline, KilledWorkerLosesNoTileAndLeaksNoBlock) {
  Pipeline p(2);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 128}).value();
  constexpr int kTiles = 400;
  std::vector<TileResult> got;
  for (int i = 0; i < kTiles; ++i) {
    submit_tile(*p.client, s, i);
    if (i == kTiles / 2) {
      ::kill(p.procs[0].pid, SIGKILL);
      int st = 0;
      ::waitpid(p.procs[0].pid, &st, 0);
      p.procs[0].pid = -1;
      p.client->worker_died(p.ids[0], "killed by signal 9");
    }
    p.client->poll(got, 128, 0ms);
  }
  auto rest = collect(*p.client, kTiles - got.size());
  for (auto& r : rest) got.push_back(std::move(r));
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kTiles));
  std::set<std::uint64_t> seqs;
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, i);
    EXPECT_TRUE(seqs.insert(got[i].seq).second) << "duplicate outcome";
    // With one retry allowed, every tile of the dead worker completes on the other.
    EXPECT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
  }
  got.clear();  // releases every result block
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), tessera::kNoSlot), 0u) << "blocks leaked";
}

TEST(ClientPipeline, NewEpochCancelsOlderTilesAndNeverDeliversThemAsCurrent) {
  Pipeline p(1);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::completion, .max_in_flight = 64}).value();
  for (int i = 0; i < 40; ++i) submit_tile(*p.client, s, i, 4);  // slow tiles
  auto e = p.client->advance_epoch(s);
  ASSERT_TRUE(e.has_value());
  for (int i = 0; i < 5; ++i) submit_tile(*p.client, s, 100 + i, 0);
  auto got = collect(*p.client, 45);
  ASSERT_EQ(got.size(), 45u);
  int canceled_old = 0, completed_new = 0;
  for (auto& r : got) {
    if (r.epoch < *e) {
      EXPECT_EQ(r.outcome, Outcome::canceled) << "old-epoch tile delivered as " << tessera::outcome_name(r.outcome);
      ++canceled_old;
    } else {
      EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
      ++completed_new;
    }
  }
  EXPECT_EQ(canceled_old, 40);
  EXPECT_EQ(completed_new, 5);
  got.clear();
  // Old tiles still at the worker are answered later; their blocks must come back.
  std::vector<TileResult> none;
  const auto end = std::chrono::steady_clock::now() + 10s;
  while (tessera::Slab::count_held(p.client->arena(), tessera::kNoSlot) != 0 && std::chrono::steady_clock::now() < end)
    p.client->poll(none, 1, 10ms);
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), tessera::kNoSlot), 0u);
}

TEST(ClientPipeline, WorkerExitsCleanlyOnStdinEof) {
  Pipeline p(1);
  EXPECT_EQ(p.procs[0].stop(), 0);
}

TEST(ClientPipeline, HigherPriorityStreamsAreDispatchedFirst) {
  auto o = small_options();
  o.worker_window = 1;  // one tile at the worker: the rest queue client-side, where priority applies
  Pipeline p(1, o);
  auto low = p.client->open_stream({.priority = 0, .ordering = tessera::Ordering::completion, .max_in_flight = 64}).value();
  auto high = p.client->open_stream({.priority = 10, .ordering = tessera::Ordering::completion, .max_in_flight = 64}).value();
  for (int i = 0; i < 20; ++i) submit_tile(*p.client, low, i);
  for (int i = 0; i < 20; ++i) submit_tile(*p.client, high, 100 + i);
  auto got = collect(*p.client, 40);
  ASSERT_EQ(got.size(), 40u);
  // At most the one low tile already at the worker may finish before the high stream drains.
  std::size_t last_high = 0, lows_before = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (got[i].stream == high) last_high = i;
  for (std::size_t i = 0; i < last_high; ++i)
    if (got[i].stream == low) ++lows_before;
  EXPECT_LE(lows_before, 1u) << "low-priority tiles overtook the visible ones";
  for (auto& r : got) EXPECT_EQ(r.outcome, Outcome::completed) << r.error;
}

TEST(ClientPipeline, ATilePastItsDeadlineFailsAndTheNextOneCompletes) {
  Pipeline p(1);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  tessera::InputBlock in;
  ASSERT_TRUE(p.client->alloc(16 * 16 * 3, in, 5s).has_value());
  tessera::TileMeta m;
  m.shape = {16, 16, 3};
  m.op = 4;  // sleeps 50 ms
  m.deadline = 10ms;
  ASSERT_TRUE(p.client->submit(s, in, m).has_value());
  submit_tile(*p.client, s, 1, 0);
  auto got = collect(*p.client, 2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].outcome, Outcome::failed);
  EXPECT_EQ(got[0].status, tessera::TileStatus::Deadline);
  EXPECT_NE(got[0].error.find("deadline"), std::string::npos);
  EXPECT_EQ(got[1].outcome, Outcome::completed) << got[1].error;
  got.clear();
  // The worker still answers the abandoned tile later; its blocks come back.
  std::vector<TileResult> none;
  const auto end = std::chrono::steady_clock::now() + 10s;
  while (tessera::Slab::count_held(p.client->arena(), tessera::kNoSlot) != 0 && std::chrono::steady_clock::now() < end)
    p.client->poll(none, 1, 10ms);
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), tessera::kNoSlot), 0u);
}

TEST(ClientPipeline, FailFastSubmitReportsBackpressureAndMemoryStaysBounded) {
  Pipeline p(1);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::completion, .max_in_flight = 8}).value();
  int accepted = 0, refused = 0;
  for (int i = 0; i < 50; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE(p.client->alloc(16 * 16 * 3, in, 5s).has_value());
    auto r = p.client->submit(s, in, {.shape = {16, 16, 3}, .op = 4}, tessera::SubmitMode::fail_fast);
    if (r) {
      ++accepted;
    } else {
      EXPECT_EQ(r.error().code, tessera::Errc::no_space);
      ++refused;
    }
  }
  EXPECT_LE(accepted, 8 + 1);
  EXPECT_GT(refused, 0);
  EXPECT_LE(p.client->in_flight(), 8u);
  auto got = collect(*p.client, static_cast<std::size_t>(accepted));
  EXPECT_EQ(got.size(), static_cast<std::size_t>(accepted));
}

TEST(ClientPipeline, BatchSubmitAcceptsEveryTileAndKeepsOrder) {
  Pipeline p(2);
  auto s = p.client->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 64}).value();
  constexpr std::size_t kBatch = 32;
  std::vector<tessera::InputBlock> blocks(kBatch);
  std::vector<tessera::TileMeta> metas(kBatch);
  for (std::size_t i = 0; i < kBatch; ++i) {
    ASSERT_TRUE(p.client->alloc(16 * 16 * 3, blocks[i], 5s).has_value());
    fill_tile(blocks[i].bytes(), static_cast<int>(i));
    metas[i].shape = {16, 16, 3};
    metas[i].x = static_cast<std::int32_t>(i);
  }
  auto n = p.client->submit_batch(s, blocks, metas);
  ASSERT_TRUE(n.has_value()) << n.error().message;
  EXPECT_EQ(*n, kBatch);
  for (const auto& b : blocks) EXPECT_FALSE(b.valid()) << "a submitted block must be consumed";
  auto got = collect(*p.client, kBatch);
  ASSERT_EQ(got.size(), kBatch);
  for (std::size_t i = 0; i < kBatch; ++i) {
    EXPECT_EQ(got[i].seq, i);
    EXPECT_EQ(got[i].meta.x, static_cast<std::int32_t>(i));
    EXPECT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
  }
  // Mismatched lengths are refused at the call.
  std::vector<tessera::TileMeta> one(1);
  auto bad = p.client->submit_batch(s, std::span<tessera::InputBlock>(blocks.data(), 2), one);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, tessera::Errc::invalid_argument);
}
