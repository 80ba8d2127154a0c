// In-process stress of the SPSC rings and doorbells (the ThreadSanitizer target).
// Messages carry {producer, seq}; payload bytes travel in slab blocks and are checked by
// the consumer, which proves the release/acquire hand-off of SYNC[ring.tail] and
// SYNC[block.meta].
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tessera/doorbell.hpp>
#include <tessera/ring.hpp>
#include <tessera/slab.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__)
constexpr std::uint64_t kScale = 1;
#else
constexpr std::uint64_t kScale = 4;
#endif

constexpr std::uint32_t kProducerSlot = 0;
constexpr std::uint32_t kConsumerSlot = 1;

std::uint8_t pattern(std::uint64_t seq, std::uint64_t i) { return static_cast<std::uint8_t>(seq * 131 + i * 7 + 1); }

Arena make_arena(std::uint32_t ring_capacity) {
  ArenaConfig cfg = test::small_config(32);
  cfg.ring_capacity = ring_capacity;
  auto a = Arena::create(cfg);
  if (!a) ADD_FAILURE() << a.error().message;
  return a ? std::move(*a) : Arena{};
}

TEST(RingStress, SpscStreamKeepsOrderAndPayloadBytes) {
  Arena arena = make_arena(64);
  ASSERT_TRUE(arena.valid());
  arena.reset_ring(0, kProducerSlot, kConsumerSlot, 0, 1);
  const std::uint64_t n = 25'000 * kScale;
  const test::Deadline deadline(60s);
  std::atomic<bool> abort{false};
  std::string producer_error;

  std::thread producer([&] {
    Slab slab(arena, kProducerSlot);
    RingProducer prod(arena, 0);
    std::mt19937_64 rng(test::test_seed(1));
    for (std::uint64_t seq = 0; seq < n && !abort.load(std::memory_order_relaxed);) {
      BlockView v;
      const std::uint64_t bytes = 1 + rng() % 6000;
      if (slab.try_alloc(bytes, v) != AllocStatus::ok) {  // consumer still holds them: wait for frees
        std::this_thread::yield();
        continue;
      }
      for (std::uint64_t i = 0; i < bytes; ++i) v.data[i] = std::byte{pattern(seq, i)};
      const TileDesc d = test::make_desc(seq, 7, v.handle.raw, static_cast<std::uint32_t>(bytes));
      RingStatus st;
      while ((st = prod.try_push(d)) == RingStatus::full) {
        if (abort.load(std::memory_order_relaxed)) return;
        std::this_thread::yield();
      }
      if (st != RingStatus::ok) {
        producer_error = "push failed";
        abort = true;
        return;
      }
      ++seq;
    }
  });

  Slab slab(arena, kConsumerSlot);
  RingConsumer cons(arena, 0);
  std::uint64_t expect = 0, bad_payload = 0, bad_order = 0, bad_handle = 0;
  std::array<TileDesc, 8> batch{};
  while (expect < n && !deadline.expired()) {
    RingStatus st = RingStatus::ok;
    const std::size_t got = cons.try_pop_batch(batch, &st);
    if (got == 0) {
      ASSERT_EQ(st, RingStatus::empty);
      std::this_thread::yield();
      continue;
    }
    for (std::size_t k = 0; k < got; ++k) {
      const TileDesc& d = batch[k];
      if (d.stream() != 7 || d.seq() != expect) ++bad_order;
      expect = d.seq() + 1;
      BlockView v;
      const BlockHandle h{d.block()};
      if (slab.resolve(h, v) != Errc::ok || slab.adopt(h, kProducerSlot) != Errc::ok) {
        ++bad_handle;
        continue;
      }
      for (std::uint64_t i = 0; i < d.nbytes(); ++i)
        if (v.data[i] != std::byte{pattern(d.seq(), i)}) {
          ++bad_payload;
          break;
        }
      if (slab.free(h) != Errc::ok) ++bad_handle;
    }
  }
  abort = true;
  producer.join();
  EXPECT_TRUE(producer_error.empty()) << producer_error;
  EXPECT_EQ(expect, n) << "timed out or lost messages";
  EXPECT_EQ(bad_order, 0u) << "lost, duplicated or reordered";
  EXPECT_EQ(bad_payload, 0u) << "payload bytes not visible with the descriptor";
  EXPECT_EQ(bad_handle, 0u);
  EXPECT_EQ(Slab::count_held(arena, kNoSlot), 0u);
}

TEST(RingStress, BatchedDescriptorStreamHasNoGapsOrDuplicates) {
  Arena arena = make_arena(128);
  ASSERT_TRUE(arena.valid());
  arena.reset_ring(1, kProducerSlot, kConsumerSlot, 0, 1);
  const std::uint64_t n = 250'000 * kScale;
  std::atomic<bool> abort{false};
  std::thread producer([&] {
    RingProducer prod(arena, 1);
    std::mt19937 rng(static_cast<std::uint32_t>(test::test_seed(2)));
    std::vector<TileDesc> buf;
    for (std::uint64_t seq = 0; seq < n && !abort.load(std::memory_order_relaxed);) {
      buf.clear();
      const std::uint64_t want = std::min<std::uint64_t>(1 + rng() % 40, n - seq);
      for (std::uint64_t k = 0; k < want; ++k) buf.push_back(test::make_desc(seq + k, 3));
      const std::size_t pushed = prod.try_push_batch(buf);
      seq += pushed;
      if (pushed == 0) std::this_thread::yield();
    }
  });
  RingConsumer cons(arena, 1);
  const test::Deadline deadline(60s);
  std::uint64_t expect = 0, errors = 0;
  std::array<TileDesc, 32> out{};
  std::mt19937 rng(5);
  while (expect < n && !deadline.expired()) {
    const std::size_t want = 1 + rng() % out.size();
    const std::size_t got = cons.try_pop_batch(std::span<TileDesc>(out.data(), want));
    for (std::size_t k = 0; k < got; ++k) {
      if (out[k].seq() != expect || out[k].stream() != 3) ++errors;
      expect = out[k].seq() + 1;
    }
    if (got == 0) std::this_thread::yield();
  }
  abort = true;
  producer.join();
  EXPECT_EQ(expect, n);
  EXPECT_EQ(errors, 0u);
}

// Both sides sleep: the consumer when the ring is empty, the producer when it is full.
// A lost wake-up would stall a side until the 100 ms futex cap; the test counts such stalls.
TEST(DoorbellStress, SleepingConsumerAndProducerNeverLoseAWakeUp) {
  Arena arena = make_arena(8);
  ASSERT_TRUE(arena.valid());
  arena.reset_ring(0, kProducerSlot, kConsumerSlot, /*consumer bell*/ 2, /*producer bell*/ 3);
  const std::uint64_t n = 1500 * kScale;
  WaitPolicy pol;
  pol.spin_ns = 2'000;  // sleep almost at once: exercise the futex path
  std::atomic<bool> abort{false};
  std::atomic<std::uint64_t> producer_slow{0};
  std::thread producer([&] {
    RingProducer prod(arena, 0);
    std::mt19937 rng(static_cast<std::uint32_t>(test::test_seed(3)));
    for (std::uint64_t seq = 0; seq < n && !abort.load(std::memory_order_relaxed);) {
      const auto t0 = Clock::now();
      const WaitStatus ws = doorbell_wait(prod.producer_doorbell(), [&] { return prod.free_approx() > 0; },
                                          Clock::now() + 5s, pol);
      if (ws != WaitStatus::ready) continue;
      if (Clock::now() - t0 > 80ms) ++producer_slow;
      if (prod.try_push(test::make_desc(seq, 9)) == RingStatus::ok) {
        ++seq;
        prod.notify();
      }
      if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
    }
  });
  RingConsumer cons(arena, 0);
  const test::Deadline deadline(90s);
  std::uint64_t expect = 0, errors = 0, slow = 0;
  std::mt19937 rng(11);
  while (expect < n && !deadline.expired()) {
    const auto t0 = Clock::now();
    if (doorbell_wait(cons.consumer_doorbell(), [&] { return cons.ready(); }, Clock::now() + 5s, pol) !=
        WaitStatus::ready)
      continue;
    if (Clock::now() - t0 > 80ms) ++slow;
    TileDesc d;
    while (cons.try_pop(d) == RingStatus::ok) {
      if (d.seq() != expect) ++errors;
      expect = d.seq() + 1;
      cons.notify();
    }
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
  }
  abort = true;
  producer.join();
  EXPECT_EQ(expect, n) << "bounded time exceeded";
  EXPECT_EQ(errors, 0u);
  // Neither side ever waits long for data that exists; a few slow waits are scheduler noise
  // on a loaded 2-core machine, a lost wake-up protocol shows up as many ~100 ms stalls.
  EXPECT_LE(slow + producer_slow.load(), n / 100) << "consumer stalls " << slow << ", producer stalls "
                                                  << producer_slow.load();
  EXPECT_EQ(arena.doorbell(2).waiters.load(), 0u);
  EXPECT_EQ(arena.doorbell(3).waiters.load(), 0u);
}

}  // namespace
}  // namespace tessera
