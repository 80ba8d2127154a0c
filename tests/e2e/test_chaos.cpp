// Guarantees 1-3 under chaos: thousands of tiles of a real slide through 3
// supervised workers with random worker kills (SIGKILL), random single-tile
// cancellations and viewport-epoch changes. A canceled or failed tile is submitted
// again (as a viewer would); at the end the stitched mask must equal the one
// computed in-process without the broker, and no block may be held.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

#include <cstdlib>
#include <map>
#include <random>
#include <set>

#include <tessera/overlay.hpp>

using namespace std::chrono_literals;
using tessera::Client;
using tessera::Outcome;

namespace {
const std::string& kWorker = tessera::test::kExampleWorker;

std::uint64_t seed() {
  if (const char* s = std::getenv("TESSERA_TEST_SEED")) return std::strtoull(s, nullptr, 0);
  return 20261122;
}
}  // namespace

TEST(Chaos, EveryTileHasExactlyOneOutcomeAndTheStitchedMaskIsExact) {
  const std::uint64_t sd = seed();
  SCOPED_TRACE("TESSERA_TEST_SEED=" + std::to_string(sd));
  std::mt19937_64 rng(sd);
  auto slide = tessera::overlay::synthetic_slide(2048, 2048, sd);
  tessera::overlay::TileGrid g;
  g.tile = 16;
  g.width = g.height = 2048;
  const std::int64_t total = g.count();  // 16384 tiles
  const int edge = g.input_edge();

  tessera::ClientOptions o;
  o.arena.classes = {{4096, 2048}};
  o.arena.n_rings = 16;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  o.worker_window = 8;
  o.wait.spin_ns = 10'000;
  auto c = Client::embedded(o).value();
  tessera::PoolSpec ps;
  ps.argv = {kWorker};
  ps.count = 3;
  ps.max_retries = 4;
  ASSERT_TRUE(c->start_pool(ps).has_value());
  auto s = c->open_stream({.ordering = tessera::Ordering::submission, .max_in_flight = 64}).value();

  std::vector<std::uint8_t> mask(static_cast<std::size_t>(g.width * g.height), 0);
  std::map<std::uint64_t, std::int64_t> seq_to_tile;  // in flight
  std::set<std::uint64_t> outcomes;                    // seqs that got an outcome
  std::vector<std::int64_t> todo;
  for (std::int64_t t = total - 1; t >= 0; --t) todo.push_back(t);
  std::int64_t completed_tiles = 0;
  std::uint64_t last_seq = 0;
  bool any_delivered = false;
  int kills = 0, cancels = 0, epochs = 0, resubmits = 0;
  std::vector<tessera::TileResult> got;
  const auto end = std::chrono::steady_clock::now() + 120s;
  auto next_kill = std::chrono::steady_clock::now() + 100ms;

  while (completed_tiles < total && std::chrono::steady_clock::now() < end) {
    // Submit a burst.
    for (int k = 0; k < 16 && !todo.empty(); ++k) {
      tessera::InputBlock in;
      if (c->try_alloc(static_cast<std::uint64_t>(edge) * edge * 3, in) != tessera::AllocStatus::ok) break;
      const std::int64_t t = todo.back();
      tessera::TileMeta m;
      m.dtype = tessera::DType::UInt8;
      m.shape = {static_cast<std::uint32_t>(edge), static_cast<std::uint32_t>(edge), 3};
      m.x = static_cast<std::int32_t>((t % g.cols()) * g.tile);
      m.y = static_cast<std::int32_t>((t / g.cols()) * g.tile);
      m.tag = static_cast<std::uint64_t>(t);
      ASSERT_TRUE(slide->read_region(0, m.x, m.y, edge, edge, reinterpret_cast<std::uint8_t*>(in.bytes().data())).has_value());
      auto q = c->submit(s, in, m, tessera::SubmitMode::fail_fast);
      if (!q) {
        ASSERT_EQ(q.error().code, tessera::Errc::no_space) << q.error().message;
        break;
      }
      todo.pop_back();
      seq_to_tile[*q] = t;
    }
    // Chaos. Kills go round-robin, one every 250 ms, so no worker dies twice within the
    // supervisor's crash-loop window (a worker killed that often would rightly be given up).
    const auto now = std::chrono::steady_clock::now();
    const auto dice = rng() % 1000;
    if (now >= next_kill) {
      next_kill = now + 250ms;
      const auto victim = static_cast<std::int32_t>(kills % 3);
      if (c->workers()[static_cast<std::size_t>(victim)].alive && c->kill_worker(victim).has_value()) ++kills;
    } else if (dice < 30 && !seq_to_tile.empty()) {  // cancel one tile in flight
      auto it = seq_to_tile.begin();
      std::advance(it, static_cast<long>(rng() % seq_to_tile.size()));
      if (c->cancel(s, it->first).has_value()) ++cancels;
    } else if (dice < 36) {  // the viewport moved
      ASSERT_TRUE(c->advance_epoch(s).has_value());
      ++epochs;
    }
    // Collect.
    c->poll(got, 64, 2ms);
    for (auto& r : got) {
      // Guarantee 2: ordered stream -> strictly increasing sequence numbers.
      if (any_delivered) {
        EXPECT_GT(r.seq, last_seq) << "out of submission order";
      }
      last_seq = r.seq;
      any_delivered = true;
      // Guarantee 1: exactly one outcome per submitted tile, never one for an unknown tile.
      ASSERT_TRUE(outcomes.insert(r.seq).second) << "second outcome for seq " << r.seq;
      auto it = seq_to_tile.find(r.seq);
      ASSERT_NE(it, seq_to_tile.end()) << "outcome for a tile never submitted: " << r.seq;
      const std::int64_t t = it->second;
      seq_to_tile.erase(it);
      ASSERT_EQ(static_cast<std::int64_t>(r.meta.tag), t);
      switch (r.outcome) {
        case Outcome::completed: {
          const auto m = r.output.view().as<const std::uint8_t>();
          ASSERT_EQ(m.size(), static_cast<std::size_t>(edge * edge));
          for (int row = 0; row < g.tile; ++row)
            std::memcpy(&mask[static_cast<std::size_t>((r.meta.y + row) * g.width + r.meta.x)], &m[static_cast<std::size_t>(row * edge)],
                        static_cast<std::size_t>(g.tile));
          ++completed_tiles;
          break;
        }
        case Outcome::failed:
          // Only worker deaths beyond the retry budget may fail a tile here, and the reason says so.
          EXPECT_EQ(r.status, tessera::TileStatus::WorkerDied) << r.error;
          EXPECT_NE(r.error.find("died"), std::string::npos) << r.error;
          todo.push_back(t);
          ++resubmits;
          break;
        case Outcome::canceled:
          todo.push_back(t);
          ++resubmits;
          break;
      }
    }
    got.clear();
  }
  ASSERT_EQ(completed_tiles, total) << "kills " << kills << " cancels " << cancels << " epochs " << epochs;
  EXPECT_TRUE(seq_to_tile.empty());
  EXPECT_GT(kills + cancels + epochs, 0);
  std::vector<std::uint8_t> ref;
  tessera::overlay::reference_mask(*slide, g, ref);
  EXPECT_TRUE(ref == mask) << "stitched mask differs from the in-process reference";
  // Nothing leaked: every input, output and error block is back (tiles abandoned at a
  // worker come back when it answers; give it a moment).
  std::vector<tessera::TileResult> none;
  const auto end2 = std::chrono::steady_clock::now() + 10s;
  while (tessera::Slab::count_held(c->arena(), tessera::kNoSlot) != 0 && std::chrono::steady_clock::now() < end2)
    c->poll(none, 1, 5ms);
  EXPECT_EQ(tessera::Slab::count_held(c->arena(), tessera::kNoSlot), 0u);
  std::printf("chaos: %lld tiles, %d kills, %d cancels, %d epoch changes, %d resubmits\n", static_cast<long long>(total), kills,
              cancels, epochs, resubmits);
}
