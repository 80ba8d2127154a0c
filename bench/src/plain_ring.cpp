// Reference shared-memory transports with the same workload as Tessera:
//  - "plain-ring": a bare SPSC ring (rigtorp-style cached indices) over 16 reused
//    shared-memory tile slots, spinning. This is the floor a ring design can reach.
//  - "boost-spsc": boost::lockfree::spsc_queue<TileDesc, capacity<1024>> placed in the
//    same kind of shared mapping (descriptors only), the off-the-shelf alternative to
//    Tessera's own ring.
#include <array>
#include <new>

#include <boost/lockfree/spsc_queue.hpp>
#include <tessera/layout.hpp>

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

constexpr std::size_t kRingCap = 1024;
constexpr std::size_t kSlots = 16;

// A bare SPSC ring in shared memory. Each side's index and its cached copy of the
// other side's index share one cache line that only that side writes.
struct PlainRing {
  alignas(kCacheLine) std::atomic<std::uint64_t> tail{0};  // producer line
  std::uint64_t head_cache = 0;                             // producer-local copy of head
  alignas(kCacheLine) std::atomic<std::uint64_t> head{0};  // consumer line
  std::uint64_t tail_cache = 0;                             // consumer-local copy of tail
  alignas(kCacheLine) TileDesc slots[kRingCap];

  std::size_t push_n(const TileDesc* items, std::size_t n) noexcept {
    const std::uint64_t t = tail.load(std::memory_order_relaxed);  // relaxed: only we write tail
    if (kRingCap - (t - head_cache) < n) {
      head_cache = head.load(std::memory_order_acquire);  // SYNC[plain.head] acquire: slots are free again
    }
    const std::size_t room = kRingCap - (t - head_cache);
    const std::size_t k = std::min(room, n);
    for (std::size_t i = 0; i < k; ++i) slots[(t + i) % kRingCap] = items[i];
    tail.store(t + k, std::memory_order_release);  // SYNC[plain.tail] release: publishes slots + payload
    return k;
  }
  std::size_t pop_n(TileDesc* out, std::size_t n) noexcept {
    const std::uint64_t h = head.load(std::memory_order_relaxed);  // relaxed: only we write head
    if (tail_cache == h) tail_cache = tail.load(std::memory_order_acquire);  // SYNC[plain.tail] acquire
    const std::size_t k = std::min<std::uint64_t>(tail_cache - h, n);
    for (std::size_t i = 0; i < k; ++i) out[i] = slots[(h + i) % kRingCap];
    if (k > 0) head.store(h + k, std::memory_order_release);  // SYNC[plain.head] release: slots reusable
    return k;
  }
  bool push(const TileDesc& d) noexcept { return push_n(&d, 1) == 1; }
  bool pop(TileDesc& d) noexcept { return pop_n(&d, 1) == 1; }
};

using BoostQueue = boost::lockfree::spsc_queue<TileDesc, boost::lockfree::capacity<kRingCap>>;
struct BoostRing {
  BoostQueue q;
  std::size_t push_n(const TileDesc* items, std::size_t n) noexcept { return q.push(items, n); }
  std::size_t pop_n(TileDesc* out, std::size_t n) noexcept { return q.pop(out, n); }
  bool push(const TileDesc& d) noexcept { return q.push(d); }
  bool pop(TileDesc& d) noexcept { return q.pop(d); }
};

// Layout of the shared mapping: request queue, reply queue, then kSlots tile slots.
template <class Q>
struct Shared {
  Q* req;
  Q* rep;
  std::byte* slots;
};

template <class Q>
Shared<Q> layout(SharedMapping& m) {
  const std::size_t qsz = (sizeof(Q) + 4095) / 4096 * 4096;
  return {new (m.data()) Q{}, new (m.data() + qsz) Q{}, m.data() + 2 * qsz};
}

template <class Q>
std::size_t mapping_bytes(std::uint64_t tile_bytes) {
  const std::size_t qsz = (sizeof(Q) + 4095) / 4096 * 4096;
  return 2 * qsz + (tile_bytes > kDescBytes ? kSlots * tile_bytes : 0);
}

template <class Q>
class QueueHost {
 public:
  QueueHost(Shared<Q> s, double timeout_s) : s_(s), dl_(timeout_s) {}
  bool send(std::uint64_t seq, std::size_t bytes) noexcept {
    TileDesc d{};
    d.mutate_seq(seq);
    if (bytes > kDescBytes) {
      const std::uint64_t slot = seq % kSlots;  // free: at most kStreamInflight < kSlots in flight
      write_tile(s_.slots + slot * bytes, bytes, seq);
      d.mutate_block(slot + 1);
      d.mutate_nbytes(static_cast<std::uint32_t>(bytes));
    }
    while (!s_.req->push(d)) {
      if (dl_.expired()) return false;
    }
    return true;
  }
  bool recv(std::uint64_t& seq) noexcept {
    TileDesc d;
    while (!s_.rep->pop(d)) {
      if (dl_.expired()) return false;
    }
    seq = d.seq();
    return true;
  }

 private:
  Shared<Q> s_;
  Deadline dl_;
};

template <class Q>
int queue_worker(Shared<Q> s, std::uint64_t total, std::uint64_t bytes, double timeout_s) {
  Deadline dl(timeout_s);
  std::array<TileDesc, 32> batch;
  std::uint64_t expect = 0;
  while (expect < total) {
    const std::size_t n = s.req->pop_n(batch.data(), batch.size());
    if (n == 0 && dl.expired()) return kExitTimeout;
    for (std::size_t k = 0; k < n; ++k) {
      const TileDesc& d = batch[k];
      if (d.seq() != expect++) return kExitCorrupt;
      if (d.block() != 0 && read_tile(s.slots + (d.block() - 1) * bytes, d.nbytes()) != d.seq()) return kExitCorrupt;
    }
    std::size_t pushed = 0;
    while (pushed < n) {
      pushed += s.rep->push_n(batch.data() + pushed, n - pushed);
      if (pushed < n && dl.expired()) return kExitTimeout;
    }
  }
  return 0;
}

template <class Q>
Record run_queue(Context& ctx, const TileRun& run) {
  SharedMapping m(mapping_bytes<Q>(run.bytes));
  if (!m.valid()) {
    Record r = base_record(run);
    r.failed = "mmap failed";
    return r;
  }
  const Shared<Q> s = layout<Q>(m);
  const std::uint64_t total = run.warmup + run.count;
  const CpuSpan span;
  Child child = Child::fork_run([&] { return queue_worker<Q>(s, total, run.bytes, ctx.opt.child_timeout_s); });
  QueueHost<Q> host(s, ctx.opt.child_timeout_s);
  Record r = drive_tiles(host, run);
  finish_child(r, child, span, 10);
  return r;
}

template <class Q>
void tile_cases(Context& ctx, const char* peer, bool stream, bool tiles) {
  const std::string bench = fmt::format("tile/{}/{}", peer, stream ? "stream" : "pingpong");
  std::vector<std::uint64_t> sizes{kDescBytes};
  if (tiles) sizes.insert(sizes.end(), std::begin(kTileSizes), std::end(kTileSizes));
  for (const std::uint64_t bytes : sizes) {
    ctx.progress(fmt::format("{} {}", bench, human_bytes(bytes)));
    Record r = run_queue<Q>(ctx, make_run(ctx, bench, peer, "spin", bytes, stream));
    r.note = bytes > kDescBytes ? "16 reused tile slots in one shared mapping" : "descriptor only";
    ctx.emit(std::move(r));
  }
}

// One-way: push batches of 32, pop batches of up to 64 (same shape as desc/tessera/batched).
template <class Q>
void batched(Context& ctx, const char* peer) {
  const std::string bench = fmt::format("desc/{}/batched", peer);
  ctx.progress(bench);
  const std::uint64_t n = ctx.count(20'000'000, 20'000);
  Record r;
  r.bench = bench;
  r.peer = peer;
  r.workload = "oneway-batched";
  r.mode = "spin";
  r.tile_bytes = kDescBytes;
  r.inflight = kRingCap;
  SharedMapping m(mapping_bytes<Q>(0));
  const Shared<Q> s = layout<Q>(m);
  const CpuSpan span;
  Child child = Child::fork_run([&]() -> int {
    std::array<TileDesc, 64> b;
    std::uint64_t expect = 0;
    Deadline dl(ctx.opt.child_timeout_s);
    while (expect < n) {
      const std::size_t got = s.req->pop_n(b.data(), b.size());
      for (std::size_t k = 0; k < got; ++k)
        if (b[k].seq() != expect++) return kExitCorrupt;
      if (got == 0 && dl.expired()) return kExitTimeout;
    }
    TileDesc done{};
    done.mutate_seq(expect);
    while (!s.rep->push(done)) {
      if (dl.expired()) return kExitTimeout;
    }
    return 0;
  });
  std::array<TileDesc, 32> b{};
  Deadline dl(ctx.opt.child_timeout_s);
  const std::uint64_t t0 = now_ns();
  std::uint64_t seq = 0;
  bool ok = true;
  while (ok && seq < n) {
    const std::size_t want = std::min<std::uint64_t>(b.size(), n - seq);
    for (std::size_t k = 0; k < want; ++k) b[k].mutate_seq(seq + k);
    seq += s.req->push_n(b.data(), want);
    if (dl.expired()) ok = false;
  }
  TileDesc done{};
  while (ok && !s.rep->pop(done)) {
    if (dl.expired()) ok = false;
  }
  const std::uint64_t t1 = now_ns();
  if (!ok) r.failed = "timed out";
  else if (done.seq() != n) r.failed = "worker saw a different count";
  r.ops = n;
  r.wall_s = static_cast<double>(t1 - t0) * 1e-9;
  r.ops_per_s = static_cast<double>(n) / r.wall_s;
  r.gb_per_s = r.ops_per_s * kDescBytes * 1e-9;
  r.note = "push batches of 32, pop batches of up to 64, ring of 1024";
  finish_child(r, child, span, 10);
  ctx.emit(std::move(r));
}

TESSERA_BENCH_CASE("tile/plain-ring/pingpong", "bare SPSC ring + 16 reused shm slots: round trip (spin)",
                   [](Context& c) { tile_cases<PlainRing>(c, "plain-ring", false, true); });
TESSERA_BENCH_CASE("tile/plain-ring/stream", "bare SPSC ring + 16 reused shm slots: streaming (spin)",
                   [](Context& c) { tile_cases<PlainRing>(c, "plain-ring", true, true); });
TESSERA_BENCH_CASE("desc/plain-ring/batched", "bare SPSC ring: one-way batched descriptors/s",
                   [](Context& c) { batched<PlainRing>(c, "plain-ring"); });
TESSERA_BENCH_CASE("tile/boost-spsc/pingpong", "boost::lockfree::spsc_queue<TileDesc> in shm: round trip (spin)",
                   [](Context& c) { tile_cases<BoostRing>(c, "boost-spsc", false, false); });
TESSERA_BENCH_CASE("tile/boost-spsc/stream", "boost::lockfree::spsc_queue<TileDesc> in shm: streaming (spin)",
                   [](Context& c) { tile_cases<BoostRing>(c, "boost-spsc", true, false); });
TESSERA_BENCH_CASE("desc/boost-spsc/batched", "boost::lockfree::spsc_queue<TileDesc> in shm: one-way batched",
                   [](Context& c) { batched<BoostRing>(c, "boost-spsc"); });

}  // namespace
}  // namespace tessera::bench
