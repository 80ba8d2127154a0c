// When a worker wakes its sleeping client (Worker::hold_wakeups, docs/design/rings.md
// "Result wake-ups"): at once for a client with its last tiles in flight, and for a deep
// queue only once the client's refill is due (results waiting >= requests still queued),
// not once per tile.
//
// A client and an in-process tessera::Worker share one arena. "The client sleeps" is
// stood in for by a waiter count on the client's doorbell, so every wake-up the worker
// makes bumps that doorbell's sequence (doorbell_notify) and the test counts them exactly.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <tessera/client.hpp>
#include <tessera/worker.hpp>

#include "host.hpp"

using namespace std::chrono_literals;

namespace {

class WakeRig {
 public:
  // max_wake_delay: long by default, so that only the count rule decides (a slow machine
  // must not turn a test of that rule into a test of the clock).
  explicit WakeRig(std::uint32_t window, std::chrono::microseconds max_wake_delay = std::chrono::minutes(10)) {
    auto o = tessera::test::small_client_options();
    o.worker_window = window;
    client_ = tessera::Client::embedded(std::move(o)).value();
    auto ew = client_->add_external_worker("inproc").value();
    client_->set_worker_pid(ew.index, ::getpid());
    const int fd = ::fcntl(ew.arena_fd, F_DUPFD_CLOEXEC, 3);
    ::setenv("TESSERA_ARENA_FD", std::to_string(fd).c_str(), 1);
    ::setenv("TESSERA_SLOT", std::to_string(ew.slot).c_str(), 1);
    auto w = tessera::Worker::from_env({.wait = {.spin_ns = 1000}, .max_wake_delay = max_wake_delay});
    ::unsetenv("TESSERA_ARENA_FD");
    ::unsetenv("TESSERA_SLOT");
    worker_ = std::move(w).value();
    stream_ = client_->open_stream().value();
    slot_ = ew.slot;
  }
  ~WakeRig() {
    if (bell_ != nullptr) bell_->waiters.fetch_sub(1, std::memory_order_relaxed);
  }

  // Submits n tiles; the first call also finds the client's doorbell and makes the client
  // "sleep" on it from then on.
  void submit(int n) {
    for (int i = 0; i < n; ++i) {
      tessera::InputBlock in;
      ASSERT_TRUE(client_->alloc(64, in, 1s).has_value());
      ASSERT_TRUE(client_->submit(stream_, in, {.dtype = tessera::DType::UInt8, .shape = {64}}).has_value());
    }
    submitted_ += n;
    if (bell_ != nullptr) return;
    const tessera::Arena& a = client_->arena();
    for (std::uint32_t c = 0; c < a.n_channels() && bell_ == nullptr; ++c) {
      const tessera::Channel& ch = a.channel(c);
      if (ch.state.load(std::memory_order_acquire) == static_cast<std::uint32_t>(tessera::ChannelState::open) &&
          ch.worker_slot == slot_)
        bell_ = &a.doorbell(a.ring(ch.response_ring).consumer_doorbell);
    }
    ASSERT_NE(bell_, nullptr) << "no open channel to the in-process worker";
    bell_->waiters.fetch_add(1, std::memory_order_relaxed);
    seen_ = bell_->seq.load(std::memory_order_relaxed);
  }

  std::vector<tessera::Tile> take(std::size_t max) {
    std::vector<tessera::Tile> ts;
    EXPECT_EQ(worker_->take(ts, max, 1s), tessera::TakeStatus::ok);
    taken_ += static_cast<int>(ts.size());
    return ts;
  }

  void publish(tessera::Tile& t) {
    tessera::OutputBlock out;
    ASSERT_EQ(worker_->alloc_output(tessera::DType::UInt8, {8}, out), tessera::AllocStatus::ok);
    ASSERT_EQ(worker_->publish(t, out), tessera::Errc::ok);
    ++unconsumed_;
  }

  // Wake-ups the worker made since the last call.
  std::uint32_t new_wakeups() {
    const std::uint32_t now = bell_->seq.load(std::memory_order_relaxed);
    const std::uint32_t n = now - seen_;
    seen_ = now;
    return n;
  }

  // What a woken client does: takes every result (without sleeping).
  int drain() {
    std::vector<tessera::TileResult> rs;
    int got = 0;
    while (client_->poll(rs, 64, 0ns) != 0)
      for (const auto& r : rs) {
        EXPECT_EQ(r.outcome, tessera::Outcome::completed) << r.error;
        ++got;
      }
    unconsumed_ -= got;
    return got;
  }

  tessera::Worker& worker() { return *worker_; }
  int queued() const { return submitted_ - taken_; }  // the client's window covers every submission
  int unconsumed() const { return unconsumed_; }

 private:
  std::unique_ptr<tessera::Client> client_;
  std::unique_ptr<tessera::Worker> worker_;
  std::uint32_t stream_ = 0, slot_ = 0, seen_ = 0;
  tessera::Doorbell* bell_ = nullptr;
  int submitted_ = 0, taken_ = 0, unconsumed_ = 0;
};

}  // namespace

TEST(Wakeups, AClientWithItsLastTileInFlightIsWokenByItsAnswer) {
  WakeRig rig(16);
  rig.submit(1);
  auto ts = rig.take(4);
  ASSERT_EQ(ts.size(), 1u);
  EXPECT_EQ(rig.new_wakeups(), 0u) << "taking a request woke the client";
  rig.publish(ts[0]);
  EXPECT_EQ(rig.new_wakeups(), 1u) << "the only tile in flight was answered but its client sleeps on";
  EXPECT_EQ(rig.drain(), 1);
}

TEST(Wakeups, ADeepQueueWakesItsClientWhenItsRefillIsDueNotOncePerTile) {
  constexpr int kTiles = 48;
  WakeRig rig(kTiles);
  rig.submit(kTiles);
  int answered = 0, wakeups = 0;
  while (answered < kTiles) {
    auto ts = rig.take(4);
    ASSERT_FALSE(ts.empty());
    for (auto& t : ts) {
      rig.publish(t);
      ++answered;
      const bool due = rig.unconsumed() >= rig.queued();
      const std::uint32_t w = rig.new_wakeups();
      ASSERT_EQ(w, due ? 1u : 0u) << "after " << answered << " answers: " << rig.unconsumed() << " results wait, "
                                  << rig.queued() << " requests queued";
      if (w != 0) {
        ++wakeups;
        const int waiting = rig.unconsumed();
        EXPECT_EQ(rig.drain(), waiting);
      }
    }
  }
  EXPECT_EQ(rig.drain(), 0);
  EXPECT_EQ(rig.unconsumed(), 0);
  // 48 tiles in takes of 4 wake the client 7 times (answers 24, 36, 41, then each of the
  // last four); once per tile would be 48.
  EXPECT_GE(wakeups, 1);
  EXPECT_LT(wakeups, kTiles / 4) << "the client was woken almost once per tile";
}

TEST(Wakeups, HeldWakeupsReachTheClientOnceAtTheRelease) {
  WakeRig rig(16);
  rig.submit(8);
  auto ts = rig.take(8);
  ASSERT_EQ(ts.size(), 8u);
  rig.worker().hold_wakeups();
  rig.worker().hold_wakeups();  // nested: only the outermost release wakes
  for (auto& t : ts) rig.publish(t);
  EXPECT_EQ(rig.new_wakeups(), 0u) << "a held wake-up went out early";
  rig.worker().release_wakeups();
  EXPECT_EQ(rig.new_wakeups(), 0u) << "an inner release woke the client";
  rig.worker().release_wakeups();
  EXPECT_EQ(rig.new_wakeups(), 1u) << "the batch's answers did not reach the client with one wake-up";
  EXPECT_EQ(rig.drain(), 8);
}

TEST(Wakeups, AWorkerAboutToWaitForRequestsWakesItsClientFirst) {
  WakeRig rig(32);
  rig.submit(16);
  auto ts = rig.take(4);
  ASSERT_EQ(ts.size(), 4u);
  rig.publish(ts[0]);  // 1 result waits, 15 requests are queued: not due
  ASSERT_EQ(rig.new_wakeups(), 0u);
  // The rest of the queue goes unanswered for now (held by a batcher, say); the worker
  // then waits for more requests, and the result already there must not wait with it.
  auto more = rig.take(16);
  ASSERT_EQ(more.size(), 12u);
  EXPECT_EQ(rig.new_wakeups(), 0u);
  std::vector<tessera::Tile> none;
  EXPECT_EQ(rig.worker().take(none, 4, 1ms), tessera::TakeStatus::timeout);
  EXPECT_EQ(rig.new_wakeups(), 1u) << "the worker went to wait while its client slept on a result";
  EXPECT_EQ(rig.drain(), 1);
  for (std::size_t i = 1; i < ts.size(); ++i) rig.publish(ts[i]);
  for (auto& t : more) rig.publish(t);
  EXPECT_EQ(rig.drain(), 15);
}

TEST(Wakeups, AResultIsNotHeldBackLongerThanTheMaxWakeDelay) {
  WakeRig rig(32, std::chrono::milliseconds(5));
  rig.submit(16);
  auto ts = rig.take(4);
  ASSERT_EQ(ts.size(), 4u);
  rig.publish(ts[0]);  // 1 result waits, 12 requests are queued: not due by count
  EXPECT_EQ(rig.new_wakeups(), 0u);
  std::this_thread::sleep_for(std::chrono::milliseconds(6));
  rig.publish(ts[1]);  // still not due by count, but the first result has waited 6 ms
  EXPECT_EQ(rig.new_wakeups(), 1u) << "a result waited past max_wake_delay while its client slept";
  EXPECT_EQ(rig.drain(), 2);
  for (std::size_t i = 2; i < ts.size(); ++i) rig.publish(ts[i]);
  auto more = rig.take(16);
  for (auto& t : more) rig.publish(t);
  EXPECT_EQ(rig.drain(), 14);
}
