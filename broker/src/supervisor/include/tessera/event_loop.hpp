// The broker's event loop: one thread waiting on pipes, pidfds, timers and futex
// doorbells. Two back ends with one contract: io_uring (POLL_ADD, TIMEOUT and the
// raw FUTEX_WAIT opcode, probed at run time) and an epoll fallback used when
// io_uring is unavailable (seccomp in containers) or forced by
// TESSERA_EVENT_LOOP=epoll. See docs/design/broker.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include <tessera/result.hpp>

namespace tessera {

enum class LoopBackend : std::uint8_t { io_uring, epoll };
enum class LoopChoice : std::uint8_t { automatic, io_uring, epoll };
const char* to_string(LoopBackend b) noexcept;

class EventLoop {
 public:
  using Id = std::uint64_t;
  using Callback = std::function<void()>;

  // `automatic` honours TESSERA_EVENT_LOOP=epoll|io_uring, then tries io_uring and
  // falls back to epoll; the choice is logged. An explicit choice is not overridden.
  static Result<std::unique_ptr<EventLoop>> create(LoopChoice choice = LoopChoice::automatic);

  EventLoop() = default;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  virtual ~EventLoop() = default;

  virtual LoopBackend backend() const noexcept = 0;
  // True when futex waits are native kernel operations (io_uring FUTEX_WAIT);
  // false when a helper thread performs them (epoll back end, older kernels).
  virtual bool futex_native() const noexcept = 0;

  // ---- loop thread only -----------------------------------------------------------
  // Calls `cb` each time `fd` is readable or hung up (level-triggered) until cancel().
  virtual Result<Id> watch_readable(int fd, Callback cb) = 0;
  // One-shot timer.
  virtual Result<Id> add_timer(std::chrono::nanoseconds delay, Callback cb) = 0;
  // One-shot: `cb` runs once the futex word is woken, or at once if it no longer
  // holds `expected`. Spurious calls are possible; re-check the condition.
  virtual Result<Id> wait_futex(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                                Callback cb) = 0;
  // After cancel() returns, the callback of `id` is never called again. Unknown ids are ignored.
  virtual void cancel(Id id) = 0;
  // Runs callbacks until stop(); returns an error only if the kernel interface fails.
  virtual Result<void> run() = 0;
  // Waits at most `max_wait` and runs what is ready.
  virtual Result<void> run_once(std::chrono::milliseconds max_wait) = 0;

  // ---- any thread -----------------------------------------------------------------
  // Queues `cb` to run on the loop thread (FIFO) and wakes the loop.
  virtual void post(Callback cb) = 0;
  virtual void stop() = 0;
};

}  // namespace tessera
