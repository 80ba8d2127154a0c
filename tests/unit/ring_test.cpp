// SPSC descriptor rings: push/pop, full/empty, batches, FIFO, closed, corrupt indices.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <vector>

#include <tessera/ring.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using test::make_desc;

class RingTest : public ::testing::Test {
 protected:
  static constexpr std::uint32_t kRing = 2;
  void SetUp() override {
    auto a = Arena::create(test::small_config());
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
    arena_.reset_ring(kRing, /*producer*/ 0, /*consumer*/ 1, /*consumer bell*/ 3, /*producer bell*/ 4);
    prod_ = RingProducer(arena_, kRing);
    cons_ = RingConsumer(arena_, kRing);
  }
  std::uint64_t capacity() const { return arena_.header().ring_capacity; }
  Arena arena_;
  RingProducer prod_;
  RingConsumer cons_;
};

TEST_F(RingTest, PoppedDescriptorEqualsThePushedOne) {
  TileDesc d = make_desc(42, 7, 0x1234, 99);
  d.mutate_x(-5);
  d.mutate_y(11);
  d.mutable_dims()->Mutate(0, 512);
  ASSERT_EQ(prod_.try_push(d), RingStatus::ok);
  TileDesc out;
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_EQ(std::memcmp(&out, &d, sizeof d), 0);
  EXPECT_EQ(out.seq(), 42u);
  EXPECT_EQ(out.x(), -5);
  EXPECT_EQ(out.dims()->Get(0), 512u);
}

TEST_F(RingTest, EmptyRingPopsEmpty) {
  TileDesc out;
  EXPECT_EQ(cons_.try_pop(out), RingStatus::empty);
  EXPECT_FALSE(cons_.ready());
  EXPECT_EQ(cons_.size_approx(), 0u);
}

TEST_F(RingTest, FifoOrderAcrossManyWrapArounds) {
  std::uint64_t next_push = 0, next_pop = 0;
  for (int round = 0; round < 100; ++round) {
    const int n = 1 + round % static_cast<int>(capacity());
    for (int i = 0; i < n; ++i) ASSERT_EQ(prod_.try_push(make_desc(next_push++, 1)), RingStatus::ok);
    TileDesc out;
    while (cons_.try_pop(out) == RingStatus::ok) ASSERT_EQ(out.seq(), next_pop++);
  }
  EXPECT_EQ(next_pop, next_push);
  EXPECT_GT(next_push, 10 * capacity()) << "indices wrapped the ring many times";
}

TEST_F(RingTest, PushFailsWithFullAtCapacityAndSucceedsAfterAPop) {
  for (std::uint64_t i = 0; i < capacity(); ++i) ASSERT_EQ(prod_.try_push(make_desc(i, 1)), RingStatus::ok) << i;
  EXPECT_EQ(prod_.try_push(make_desc(999, 1)), RingStatus::full);
  EXPECT_EQ(prod_.free_approx(), 0u);
  EXPECT_EQ(cons_.size_approx(), capacity());
  TileDesc out;
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_EQ(out.seq(), 0u);
  EXPECT_EQ(prod_.free_approx(), 1u);
  EXPECT_EQ(prod_.try_push(make_desc(capacity(), 1)), RingStatus::ok);
  EXPECT_EQ(prod_.try_push(make_desc(999, 1)), RingStatus::full);
}

TEST_F(RingTest, BatchPushTakesWhatFitsAndBatchPopReturnsInOrder) {
  std::vector<TileDesc> in;
  for (std::uint64_t i = 0; i < capacity() + 5; ++i) in.push_back(make_desc(i, 2));
  EXPECT_EQ(prod_.try_push_batch(in), capacity()) << "partial batch: only the free slots";
  EXPECT_EQ(prod_.try_push_batch(in), 0u);
  EXPECT_EQ(prod_.try_push_batch({}), 0u);
  std::array<TileDesc, 5> out{};
  RingStatus st = RingStatus::empty;
  std::uint64_t expect = 0;
  for (;;) {
    const std::size_t n = cons_.try_pop_batch(out, &st);
    if (n == 0) break;
    EXPECT_EQ(st, RingStatus::ok);
    for (std::size_t k = 0; k < n; ++k) ASSERT_EQ(out[k].seq(), expect++);
  }
  EXPECT_EQ(st, RingStatus::empty);
  EXPECT_EQ(expect, capacity());
  EXPECT_EQ(cons_.try_pop_batch(std::span<TileDesc>{}), 0u);
}

TEST_F(RingTest, ReadyTurnsTrueAfterAPush) {
  EXPECT_FALSE(cons_.ready());
  ASSERT_EQ(prod_.try_push(make_desc(0, 1)), RingStatus::ok);
  EXPECT_TRUE(cons_.ready());
  TileDesc out;
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_FALSE(cons_.ready());
}

TEST_F(RingTest, ClosedRingRefusesPushesButDrainsBeforeReportingClosed) {
  ASSERT_EQ(prod_.try_push(make_desc(0, 1)), RingStatus::ok);
  ASSERT_EQ(prod_.try_push(make_desc(1, 1)), RingStatus::ok);
  arena_.close_ring(kRing);
  EXPECT_TRUE(prod_.closed());
  EXPECT_EQ(prod_.try_push(make_desc(2, 1)), RingStatus::closed);
  const std::array<TileDesc, 2> batch{make_desc(2, 1), make_desc(3, 1)};
  EXPECT_EQ(prod_.try_push_batch(batch), 0u);
  TileDesc out;
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_EQ(out.seq(), 0u);
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_EQ(out.seq(), 1u);
  EXPECT_EQ(cons_.try_pop(out), RingStatus::closed);
}

TEST_F(RingTest, RingThatWasNeverOpenedIsClosed) {
  RingProducer p(arena_, 0);
  RingConsumer c(arena_, 0);
  EXPECT_EQ(p.try_push(make_desc(0, 1)), RingStatus::closed);
  TileDesc out;
  EXPECT_EQ(c.try_pop(out), RingStatus::closed);
}

TEST_F(RingTest, ResetEmptiesTheRingAndCountsResets) {
  ASSERT_EQ(prod_.try_push(make_desc(0, 1)), RingStatus::ok);
  const std::uint32_t before = arena_.ring(kRing).reset_count.load();
  arena_.close_ring(kRing);
  arena_.reset_ring(kRing, 0, 1, 3, 4);
  EXPECT_EQ(arena_.ring(kRing).reset_count.load(), before + 1);
  EXPECT_EQ(arena_.ring(kRing).state.load(), static_cast<std::uint32_t>(RingState::open));
  RingProducer p(arena_, kRing);
  RingConsumer c(arena_, kRing);
  TileDesc out;
  EXPECT_EQ(c.try_pop(out), RingStatus::empty);
  ASSERT_EQ(p.try_push(make_desc(5, 1)), RingStatus::ok);
  ASSERT_EQ(c.try_pop(out), RingStatus::ok);
  EXPECT_EQ(out.seq(), 5u);
}

TEST_F(RingTest, EndpointsUseTheBoundDoorbells) {
  EXPECT_EQ(&cons_.consumer_doorbell(), &arena_.doorbell(3));
  EXPECT_EQ(&prod_.producer_doorbell(), &arena_.doorbell(4));
  arena_.reset_ring(1, 0, 1, 5000, 6000);  // out of range: clamped to doorbell 0, never outside the table
  RingConsumer c(arena_, 1);
  RingProducer p(arena_, 1);
  EXPECT_EQ(&c.consumer_doorbell(), &arena_.doorbell(0));
  EXPECT_EQ(&p.producer_doorbell(), &arena_.doorbell(0));
}

TEST_F(RingTest, TailBeyondCapacityIsReportedCorruptNeverRead) {
  ASSERT_EQ(prod_.try_push(make_desc(0, 1)), RingStatus::ok);
  TileDesc out;
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  // A hostile or broken producer writes an impossible tail.
  arena_.ring(kRing).tail.store(1 + capacity() + 1);
  EXPECT_EQ(cons_.try_pop(out), RingStatus::corrupt);
  std::array<TileDesc, 4> batch{};
  RingStatus st = RingStatus::ok;
  EXPECT_EQ(cons_.try_pop_batch(batch, &st), 0u);
  EXPECT_EQ(st, RingStatus::corrupt);
  EXPECT_EQ(arena_.ring(kRing).head.load(), 1u) << "head never moves over an impossible range";
  EXPECT_EQ(cons_.size_approx(), 0u);
}

TEST_F(RingTest, TailBehindHeadIsReportedCorrupt) {
  for (int i = 0; i < 3; ++i) ASSERT_EQ(prod_.try_push(make_desc(static_cast<std::uint64_t>(i), 1)), RingStatus::ok);
  TileDesc out;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  arena_.ring(kRing).tail.store(1);  // went backwards
  EXPECT_EQ(cons_.try_pop(out), RingStatus::corrupt);
  EXPECT_EQ(arena_.ring(kRing).head.load(), 3u);
}

TEST_F(RingTest, RepairedTailIsAcceptedAgain) {
  arena_.ring(kRing).tail.store(~0ULL);
  TileDesc out;
  EXPECT_EQ(cons_.try_pop(out), RingStatus::corrupt);
  arena_.ring(kRing).tail.store(0);
  EXPECT_EQ(cons_.try_pop(out), RingStatus::empty);
  ASSERT_EQ(prod_.try_push(make_desc(8, 1)), RingStatus::ok);
  ASSERT_EQ(cons_.try_pop(out), RingStatus::ok);
  EXPECT_EQ(out.seq(), 8u);
}

TEST_F(RingTest, ImpossibleHeadMakesTheProducerPushNothing) {
  for (std::uint64_t i = 0; i < capacity(); ++i) ASSERT_EQ(prod_.try_push(make_desc(i, 1)), RingStatus::ok);
  // A broken consumer claims to have consumed more than was ever produced.
  arena_.ring(kRing).head.store(capacity() + 100);
  EXPECT_EQ(prod_.try_push(make_desc(0, 1)), RingStatus::full);
  EXPECT_EQ(arena_.ring(kRing).tail.load(), capacity()) << "tail untouched";
  EXPECT_EQ(prod_.free_approx(), 0u);
}

}  // namespace
}  // namespace tessera
