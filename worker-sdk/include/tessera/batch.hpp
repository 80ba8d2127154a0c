// Batched tile handlers: tiles of one dtype and shape handed to the handler together,
// as one contiguous (B, dims...) buffer plus the tiles themselves (per-tile metadata,
// per-tile answers). This is what a GPU model wants; the per-tile handler API
// (tessera::serve) is unchanged.
//
//   int main() {
//     tessera::BatchServeOptions o;
//     o.batch.max_batch = 32;
//     return tessera::serve_batched([](tessera::Worker& w, tessera::Batch& b) {
//       // b.data(): b.size() tiles of b.tile_bytes() each, copied once from the arena
//       run_model(b.data(), b.size(), out.data());
//       b.publish_each(out.data(), tessera::DType::UInt8, {h, w});  // slice i -> tile i
//     }, o);
//   }
//
// Grouping: every take() is split by (dtype, shape); a group runs as soon as it holds
// max_batch tiles, or when its oldest tile has waited max_wait (a viewer that asks for a
// few tiles at a time still gets answers within max_wait). Errors: an exception fails
// every tile of the batch still unanswered with its message; the handler may answer
// single tiles itself (fail one, publish the rest); a tile left unanswered is failed.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include <tessera/runtime.hpp>
#include <tessera/worker.hpp>

namespace tessera {

struct BatchOptions {
  std::size_t max_batch = 32;                 // tiles per handler call (at most)
  std::chrono::microseconds max_wait{2000};   // a partial batch runs once its oldest tile waited this long
  std::chrono::milliseconds take_timeout{100};
  bool assemble = true;                       // copy the inputs into one (B, ...) buffer (else data() is null)
};

// One uniform batch, valid for the duration of the handler call.
class Batch {
 public:
  std::size_t size() const noexcept { return tiles_.size(); }
  std::span<Tile> tiles() const noexcept { return tiles_; }
  Tile& operator[](std::size_t i) const noexcept { return tiles_[i]; }
  DType dtype() const noexcept { return dtype_; }
  const Shape& tile_shape() const noexcept { return shape_; }
  std::size_t tile_bytes() const noexcept { return tile_bytes_; }
  // The inputs, tile i at data() + i * tile_bytes(), C order; null without `assemble`.
  // A buffer owned by the batcher and reused by the next batch.
  const std::byte* data() const noexcept { return data_; }

  // Answers every still-pending tile i with slice i of `out` (size() slices of
  // `tile_shape` elements of `dtype`, C order): one output block and one copy per tile.
  // A tile whose output block cannot be had is failed (NoSpace). Returns the tiles published.
  std::size_t publish_each(const void* out, DType dtype, const Shape& tile_shape) noexcept;

 private:
  friend class Batcher;
  Worker* worker_ = nullptr;
  std::span<Tile> tiles_{};
  DType dtype_ = DType::UInt8;
  Shape shape_{};
  std::size_t tile_bytes_ = 0;
  const std::byte* data_ = nullptr;
};

// A handler answers the tiles of the batch (Batch::publish_each, or per tile).
using BatchHandler = std::function<void(Worker&, Batch&)>;

// The grouping loop over one Worker. One thread drives it.
class Batcher {
 public:
  Batcher(Worker& w, BatchOptions opts);
  // Takes tiles (waiting at most take_timeout, or less while a partial batch is due)
  // and runs every batch that is full or due. Returns false once the worker stopped;
  // tiles still held then are run first.
  bool step(const BatchHandler& handler);
  // Runs every tile still held, in batches of at most max_batch.
  void flush(const BatchHandler& handler);
  // Tiles taken and not yet handed to the handler.
  std::size_t held() const noexcept;
  // Handler calls so far, tiles handed to them, and the largest batch.
  std::uint64_t batches() const noexcept { return batches_; }
  std::uint64_t tiles_run() const noexcept { return tiles_run_; }
  std::size_t largest() const noexcept { return largest_; }

 private:
  struct Group {
    DType dtype = DType::UInt8;
    Shape shape{};
    std::vector<Tile> tiles;
    Clock::time_point first{};
  };
  void add(Tile&& t, Clock::time_point now);
  void run(Group& g, std::size_t n, const BatchHandler& handler);

  Worker& w_;
  BatchOptions o_;
  std::vector<Group> groups_;
  std::vector<Tile> taken_;
  std::vector<Tile> running_;
  std::vector<std::byte> buffer_;
  std::uint64_t batches_ = 0, tiles_run_ = 0;
  std::size_t largest_ = 0;
};

struct BatchServeOptions {
  RuntimeOptions runtime{};
  BatchOptions batch{};
};

// The whole worker main loop with a batch handler. Returns the process exit code.
int serve_batched(const BatchHandler& handler, BatchServeOptions opts = {});

}  // namespace tessera
