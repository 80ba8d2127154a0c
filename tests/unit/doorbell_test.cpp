// Doorbells: bounded spin, futex sleep, notify only when someone sleeps, timeouts.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <tessera/doorbell.hpp>
#include <tessera/ring.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using namespace std::chrono_literals;

class DoorbellTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = Arena::create(test::small_config());
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
  }
  Doorbell& bell() { return arena_.doorbell(1); }
  Arena arena_;
};

TEST_F(DoorbellTest, ReadyPredicateReturnsAtOnceWithoutSleeping) {
  const auto t0 = Clock::now();
  EXPECT_EQ(doorbell_wait(bell(), [] { return true; }, Clock::now() + 10s), WaitStatus::ready);
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(bell().waiters.load(), 0u);
}

TEST_F(DoorbellTest, WaitTimesOutAtTheDeadlineAndLeavesNoWaiter) {
  WaitPolicy pol;
  pol.spin_ns = 1'000'000;
  const auto t0 = Clock::now();
  EXPECT_EQ(doorbell_wait(bell(), [] { return false; }, t0 + 150ms, pol), WaitStatus::timeout);
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 3s);
  EXPECT_EQ(bell().waiters.load(), 0u) << "a sleeper that timed out must deregister";
}

TEST_F(DoorbellTest, SpinOnlyPolicyNeverRegistersAsSleeper) {
  WaitPolicy pol;
  pol.sleep = false;
  std::atomic<bool> saw_waiter{false};
  Doorbell& b = bell();
  EXPECT_EQ(doorbell_wait(b, [&] {
              if (b.waiters.load(std::memory_order_relaxed) != 0) saw_waiter = true;
              return false;
            }, Clock::now() + 30ms, pol),
            WaitStatus::timeout);
  EXPECT_FALSE(saw_waiter.load());
}

TEST_F(DoorbellTest, NotifyWithoutSleepersSkipsTheWake) {
  const std::uint32_t seq = bell().seq.load();
  doorbell_notify(bell());
  doorbell_notify(bell());
  EXPECT_EQ(bell().seq.load(), seq) << "no sleeper: no seq bump, no FUTEX_WAKE";
}

TEST_F(DoorbellTest, NotifyWakesASleepingConsumer) {
  arena_.reset_ring(0, 0, 1, /*consumer bell*/ 1, /*producer bell*/ 2);
  RingProducer prod(arena_, 0);
  RingConsumer cons(arena_, 0);
  WaitPolicy pol;
  pol.spin_ns = 10'000;
  std::atomic<int> result{-1};
  std::thread sleeper([&] {
    const WaitStatus st = doorbell_wait(cons.consumer_doorbell(), [&] { return cons.ready(); }, Clock::now() + 20s, pol);
    result = static_cast<int>(st);
  });
  ASSERT_TRUE(test::wait_until([&] { return bell().waiters.load() == 1; }, 10s)) << "consumer never went to sleep";
  const std::uint32_t seq = bell().seq.load();
  ASSERT_EQ(prod.try_push(test::make_desc(1, 1)), RingStatus::ok);
  prod.notify();
  EXPECT_EQ(bell().seq.load(), seq + 1) << "a sleeper was registered: notify must bump seq and wake";
  const bool woke = test::wait_until([&] { return result.load() != -1; }, 10s);
  sleeper.join();
  EXPECT_TRUE(woke);
  EXPECT_EQ(result.load(), static_cast<int>(WaitStatus::ready));
  EXPECT_EQ(bell().waiters.load(), 0u);
  TileDesc out;
  EXPECT_EQ(cons.try_pop(out), RingStatus::ok);
}

TEST_F(DoorbellTest, EverySleeperWakesOnOneNotify) {
  std::atomic<bool> flag{false};
  std::atomic<int> woke{0};
  WaitPolicy pol;
  pol.spin_ns = 1'000;
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i)
    ts.emplace_back([&] {
      if (doorbell_wait(bell(), [&] { return flag.load(std::memory_order_acquire); }, Clock::now() + 20s, pol) ==
          WaitStatus::ready)
        ++woke;
    });
  ASSERT_TRUE(test::wait_until([&] { return bell().waiters.load() == 3; }, 10s));
  flag.store(true, std::memory_order_release);
  doorbell_notify(bell());
  for (auto& t : ts) t.join();
  EXPECT_EQ(woke.load(), 3);
  EXPECT_EQ(bell().waiters.load(), 0u);
}

}  // namespace
}  // namespace tessera
