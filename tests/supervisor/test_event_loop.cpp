// Event loop: both back ends pass the same tests.
#include <tessera/event_loop.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include <linux/futex.h>
#include <sys/syscall.h>

using namespace std::chrono_literals;
using tessera::EventLoop;
using tessera::LoopChoice;

namespace {

class EventLoopTest : public ::testing::TestWithParam<LoopChoice> {
 protected:
  void SetUp() override {
    auto l = EventLoop::create(GetParam());
    ASSERT_TRUE(l) << l.error().message;
    loop = std::move(*l);
  }
  // Runs the loop until `done` or the timeout; returns done.
  template <class Pred>
  bool run_until(Pred done, std::chrono::milliseconds timeout = 5s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!done() && std::chrono::steady_clock::now() < end) {
      auto r = loop->run_once(10ms);
      if (!r) return false;
    }
    return done();
  }
  std::unique_ptr<EventLoop> loop;
};

void futex_wake_all(std::atomic<std::uint32_t>& w) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace

TEST_P(EventLoopTest, ReportsTheRequestedBackend) {
  EXPECT_EQ(loop->backend(),
            GetParam() == LoopChoice::epoll ? tessera::LoopBackend::epoll : tessera::LoopBackend::io_uring);
}

TEST_P(EventLoopTest, TimerFiresOnceAfterItsDelay) {
  int fired = 0;
  const auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point t1;
  ASSERT_TRUE(loop->add_timer(30ms, [&] {
    ++fired;
    t1 = std::chrono::steady_clock::now();
  }));
  ASSERT_TRUE(run_until([&] { return fired > 0; }));
  EXPECT_GE(t1 - t0, 29ms);
  run_until([] { return false; }, 60ms);
  EXPECT_EQ(fired, 1);
}

TEST_P(EventLoopTest, CanceledTimerNeverFires) {
  int fired = 0;
  auto id = loop->add_timer(20ms, [&] { ++fired; });
  ASSERT_TRUE(id);
  loop->cancel(*id);
  run_until([] { return false; }, 80ms);
  EXPECT_EQ(fired, 0);
}

TEST_P(EventLoopTest, WatchFiresWhileReadableAndStopsAfterCancel) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  std::string got;
  EventLoop::Id id = 0;
  auto w = loop->watch_readable(p[0], [&] {
    char buf[16];
    const auto n = ::read(p[0], buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  });
  ASSERT_TRUE(w);
  id = *w;
  ASSERT_EQ(::write(p[1], "ab", 2), 2);
  ASSERT_TRUE(run_until([&] { return got == "ab"; }));
  ASSERT_EQ(::write(p[1], "cd", 2), 2);
  ASSERT_TRUE(run_until([&] { return got == "abcd"; }));
  loop->cancel(id);
  ASSERT_EQ(::write(p[1], "ef", 2), 2);
  run_until([] { return false; }, 50ms);
  EXPECT_EQ(got, "abcd");
  ::close(p[0]);
  ::close(p[1]);
}

TEST_P(EventLoopTest, WatchCanCancelItselfFromItsCallback) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  int calls = 0;
  EventLoop::Id id = 0;
  auto w = loop->watch_readable(p[0], [&] {
    ++calls;
    loop->cancel(id);  // data stays unread: a level-triggered watch would fire again
  });
  ASSERT_TRUE(w);
  id = *w;
  ASSERT_EQ(::write(p[1], "x", 1), 1);
  run_until([] { return false; }, 60ms);
  EXPECT_EQ(calls, 1);
  ::close(p[0]);
  ::close(p[1]);
}

TEST_P(EventLoopTest, HangupIsReportedAsReadable) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  bool eof = false;
  EventLoop::Id id = 0;
  auto w = loop->watch_readable(p[0], [&] {
    char c;
    if (::read(p[0], &c, 1) == 0) {
      eof = true;
      loop->cancel(id);
    }
  });
  ASSERT_TRUE(w);
  id = *w;
  ::close(p[1]);
  EXPECT_TRUE(run_until([&] { return eof; }));
  ::close(p[0]);
}

TEST_P(EventLoopTest, PostFromAnotherThreadRunsOnTheLoopInOrder) {
  std::vector<int> order;
  std::thread t([&] {
    for (int i = 0; i < 100; ++i) loop->post([&order, i] { order.push_back(i); });
  });
  t.join();
  ASSERT_TRUE(run_until([&] { return order.size() == 100; }));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
}

TEST_P(EventLoopTest, StopEndsRunFromAnotherThread) {
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);
    loop->stop();
  });
  auto r = loop->run();
  t.join();
  EXPECT_TRUE(r);
}

TEST_P(EventLoopTest, FutexWaitCompletesWhenWoken) {
  std::atomic<std::uint32_t> word{0};
  bool woken = false;
  ASSERT_TRUE(loop->wait_futex(word, 0, [&] { woken = true; }));
  run_until([] { return false; }, 30ms);
  EXPECT_FALSE(woken);
  std::thread t([&] {
    // relaxed: the futex wake below is the synchronisation under test.
    word.store(1, std::memory_order_relaxed);
    futex_wake_all(word);
  });
  EXPECT_TRUE(run_until([&] { return woken; }));
  t.join();
}

TEST_P(EventLoopTest, FutexWaitCompletesAtOnceOnValueMismatch) {
  std::atomic<std::uint32_t> word{5};
  bool done = false;
  ASSERT_TRUE(loop->wait_futex(word, 4, [&] { done = true; }));
  EXPECT_TRUE(run_until([&] { return done; }, 1s));
}

TEST_P(EventLoopTest, CanceledFutexWaitNeverCalls) {
  std::atomic<std::uint32_t> word{0};
  bool called = false;
  auto id = loop->wait_futex(word, 0, [&] { called = true; });
  ASSERT_TRUE(id);
  loop->cancel(*id);
  // relaxed: only the (absent) callback matters.
  word.store(1, std::memory_order_relaxed);
  futex_wake_all(word);
  run_until([] { return false; }, 60ms);
  EXPECT_FALSE(called);
}

INSTANTIATE_TEST_SUITE_P(Backends, EventLoopTest, ::testing::Values(LoopChoice::io_uring, LoopChoice::epoll),
                         [](const auto& p) { return p.param == LoopChoice::epoll ? "epoll" : "io_uring"; });

TEST(EventLoopSelection, EnvironmentForcesEpoll) {
  ::setenv("TESSERA_EVENT_LOOP", "epoll", 1);
  auto l = EventLoop::create(LoopChoice::automatic);
  ::unsetenv("TESSERA_EVENT_LOOP");
  ASSERT_TRUE(l);
  EXPECT_EQ((*l)->backend(), tessera::LoopBackend::epoll);
}
