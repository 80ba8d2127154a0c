#include <tessera/doorbell.hpp>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tessera {

void doorbell_notify(Doorbell& bell) noexcept {
  // SYNC[doorbell.waiters] acq_rel RMW (not a plain load): an RMW reads the latest value in
  // the modification order, so either we see a sleeper's increment or it sees our earlier
  // publication (see doorbell_wait). Uncontended when nobody sleeps: no syscall.
  if (bell.waiters.fetch_add(0, std::memory_order_acq_rel) == 0) return;
  // SYNC[doorbell.seq] release: pairs with the sleeper's acquire load before FUTEX_WAIT.
  bell.seq.fetch_add(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&bell.seq), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

namespace detail {

void futex_wait(AtomicU32& word, std::uint32_t expected, Clock::time_point deadline) noexcept {
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return;
  // Cap each sleep so a lost wake-up (a peer killed between publish and notify) costs at most 100 ms.
  if (left > std::chrono::milliseconds(100)) left = std::chrono::milliseconds(100);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
  timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  // Shared (not FUTEX_PRIVATE): the word lives in a MAP_SHARED mapping used by several processes.
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

}  // namespace detail
}  // namespace tessera
