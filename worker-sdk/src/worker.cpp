// Worker SDK data path: channel discovery, request validation, answers.
#include <tessera/worker.hpp>

#include "admission.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace tessera {
namespace {

std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

Result<std::uint32_t> env_u32(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fail(Errc::unavailable, std::string(name) + " is not set: this process was not started by a Tessera broker");
  char* end = nullptr;
  const unsigned long x = std::strtoul(v, &end, 10);
  if (end == v || *end != '\0' || x > 0xffffffffUL) return fail(Errc::invalid_argument, std::string(name) + "=" + v + " is not a number");
  return static_cast<std::uint32_t>(x);
}

}  // namespace

// ---------------- Tile ----------------
Tile& Tile::operator=(Tile&& o) noexcept {
  if (this != &o) {
    if (worker_ != nullptr) worker_->fail(*this, TileStatus::HandlerError, "tile dropped without an answer");
    worker_ = o.worker_;
    channel_ = o.channel_;
    channel_gen_ = o.channel_gen_;
    desc_ = o.desc_;
    input_ = o.input_;
    o.worker_ = nullptr;
  }
  return *this;
}

Tile::~Tile() {
  if (worker_ != nullptr) worker_->fail(*this, TileStatus::HandlerError, "tile dropped without an answer");
}

bool Tile::cancel_requested() const noexcept {
  if (worker_ == nullptr) return false;
  const Channel& ch = worker_->arena_.channel(channel_);
  // SYNC[channel.epoch] acquire: pairs with the client's release in Client::set_epoch.
  return desc_.epoch() < ch.min_epoch[desc_.stream() % kMaxStreams].load(std::memory_order_acquire);
}

// ---------------- OutputBlock ----------------
OutputBlock& OutputBlock::operator=(OutputBlock&& o) noexcept {
  if (this != &o) {
    if (slab_ != nullptr) (void)slab_->free(block_.handle);
    slab_ = o.slab_;
    block_ = o.block_;
    view_ = o.view_;
    o.slab_ = nullptr;
  }
  return *this;
}

OutputBlock::~OutputBlock() {
  if (slab_ != nullptr) (void)slab_->free(block_.handle);
}

// ---------------- Worker ----------------
Result<std::unique_ptr<Worker>> Worker::from_env(WorkerOptions opts) {
  auto fd = env_u32("TESSERA_ARENA_FD");
  if (!fd) return tessera::fail(std::move(fd).error());
  auto slot = env_u32("TESSERA_SLOT");
  if (!slot) return tessera::fail(std::move(slot).error());
  auto arena = Arena::attach_fd(static_cast<int>(*fd), true);
  if (!arena) return tessera::fail(std::move(arena).error());
  // The broker may tune the wait policy (benchmarks spin longer).
  if (const char* spin = std::getenv("TESSERA_SPIN_NS"); spin != nullptr && *spin != '\0')
    opts.wait.spin_ns = static_cast<std::uint32_t>(std::strtoul(spin, nullptr, 10));
  return attach(std::move(*arena), *slot, opts);
}

Result<std::unique_ptr<Worker>> Worker::attach(Arena arena, std::uint32_t slot, WorkerOptions opts) {
  if (slot >= kMaxParticipants) return tessera::fail(Errc::invalid_argument, "worker slot out of range");
  // acquire: pairs with the broker's release when it registered the slot.
  const auto st = arena.participant(slot).state.load(std::memory_order_acquire);
  if (st != static_cast<std::uint32_t>(ParticipantState::alive))
    return tessera::fail(Errc::invalid_argument, "worker slot " + std::to_string(slot) + " is not registered in the arena");
  return std::unique_ptr<Worker>(new Worker(std::move(arena), slot, opts));
}

Worker::Worker(Arena arena, std::uint32_t slot, WorkerOptions opts)
    : arena_(std::move(arena)), slot_(slot), opts_(opts), slab_(arena_, slot), bell_(&arena_.doorbell(slot)) {
  endpoints_.reserve(arena_.n_channels());
  scratch_.resize(arena_.header().ring_capacity);
  refresh_channels();
}

Worker::~Worker() { wake_clients(); }  // no client may sleep on a result pushed before we went

void Worker::refresh_channels() noexcept {
  // SYNC[participant.channels] acquire: pairs with open_channel/close_channel's release.
  const std::uint32_t v = arena_.participant(slot_).channel_version.load(std::memory_order_acquire);
  if (v == seen_version_) return;
  seen_version_ = v;
  wake_clients();  // the endpoints are rebuilt below: no held wake-up may be lost with them
  // Tell the broker which channels we let go of: after this store we never push to them.
  for (const auto& e : endpoints_) {
    Channel& ch = arena_.channel(e.channel);
    const bool still_open = ch.state.load(std::memory_order_acquire) == static_cast<std::uint32_t>(ChannelState::open) &&
                            ch.generation.load(std::memory_order_relaxed) == e.generation;  // relaxed: ordered by the acquire
    // SYNC[channel.detached] release: our last push happens-before the broker drains the rings.
    if (!still_open) ch.worker_detached.store(e.generation, std::memory_order_release);
  }
  endpoints_.clear();
  for (std::uint32_t c = 0; c < arena_.n_channels(); ++c) {
    const Channel& ch = arena_.channel(c);
    // SYNC[channel.state] acquire: the ring resets and bindings are visible.
    if (ch.state.load(std::memory_order_acquire) != static_cast<std::uint32_t>(ChannelState::open)) continue;
    if (ch.worker_slot != slot_ || ch.request_ring >= arena_.n_rings() || ch.response_ring >= arena_.n_rings()) continue;
    Endpoint e;
    e.channel = c;
    e.generation = ch.generation.load(std::memory_order_relaxed);  // relaxed: ordered by the state acquire
    e.requests = RingConsumer(arena_, ch.request_ring);
    e.results = RingProducer(arena_, ch.response_ring);
    endpoints_.push_back(e);  // capacity reserved: no allocation
  }
}

Worker::Endpoint* Worker::endpoint(std::uint32_t channel, std::uint32_t gen) noexcept {
  for (auto& e : endpoints_)
    if (e.channel == channel && e.generation == gen) return &e;
  return nullptr;
}

bool Worker::any_ready() noexcept {
  for (auto& e : endpoints_)
    if (e.requests.ready()) return true;
  return false;
}

WorkerStats Worker::stats() const noexcept {
  WorkerStats w;
  // relaxed: statistics, no ordering with the data path.
  w.taken = stats_.taken.load(std::memory_order_relaxed);
  w.published = stats_.published.load(std::memory_order_relaxed);
  w.failed = stats_.failed.load(std::memory_order_relaxed);
  w.canceled = stats_.canceled.load(std::memory_order_relaxed);
  w.rejected = stats_.rejected.load(std::memory_order_relaxed);
  return w;
}

void Worker::heartbeat() noexcept {
  // relaxed: a liveness hint read by `tessera inspect`; nothing is published through it.
  arena_.participant(slot_).heartbeat_ns.store(now_ns(), std::memory_order_relaxed);
}

void Worker::request_stop() noexcept {
  stop_.store(true, std::memory_order_relaxed);  // relaxed: a flag; the doorbell wake orders nothing
  doorbell_notify(*bell_);
}

bool Worker::admit(std::uint32_t ep, const TileDesc& d, Tile& t) noexcept {
  const Endpoint& e = endpoints_[ep];
  t.worker_ = this;
  t.channel_ = e.channel;
  t.channel_gen_ = e.generation;
  t.desc_ = d;
  t.input_ = {};
  stats_.taken.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  const Channel& ch = arena_.channel(e.channel);
  if (d.kind() != fb::Kind::Request || d.stream() >= kMaxStreams) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    fail(t, TileStatus::BadInput, "descriptor is not a request or its stream id is out of range");
    return false;
  }
  if (t.cancel_requested()) {
    cancel(t);
    return false;
  }
  BlockView b;
  if (Errc rc = slab_.resolve(BlockHandle{d.block()}, b); rc != Errc::ok) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    fail(t, TileStatus::StaleBlock, std::string("input block rejected: ") + errc_name(rc));
    return false;
  }
  if (slab_.owner_of(BlockHandle{d.block()}) != ch.client_slot) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    fail(t, TileStatus::StaleBlock, "input block is not held by this channel's client");
    return false;
  }
  const Shape shape = desc_shape(d);
  TensorView v(b.data, b.capacity, d.dtype(), shape);
  // A forged descriptor: shape x dtype must be representable (checked multiplication),
  // non-empty, equal to the stated nbytes and inside the block.
  if (!detail::admissible_tensor(d, b.capacity) || !v.valid()) {
    stats_.rejected.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    fail(t, TileStatus::BadInput,
         "input tensor invalid: dtype " + std::string(dtype_name(d.dtype())) + " shape " + shape.str() + ", " +
             std::to_string(d.nbytes()) + " bytes in a block of " + std::to_string(b.capacity));
    return false;
  }
  t.input_ = v;
  return true;
}

TakeStatus Worker::take(std::vector<Tile>& out, std::size_t max, std::chrono::nanoseconds timeout) {
  out.clear();
  if (max == 0) max = 1;
  const auto deadline = deadline_after(Clock::now(), timeout);
  for (;;) {
    if (stop_requested()) {
      wake_clients();
      return TakeStatus::stopped;
    }
    refresh_channels();
    heartbeat();
    const std::size_t n_ep = endpoints_.size();
    for (std::size_t k = 0; k < n_ep && out.size() < max; ++k) {
      const std::uint32_t ep = static_cast<std::uint32_t>((rr_ + k) % n_ep);
      const std::size_t room = std::min(max - out.size(), scratch_.size());
      const std::size_t got = endpoints_[ep].requests.try_pop_batch({scratch_.data(), room});
      if (got == 0) continue;
      // No notify of the request ring's producer: the client never waits for room there
      // (its window per worker is at most the ring's capacity, Client::Impl::pump), and its
      // doorbell is the one it sleeps on for results, so a wake-up here would only wake it
      // for nothing, once per take.
      for (std::size_t i = 0; i < got; ++i) {
        Tile t;
        if (admit(ep, scratch_[i], t)) out.push_back(std::move(t));
      }
    }
    if (n_ep != 0) rr_ = (rr_ + 1) % static_cast<std::uint32_t>(n_ep);
    if (!out.empty()) return TakeStatus::ok;
    wake_clients();  // about to wait for requests: every client gets what is ready for it
    const auto ready = [this] {
      return stop_requested() || any_ready() ||
             // acquire: see the new channel table (SYNC[participant.channels]).
             arena_.participant(slot_).channel_version.load(std::memory_order_acquire) != seen_version_;
    };
    if (doorbell_wait(*bell_, ready, deadline, opts_.wait) == WaitStatus::timeout) return TakeStatus::timeout;
  }
}

AllocStatus Worker::alloc_output(DType dtype, const Shape& shape, OutputBlock& out) noexcept {
  const std::optional<std::uint64_t> need = tensor_nbytes(dtype, shape);
  // Unrepresentable (overflow, unknown dtype, bad ndim) or over the descriptor's u32 nbytes.
  if (!need || *need > 0xffffffffULL) return AllocStatus::too_large;
  const std::uint64_t bytes = *need;
  out = OutputBlock{};
  BlockView b;
  AllocStatus st = slab_.try_alloc(bytes, b);
  // Exhaustion is normal under load: back off briefly (the client frees blocks as it
  // consumes results) instead of failing the tile at once. Off the steady-state path.
  for (auto until = deadline_after(Clock::now(), opts_.alloc_wait); st == AllocStatus::no_space && Clock::now() < until && !stop_requested();) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    st = slab_.try_alloc(bytes, b);
  }
  if (st != AllocStatus::ok) return st;
  out.slab_ = &slab_;
  out.block_ = b;
  out.view_ = TensorView(b.data, b.capacity, dtype, shape);
  return AllocStatus::ok;
}

Errc Worker::answer(Tile& tile, TileDesc reply) noexcept {
  Endpoint* e = endpoint(tile.channel_, tile.channel_gen_);
  tile.worker_ = nullptr;
  if (e == nullptr) return Errc::closed;  // the channel closed meanwhile: nobody to answer
  // Results never exceed the ring: the client keeps at most `capacity` tiles in flight per
  // channel. Still, wait (bounded by channel closure/stop) rather than drop if a client lags.
  for (;;) {
    const RingStatus st = e->results.try_push(reply);
    if (st == RingStatus::ok) break;
    if (st != RingStatus::full) return Errc::closed;  // the client went away: the caller frees the block
    e->results.notify();  // wake-ups may be held: the client must see the results it has to drain
    const auto room = [&] { return e->results.free_approx() > 0 || e->results.closed() || stop_requested(); };
    (void)doorbell_wait(e->results.producer_doorbell(), room, Clock::now() + std::chrono::milliseconds(100), opts_.wait);
    if (e->results.closed() || stop_requested()) return Errc::closed;
  }
  if (!e->wake_pending) {
    e->wake_pending = true;
    e->pending_since = Clock::now();
  }
  if (held_wakeups_ == 0) wake_if_due(*e);
  return Errc::ok;
}

void Worker::wake_if_due(Endpoint& e) noexcept {
  if (!e.wake_pending) return;
  // Racy observers on both rings: a misjudgement costs one early wake-up or delays one
  // until the worker next waits (take() wakes everyone first), never a lost result.
  if (e.results.size_approx() < e.requests.size_approx() && Clock::now() - e.pending_since < opts_.max_wake_delay) return;
  e.wake_pending = false;
  e.results.notify();
}

void Worker::wake_clients() noexcept {
  for (auto& e : endpoints_)
    if (e.wake_pending) {
      e.wake_pending = false;
      e.results.notify();
    }
}

void Worker::release_wakeups() noexcept {
  if (held_wakeups_ > 0 && --held_wakeups_ == 0)
    for (auto& e : endpoints_) wake_if_due(e);
}

Errc Worker::publish(Tile& tile, OutputBlock& out) noexcept {
  if (tile.worker_ != this) return Errc::invalid_argument;
  if (!out.valid()) return fail(tile, TileStatus::NoSpace, "publish without an output block");
  TileDesc reply = tile.desc_;
  reply.mutate_kind(fb::Kind::Result);
  reply.mutate_status(static_cast<std::uint16_t>(TileStatus::Ok));
  reply.mutate_block(out.block_.handle.raw);
  set_desc_tensor(reply, out.view_.dtype(), out.view_.shape(), out.view_.nbytes());
  // The block now belongs to the answer: the client adopts it (or the broker reclaims it).
  out.slab_ = nullptr;
  stats_.published.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic; counted before the client can see it
  const Errc rc = answer(tile, reply);
  if (rc != Errc::ok) {
    (void)slab_.free(out.block_.handle);
    stats_.published.fetch_sub(1, std::memory_order_relaxed);  // relaxed: a statistic
  }
  return rc;
}

Errc Worker::fail(Tile& tile, TileStatus status, std::string_view message) noexcept {
  if (tile.worker_ != this) return Errc::invalid_argument;
  TileDesc reply = tile.desc_;
  reply.mutate_kind(fb::Kind::Error);
  reply.mutate_status(static_cast<std::uint16_t>(status));
  reply.mutate_block(0);
  set_desc_tensor(reply, DType::UInt8, Shape{}, 0);
  BlockView b;
  if (!message.empty() && slab_.try_alloc(message.size(), b) == AllocStatus::ok) {
    const std::size_t n = std::min<std::size_t>(message.size(), b.capacity);
    std::memcpy(b.data, message.data(), n);
    reply.mutate_block(b.handle.raw);
    set_desc_tensor(reply, DType::UInt8, Shape{static_cast<std::uint32_t>(n)}, n);
  }
  const Errc rc = answer(tile, reply);
  if (rc != Errc::ok && reply.block() != 0) (void)slab_.free(BlockHandle{reply.block()});
  stats_.failed.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  return rc;
}

Errc Worker::cancel(Tile& tile) noexcept {
  if (tile.worker_ != this) return Errc::invalid_argument;
  TileDesc reply = tile.desc_;
  reply.mutate_kind(fb::Kind::Canceled);
  reply.mutate_status(static_cast<std::uint16_t>(TileStatus::Canceled));
  reply.mutate_block(0);
  stats_.canceled.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  return answer(tile, reply);
}

}  // namespace tessera
