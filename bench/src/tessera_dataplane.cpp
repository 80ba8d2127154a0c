// Tessera's data plane (tessera::core) measured directly, without a broker:
// descriptor round trips, batched one-way throughput, blocking round trips,
// idle-consumer CPU, slab alloc+free, and tiles streamed through rings + slab blocks.
// The worker is a forked child that inherits the arena mapping.
#include <unistd.h>

#include <array>
#include <chrono>
#include <thread>

#include <tessera/arena.hpp>
#include <tessera/doorbell.hpp>
#include <tessera/ring.hpp>
#include <tessera/slab.hpp>

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

constexpr std::uint32_t kReqRing = 0, kRepRing = 1;
constexpr std::uint32_t kReqBell = 0, kReqSpaceBell = 1, kRepBell = 2, kRepSpaceBell = 3;
constexpr std::uint32_t kBlocksPerClass = 16;

struct Mode {
  const char* name;
  WaitPolicy policy;
};
// spin: never sleeps (benchmark setting); spin-then-sleep: the default policy (spin
// window, then futex); sleep: no spin window, every wait goes to the futex.
constexpr Mode kSpin{"spin", WaitPolicy{0, false}};
constexpr Mode kSpinThenSleep{"spin-then-sleep", WaitPolicy{}};
constexpr Mode kSleep{"sleep", WaitPolicy{0, true}};

// One arena per run: a payload class sized for the tile (if any) and two rings.
Result<Arena> make_arena(std::uint64_t tile_bytes) {
  ArenaConfig cfg;
  cfg.classes.clear();
  cfg.classes.push_back({64 * 1024, 4});
  if (tile_bytes > kDescBytes) cfg.classes.push_back({tile_bytes, kBlocksPerClass});
  cfg.n_rings = 2;
  cfg.ring_capacity = 1024;
  cfg.n_doorbells = 64;   // the arena wants one per participant slot
  cfg.debug_name = "tessera-bench";
  auto a = Arena::create(cfg);
  if (!a) return a;
  a->reset_ring(kReqRing, 0, 1, kReqBell, kReqSpaceBell);
  a->reset_ring(kRepRing, 1, 0, kRepBell, kRepSpaceBell);
  return a;
}

class TesseraHost {
 public:
  TesseraHost(const Arena& a, std::uint32_t slot, const WaitPolicy& pol, double timeout_s)
      : out_(a, kReqRing), in_(a, kRepRing), slab_(a, slot), pol_(pol),
        deadline_(Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s))) {}

  bool send(std::uint64_t seq, std::size_t bytes) noexcept {
    TileDesc d{};
    d.mutate_seq(seq);
    d.mutate_kind(fb::Kind::Request);
    if (bytes > kDescBytes) {
      BlockView v;
      if (slab_.try_alloc(bytes, v) != AllocStatus::ok) return false;
      write_tile(v.data, bytes, seq);
      d.mutate_block(v.handle.raw);
      d.mutate_nbytes(static_cast<std::uint32_t>(bytes));
      d.mutate_dtype(fb::DType::UInt8);
    }
    while (out_.try_push(d) != RingStatus::ok) {  // never full: in-flight << capacity
      if (Clock::now() > deadline_) return false;
    }
    out_.notify();
    return true;
  }

  bool recv(std::uint64_t& seq) noexcept {
    if (doorbell_wait(in_.consumer_doorbell(), [this] { return in_.ready(); }, deadline_, pol_) != WaitStatus::ready)
      return false;
    TileDesc d;
    if (in_.try_pop(d) != RingStatus::ok) return false;
    seq = d.seq();
    if (d.block() != 0 && slab_.free(BlockHandle{d.block()}) != Errc::ok) return false;
    return true;
  }

 private:
  RingProducer out_;
  RingConsumer in_;
  Slab slab_;
  WaitPolicy pol_;
  Clock::time_point deadline_;
};

// The worker: pops requests in batches, reads every byte of each tile, answers with
// a small reply descriptor. Checks order and the tile's stamp.
int tessera_worker(const Arena& a, std::uint64_t total, const WaitPolicy& pol, double timeout_s) {
  auto slot = const_cast<Arena&>(a).register_participant(Role::worker, static_cast<int>(getpid()), "bench-worker");
  if (!slot) return kExitSetup;
  RingConsumer in(a, kReqRing);
  RingProducer out(a, kRepRing);
  Slab slab(a, *slot);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  std::array<TileDesc, 32> batch;
  std::uint64_t expect = 0;
  while (expect < total) {
    if (doorbell_wait(in.consumer_doorbell(), [&] { return in.ready(); }, deadline, pol) != WaitStatus::ready)
      return kExitTimeout;
    const std::size_t n = in.try_pop_batch(batch);
    for (std::size_t k = 0; k < n; ++k) {
      TileDesc& d = batch[k];
      if (d.seq() != expect) return kExitCorrupt;
      if (d.block() != 0) {
        BlockView v;
        if (slab.resolve(BlockHandle{d.block()}, v) != Errc::ok || d.nbytes() > v.capacity) return kExitCorrupt;
        if (read_tile(v.data, d.nbytes()) != d.seq()) return kExitCorrupt;
      }
      d.mutate_kind(fb::Kind::Result);
      ++expect;
    }
    std::size_t pushed = 0;
    while (pushed < n) {
      pushed += out.try_push_batch(std::span<const TileDesc>(batch.data() + pushed, n - pushed));
      if (pushed < n && Clock::now() > deadline) return kExitTimeout;
    }
    if (n > 0) out.notify();
  }
  return 0;
}

Record run_tessera(Context& ctx, const TileRun& run, const WaitPolicy& pol) {
  auto arena = make_arena(run.bytes);
  if (!arena) {
    Record r = base_record(run);
    r.failed = "arena: " + arena.error().message;
    return r;
  }
  auto slot = arena->register_participant(Role::client, static_cast<int>(getpid()), "bench-host");
  if (!slot) {
    Record r = base_record(run);
    r.failed = "register: " + slot.error().message;
    return r;
  }
  const CpuSpan span;
  const std::uint64_t total = run.warmup + run.count;
  const Arena& a = *arena;
  Child child = Child::fork_run([&] { return tessera_worker(a, total, pol, ctx.opt.child_timeout_s); });
  TesseraHost host(a, *slot, pol, ctx.opt.child_timeout_s);
  Record r = drive_tiles(host, run);
  finish_child(r, child, span, 10);
  r.note = fmt::format("arena: {} blocks of this size, rings of 1024 x 64 B", kBlocksPerClass);
  return r;
}

void tile_cases(Context& ctx, bool stream) {
  const char* bench = stream ? "tile/tessera/stream" : "tile/tessera/pingpong";
  std::vector<std::uint64_t> sizes{kDescBytes};
  sizes.insert(sizes.end(), std::begin(kTileSizes), std::end(kTileSizes));
  for (const std::uint64_t bytes : sizes) {
    std::vector<Mode> modes{kSpin, kSpinThenSleep};
    if (bytes == kDescBytes) modes.push_back(kSleep);
    for (const Mode& m : modes) {
      ctx.progress(fmt::format("{} {} {}", bench, human_bytes(bytes), m.name));
      ctx.emit(run_tessera(ctx, make_run(ctx, bench, "tessera", m.name, bytes, stream), m.policy));
    }
  }
}

// One-way throughput: the host pushes batches of 32 descriptors, the worker pops
// batches and checks every sequence number; one reply at the end stops the clock.
void batched_throughput(Context& ctx) {
  ctx.progress("desc/tessera/batched");
  const std::uint64_t n = ctx.count(20'000'000, 20'000);
  Record r;
  r.bench = "desc/tessera/batched";
  r.peer = "tessera";
  r.workload = "oneway-batched";
  r.mode = "spin";
  r.tile_bytes = kDescBytes;
  r.inflight = 1024;
  auto arena = make_arena(0);
  if (!arena) {
    r.failed = arena.error().message;
    ctx.emit(std::move(r));
    return;
  }
  const Arena& a = *arena;
  const CpuSpan span;
  Child child = Child::fork_run([&]() -> int {
    RingConsumer in(a, kReqRing);
    RingProducer out(a, kRepRing);
    std::array<TileDesc, 64> batch;
    std::uint64_t expect = 0;
    Deadline dl(ctx.opt.child_timeout_s);
    while (expect < n) {
      const std::size_t got = in.try_pop_batch(batch);
      for (std::size_t k = 0; k < got; ++k)
        if (batch[k].seq() != expect++) return kExitCorrupt;
      if (got == 0 && dl.expired()) return kExitTimeout;
    }
    TileDesc done{};
    done.mutate_seq(expect);
    while (out.try_push(done) != RingStatus::ok) {
      if (dl.expired()) return kExitTimeout;
    }
    return 0;
  });
  RingProducer out(a, kReqRing);
  RingConsumer in(a, kRepRing);
  std::array<TileDesc, 32> batch{};
  Deadline dl(ctx.opt.child_timeout_s);
  const std::uint64_t t0 = now_ns();
  std::uint64_t seq = 0;
  bool ok = true;
  while (ok && seq < n) {
    const std::size_t want = std::min<std::uint64_t>(batch.size(), n - seq);
    for (std::size_t k = 0; k < want; ++k) batch[k].mutate_seq(seq + k);
    seq += out.try_push_batch(std::span<const TileDesc>(batch.data(), want));
    if (dl.expired()) ok = false;
  }
  TileDesc done{};
  while (ok && in.try_pop(done) != RingStatus::ok) {
    if (dl.expired()) ok = false;
  }
  const std::uint64_t t1 = now_ns();
  if (!ok) r.failed = "timed out";
  if (ok && done.seq() != n) r.failed = "worker saw a different count";
  r.ops = n;
  r.wall_s = static_cast<double>(t1 - t0) * 1e-9;
  r.ops_per_s = static_cast<double>(n) / r.wall_s;
  r.gb_per_s = r.ops_per_s * kDescBytes * 1e-9;
  r.note = "push batches of 32, pop batches of up to 64, ring of 1024";
  finish_child(r, child, span, 10);
  ctx.emit(std::move(r));
}

// A consumer waits on an empty ring with the default policy for `idle` seconds; then
// one descriptor arrives. Reports the consumer's CPU seconds spent waiting (should be
// the spin window only) and the wake-up latency of that descriptor.
void idle_consumer(Context& ctx) {
  ctx.progress("desc/tessera/idle-cpu");
  const double idle_s = ctx.opt.smoke ? 0.05 : ctx.opt.quick ? 0.3 : 1.0;
  Record r;
  r.bench = "desc/tessera/idle-cpu";
  r.peer = "tessera";
  r.workload = "idle";
  r.mode = "spin-then-sleep";
  r.tile_bytes = kDescBytes;
  auto arena = make_arena(0);
  if (!arena) {
    r.failed = arena.error().message;
    ctx.emit(std::move(r));
    return;
  }
  SharedMapping box(4096);
  auto* waited_cpu = new (box.data()) std::atomic<double>(-1.0);
  const Arena& a = *arena;
  const CpuSpan span;
  Child child = Child::fork_run([&]() -> int {
    RingConsumer in(a, kReqRing);
    RingProducer out(a, kRepRing);
    const double c0 = process_cpu_s();
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    if (doorbell_wait(in.consumer_doorbell(), [&] { return in.ready(); }, deadline, WaitPolicy{}) != WaitStatus::ready)
      return kExitTimeout;
    waited_cpu->store(process_cpu_s() - c0, std::memory_order_relaxed);  // relaxed: read after wait4
    TileDesc d;
    if (in.try_pop(d) != RingStatus::ok) return kExitCorrupt;
    while (out.try_push(d) != RingStatus::ok) {
      if (Clock::now() > deadline) return kExitTimeout;
    }
    out.notify();
    return 0;
  });
  std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
  RingProducer out(a, kReqRing);
  RingConsumer in(a, kRepRing);
  TileDesc d{};
  d.mutate_seq(7);
  const std::uint64_t t0 = now_ns();
  if (out.try_push(d) != RingStatus::ok) r.failed = "push failed";
  out.notify();
  Deadline dl(10);
  TileDesc reply;
  while (r.failed.empty() && in.try_pop(reply) != RingStatus::ok) {
    if (dl.expired()) r.failed = "no wake-up";
  }
  const std::uint64_t t1 = now_ns();
  finish_child(r, child, span, 10);
  Samples s(1);
  s.add(t1 - t0);
  r.latency = s.summarize();
  r.ops = 1;
  r.wall_s = idle_s;
  const double w = waited_cpu->load(std::memory_order_relaxed);  // relaxed: the child has exited
  r.cpu.push_back({"worker_waiting", w});
  r.note = fmt::format("consumer idle {:.2f} s; CPU while waiting {:.6f} s ({:.3f} % of one core); latency = wake-up of a "
                       "sleeping consumer + reply",
                       idle_s, w, 100.0 * w / idle_s);
  ctx.emit(std::move(r));
}

// Uncontended slab alloc+free pairs, timed in blocks of 1000 pairs.
void slab_alloc_free(Context& ctx) {
  for (const std::uint64_t bytes : {std::uint64_t{196'608}, std::uint64_t{3'145'728}}) {
    ctx.progress("slab/tessera/alloc-free " + human_bytes(bytes));
    Record r;
    r.bench = "slab/tessera/alloc-free";
    r.peer = "tessera";
    r.workload = "alloc";
    r.mode = "n/a";
    r.tile_bytes = bytes;
    auto arena = make_arena(bytes);
    if (!arena) {
      r.failed = arena.error().message;
      ctx.emit(std::move(r));
      continue;
    }
    auto slot = arena->register_participant(Role::client, static_cast<int>(getpid()), "bench-slab");
    if (!slot) {
      r.failed = slot.error().message;
      ctx.emit(std::move(r));
      continue;
    }
    Slab slab(*arena, *slot);
    constexpr std::uint64_t kBlock = 1000;
    const std::uint64_t blocks = ctx.count(5'000, 5);
    Samples s(blocks);
    const double c0 = process_cpu_s();
    const std::uint64_t t_all = now_ns();
    for (std::uint64_t b = 0; b < blocks + blocks / 10 + 1 && r.failed.empty(); ++b) {
      const std::uint64_t t0 = now_ns();
      for (std::uint64_t k = 0; k < kBlock; ++k) {
        BlockView v;
        if (slab.try_alloc(bytes, v) != AllocStatus::ok || slab.free(v.handle) != Errc::ok) {
          r.failed = "alloc/free failed";
          break;
        }
      }
      if (b > blocks / 10) s.add((now_ns() - t0) / kBlock);
    }
    r.wall_s = static_cast<double>(now_ns() - t_all) * 1e-9;
    r.ops = s.size() * kBlock;
    r.latency = s.summarize();
    r.ops_per_s = r.latency->mean > 0 ? 1e9 / r.latency->mean : 0;
    r.cpu.push_back({"single", process_cpu_s() - c0});
    r.note = "ns per alloc+free pair (mean of 1000 pairs per sample), one process, 16 blocks in the class";
    ctx.emit(std::move(r));
  }
}

TESSERA_BENCH_CASE("tile/tessera/pingpong", "Tessera ring + slab block: descriptor / tile round trip",
                   [](Context& c) { tile_cases(c, false); });
TESSERA_BENCH_CASE("tile/tessera/stream", "Tessera ring + slab block: streaming, 8 in flight",
                   [](Context& c) { tile_cases(c, true); });
TESSERA_BENCH_CASE("desc/tessera/batched", "Tessera ring: one-way batched descriptors/s", batched_throughput);
TESSERA_BENCH_CASE("desc/tessera/idle-cpu", "Tessera doorbell: CPU of an idle consumer after its spin window",
                   idle_consumer);
TESSERA_BENCH_CASE("slab/tessera/alloc-free", "Tessera slab: uncontended alloc+free pair", slab_alloc_free);

}  // namespace
}  // namespace tessera::bench
