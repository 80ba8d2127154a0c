// Batched tile handlers: grouping of taken tiles by (dtype, shape), the partial-batch
// deadline, one assembly copy into a reused buffer, per-slice publication.
#include <tessera/batch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>

namespace tessera {
namespace {

// Groups kept around empty (their vectors keep their capacity) before the oldest goes.
constexpr std::size_t kMaxIdleGroups = 8;

void log_err(const std::string& s) noexcept {
  const std::string line = "tessera-worker[" + std::to_string(getpid()) + "]: " + s + "\n";
  (void)!::write(2, line.data(), line.size());
}

}  // namespace

std::size_t Batch::publish_each(const void* out, DType dtype, const Shape& tile_shape) noexcept {
  // Unrepresentable shapes give 0: alloc_output below then fails every tile as too large.
  const std::size_t slice = static_cast<std::size_t>(tensor_nbytes(dtype, tile_shape).value_or(0));
  const auto* src = static_cast<const std::byte*>(out);
  const WakeupBatch one_wakeup(*worker_);  // the client is woken once for the whole batch
  std::size_t done = 0;
  for (std::size_t i = 0; i < tiles_.size(); ++i) {
    Tile& t = tiles_[i];
    if (!t.pending()) continue;  // answered by the handler itself
    OutputBlock block;
    const AllocStatus st = worker_->alloc_output(dtype, tile_shape, block);
    if (st != AllocStatus::ok) {
      (void)worker_->fail(t, TileStatus::NoSpace,
                          st == AllocStatus::too_large ? "batch output slice " + tile_shape.str() + " does not fit any arena block"
                                                       : std::string("no arena block free for the batch output slice"));
      continue;
    }
    std::memcpy(block.view().data(), src + i * slice, slice);
    if (worker_->publish(t, block) == Errc::ok) ++done;
  }
  return done;
}

Batcher::Batcher(Worker& w, BatchOptions opts) : w_(w), o_(opts) {
  if (o_.max_batch == 0) o_.max_batch = 1;
  taken_.reserve(o_.max_batch);
  running_.reserve(o_.max_batch);
}

std::size_t Batcher::held() const noexcept {
  std::size_t n = 0;
  for (const auto& g : groups_) n += g.tiles.size();
  return n;
}

void Batcher::add(Tile&& t, Clock::time_point now) {
  const DType dt = t.input().dtype();
  const Shape& sh = t.input().shape();
  Group* g = nullptr;
  for (auto& x : groups_)
    if (x.dtype == dt && x.shape == sh) {
      g = &x;
      break;
    }
  if (g == nullptr) {
    // Reuse an idle group (keeps its capacity) or add one.
    for (auto& x : groups_)
      if (x.tiles.empty()) {
        g = &x;
        break;
      }
    if (g == nullptr) {
      groups_.emplace_back();
      g = &groups_.back();
      g->tiles.reserve(o_.max_batch * 2);
    }
    g->dtype = dt;
    g->shape = sh;
  }
  if (g->tiles.empty()) g->first = now;
  g->tiles.push_back(std::move(t));
}

void Batcher::run(Group& g, std::size_t n, const BatchHandler& handler) {
  running_.clear();
  for (std::size_t i = 0; i < n; ++i) running_.push_back(std::move(g.tiles[i]));
  g.tiles.erase(g.tiles.begin(), g.tiles.begin() + static_cast<std::ptrdiff_t>(n));
  if (!g.tiles.empty()) g.first = Clock::now();
  ++batches_;
  tiles_run_ += n;
  largest_ = std::max(largest_, n);

  Batch b;
  b.worker_ = &w_;
  b.tiles_ = running_;
  b.dtype_ = g.dtype;
  b.shape_ = g.shape;
  b.tile_bytes_ = static_cast<std::size_t>(tensor_nbytes(g.dtype, g.shape).value_or(0));  // admitted inputs: representable
  if (o_.assemble) {
    // The one copy: arena blocks are not contiguous. The buffer only grows.
    const std::size_t need = b.tile_bytes_ * n;
    if (buffer_.size() < need) buffer_.resize(need);
    for (std::size_t i = 0; i < n; ++i) std::memcpy(buffer_.data() + i * b.tile_bytes_, running_[i].input().data(), b.tile_bytes_);
    b.data_ = buffer_.data();
  }
  const auto fail_pending = [&](const std::string& why) {
    for (Tile& t : running_)
      if (t.pending()) (void)w_.fail(t, TileStatus::HandlerError, why);
  };
  // Whatever the handler answers (slices, single failures, the rest failed below) reaches
  // the client with one wake-up.
  const WakeupBatch one_wakeup(w_);
  try {
    handler(w_, b);
  } catch (const std::exception& e) {
    fail_pending(e.what());
  } catch (...) {
    fail_pending("batch handler threw a non-standard exception");
  }
  fail_pending("batch handler returned without answering the tile");
  running_.clear();
}

void Batcher::flush(const BatchHandler& handler) {
  for (auto& g : groups_)
    while (!g.tiles.empty()) run(g, std::min(g.tiles.size(), o_.max_batch), handler);
}

bool Batcher::step(const BatchHandler& handler) {
  auto now = Clock::now();
  // Wait no longer than the oldest held tile may still wait.
  Clock::duration timeout = o_.take_timeout;
  for (const auto& g : groups_)
    if (!g.tiles.empty()) timeout = std::min<Clock::duration>(timeout, std::max<Clock::duration>(g.first + o_.max_wait - now, Clock::duration::zero()));
  const TakeStatus st = w_.take(taken_, o_.max_batch, timeout);
  now = Clock::now();
  for (Tile& t : taken_) add(std::move(t), now);
  taken_.clear();
  if (st == TakeStatus::stopped) {
    flush(handler);
    return false;
  }
  for (auto& g : groups_) {
    while (g.tiles.size() >= o_.max_batch) run(g, o_.max_batch, handler);
    if (!g.tiles.empty() && now >= g.first + o_.max_wait) run(g, g.tiles.size(), handler);
  }
  // Many distinct shapes (rare): let idle groups go, bounded.
  if (groups_.size() > kMaxIdleGroups)
    std::erase_if(groups_, [](const Group& g) { return g.tiles.empty(); });
  return true;
}

int serve_batched(const BatchHandler& handler, BatchServeOptions opts) {
  auto rt = WorkerRuntime::start(std::move(opts.runtime));
  if (!rt) {
    log_err("cannot start: " + rt.error().message);
    return 2;
  }
  if (Worker* w = (*rt)->worker(); w != nullptr) {
    Batcher batcher(*w, opts.batch);
    while (!(*rt)->stopping() && batcher.step(handler)) {
    }
    batcher.flush(handler);  // tiles still held when a stop came
  }
  return (*rt)->finish();
}

}  // namespace tessera
