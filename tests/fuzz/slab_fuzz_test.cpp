// Differential fuzz of the slab allocator: a seeded, replayable stream of operations
// (alloc, free, adopt, resolve, reclaim, forged and stale handles) is applied to the real
// slab and to a std::map oracle; every status must match.
// Replay a failure: TESSERA_TEST_SEED=<seed> tessera_dataplane_fuzz_tests --gtest_filter=SlabFuzz.*
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <vector>

#include <tessera/slab.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

struct Held {
  std::uint32_t gen;
  std::uint32_t owner;
};
using Key = std::pair<std::uint32_t, std::uint32_t>;  // (class, index)

class SlabOracle {
 public:
  explicit SlabOracle(const Arena& a) {
    for (std::uint32_t c = 0; c < a.n_classes(); ++c) {
      sizes_.push_back(a.size_class(c).block_size);
      counts_.push_back(a.size_class(c).block_count);
    }
  }
  // Expected class for an allocation, or -1 (no_space) / -2 (too_large).
  int expect_alloc(std::uint64_t bytes) const {
    bool fits = false;
    for (std::uint32_t c = 0; c < sizes_.size(); ++c) {
      if (sizes_[c] < bytes) continue;
      fits = true;
      if (held_in(c) < counts_[c]) return static_cast<int>(c);
    }
    return fits ? -1 : -2;
  }
  Errc expect_check(BlockHandle h) const {
    if (h.null() || h.cls() >= sizes_.size() || h.index() >= counts_[h.cls()]) return Errc::bad_handle;
    auto it = held_.find({h.cls(), h.index()});
    if (it == held_.end() || it->second.gen != h.generation()) return Errc::stale_handle;
    return Errc::ok;
  }
  std::uint32_t held_in(std::uint32_t c) const {
    std::uint32_t n = 0;
    for (const auto& [k, v] : held_) n += k.first == c;
    return n;
  }
  std::uint32_t held_by(std::uint32_t owner) const {
    std::uint32_t n = 0;
    for (const auto& [k, v] : held_) n += v.owner == owner;
    return n;
  }
  std::map<Key, Held> held_;
  std::map<Key, std::uint32_t> next_gen_;  // generation the next allocation of a block gets
  std::vector<std::uint64_t> sizes_;
  std::vector<std::uint32_t> counts_;
};

void run_stream(std::uint64_t seed, int ops) {
  SCOPED_TRACE("replay with TESSERA_TEST_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ArenaConfig cfg = test::small_config(1 + static_cast<std::uint32_t>(rng() % 6));
  auto created = Arena::create(cfg);
  ASSERT_TRUE(created) << created.error().message;
  Arena& arena = *created;
  SlabOracle o(arena);
  constexpr std::uint32_t kOwners = 3;
  std::vector<Slab> slabs;
  for (std::uint32_t i = 0; i < kOwners; ++i) slabs.emplace_back(arena, i);
  std::vector<BlockHandle> seen;  // every handle ever handed out (live or stale)

  auto pick_handle = [&]() -> BlockHandle {
    const unsigned kind = static_cast<unsigned>(rng() % 10);
    if (kind < 6 && !o.held_.empty()) {  // a live one
      auto it = o.held_.begin();
      std::advance(it, static_cast<long>(rng() % o.held_.size()));
      return BlockHandle::make(it->second.gen, it->first.first, it->first.second);
    }
    if (kind < 8 && !seen.empty()) return seen[rng() % seen.size()];  // maybe stale
    // forged: random fields, biased to just out of range
    const auto cls = static_cast<std::uint32_t>(rng() % (arena.n_classes() + 2));
    const auto idx = static_cast<std::uint32_t>(rng() % 12);
    return BlockHandle::make(static_cast<std::uint32_t>(rng() % 4), cls, idx);
  };

  for (int step = 0; step < ops; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const std::uint32_t who = static_cast<std::uint32_t>(rng() % kOwners);
    Slab& s = slabs[who];
    switch (rng() % 7) {
      case 0:
      case 1: {  // alloc
        const std::uint64_t bytes = rng() % 3 == 0 ? rng() % 80000 : rng() % 70000;
        const int want = o.expect_alloc(bytes);
        BlockView v;
        const AllocStatus st = s.try_alloc(bytes, v);
        if (want == -2) {
          ASSERT_EQ(st, AllocStatus::too_large) << bytes;
        } else if (want == -1) {
          ASSERT_EQ(st, AllocStatus::no_space) << bytes;
        } else {
          ASSERT_EQ(st, AllocStatus::ok) << bytes;
          ASSERT_EQ(v.handle.cls(), static_cast<std::uint32_t>(want)) << "smallest fitting class with room";
          ASSERT_GE(v.capacity, bytes);
          const Key k{v.handle.cls(), v.handle.index()};
          ASSERT_EQ(o.held_.count(k), 0u) << "handed out a held block";
          const std::uint32_t g = o.next_gen_.count(k) ? o.next_gen_[k] : 1;
          ASSERT_EQ(v.handle.generation(), g);
          o.held_[k] = {g, who};
          seen.push_back(v.handle);
        }
        break;
      }
      case 2:
      case 3: {  // free
        const BlockHandle h = pick_handle();
        Errc want = o.expect_check(h);
        if (want == Errc::ok && o.held_.at({h.cls(), h.index()}).owner != who) want = Errc::not_owner;
        ASSERT_EQ(s.free(h), want) << std::hex << h.raw;
        if (want == Errc::ok) {
          const Key k{h.cls(), h.index()};
          o.next_gen_[k] = meta::next_gen(h.generation());
          o.held_.erase(k);
        }
        break;
      }
      case 4: {  // adopt from a random (maybe wrong) owner
        const BlockHandle h = pick_handle();
        const std::uint32_t from = static_cast<std::uint32_t>(rng() % kOwners);
        Errc want = o.expect_check(h);
        if (want == Errc::ok && o.held_.at({h.cls(), h.index()}).owner != from) want = Errc::not_owner;
        ASSERT_EQ(s.adopt(h, from), want) << std::hex << h.raw;
        if (want == Errc::ok) o.held_[{h.cls(), h.index()}].owner = who;
        break;
      }
      case 5: {  // resolve + owner_of
        const BlockHandle h = pick_handle();
        const Errc want = o.expect_check(h);
        BlockView v;
        ASSERT_EQ(s.resolve(h, v), want);
        if (want == Errc::ok) {
          ASSERT_EQ(v.data, arena.block_data(h.cls(), h.index()));
          ASSERT_EQ(s.owner_of(h), o.held_.at({h.cls(), h.index()}).owner);
        } else {
          ASSERT_EQ(s.owner_of(h), kNoSlot);
        }
        break;
      }
      case 6: {  // rarely: a participant "dies" and is reclaimed
        if (rng() % 8 != 0) break;
        ASSERT_EQ(Slab::reclaim(arena, who), o.held_by(who));
        for (auto it = o.held_.begin(); it != o.held_.end();) {
          if (it->second.owner == who) {
            o.next_gen_[it->first] = meta::next_gen(it->second.gen);
            it = o.held_.erase(it);
          } else {
            ++it;
          }
        }
        break;
      }
    }
    if (step % 64 == 0) {
      for (std::uint32_t w = 0; w < kOwners; ++w) ASSERT_EQ(Slab::count_held(arena, w), o.held_by(w));
      for (std::uint32_t c = 0; c < arena.n_classes(); ++c) ASSERT_EQ(Slab::class_stats(arena, c).held, o.held_in(c));
    }
  }
}

TEST(SlabFuzz, OperationStreamsMatchAMapOracle) {
  const std::uint64_t base = test::test_seed(0x7e55e7a);
  const bool replay = std::getenv("TESSERA_TEST_SEED") != nullptr;
  for (std::uint64_t k = 0; k < (replay ? 1 : 100); ++k) {
    run_stream(base + k, 3000);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace tessera
