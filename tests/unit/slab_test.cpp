// Slab allocator: alloc/free/adopt/resolve, handle validation, exhaustion, reclaim.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include <tessera/slab.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

class SlabTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = Arena::create(test::small_config(4));
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
  }
  Arena arena_;
};

TEST_F(SlabTest, AllocReturnsAPageAlignedBlockOfTheSmallestFittingClass) {
  Slab s(arena_, 0);
  BlockView v;
  ASSERT_EQ(s.try_alloc(5000, v), AllocStatus::ok);
  EXPECT_EQ(v.handle.cls(), 1u);
  EXPECT_EQ(v.capacity, 16384u);
  EXPECT_FALSE(v.handle.null());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(v.data) % kPageSize, 0u);
  EXPECT_GE(v.data, arena_.base() + arena_.header().data_offset);
  EXPECT_LE(v.data + v.capacity, arena_.base() + arena_.size());
  EXPECT_EQ(s.owner_of(v.handle), 0u);
  EXPECT_EQ(Slab::count_held(arena_, 0), 1u);
  EXPECT_EQ(s.free(v.handle), Errc::ok);
  EXPECT_EQ(Slab::count_held(arena_, 0), 0u);
}

TEST_F(SlabTest, EveryPayloadIsPageAlignedAndBlocksNeverOverlap) {
  Slab s(arena_, 0);
  std::vector<BlockView> held;
  BlockView v;
  while (s.try_alloc(1, v) == AllocStatus::ok) held.push_back(v);
  ASSERT_EQ(held.size(), test::total_blocks(arena_));
  std::vector<std::pair<std::byte*, std::byte*>> ranges;
  for (const auto& b : held) {
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data) % kPageSize, 0u);
    ranges.emplace_back(b.data, b.data + b.capacity);
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
  EXPECT_LE(ranges.back().second, arena_.base() + arena_.size());
}

TEST_F(SlabTest, ZeroByteRequestGetsTheSmallestClass) {
  Slab s(arena_, 0);
  BlockView v;
  ASSERT_EQ(s.try_alloc(0, v), AllocStatus::ok);
  EXPECT_EQ(v.handle.cls(), 0u);
}

TEST_F(SlabTest, FullClassFallsBackToALargerOne) {
  Slab s(arena_, 0);
  std::vector<BlockHandle> small;
  BlockView v;
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(s.try_alloc(4096, v), AllocStatus::ok);
    EXPECT_EQ(v.handle.cls(), 0u);
    small.push_back(v.handle);
  }
  ASSERT_EQ(s.try_alloc(4096, v), AllocStatus::ok);
  EXPECT_EQ(v.handle.cls(), 1u) << "class 0 exhausted: next class";
  EXPECT_EQ(s.free(small[2]), Errc::ok);
  ASSERT_EQ(s.try_alloc(4096, v), AllocStatus::ok);
  EXPECT_EQ(v.handle.cls(), 0u) << "the smallest fitting class is preferred again once it has room";
  EXPECT_EQ(v.handle.index(), small[2].index());
}

TEST_F(SlabTest, ExhaustionIsNoSpaceAndRecoversAfterFrees) {
  Slab s(arena_, 3);
  std::vector<BlockHandle> held;
  BlockView v;
  while (s.try_alloc(60000, v) == AllocStatus::ok) held.push_back(v.handle);
  EXPECT_EQ(held.size(), 4u) << "only the 64 KiB class fits";
  EXPECT_EQ(s.try_alloc(60000, v), AllocStatus::no_space);
  EXPECT_EQ(s.try_alloc(60000, v), AllocStatus::no_space) << "stays a normal outcome";
  ASSERT_EQ(s.free(held.back()), Errc::ok);
  held.pop_back();
  ASSERT_EQ(s.try_alloc(60000, v), AllocStatus::ok);
  held.push_back(v.handle);
  for (BlockHandle h : held) EXPECT_EQ(s.free(h), Errc::ok);
  EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
}

TEST_F(SlabTest, OversizedRequestIsTooLarge) {
  Slab s(arena_, 0);
  BlockView v;
  EXPECT_EQ(s.try_alloc(65536 + 1, v), AllocStatus::too_large);
  EXPECT_EQ(s.try_alloc(~0ULL, v), AllocStatus::too_large);
  EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
}

TEST_F(SlabTest, FreedHandleIsStaleForEveryOperation) {
  Slab s(arena_, 0);
  BlockView v, r;
  ASSERT_EQ(s.try_alloc(1, v), AllocStatus::ok);
  const BlockHandle h = v.handle;
  ASSERT_EQ(s.free(h), Errc::ok);
  EXPECT_EQ(s.free(h), Errc::stale_handle) << "double free detected";
  EXPECT_EQ(s.resolve(h, r), Errc::stale_handle);
  EXPECT_EQ(s.adopt(h, 0), Errc::stale_handle);
  EXPECT_EQ(s.owner_of(h), kNoSlot);
}

TEST_F(SlabTest, ReallocatedBlockGetsANewGenerationAndOldHandleStaysStale) {
  Slab s(arena_, 0);
  std::vector<BlockHandle> first;
  BlockView v;
  while (s.try_alloc(1, v) == AllocStatus::ok) first.push_back(v.handle);
  for (BlockHandle h : first) ASSERT_EQ(s.free(h), Errc::ok);
  std::vector<BlockHandle> second;
  while (s.try_alloc(1, v) == AllocStatus::ok) second.push_back(v.handle);
  ASSERT_EQ(second.size(), first.size());
  for (BlockHandle old : first) {
    BlockView r;
    EXPECT_EQ(s.resolve(old, r), Errc::stale_handle);
    EXPECT_EQ(s.free(old), Errc::stale_handle) << "a stale handle must not free the new holder's block";
  }
  for (BlockHandle h : second) {
    EXPECT_EQ(h.generation(), 2u);
    EXPECT_EQ(s.free(h), Errc::ok);
  }
}

TEST_F(SlabTest, ForgedHandlesAreBadOrStale) {
  Slab s(arena_, 0);
  BlockView v, r;
  ASSERT_EQ(s.try_alloc(1, v), AllocStatus::ok);
  const BlockHandle h = v.handle;
  const BlockHandle null{};
  const BlockHandle bad_class = BlockHandle::make(h.generation(), arena_.n_classes(), 0);
  const BlockHandle class_255 = BlockHandle::make(h.generation(), 255, 0);
  const BlockHandle bad_index = BlockHandle::make(h.generation(), h.cls(), arena_.size_class(h.cls()).block_count);
  const BlockHandle max_index = BlockHandle::make(h.generation(), h.cls(), 0xffffff);
  const BlockHandle wrong_gen = BlockHandle::make(h.generation() + 7, h.cls(), h.index());
  const BlockHandle free_block = BlockHandle::make(1, h.cls(), h.index() + 1);  // never allocated
  for (BlockHandle f : {null, bad_class, class_255, bad_index, max_index}) {
    EXPECT_EQ(s.resolve(f, r), Errc::bad_handle) << std::hex << f.raw;
    EXPECT_EQ(s.free(f), Errc::bad_handle) << std::hex << f.raw;
    EXPECT_EQ(s.adopt(f, 0), Errc::bad_handle) << std::hex << f.raw;
    EXPECT_EQ(s.owner_of(f), kNoSlot);
  }
  for (BlockHandle f : {wrong_gen, free_block}) {
    EXPECT_EQ(s.resolve(f, r), Errc::stale_handle) << std::hex << f.raw;
    EXPECT_EQ(s.free(f), Errc::stale_handle) << std::hex << f.raw;
  }
  EXPECT_EQ(s.resolve(h, r), Errc::ok) << "the genuine handle still works after the forgeries";
  EXPECT_EQ(s.free(h), Errc::ok);
}

TEST_F(SlabTest, OnlyTheOwnerMayFree) {
  Slab a(arena_, 1), b(arena_, 2);
  BlockView v;
  ASSERT_EQ(a.try_alloc(1, v), AllocStatus::ok);
  EXPECT_EQ(b.free(v.handle), Errc::not_owner);
  EXPECT_EQ(a.owner_of(v.handle), 1u);
  EXPECT_EQ(a.free(v.handle), Errc::ok);
}

TEST_F(SlabTest, ResolveFromAnotherMappingSeesTheSameBytes) {
  Slab writer(arena_, 1);
  BlockView v;
  ASSERT_EQ(writer.try_alloc(10000, v), AllocStatus::ok);
  std::memset(v.data, 0x5a, v.capacity);
  auto other = Arena::attach_fd(dup(arena_.fd()));
  ASSERT_TRUE(other) << other.error().message;
  Slab reader(*other, 2);
  BlockView r;
  ASSERT_EQ(reader.resolve(v.handle, r), Errc::ok);
  EXPECT_NE(r.data, v.data) << "different mapping";
  EXPECT_EQ(r.capacity, v.capacity);
  EXPECT_EQ(r.handle, v.handle);
  for (std::uint64_t i = 0; i < r.capacity; i += 997) ASSERT_EQ(r.data[i], std::byte{0x5a}) << i;
}

TEST_F(SlabTest, AdoptMovesOwnershipOnlyFromTheNamedOwner) {
  Slab worker(arena_, 1), client(arena_, 2), third(arena_, 3);
  BlockView v;
  ASSERT_EQ(worker.try_alloc(1, v), AllocStatus::ok);
  EXPECT_EQ(client.adopt(v.handle, 3), Errc::not_owner) << "claimed the wrong previous owner";
  ASSERT_EQ(client.adopt(v.handle, 1), Errc::ok);
  EXPECT_EQ(client.owner_of(v.handle), 2u);
  EXPECT_EQ(worker.free(v.handle), Errc::not_owner) << "the old owner gave it away";
  EXPECT_EQ(third.adopt(v.handle, 1), Errc::not_owner);
  EXPECT_EQ(Slab::count_held(arena_, 1), 0u);
  EXPECT_EQ(Slab::count_held(arena_, 2), 1u);
  EXPECT_EQ(client.free(v.handle), Errc::ok);
}

TEST_F(SlabTest, ReclaimFreesExactlyTheDeadOwnersBlocks) {
  Slab dead(arena_, 5), alive(arena_, 6);
  std::vector<BlockHandle> dead_blocks, live_blocks;
  BlockView v;
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(dead.try_alloc(static_cast<std::uint64_t>(i) * 9000, v), AllocStatus::ok);
    dead_blocks.push_back(v.handle);
    ASSERT_EQ(alive.try_alloc(1, v), AllocStatus::ok);
    live_blocks.push_back(v.handle);
  }
  EXPECT_EQ(Slab::count_held(arena_, 5), 5u);
  EXPECT_EQ(Slab::reclaim(arena_, 5), 5u);
  EXPECT_EQ(Slab::count_held(arena_, 5), 0u);
  EXPECT_EQ(Slab::reclaim(arena_, 5), 0u) << "reclaim is idempotent";
  EXPECT_EQ(Slab::count_held(arena_, 6), 5u);
  BlockView r;
  for (BlockHandle h : dead_blocks) EXPECT_EQ(alive.resolve(h, r), Errc::stale_handle);
  for (BlockHandle h : live_blocks) EXPECT_EQ(alive.free(h), Errc::ok);
  EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
}

TEST_F(SlabTest, ClassStatsAndHeldCounterTrackOccupancy) {
  Slab s(arena_, 0);
  BlockView v;
  std::vector<BlockHandle> hs;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(s.try_alloc(16384, v), AllocStatus::ok);
    hs.push_back(v.handle);
  }
  ClassStats st = Slab::class_stats(arena_, 1);
  EXPECT_EQ(st.block_size, 16384u);
  EXPECT_EQ(st.block_count, 4u);
  EXPECT_EQ(st.held, 3u);
  EXPECT_EQ(arena_.size_class(1).held_approx.load(), 3u);
  EXPECT_EQ(Slab::class_stats(arena_, 0).held, 0u);
  ASSERT_EQ(s.free(hs[0]), Errc::ok);
  EXPECT_EQ(Slab::class_stats(arena_, 1).held, 2u);
  EXPECT_EQ(Slab::reclaim(arena_, 0), 2u);
  EXPECT_EQ(arena_.size_class(1).held_approx.load(), 0u);
}

TEST_F(SlabTest, AfterReclaimEveryBlockCanBeAllocatedExactlyOnce) {
  Slab s(arena_, 9);
  BlockView v;
  while (s.try_alloc(1, v) == AllocStatus::ok) {
  }
  ASSERT_EQ(Slab::reclaim(arena_, 9), test::total_blocks(arena_));
  Slab fresh(arena_, 10);
  std::set<std::pair<std::uint32_t, std::uint32_t>> seen;
  while (fresh.try_alloc(1, v) == AllocStatus::ok)
    EXPECT_TRUE(seen.emplace(v.handle.cls(), v.handle.index()).second) << "block handed out twice";
  EXPECT_EQ(seen.size(), test::total_blocks(arena_));
}

// A freed block is not handed out again at once: the cursor cycles through the class's
// first kSlabRotationBytes of blocks, then starts again at block 0 (docs/design/slab.md,
// "Which block comes next"); a small class is cycled through whole.
TEST(SlabRotation, AllocAndFreeCycleThroughTheFirstSixteenMiBOfAClass) {
  ArenaConfig cfg = test::small_config();
  const std::uint64_t big = kSlabRotationBytes / 4;  // a window of 4 blocks out of 8
  cfg.classes = {{4096, 4}, {big, 8}};
  auto a = Arena::create(cfg);
  ASSERT_TRUE(a) << a.error().message;
  Slab s(*a, 3);
  for (const std::uint64_t bytes : {std::uint64_t{4096}, big}) {
    std::vector<std::uint32_t> seen;
    for (int k = 0; k < 12; ++k) {
      BlockView v;
      ASSERT_EQ(s.try_alloc(bytes, v), AllocStatus::ok);
      seen.push_back(v.handle.index());
      ASSERT_EQ(s.free(v.handle), Errc::ok);
    }
    for (std::size_t k = 0; k < seen.size(); ++k) {
      EXPECT_LT(seen[k], 4u) << "block " << bytes << ": allocation " << k << " left the window";
      if (k > 0) EXPECT_EQ(seen[k], (seen[k - 1] + 1) % 4) << "block " << bytes << ": allocation " << k << " did not move on";
    }
  }
  // With the whole window held, the scan goes on past it; freed, the window comes first again.
  std::vector<BlockView> held(5);
  std::set<std::uint32_t> idx;
  for (auto& v : held) {
    ASSERT_EQ(s.try_alloc(big, v), AllocStatus::ok);
    idx.insert(v.handle.index());
  }
  EXPECT_EQ(idx, (std::set<std::uint32_t>{0, 1, 2, 3, 4}));
  for (auto& v : held) ASSERT_EQ(s.free(v.handle), Errc::ok);
  BlockView v;
  ASSERT_EQ(s.try_alloc(big, v), AllocStatus::ok);
  EXPECT_LT(v.handle.index(), 4u);
  EXPECT_EQ(s.free(v.handle), Errc::ok);
}

TEST(BlockHandle, PacksGenerationClassAndIndex) {
  const BlockHandle h = BlockHandle::make(0xdeadbeef, 0x12, 0xabcdef);
  EXPECT_EQ(h.generation(), 0xdeadbeefu);
  EXPECT_EQ(h.cls(), 0x12u);
  EXPECT_EQ(h.index(), 0xabcdefu);
  EXPECT_FALSE(h.null());
  EXPECT_TRUE(BlockHandle{}.null());
  EXPECT_EQ(meta::next_gen(0xffffffffu), 1u) << "generation 0 is never used";
  const std::uint64_t w = meta::pack(7, 3, 1);
  EXPECT_EQ(meta::gen(w), 7u);
  EXPECT_EQ(meta::owner(w), 3u);
  EXPECT_EQ(meta::state(w), 1u);
}

}  // namespace
}  // namespace tessera
