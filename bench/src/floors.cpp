// Physical floors of this machine, measured in the same run as everything else:
// a shared cache line bouncing between two processes, single-thread memcpy and read
// bandwidth per tile size, and a bare futex wake-up round trip across processes.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

void cacheline_floor(Context& ctx) {
  ctx.progress("floor: cache-line ping-pong");
  const std::uint64_t n = ctx.count(200'000, 200);
  Samples s(n);
  const CpuSpan span;
  const Summary sum = cacheline_pingpong(n, &s);
  Record r;
  r.bench = "floor/cacheline";
  r.peer = "floor";
  r.workload = "pingpong";
  r.mode = "spin";
  r.tile_bytes = 8;
  if (sum.count == 0) {
    r.failed = "cache-line ping-pong did not complete";
  } else {
    r.ops = sum.count;
    r.latency = sum;
    r.cdf = s.cdf(101);
    r.wall_s = sum.mean * static_cast<double>(sum.count) * 1e-9;
    r.ops_per_s = 1e9 / sum.mean;
  }
  r.cpu.push_back({"host", process_cpu_s() - span.cpu0});
  r.cpu_wall_s = static_cast<double>(now_ns() - span.t0) * 1e-9;
  ctx.emit(std::move(r));
}

// memcpy into 16 rotating destination slots (as a ring of reused slots does) from one
// source image, and a read of every byte of 16 rotating slots: per tile size.
void bandwidth_floor(Context& ctx) {
  constexpr int kSlots = 16;
  for (const std::uint64_t bytes : kTileSizes) {
    ctx.progress("floor: memcpy/read " + human_bytes(bytes));
    auto* src = static_cast<std::byte*>(std::aligned_alloc(4096, bytes));
    auto* dst = static_cast<std::byte*>(std::aligned_alloc(4096, bytes * kSlots));
    if (src == nullptr || dst == nullptr) {
      std::free(src);
      std::free(dst);
      continue;
    }
    std::memset(src, 0x5a, bytes);
    std::memset(dst, 0xa5, bytes * kSlots);  // first touch outside the measurement
    const std::uint64_t n = ctx.count(bytes <= 200'000 ? 20'000 : bytes <= 1'100'000 ? 5'000 : 2'000, 16);
    for (const char* what : {"memcpy", "read", "memcpy+read"}) {
      Samples s(n);
      const std::uint64_t warm = n / 10 + 2;
      const std::uint64_t t_all = now_ns();
      std::uint64_t t_start = t_all;
      for (std::uint64_t k = 0; k < warm + n; ++k) {
        if (k == warm) t_start = now_ns();
        std::byte* slot = dst + (k % kSlots) * bytes;
        const std::uint64_t t0 = now_ns();
        if (std::strcmp(what, "read") != 0) write_tile(slot, bytes, k);
        if (std::strcmp(what, "memcpy") != 0) (void)read_tile(slot, bytes);
        if (k >= warm) s.add(now_ns() - t0);
      }
      Record r;
      r.bench = std::string("floor/") + what;
      r.peer = "floor";
      r.workload = what;
      r.mode = "n/a";
      r.tile_bytes = bytes;
      r.ops = n;
      r.warmup = warm;
      r.wall_s = static_cast<double>(now_ns() - t_start) * 1e-9;
      r.ops_per_s = static_cast<double>(n) / r.wall_s;
      r.gb_per_s = r.ops_per_s * static_cast<double>(bytes) * 1e-9;
      r.latency = s.summarize();
      r.note = "single thread, 16 rotating destination slots";
      ctx.emit(std::move(r));
    }
    std::free(src);
    std::free(dst);
  }
}

long futex(std::atomic<std::uint32_t>* w, int op, std::uint32_t val) {
  timespec ts{0, 100'000'000};  // 100 ms cap per sleep: a lost wake-up costs a retry, never a hang
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), op, val, op == FUTEX_WAIT ? &ts : nullptr,
                 nullptr, 0);
}

// Both sides sleep on a futex word in shared memory; each round trip is two wake-ups.
void futex_floor(Context& ctx) {
  ctx.progress("floor: futex wake-up round trip");
  struct alignas(64) Words {
    std::atomic<std::uint32_t> ping;
    alignas(64) std::atomic<std::uint32_t> pong;
  };
  SharedMapping m(4096);
  auto* w = new (m.data()) Words{};
  const std::uint64_t n = ctx.count(20'000, 20);
  const std::uint64_t warm = n / 10 + 2;
  const CpuSpan span;
  Child child = Child::fork_run([&]() -> int {
    Deadline dl(ctx.opt.child_timeout_s);
    for (std::uint32_t k = 1; k <= warm + n; ++k) {
      // acquire: pairs with the host's release of ping (a pure signal, no payload).
      while (w->ping.load(std::memory_order_acquire) != k) {
        if (dl.expired_now()) return kExitTimeout;
        futex(&w->ping, FUTEX_WAIT, k - 1);
      }
      w->pong.store(k, std::memory_order_release);  // release: the answer -> acquired by the host
      futex(&w->pong, FUTEX_WAKE, INT_MAX);
    }
    return 0;
  });
  Samples s(n);
  Deadline dl(ctx.opt.child_timeout_s);
  bool ok = child.running();
  std::uint64_t t_start = now_ns();
  for (std::uint32_t k = 1; ok && k <= warm + n; ++k) {
    if (k == warm + 1) t_start = now_ns();
    const std::uint64_t t0 = now_ns();
    w->ping.store(k, std::memory_order_release);  // release: the ping -> acquired by the child
    futex(&w->ping, FUTEX_WAKE, INT_MAX);
    while (w->pong.load(std::memory_order_acquire) != k) {  // acquire: pairs with the child's release
      if (dl.expired_now()) {
        ok = false;
        break;
      }
      futex(&w->pong, FUTEX_WAIT, k - 1);
    }
    if (ok && k > warm) s.add(now_ns() - t0);
  }
  Record r;
  r.bench = "floor/futex";
  r.peer = "floor";
  r.workload = "pingpong";
  r.mode = "sleep";
  r.tile_bytes = 4;
  r.ops = n;
  r.warmup = warm;
  r.wall_s = static_cast<double>(now_ns() - t_start) * 1e-9;
  r.ops_per_s = static_cast<double>(n) / r.wall_s;
  r.latency = s.summarize();
  r.cdf = s.cdf(101);
  if (!ok) r.failed = "futex ping-pong timed out";
  finish_child(r, child, span, 10);
  ctx.emit(std::move(r));
}

TESSERA_BENCH_CASE("floor/cacheline", "cross-process round trip of one shared cache line (spinning)", cacheline_floor);
TESSERA_BENCH_CASE("floor/bandwidth", "single-thread memcpy, read and memcpy+read per tile size", bandwidth_floor);
TESSERA_BENCH_CASE("floor/futex", "bare futex wake-up round trip across processes (both sleep)", futex_floor);

}  // namespace
}  // namespace tessera::bench
