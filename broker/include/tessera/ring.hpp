// Lock-free single-producer single-consumer rings of 64-byte tile descriptors in
// the arena. Separate Producer and Consumer types state the concurrency contract.
// Each side caches the other side's index so that a steady stream touches the
// shared index lines only when the cache runs out (see docs/design/rings.md).
//
// Ordering: a consumer that pops a descriptor sees every byte the producer wrote
// before pushing it (payload included): SYNC[ring.tail] release/acquire.
#pragma once

#include <cstdint>
#include <span>

#include <tessera/arena.hpp>
#include <tessera/doorbell.hpp>

namespace tessera {

enum class RingStatus : std::uint8_t { ok = 0, empty, full, closed, corrupt };

class RingProducer {
 public:
  RingProducer() = default;
  RingProducer(const Arena& arena, std::uint32_t ring) noexcept;

  // Publishes one descriptor. full/closed are normal outcomes.
  [[nodiscard]] RingStatus try_push(const TileDesc& d) noexcept;
  // Publishes up to items.size() descriptors with one index store; returns how many.
  [[nodiscard]] std::size_t try_push_batch(std::span<const TileDesc> items) noexcept;
  // Wakes the consumer's doorbell if it sleeps (call after a push or a batch).
  void notify() noexcept { doorbell_notify(*consumer_bell_); }
  // Free slots, as seen now (racy observer).
  std::uint64_t free_approx() const noexcept;
  // Descriptors pushed and not yet popped, as seen now (racy observer).
  std::uint64_t size_approx() const noexcept { return capacity_ - free_approx(); }
  bool closed() const noexcept;
  Doorbell& producer_doorbell() const noexcept { return *producer_bell_; }
  std::uint32_t index() const noexcept { return index_; }
  bool valid() const noexcept { return hdr_ != nullptr; }

 private:
  RingHeader* hdr_ = nullptr;
  TileDesc* slots_ = nullptr;
  Doorbell* consumer_bell_ = nullptr;
  Doorbell* producer_bell_ = nullptr;
  std::uint64_t mask_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t cached_head_ = 0;   // last head seen (process-local)
  std::uint32_t index_ = 0;
};

class RingConsumer {
 public:
  RingConsumer() = default;
  RingConsumer(const Arena& arena, std::uint32_t ring) noexcept;

  [[nodiscard]] RingStatus try_pop(TileDesc& out) noexcept;
  // Pops up to out.size() descriptors with one index store; returns how many
  // (0 when empty). Sets *status to corrupt if the producer's index is impossible.
  [[nodiscard]] std::size_t try_pop_batch(std::span<TileDesc> out, RingStatus* status = nullptr) noexcept;
  // True if a pop would find something (acquire on tail; cheap when the cache already says so).
  bool ready() noexcept;
  // Wakes producers that wait for space (call after a pop or a batch).
  void notify() noexcept { doorbell_notify(*producer_bell_); }
  std::uint64_t size_approx() const noexcept;
  Doorbell& consumer_doorbell() const noexcept { return *consumer_bell_; }
  std::uint32_t index() const noexcept { return index_; }
  bool valid() const noexcept { return hdr_ != nullptr; }

 private:
  RingHeader* hdr_ = nullptr;
  TileDesc* slots_ = nullptr;
  Doorbell* consumer_bell_ = nullptr;
  Doorbell* producer_bell_ = nullptr;
  std::uint64_t mask_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t cached_tail_ = 0;   // last tail seen (process-local)
  std::uint32_t index_ = 0;
};

}  // namespace tessera
