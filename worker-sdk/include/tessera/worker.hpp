// Tessera worker SDK (C++): take tiles from the arena without copying, publish
// results, report per-tile errors. Ownership is explicit in the types: a Tile is the
// right (and duty) to answer one request exactly once; an OutputBlock owns an arena
// block until it is published or destroyed (then freed).
//
//   auto w = tessera::Worker::from_env().value();
//   std::vector<tessera::Tile> batch;
//   while (w->take(batch, 16, 100ms) != tessera::TakeStatus::stopped)
//     for (auto& t : batch) { auto out = w->alloc_output(DType::UInt8, {h, w}); ...; w->publish(t, out); }
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <tessera/arena.hpp>
#include <tessera/ring.hpp>
#include <tessera/slab.hpp>
#include <tessera/tensor.hpp>

namespace tessera {

class Worker;
using TileStatus = fb::TileStatus;

// One request taken from a channel. Move-only; answered exactly once through
// Worker::publish / fail / cancel (a Tile destroyed unanswered is failed by the SDK).
class Tile {
 public:
  Tile() = default;
  Tile(Tile&& o) noexcept { *this = std::move(o); }
  Tile& operator=(Tile&& o) noexcept;
  Tile(const Tile&) = delete;
  Tile& operator=(const Tile&) = delete;
  ~Tile();

  bool pending() const noexcept { return worker_ != nullptr; }
  const TileDesc& desc() const noexcept { return desc_; }
  // The client's payload: read it in place (zero copy). Invalid view if the
  // descriptor was rejected (then the SDK already answered with an error).
  const TensorView& input() const noexcept { return input_; }
  std::uint64_t seq() const noexcept { return desc_.seq(); }
  std::uint32_t stream() const noexcept { return desc_.stream(); }
  std::uint32_t op() const noexcept { return desc_.op(); }
  // Cooperative cancellation: true once the client superseded this tile's epoch.
  bool cancel_requested() const noexcept;

 private:
  friend class Worker;
  Worker* worker_ = nullptr;
  std::uint32_t channel_ = 0;
  std::uint32_t channel_gen_ = 0;
  TileDesc desc_{};
  TensorView input_{};
};

// An arena block owned by this worker until published (or freed on destruction).
class OutputBlock {
 public:
  OutputBlock() = default;
  OutputBlock(OutputBlock&& o) noexcept { *this = std::move(o); }
  OutputBlock& operator=(OutputBlock&& o) noexcept;
  OutputBlock(const OutputBlock&) = delete;
  OutputBlock& operator=(const OutputBlock&) = delete;
  ~OutputBlock();

  bool valid() const noexcept { return slab_ != nullptr; }
  const TensorView& view() const noexcept { return view_; }
  template <class T> std::span<T> as() const noexcept { return view_.as<T>(); }
  BlockHandle handle() const noexcept { return block_.handle; }

 private:
  friend class Worker;
  Slab* slab_ = nullptr;
  BlockView block_{};
  TensorView view_{};
};

enum class TakeStatus : std::uint8_t { ok = 0, timeout, stopped };

struct WorkerOptions {
  WaitPolicy wait{};          // spin window before sleeping on the doorbell
  // When the arena has no block for an output, retry this long (clients free blocks as
  // they consume results) before failing the tile with NoSpace.
  std::chrono::milliseconds alloc_wait{2000};
  // The longest a sleeping client's wake-up may be put off while its refill is not yet
  // due (see Worker::hold_wakeups): what coalescing may add to a result's latency. The
  // batch loop's default max_wait is the same 2 ms.
  std::chrono::microseconds max_wake_delay{2000};
};

struct WorkerStats {
  std::uint64_t taken = 0, published = 0, failed = 0, canceled = 0, rejected = 0;
};

class Worker {
 public:
  // Attaches the arena handed over by the broker: TESSERA_ARENA_FD (inherited
  // descriptor) and TESSERA_SLOT (this worker's participant slot).
  static Result<std::unique_ptr<Worker>> from_env(WorkerOptions opts = {});
  static Result<std::unique_ptr<Worker>> attach(Arena arena, std::uint32_t slot, WorkerOptions opts = {});
  ~Worker();

  // Takes up to `max` tiles (appends to `out` after clearing it), waiting up to
  // `timeout` for the first. Requests that fail validation (stale/forged block,
  // bad dtype/shape) are answered with an error here and never reach the caller;
  // requests of a superseded epoch are answered Canceled.
  TakeStatus take(std::vector<Tile>& out, std::size_t max, std::chrono::nanoseconds timeout);

  // Allocates an output block for a tensor. no_space/too_large are normal outcomes.
  [[nodiscard]] AllocStatus alloc_output(DType dtype, const Shape& shape, OutputBlock& out) noexcept;
  // Answers the tile with `out` (ownership passes to the client when it adopts it).
  [[nodiscard]] Errc publish(Tile& tile, OutputBlock& out) noexcept;
  // Answers the tile with an error; `message` is carried in a small block if one is free.
  Errc fail(Tile& tile, TileStatus status, std::string_view message) noexcept;
  Errc cancel(Tile& tile) noexcept;

  // Client wake-ups. Every answer is pushed to its result ring at once; a sleeping client
  // is woken (one FUTEX_WAKE, which costs the waker tens of µs on some VMs) only when its
  // refill is due: once the results waiting for it are at least the requests still queued
  // for this worker (so the worker never runs dry first), or once the oldest of those
  // results has waited opts.max_wake_delay, and always before the worker waits for
  // requests, rebuilds its channels, or waits for room in a full result ring. A client
  // with one tile in flight is woken at once; one with a deep window of fast tiles about
  // once per max_wake_delay.
  //
  // Between hold_wakeups() and release_wakeups() even that check waits for the release
  // (one check per batch instead of per tile). Nests; tile thread only, like the answers
  // themselves. WakeupBatch is the scoped form.
  void hold_wakeups() noexcept { ++held_wakeups_; }
  void release_wakeups() noexcept;

  // Asks take() to return `stopped` (thread-safe, async-signal-safe).
  void request_stop() noexcept;
  bool stop_requested() const noexcept { return stop_.load(std::memory_order_relaxed); }  // relaxed: a flag
  void heartbeat() noexcept;

  const Arena& arena() const noexcept { return arena_; }
  std::uint32_t slot() const noexcept { return slot_; }
  // A snapshot; safe from any thread (the protocol thread reports it).
  WorkerStats stats() const noexcept;

 private:
  struct Endpoint {
    std::uint32_t channel = 0;
    std::uint32_t generation = 0;
    RingConsumer requests;
    RingProducer results;
    bool wake_pending = false;      // answers pushed since the client was last woken
    Clock::time_point pending_since{};  // when the first of them was pushed
  };
  Worker(Arena arena, std::uint32_t slot, WorkerOptions opts);
  void refresh_channels() noexcept;
  bool any_ready() noexcept;
  Errc answer(Tile& tile, TileDesc reply) noexcept;
  bool admit(std::uint32_t ep, const TileDesc& d, Tile& t) noexcept;
  Endpoint* endpoint(std::uint32_t channel, std::uint32_t gen) noexcept;
  void wake_if_due(Endpoint& e) noexcept;
  void wake_clients() noexcept;

  Arena arena_;
  std::uint32_t slot_;
  WorkerOptions opts_;
  Slab slab_;
  Doorbell* bell_;
  std::vector<Endpoint> endpoints_;
  std::uint32_t seen_version_ = ~0u;
  std::uint32_t rr_ = 0;
  std::uint32_t held_wakeups_ = 0;
  std::atomic<bool> stop_{false};
  // Written by the tile thread only, read by the protocol thread: relaxed counters.
  struct Counters {
    std::atomic<std::uint64_t> taken{0}, published{0}, failed{0}, canceled{0}, rejected{0};
  } stats_;
  std::vector<TileDesc> scratch_;
  friend class Tile;
};

// Holds the worker's client wake-ups for one scope (see Worker::hold_wakeups).
class WakeupBatch {
 public:
  explicit WakeupBatch(Worker& w) noexcept : w_(w) { w_.hold_wakeups(); }
  ~WakeupBatch() { w_.release_wakeups(); }
  WakeupBatch(const WakeupBatch&) = delete;
  WakeupBatch& operator=(const WakeupBatch&) = delete;

 private:
  Worker& w_;
};

}  // namespace tessera
