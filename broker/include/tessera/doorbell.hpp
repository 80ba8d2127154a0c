// Doorbells: bounded spinning, then a cross-process futex sleep. A notifier makes
// the FUTEX_WAKE syscall only when someone sleeps (see docs/design/rings.md).
#pragma once

#include <chrono>
#include <cstdint>

#include <tessera/layout.hpp>

namespace tessera {

struct WaitPolicy {
  std::uint32_t spin_ns = 50'000;   // spin this long before sleeping (~ one sleeping round trip here)
  bool sleep = true;                // false: spin until the deadline (benchmarks)
};

enum class WaitStatus : std::uint8_t { ready = 0, timeout };

using Clock = std::chrono::steady_clock;

// now + timeout, saturated: a timeout of nanoseconds::max() ("forever") never wraps.
// Every deadline computed from a caller's timeout goes through this.
inline Clock::time_point deadline_after(Clock::time_point now, std::chrono::nanoseconds timeout) noexcept {
  if (timeout <= std::chrono::nanoseconds::zero()) return now;
  if (timeout >= Clock::time_point::max() - now) return Clock::time_point::max();
  return now + timeout;
}

// Wakes every sleeper of `bell`. Costs one uncontended atomic RMW when nobody sleeps.
void doorbell_notify(Doorbell& bell) noexcept;

namespace detail {
void futex_wait(AtomicU32& word, std::uint32_t expected, Clock::time_point deadline) noexcept;
void cpu_relax() noexcept;
}  // namespace detail

// Waits until `ready()` is true or `deadline` passes. `ready` must be cheap and
// side-effect free (typically "a ring is not empty").
template <class Pred>
WaitStatus doorbell_wait(Doorbell& bell, Pred&& ready, Clock::time_point deadline,
                         const WaitPolicy& policy = {}) noexcept {
  if (ready()) return WaitStatus::ready;
  const auto spin_until = std::min(deadline, Clock::now() + std::chrono::nanoseconds(policy.spin_ns));
  for (std::uint32_t i = 1;; ++i) {
    if (ready()) return WaitStatus::ready;
    detail::cpu_relax();
    if ((i & 63) == 0) {
      const auto now = Clock::now();
      if (now >= deadline) return WaitStatus::timeout;
      if (policy.sleep && now >= spin_until) break;
    }
  }
  // SYNC[doorbell.waiters] acq_rel RMW: either a notifier's RMW reads our increment
  // (and wakes us), or ours reads theirs and we then see their published data.
  bell.waiters.fetch_add(1, std::memory_order_acq_rel);
  WaitStatus st = WaitStatus::ready;
  for (;;) {
    // SYNC[doorbell.seq] acquire: pairs with the release bump in doorbell_notify.
    const std::uint32_t seen = bell.seq.load(std::memory_order_acquire);
    if (ready()) break;
    if (Clock::now() >= deadline) { st = WaitStatus::timeout; break; }
    detail::futex_wait(bell.seq, seen, deadline);
  }
  // relaxed: a stale count only costs a notifier one spare FUTEX_WAKE.
  bell.waiters.fetch_sub(1, std::memory_order_relaxed);
  return st;
}

}  // namespace tessera
