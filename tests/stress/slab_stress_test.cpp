// Many threads allocate, free, hand over (adopt) and reclaim blocks of one arena at once.
// An oracle (one atomic claim word per block) proves no block is ever handed to two holders;
// a tag written into each payload proves no two holders' bytes overlap.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <tessera/slab.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__)
constexpr int kIters = 20'000;
#else
constexpr int kIters = 100'000;
#endif
constexpr int kThreads = 4;
constexpr std::uint32_t kInTransit = 1000;  // oracle: claim + kInTransit = posted to a mailbox

class Oracle {
 public:
  explicit Oracle(const Arena& a) {
    for (std::uint32_t c = 0; c < a.n_classes(); ++c) {
      base_.push_back(total_);
      total_ += a.size_class(c).block_count;
    }
    claims_ = std::make_unique<std::atomic<std::uint32_t>[]>(total_);
  }
  std::atomic<std::uint32_t>& at(BlockHandle h) { return claims_[base_[h.cls()] + h.index()]; }
  // Returns false if the block already had a holder.
  bool take(BlockHandle h, std::uint32_t who, std::uint32_t expected = 0) {
    // relaxed would do for the oracle's own logic; acq_rel keeps TSan's view simple.
    return at(h).compare_exchange_strong(expected, who, std::memory_order_acq_rel);
  }

 private:
  std::vector<std::uint32_t> base_;
  std::uint32_t total_ = 0;
  std::unique_ptr<std::atomic<std::uint32_t>[]> claims_;
};

TEST(SlabStress, ConcurrentAllocFreeAdoptNeverDoubleHandsABlock) {
  ArenaConfig cfg = test::small_config(24);
  auto created = Arena::create(cfg);
  ASSERT_TRUE(created) << created.error().message;
  Arena& arena = *created;
  Oracle oracle(arena);
  std::atomic<std::uint64_t> mailbox[kThreads];
  for (auto& m : mailbox) m.store(0);
  std::atomic<std::uint64_t> violations{0}, allocs{0}, adopts{0};
  std::vector<std::string> first_error(kThreads);
  std::atomic<int> ready{0};

  auto worker = [&](int id) {
    const auto me = static_cast<std::uint32_t>(id);
    // Start together, so the threads really overlap (a fast build could otherwise
    // finish one thread's loop before the next one starts).
    ready.fetch_add(1, std::memory_order_acq_rel);
    while (ready.load(std::memory_order_acquire) < kThreads) std::this_thread::yield();
    Slab slab(arena, me);
    std::mt19937_64 rng(test::test_seed(100) + me);
    std::vector<BlockView> held;
    auto fail = [&](const std::string& what) {
      violations.fetch_add(1, std::memory_order_relaxed);
      if (first_error[me].empty()) first_error[me] = what;
    };
    auto check_tag = [&](const BlockView& v) {
      std::uint32_t tag;
      std::memcpy(&tag, v.data, sizeof tag);
      std::uint32_t tail;
      std::memcpy(&tail, v.data + v.capacity - sizeof tail, sizeof tail);
      if (tag != me + 1 || tail != me + 1) fail("payload tag overwritten by another holder");
    };
    auto release = [&](std::size_t k) {
      BlockView v = held[k];
      held[k] = held.back();
      held.pop_back();
      check_tag(v);
      if (!oracle.take(v.handle, 0, me + 1)) fail("oracle: freeing a block we do not hold");
      if (slab.free(v.handle) != Errc::ok) fail("free of a held block failed");
    };
    for (int it = 0; it < kIters; ++it) {
      const unsigned op = static_cast<unsigned>(rng() % 10);
      if (op < 5 && held.size() < 12) {
        BlockView v;
        const AllocStatus st = slab.try_alloc(rng() % 65537, v);
        if (st == AllocStatus::too_large) fail("too_large for a fitting size");
        if (st != AllocStatus::ok) continue;
        allocs.fetch_add(1, std::memory_order_relaxed);
        if (!oracle.take(v.handle, me + 1)) fail("block handed to two holders");
        const std::uint32_t tag = me + 1;
        std::memcpy(v.data, &tag, sizeof tag);
        std::memcpy(v.data + v.capacity - sizeof tag, &tag, sizeof tag);
        held.push_back(v);
      } else if (op < 8 && !held.empty()) {
        release(rng() % held.size());
      } else if (op == 8 && !held.empty()) {
        // Hand a block to the next thread through its mailbox.
        const std::size_t k = rng() % held.size();
        auto& box = mailbox[(me + 1) % kThreads];
        std::uint64_t empty = 0;
        const BlockView v = held[k];
        check_tag(v);
        if (!oracle.take(v.handle, kInTransit + me, me + 1)) fail("oracle: posting a block we do not hold");
        // SYNC[test.mailbox] release: the oracle update above is visible to the receiver.
        if (box.compare_exchange_strong(empty, v.handle.raw, std::memory_order_acq_rel)) {
          held[k] = held.back();
          held.pop_back();
        } else if (!oracle.take(v.handle, me + 1, kInTransit + me)) {
          fail("oracle: in-transit block changed hands");
        }
      } else {
        // Receive from our mailbox and adopt from the previous thread.
        const std::uint32_t from = (me + kThreads - 1) % kThreads;
        const std::uint64_t raw = mailbox[me].exchange(0, std::memory_order_acq_rel);
        if (raw == 0) continue;
        const BlockHandle h{raw};
        if (slab.adopt(h, me) == Errc::ok) fail("adopt from the wrong owner succeeded");
        if (slab.adopt(h, from) != Errc::ok) {
          fail("adopt of a posted block failed");
          continue;
        }
        adopts.fetch_add(1, std::memory_order_relaxed);
        if (!oracle.take(h, me + 1, kInTransit + from)) fail("oracle: adopted block had another holder");
        BlockView v;
        if (slab.resolve(h, v) != Errc::ok) fail("resolve after adopt failed");
        const std::uint32_t tag = me + 1;
        std::memcpy(v.data, &tag, sizeof tag);
        std::memcpy(v.data + v.capacity - sizeof tag, &tag, sizeof tag);
        held.push_back(v);
      }
    }
    while (!held.empty()) release(held.size() - 1);
  };

  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) ts.emplace_back(worker, i);
  for (auto& t : ts) t.join();
  // Blocks left in mailboxes are still owned by their senders: free them now.
  for (int i = 0; i < kThreads; ++i) {
    const std::uint64_t raw = mailbox[i].load();
    if (raw == 0) continue;
    const std::uint32_t from = static_cast<std::uint32_t>((i + kThreads - 1) % kThreads);
    Slab s(arena, from);
    EXPECT_EQ(s.free(BlockHandle{raw}), Errc::ok);
  }
  for (const auto& e : first_error) EXPECT_TRUE(e.empty()) << e;
  EXPECT_EQ(violations.load(), 0u);
  EXPECT_GT(allocs.load(), 1000u);
  EXPECT_GT(adopts.load(), 0u) << "no block changed hands: the threads did not overlap";
  EXPECT_EQ(Slab::count_held(arena, kNoSlot), 0u);
  // Nothing lost: every block can be allocated again, exactly once.
  Slab s(arena, 9);
  std::set<std::uint64_t> seen;
  BlockView v;
  while (s.try_alloc(1, v) == AllocStatus::ok) EXPECT_TRUE(seen.insert(v.handle.raw & 0xffffffffu).second);
  EXPECT_EQ(seen.size(), test::total_blocks(arena));
}

TEST(SlabStress, ReclaimOfADeadOwnerRacesSafelyWithLiveAllocators) {
  auto created = Arena::create(test::small_config(64));
  ASSERT_TRUE(created) << created.error().message;
  Arena& arena = *created;
  constexpr std::uint32_t kDead = 7;
  // The "dead" participant grabbed a third of the arena before dying.
  Slab dead(arena, kDead);
  std::uint32_t dead_held = 0;
  BlockView v;
  for (std::uint32_t i = 0; i < test::total_blocks(arena) / 3; ++i)
    if (dead.try_alloc(1 + i * 997 % 60000, v) == AllocStatus::ok) ++dead_held;
  ASSERT_GT(dead_held, 0u);

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> errors{0};
  std::vector<std::thread> live;
  for (std::uint32_t id = 0; id < 3; ++id)
    live.emplace_back([&, id] {
      Slab s(arena, id);
      std::vector<BlockHandle> mine;
      std::mt19937 rng(id);
      while (!stop.load(std::memory_order_relaxed)) {
        BlockView b;
        if (mine.size() < 8 && s.try_alloc(rng() % 60000, b) == AllocStatus::ok) {
          if (s.owner_of(b.handle) != id) ++errors;
          mine.push_back(b.handle);
        } else if (!mine.empty()) {
          if (s.free(mine.back()) != Errc::ok) ++errors;
          mine.pop_back();
        }
      }
      for (BlockHandle h : mine)
        if (s.free(h) != Errc::ok) ++errors;
    });
  std::this_thread::sleep_for(20ms);
  const std::uint32_t reclaimed = Slab::reclaim(arena, kDead);
  std::this_thread::sleep_for(20ms);
  stop = true;
  for (auto& t : live) t.join();
  EXPECT_EQ(reclaimed, dead_held);
  EXPECT_EQ(Slab::count_held(arena, kDead), 0u);
  EXPECT_EQ(errors.load(), 0u) << "reclaim must never touch a live owner's block";
  EXPECT_EQ(Slab::count_held(arena, kNoSlot), 0u);
}

}  // namespace
}  // namespace tessera
