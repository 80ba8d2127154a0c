// SPSC descriptor rings. Memory-ordering tags match docs/design/memory-ordering.md.
#include <tessera/ring.hpp>

#include <algorithm>
#include <cstring>

namespace tessera {
namespace {
bool ring_closed(const RingHeader& h) noexcept {
  // relaxed: a closed flag seen late only delays the caller by one operation.
  return h.state.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(RingState::open);
}
Doorbell* bell(const Arena& a, std::uint32_t i) noexcept { return &a.doorbell(i < a.n_doorbells() ? i : 0); }
}  // namespace

RingProducer::RingProducer(const Arena& arena, std::uint32_t ring) noexcept
    : hdr_(&arena.ring(ring)), slots_(arena.ring_slots(ring)), index_(ring) {
  // SYNC[ring.state] acquire: pairs with Arena::reset_ring, so indices and bindings are current.
  (void)hdr_->state.load(std::memory_order_acquire);
  capacity_ = arena.header().ring_capacity;  // from the validated header, not the peer-writable ring line
  mask_ = capacity_ - 1;
  consumer_bell_ = bell(arena, hdr_->consumer_doorbell);
  producer_bell_ = bell(arena, hdr_->producer_doorbell);
  cached_head_ = hdr_->head.load(std::memory_order_acquire);  // SYNC[ring.head] acquire
}

RingStatus RingProducer::try_push(const TileDesc& d) noexcept {
  return try_push_batch({&d, 1}) == 1 ? RingStatus::ok : (ring_closed(*hdr_) ? RingStatus::closed : RingStatus::full);
}

std::size_t RingProducer::try_push_batch(std::span<const TileDesc> items) noexcept {
  if (items.empty() || ring_closed(*hdr_)) return 0;
  // relaxed: only this producer writes tail.
  const std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  std::uint64_t room = capacity_ - (t - cached_head_);
  if (room < items.size()) {
    // SYNC[ring.head] acquire: pairs with the consumer's release; the slots it freed are ours again.
    cached_head_ = hdr_->head.load(std::memory_order_acquire);
    room = capacity_ - (t - cached_head_);
    if (room > capacity_) return 0;  // consumer index is impossible: corrupt peer; push nothing
  }
  const std::size_t n = std::min<std::uint64_t>(room, items.size());
  for (std::size_t k = 0; k < n; ++k) std::memcpy(&slots_[(t + k) & mask_], &items[k], sizeof(TileDesc));
  // SYNC[ring.tail] release: publishes slots [t, t+n) and every payload byte written before
  // the push -> acquired in RingConsumer::try_pop_batch / ready.
  hdr_->tail.store(t + n, std::memory_order_release);
  return n;
}

std::uint64_t RingProducer::free_approx() const noexcept {
  // relaxed: racy observer by contract (_approx).
  const std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  const std::uint64_t h = hdr_->head.load(std::memory_order_relaxed);
  return t - h <= capacity_ ? capacity_ - (t - h) : 0;
}

bool RingProducer::closed() const noexcept { return ring_closed(*hdr_); }

RingConsumer::RingConsumer(const Arena& arena, std::uint32_t ring) noexcept
    : hdr_(&arena.ring(ring)), slots_(arena.ring_slots(ring)), index_(ring) {
  (void)hdr_->state.load(std::memory_order_acquire);  // SYNC[ring.state] acquire
  capacity_ = arena.header().ring_capacity;
  mask_ = capacity_ - 1;
  consumer_bell_ = bell(arena, hdr_->consumer_doorbell);
  producer_bell_ = bell(arena, hdr_->producer_doorbell);
  cached_tail_ = hdr_->head.load(std::memory_order_relaxed);  // relaxed: our own index
}

bool RingConsumer::ready() noexcept {
  const std::uint64_t h = hdr_->head.load(std::memory_order_relaxed);  // relaxed: our own index
  if (cached_tail_ != h) return true;
  // SYNC[ring.tail] acquire: pairs with the producer's release.
  cached_tail_ = hdr_->tail.load(std::memory_order_acquire);
  return cached_tail_ != h;
}

RingStatus RingConsumer::try_pop(TileDesc& out) noexcept {
  RingStatus st = RingStatus::ok;
  if (try_pop_batch({&out, 1}, &st) == 1) return RingStatus::ok;
  return st;
}

std::size_t RingConsumer::try_pop_batch(std::span<TileDesc> out, RingStatus* status) noexcept {
  if (status != nullptr) *status = RingStatus::ok;
  if (out.empty()) return 0;
  const std::uint64_t h = hdr_->head.load(std::memory_order_relaxed);  // relaxed: our own index
  std::uint64_t avail = cached_tail_ - h;
  if (avail == 0 || avail > capacity_) {
    // SYNC[ring.tail] acquire: pairs with the producer's release; slots below tail are complete.
    cached_tail_ = hdr_->tail.load(std::memory_order_acquire);
    avail = cached_tail_ - h;
    if (avail > capacity_) {  // a peer wrote an impossible index: report, never read past the ring
      cached_tail_ = h;
      if (status != nullptr) *status = RingStatus::corrupt;
      return 0;
    }
    if (avail == 0) {
      if (status != nullptr) *status = ring_closed(*hdr_) ? RingStatus::closed : RingStatus::empty;
      return 0;
    }
  }
  const std::size_t n = std::min<std::uint64_t>(avail, out.size());
  for (std::size_t k = 0; k < n; ++k) std::memcpy(&out[k], &slots_[(h + k) & mask_], sizeof(TileDesc));
  // SYNC[ring.head] release: our reads of slots [h, h+n) happen-before the producer reuses them.
  hdr_->head.store(h + n, std::memory_order_release);
  return n;
}

std::uint64_t RingConsumer::size_approx() const noexcept {
  // relaxed: racy observer by contract (_approx).
  const std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  const std::uint64_t h = hdr_->head.load(std::memory_order_relaxed);
  return t - h <= capacity_ ? t - h : 0;
}

}  // namespace tessera
