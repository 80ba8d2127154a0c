// Client API and embedded broker: dispatch, delivery, ordering, cancellation,
// deadlines and worker-death recovery. Everything here runs on the client's thread;
// the supervisor (worker processes) reports through Impl::post_event.
#include <tessera/client.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

#include "arena_pool.hpp"
#include "client_impl.hpp"

namespace tessera {

const char* outcome_name(Outcome o) noexcept {
  switch (o) {
    case Outcome::completed: return "completed";
    case Outcome::failed: return "failed";
    case Outcome::canceled: return "canceled";
  }
  return "unknown";
}

// ---------------- blocks ----------------
InputBlock& InputBlock::operator=(InputBlock&& o) noexcept {
  if (this != &o) {
    if (slab_ != nullptr) (void)slab_->free(block_.handle);
    slab_ = o.slab_;
    block_ = o.block_;
    o.slab_ = nullptr;
  }
  return *this;
}
InputBlock::~InputBlock() {
  if (slab_ != nullptr) (void)slab_->free(block_.handle);
}

ResultBlock& ResultBlock::operator=(ResultBlock&& o) noexcept {
  if (this != &o) {
    release();
    slab_ = o.slab_;
    handle_ = o.handle_;
    view_ = o.view_;
    o.slab_ = nullptr;
  }
  return *this;
}
void ResultBlock::release() noexcept {
  if (slab_ != nullptr) (void)slab_->free(handle_);
  slab_ = nullptr;
  view_ = {};
}

// ---------------- Impl ----------------
using detail::Record;
using detail::StreamState;
using detail::WorkerState;

Client::Impl::Impl(Arena a, std::uint32_t client_slot, ClientOptions o)
    : arena(std::move(a)), slot(client_slot), opts(std::move(o)), slab(arena, slot), bell(&arena.doorbell(client_slot)) {
  ready.reserve(opts.max_in_flight);
  workers.reserve(kMaxParticipants);  // never reallocates: references to workers stay valid
  streams.reserve(kMaxStreams);
  scratch.resize(arena.header().ring_capacity);
  if (opts.worker_window == 0) opts.worker_window = 1;
  opts.worker_window = std::min(opts.worker_window, arena.header().ring_capacity);
}

Client::Impl::~Impl() = default;

void Client::Impl::post_event(Event e) {
  std::lock_guard<std::mutex> lk(events_mu);
  events.push_back(std::move(e));
  // SYNC[client.events] release: the queued event is visible to the client thread's acquire.
  events_pending.store(true, std::memory_order_release);
  doorbell_notify(*bell);
}

void Client::Impl::handle_events() {
  // SYNC[client.events] acquire: pairs with post_event.
  if (!events_pending.load(std::memory_order_acquire)) return;
  std::deque<Event> batch;
  {
    std::lock_guard<std::mutex> lk(events_mu);
    batch.swap(events);
    events_pending.store(false, std::memory_order_relaxed);  // relaxed: under the mutex
  }
  for (auto& e : batch) {
    switch (e.kind) {
      case Event::Kind::died: on_worker_died(e.worker, e.text); break;
      case Event::Kind::ready:
        if (e.channel >= 0) bind_worker_channel(e.worker, static_cast<std::uint32_t>(e.channel), e.slot);
        on_worker_ready(e.worker, e.pid);
        break;
      case Event::Kind::gave_up: on_worker_gave_up(e.worker, e.text); break;
    }
  }
}

Result<std::int32_t> Client::Impl::new_worker_slot(const std::string& name, std::int32_t index) {
  auto s = arena.register_participant(Role::worker, 0, name);
  if (!s) return fail(std::move(s).error());
  if (index < 0) {
    index = static_cast<std::int32_t>(workers.size());
    workers.emplace_back();
  }
  WorkerState& w = workers[static_cast<std::size_t>(index)];
  w.index = index;
  w.slot = *s;
  if (auto ch = open_worker_channel(w); !ch) {
    arena.release_participant(*s);
    w.slot = kNoSlot;
    last_pool_error = ch.error().message;
    update_usable();
    return fail(std::move(ch).error());
  }
  w.alive = false;  // until its process reports ready
  w.in_flight = 0;
  w.pid = 0;
  update_usable();
  return index;
}

// A fresh channel between this client and worker `w` (its slot stays the same).
Result<void> Client::Impl::open_worker_channel(WorkerState& w) {
  auto ch = arena.open_channel(slot, w.slot, slot, w.slot);
  if (!ch) return fail(std::move(ch).error());
  w.channel = *ch;
  w.generation = arena.channel(*ch).generation.load(std::memory_order_relaxed);  // relaxed: we opened it
  w.pushed = 0;  // a fresh ring starts at index 0
  w.requests = RingProducer(arena, arena.channel(*ch).request_ring);
  w.results = RingConsumer(arena, arena.channel(*ch).response_ring);
  return {};
}

void Client::Impl::on_worker_ready(std::int32_t index, int pid) {
  if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) return;
  WorkerState& w = workers[static_cast<std::size_t>(index)];
  w.pid = pid;
  w.alive = true;
  w.gave_up = false;
  if (pid > 0 && !control) arena.set_participant_pid(w.slot, pid);  // a pool sets its workers' pids
  rebuild_dispatch_order();
  update_usable();
}

void Client::Impl::bind_worker_channel(std::int32_t index, std::uint32_t ch, std::uint32_t worker_slot) {
  if (index < 0 || ch >= arena.n_channels()) return;
  while (workers.size() <= static_cast<std::size_t>(index)) {
    workers.emplace_back();
    workers.back().index = static_cast<std::int32_t>(workers.size() - 1);
  }
  WorkerState& w = workers[static_cast<std::size_t>(index)];
  w.index = index;
  w.slot = worker_slot;
  w.channel = ch;
  // acquire: the broker opened the channel before telling us (SYNC[channel.state]).
  (void)arena.channel(ch).state.load(std::memory_order_acquire);
  w.generation = arena.channel(ch).generation.load(std::memory_order_relaxed);  // relaxed: ordered by the acquire
  w.requests = RingProducer(arena, arena.channel(ch).request_ring);
  w.results = RingConsumer(arena, arena.channel(ch).response_ring);
  w.in_flight = 0;
  w.pushed = 0;  // a fresh ring starts at index 0
  w.holds_suspect = false;
}

void Client::Impl::on_worker_gave_up(std::int32_t index, const std::string& why) {
  if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) return;
  workers[static_cast<std::size_t>(index)].gave_up = true;
  last_pool_error = why;
  update_usable();
  // With no live worker left, pending tiles can never run: fail them now rather than hang.
  if (!usable) fail_all_pending("no live worker: " + why);
}

void Client::Impl::update_usable() {
  usable = std::any_of(workers.begin(), workers.end(), [](const WorkerState& w) {
    return w.alive || (w.slot != kNoSlot && !w.gave_up);
  });
}

std::string Client::Impl::unavailable_reason() const {
  if (workers.empty()) return "no worker pool (call start_pool first)";
  return "no live worker and none coming back" + (last_pool_error.empty() ? std::string() : ": " + last_pool_error);
}

// Worker death, recovery steps 1-2 (pool/arena_pool.hpp): drain what it published,
// retry or fail what it held; the worker's owner then does the rest.
void Client::Impl::on_worker_died(std::int32_t index, const std::string& reason) {
  if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) return;
  WorkerState& w = workers[static_cast<std::size_t>(index)];
  if (w.slot == kNoSlot) return;
  w.alive = false;
  const std::string why = w.fault.empty() ? reason : w.fault + " (" + reason + ")";
  // 1. Results it published before dying are complete (release/acquire): deliver them
  //    (unless it corrupted shared memory: then nothing more of it is read).
  drain_worker(w);
  // Which tiles it had taken: those before its request ring's head. A tile still in the
  // ring never ran there, so the death says nothing about it and costs it no retry.
  std::uint64_t taken = w.pushed;
  if (w.requests.valid()) {
    // relaxed: the worker is dead (nothing races); a value it corrupted is bounded by what
    // we pushed and can only add strikes, never lose a tile.
    taken = std::min(w.pushed, arena.ring(w.requests.index()).head.load(std::memory_order_relaxed));
  }
  // 2. Every tile still dispatched to it gets exactly one outcome: retry or FAILED.
  for (auto& s : streams) {
    if (!s.open && s.records.empty()) continue;
    for (auto& r : s.records) {
      if (r.state == Record::State::abandoned && r.worker == index) {
        settle_abandoned(s, r);  // its outcome is decided; the worker will never read the input again
        continue;
      }
      if (r.state != Record::State::dispatched || r.worker != index) continue;
      if (r.ring_pos >= taken) {  // never taken: back to the front of the queue
        r.state = Record::State::pending;
        r.worker = -1;
        s.pending.push_front(r.seq);
        continue;
      }
      if (r.strikes < 255) ++r.strikes;
      if (r.strikes <= max_retries) {
        ++s.stats.retried;
        r.state = Record::State::pending;
        r.worker = -1;
        s.pending.push_front(r.seq);
      } else {
        const unsigned n = r.strikes;
        finish(s, r, Outcome::failed, TileStatus::WorkerDied,
               "worker died on this tile " + std::to_string(n) + (n == 1 ? " time" : " times") + "; last: worker " +
                   std::to_string(index) + " died: " + why,
               {}, Holder::none);
      }
    }
  }
  w.in_flight = 0;
  w.holds_suspect = false;
  w.pushed = 0;
  mark_idle(w);
  w.requests = {};
  w.results = {};
  ++w.restarts;
  // 3-6. The owner closes its channels, reclaims its blocks and respawns it.
  if (control) {
    control->recovered(w);
  } else {
    reclaimed_blocks += pool::reclaim_dead_worker(arena, w.slot, {&w.channel, 1}, false);
    w.slot = kNoSlot;
  }
  w.fault.clear();
  rebuild_dispatch_order();
  update_usable();
  if (!usable) fail_all_pending("no live worker: worker " + std::to_string(index) + " died: " + why);
}

void Client::Impl::fail_all_pending(const std::string& why) {
  for (auto& s : streams)
    for (auto& r : s.records)
      if (r.state == Record::State::pending) finish(s, r, Outcome::failed, TileStatus::WorkerDied, why, {});
  for (auto& s : streams) s.pending.clear();
}

void Client::Impl::rebuild_dispatch_order() {
  stream_order.clear();
  for (std::uint32_t i = 0; i < streams.size(); ++i)
    if (streams[i].open) stream_order.push_back(i);
  std::stable_sort(stream_order.begin(), stream_order.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return streams[a].opts.priority > streams[b].opts.priority; });
}

void Client::Impl::release_input(Record& r) noexcept {
  if (!r.input.handle.null()) (void)slab.free(r.input.handle);
  r.input = {};
}

void Client::Impl::mark_busy(WorkerState& w) noexcept {
  if (w.in_flight == 1) w.busy_since = Clock::now();
}
void Client::Impl::mark_idle(WorkerState& w) noexcept {
  if (w.in_flight == 0 && w.busy_since != Clock::time_point{}) {
    w.busy_ns += static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - w.busy_since).count());
    w.busy_since = {};
  }
}

// Records the outcome of a tile and queues it for delivery (in order if the stream asks).
// `input` says whether a worker may still read the input block (docs/design/client.md).
void Client::Impl::finish(StreamState& s, Record& r, Outcome outcome, TileStatus status, std::string error,
                          ResultBlock output, Holder input) {
  TileResult res;
  res.stream = r.stream;
  res.seq = r.seq;
  res.outcome = outcome;
  res.status = status;
  res.error = std::move(error);
  res.output = std::move(output);
  res.meta = r.meta;
  res.worker = r.worker;
  res.epoch = r.epoch;
  res.latency_us = std::chrono::duration<double, std::micro>(Clock::now() - r.submitted).count();
  s.latency[s.latency_next++ % s.latency.size()] = res.latency_us;
  switch (outcome) {
    case Outcome::completed: ++s.stats.completed; break;
    case Outcome::failed: ++s.stats.failed; break;
    case Outcome::canceled: ++s.stats.canceled; break;
  }
  if (r.state == Record::State::dispatched && input == Holder::worker) {
    // The worker may still read the input: keep the block until it answers (and, past
    // cancel_grace, escalate: check_timers).
    r.state = Record::State::abandoned;
    r.abandoned_at = Clock::now();
    timers_armed = true;
  } else {
    release_input(r);
    r.state = Record::State::finished;
  }
  if (s.opts.ordering == Ordering::completion) {
    ready.push_back(std::move(res));
    delivered(s, r);
  } else {
    r.parked = std::move(res);
    r.delivery = Record::Delivery::parked;
    flush_ordered(s);
  }
}

// The outcome went to the ready queue: a finished record is free again.
void Client::Impl::delivered(StreamState& s, Record& r) noexcept {
  if (r.state == Record::State::finished) {
    r = Record{};
    --s.live;
  } else {
    r.delivery = Record::Delivery::delivered;
  }
}

// An abandoned tile's worker let go of the input (it answered, or it died).
void Client::Impl::settle_abandoned(StreamState& s, Record& r) noexcept {
  release_input(r);
  r.state = Record::State::finished;
  if (r.delivery == Record::Delivery::delivered) {
    r = Record{};
    --s.live;
  }
}

void Client::Impl::flush_ordered(StreamState& s) {
  while (s.next_deliver < s.next_seq) {
    Record& r = s.records[s.next_deliver % s.records.size()];
    if (r.delivery != Record::Delivery::parked || r.seq != s.next_deliver) break;
    ready.push_back(std::move(r.parked));
    delivered(s, r);
    ++s.next_deliver;
  }
}

// Moves pending tiles to workers: highest stream priority first, least-loaded worker.
void Client::Impl::pump() {
  bool any = false;
  for (std::uint32_t si : stream_order) {
    StreamState& s = streams[si];
    while (!s.pending.empty()) {
      const std::uint64_t seq = s.pending.front();
      Record& r = s.records[seq % s.records.size()];
      if (r.state != Record::State::pending || r.seq != seq) {  // canceled while queued
        s.pending.pop_front();
        continue;
      }
      // A suspect (a worker died while running it) runs alone on an idle worker, so that
      // a further death is its own and no bystander pays for it.
      const bool suspect = r.strikes != 0;
      const std::uint64_t window = suspect ? 1 : opts.worker_window;
      WorkerState* best = nullptr;
      for (auto& w : workers)
        if (w.alive && !w.holds_suspect && w.in_flight < window && (best == nullptr || w.in_flight < best->in_flight))
          best = &w;
      if (best == nullptr) goto done;
      TileDesc d{};
      d.mutate_seq(seq);
      d.mutate_stream(si);
      d.mutate_epoch(r.epoch);
      d.mutate_block(r.input.handle.raw);
      set_desc_tensor(d, r.meta.dtype, r.meta.shape, tensor_nbytes(r.meta.dtype, r.meta.shape).value_or(0));  // checked at submit
      d.mutate_level(r.meta.level);
      d.mutate_kind(fb::Kind::Request);
      d.mutate_x(r.meta.x);
      d.mutate_y(r.meta.y);
      d.mutate_op(r.meta.op);
      if (best->requests.try_push(d) != RingStatus::ok) {
        best->alive = false;  // ring closed under us: the death event follows
        continue;
      }
      s.pending.pop_front();
      r.state = Record::State::dispatched;
      r.worker = best->index;
      r.ring_pos = best->pushed++;
      best->holds_suspect = suspect;
      ++best->in_flight;
      mark_busy(*best);
      best->needs_notify = true;
      any = true;
    }
  }
done:
  if (any)
    for (auto& w : workers)
      if (w.needs_notify) {
        w.needs_notify = false;
        w.requests.notify();  // one wake-up carries every tile pushed in this pump
      }
}

// Takes every answer a worker published.
std::size_t Client::Impl::drain_worker(WorkerState& w) {
  if (!w.results.valid() || !w.fault.empty()) return 0;
  std::size_t total = 0;
  for (;;) {
    RingStatus st = RingStatus::ok;
    const std::size_t n = w.results.try_pop_batch({scratch.data(), scratch.size()}, &st);
    if (n == 0) {
      if (st == RingStatus::corrupt) {
        const RingHeader& h = arena.ring(arena.channel(w.channel).response_ring);
        // relaxed: diagnostics of a ring already known to be corrupt.
        peer_fault(w, "corrupted its result ring (head " + std::to_string(h.head.load(std::memory_order_relaxed)) +
                          ", tail " + std::to_string(h.tail.load(std::memory_order_relaxed)) + ", capacity " +
                          std::to_string(arena.header().ring_capacity) + ")");
      }
      break;
    }
    total += n;
    for (std::size_t i = 0; i < n && w.fault.empty() && w.results.valid(); ++i) on_answer(w, scratch[i]);
    if (!w.fault.empty() || !w.results.valid()) break;
  }
  if (total != 0 && w.results.valid()) w.results.notify();
  return total;
}

// A worker that wrote something impossible into shared memory is treated as dead,
// never trusted further: no more dispatch, its process is killed, and its death runs
// the usual recovery with what was seen as the reason for every tile it held.
void Client::Impl::peer_fault(WorkerState& w, const std::string& seen) {
  if (!w.fault.empty()) return;
  w.fault = "worker " + std::to_string(w.index) + " " + seen;
  std::fprintf(stderr, "tessera client: %s; treating it as dead\n", w.fault.c_str());
  w.alive = false;
  if (control && !w.external && control->kill(w.index)) return;  // its death event runs the recovery
  on_worker_died(w.index, "killed");
}

void Client::Impl::drop_answer_block(WorkerState& w, const TileDesc& d) noexcept {
  if (d.block() == 0) return;
  if (slab.adopt(BlockHandle{d.block()}, w.slot) == Errc::ok) (void)slab.free(BlockHandle{d.block()});
}

void Client::Impl::on_answer(WorkerState& w, const TileDesc& d) {
  if (w.in_flight > 0) --w.in_flight;
  if (w.in_flight == 0) w.holds_suspect = false;
  mark_idle(w);
  ++w.completed;
  if (d.stream() >= streams.size()) {  // no stream of that id was ever opened
    peer_fault(w, "answered stream " + std::to_string(d.stream()) + ", which this client never opened");
    return;
  }
  StreamState& s = streams[d.stream()];
  if (s.records.empty()) {
    ++stray_answers;
    drop_answer_block(w, d);
    return;
  }
  Record& r = s.records[d.seq() % s.records.size()];
  if (r.seq != d.seq() || r.worker != w.index ||
      (r.state != Record::State::dispatched && r.state != Record::State::abandoned)) {
    ++stray_answers;  // late duplicate (e.g. after a retry elsewhere): never delivered
    drop_answer_block(w, d);
    return;
  }
  if (r.state == Record::State::abandoned) {  // its outcome (canceled/deadline) is already decided
    drop_answer_block(w, d);
    settle_abandoned(s, r);
    return;
  }
  // A late result of a superseded epoch is never delivered as current.
  if (d.epoch() < s.epoch) {
    drop_answer_block(w, d);
    finish(s, r, Outcome::canceled, TileStatus::Canceled, "superseded by epoch " + std::to_string(s.epoch), {},
           Holder::none);
    return;
  }
  // A result that arrives after the tile's deadline is never delivered as on time: the
  // tile fails with Deadline (docs/guarantees.md). One clock read, for deadlined tiles only.
  if (r.deadline != Clock::time_point{} && Clock::now() >= r.deadline) {
    drop_answer_block(w, d);
    finish(s, r, Outcome::failed, TileStatus::Deadline, "deadline exceeded: the worker answered after the tile's deadline",
           {}, Holder::none);
    return;
  }
  switch (d.kind()) {
    case fb::Kind::Result: {
      ResultBlock out;
      BlockView b;
      if (slab.adopt(BlockHandle{d.block()}, w.slot) != Errc::ok || slab.resolve(BlockHandle{d.block()}, b) != Errc::ok) {
        peer_fault(w, "published output block " + std::to_string(d.block()) + ", which it does not own");
        return;
      }
      out.slab_ = &slab;
      out.handle_ = b.handle;
      out.view_ = TensorView(b.data, b.capacity, d.dtype(), desc_shape(d));
      if (!out.view_.valid()) {
        finish(s, r, Outcome::failed, TileStatus::BadInput, "worker published an output whose shape exceeds its block", {},
               Holder::none);
        return;
      }
      finish(s, r, Outcome::completed, TileStatus::Ok, {}, std::move(out), Holder::none);
      return;
    }
    case fb::Kind::Error: {
      std::string text = "worker error";
      BlockView b;
      if (d.block() != 0 && slab.adopt(BlockHandle{d.block()}, w.slot) == Errc::ok &&
          slab.resolve(BlockHandle{d.block()}, b) == Errc::ok) {
        text.assign(reinterpret_cast<const char*>(b.data), std::min<std::uint64_t>(d.nbytes(), b.capacity));
        (void)slab.free(b.handle);
      }
      finish(s, r, Outcome::failed, static_cast<TileStatus>(d.status()), std::move(text), {}, Holder::none);
      return;
    }
    case fb::Kind::Canceled:
      finish(s, r, Outcome::canceled, TileStatus::Canceled, "canceled by the worker (epoch superseded)", {}, Holder::none);
      return;
    default:
      peer_fault(w, "sent a descriptor of unknown kind " + std::to_string(static_cast<int>(d.kind())));
      return;
  }
}

std::size_t Client::Impl::drain_all() {
  std::size_t n = 0;
  for (auto& w : workers)
    if (w.slot != kNoSlot) n += drain_worker(w);
  return n;
}

// Deadlines and cancel escalation: at most every 10 ms.
void Client::Impl::check_timers() {
  if (!timers_armed) return;
  const auto now = Clock::now();
  if (now < next_timer_check) return;
  next_timer_check = now + std::chrono::milliseconds(10);
  for (auto& s : streams) {
    for (auto& r : s.records) {
      if ((r.state == Record::State::pending || r.state == Record::State::dispatched) &&
          r.deadline != Clock::time_point{} && now >= r.deadline) {
        finish(s, r, Outcome::failed, TileStatus::Deadline, "deadline exceeded", {});
      } else if (r.state == Record::State::abandoned && r.worker >= 0 && cancel_grace.count() > 0 &&
                 r.abandoned_at != Clock::time_point{} && now - r.abandoned_at > cancel_grace) {
        // Cooperative cancel did not stop it in time: kill and respawn the worker.
        WorkerState& w = workers[static_cast<std::size_t>(r.worker)];
        r.abandoned_at = {};
        if (w.alive && !w.external && control) (void)control->kill(r.worker);
      }
    }
  }
}

bool Client::Impl::results_ready() noexcept {
  // acquire: see the queued event (SYNC[client.events]).
  if (events_pending.load(std::memory_order_acquire)) return true;
  // relaxed: the flag carries no data; take_wake() consumes it (SYNC[client.wake]).
  if (wake_pending.load(std::memory_order_relaxed)) return true;
  for (auto& w : workers)
    if (w.slot != kNoSlot && w.results.valid() && w.results.ready()) return true;
  return false;
}

bool Client::Impl::take_wake() noexcept {
  // SYNC[client.wake] relaxed: a plain flag from Client::wake(); no data is published
  // through it (the doorbell bump only ends the futex sleep).
  if (!wake_pending.load(std::memory_order_relaxed)) return false;
  return wake_pending.exchange(false, std::memory_order_relaxed);
}

void Client::wake() noexcept {
  // SYNC[client.wake] relaxed store, then the doorbell's release bump: the waiter's
  // predicate (results_ready) re-reads the flag after every futex return.
  impl_->wake_pending.store(true, std::memory_order_relaxed);
  doorbell_notify(*impl_->bell);
}

bool Client::woken() const noexcept { return impl_->last_poll_woken; }

// One round of the client's loop: events, answers, dispatch, timers.
void Client::Impl::step() {
  handle_events();
  drain_all();
  check_timers();
  pump();
}

// ---------------- Client ----------------
Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  if (!impl_) return;
  // The arena's creator (an embedded client) says so to anyone inspecting it.
  if (impl_->arena.header().creator_pid == static_cast<std::uint32_t>(::getpid()))
    impl_->arena.header().shutting_down.store(1, std::memory_order_relaxed);  // relaxed: a hint for `tessera inspect`
  if (impl_->control) impl_->control->shutdown();
}

const Arena& Client::arena() const noexcept { return impl_->arena; }

Result<void> detail::check_client_options(const ClientOptions& o) {
  if (o.max_in_flight == 0) return fail(Errc::invalid_argument, "client options: max_in_flight must be at least 1, got 0");
  return {};
}

Result<std::unique_ptr<Client>> Client::embedded(ClientOptions opts) {
  if (auto ok = detail::check_client_options(opts); !ok) return fail(std::move(ok).error());
  auto a = Arena::create(opts.arena);
  if (!a) return fail(std::move(a).error());
  auto s = a->register_participant(Role::client, getpid(), "client");
  if (!s) return fail(std::move(s).error());
  const std::uint32_t slot = *s;
  auto impl = std::make_unique<Impl>(std::move(*a), slot, std::move(opts));
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<Client::ExternalWorker> Client::add_external_worker(const std::string& name) {
  auto idx = impl_->new_worker_slot(name, -1);
  if (!idx) return fail(std::move(idx).error());
  auto& w = impl_->workers[static_cast<std::size_t>(*idx)];
  w.external = true;
  return ExternalWorker{*idx, w.slot, impl_->arena.fd()};
}

// Only for a worker the caller started: a pool's (or a broker's) workers are reported by
// their owner, and the pid given here is only shown (workers(), the arena), never signalled.
void Client::set_worker_pid(std::int32_t index, int pid) {
  if (index < 0 || static_cast<std::size_t>(index) >= impl_->workers.size()) return;
  if (!impl_->workers[static_cast<std::size_t>(index)].external) return;
  impl_->on_worker_ready(index, pid);
}

void Client::worker_died(std::int32_t index, const std::string& reason) {
  impl_->on_worker_died(index, reason);
  impl_->pump();
}

std::vector<WorkerInfo> Client::workers() const {
  std::vector<WorkerInfo> v;
  for (const auto& w : impl_->workers) {
    WorkerInfo i;
    i.index = w.index;
    i.slot = w.slot;
    i.pid = w.pid;
    i.alive = w.alive;
    i.in_flight = w.in_flight;
    i.completed = w.completed;
    i.busy_ns = w.busy_ns;
    if (w.busy_since != Clock::time_point{})
      i.busy_ns += static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - w.busy_since).count());
    i.restarts = w.restarts;
    v.push_back(i);
  }
  return v;
}

Result<void> Client::kill_worker(std::int32_t index) {
  if (index < 0 || static_cast<std::size_t>(index) >= impl_->workers.size())
    return fail(Errc::invalid_argument, "kill_worker: no worker " + std::to_string(index));
  const auto& w = impl_->workers[static_cast<std::size_t>(index)];
  // Only processes our pool spawned are signalled (through their pidfd): never a pid
  // someone reported (set_worker_pid, a peer), which may name an unrelated process.
  if (w.external || !impl_->control)
    return fail(Errc::invalid_argument, "kill_worker: worker " + std::to_string(index) +
                                            " was started by the caller (add_external_worker); stop it yourself");
  if (!w.alive) return fail(Errc::unavailable, "kill_worker: worker " + std::to_string(index) + " is not running");
  return impl_->control->kill(index);
}

Result<std::uint32_t> Client::open_stream(const StreamOptions& opts) {
  if (opts.max_in_flight == 0) return fail(Errc::invalid_argument, "open_stream: max_in_flight must be > 0");
  auto& streams = impl_->streams;
  std::uint32_t id = 0;
  while (id < streams.size() && (streams[id].open || streams[id].live != 0)) ++id;
  if (id >= kMaxStreams) return fail(Errc::no_space, "open_stream: at most 16 streams per client are open at once");
  if (id == streams.size()) streams.emplace_back();
  StreamState& s = streams[id];
  const std::uint32_t epoch = s.epoch;  // epochs only grow, even across reuse of the id
  s = StreamState{};
  s.epoch = epoch;
  s.open = true;
  s.opts = opts;
  s.records.clear();
  s.records.resize(opts.max_in_flight);
  s.pending.reset(opts.max_in_flight);
  s.latency.assign(4096, 0.0);
  impl_->rebuild_dispatch_order();
  return id;
}

Result<void> Client::close_stream(std::uint32_t stream) {
  if (stream >= impl_->streams.size() || !impl_->streams[stream].open)
    return fail(Errc::closed, "close_stream: stream " + std::to_string(stream) + " is not open");
  auto r = cancel_stream(stream);
  impl_->streams[stream].open = false;
  impl_->rebuild_dispatch_order();
  return r;
}

AllocStatus Client::try_alloc(std::uint64_t bytes, InputBlock& out) noexcept {
  out = InputBlock{};
  BlockView b;
  const AllocStatus st = impl_->slab.try_alloc_leaving(bytes, impl_->opts.output_reserve_percent, b);
  if (st != AllocStatus::ok) return st;
  out.slab_ = &impl_->slab;
  out.block_ = b;
  return st;
}

Result<void> Client::alloc(std::uint64_t bytes, InputBlock& out, std::chrono::nanoseconds timeout) {
  impl_->handle_events();  // one acquire load unless a worker event waits (it may be the last worker's)
  // Before any pool exists a host may fill blocks ahead of start_pool(); once a pool
  // existed and no worker can come back, waiting for a block would be waiting for nothing.
  if (!impl_->usable && !impl_->workers.empty())
    return fail(Errc::unavailable, "alloc: " + impl_->unavailable_reason());
  const auto deadline = detail::deadline_after(Clock::now(), timeout);
  for (;;) {
    const AllocStatus st = try_alloc(bytes, out);
    if (st == AllocStatus::ok) return {};
    if (st == AllocStatus::too_large)
      return fail(Errc::invalid_argument, "alloc: " + std::to_string(bytes) + " bytes is larger than the largest block class");
    impl_->step();
    if (impl_->in_flight_unfinished() == 0 && try_alloc(bytes, out) != AllocStatus::ok) {
      // Say whose blocks fill the arena: on a shared broker they may be other clients'.
      const std::uint32_t mine = Slab::count_held(impl_->arena, impl_->slot);
      const std::uint32_t others = Slab::count_held(impl_->arena, kNoSlot) - mine;
      if (others > 0)
        return fail(Errc::no_space, "alloc: arena exhausted: this client holds " + std::to_string(mine) + " blocks, other participants hold " +
                                        std::to_string(others) + " (on a shared broker, other clients; each may hold its share)");
      return fail(Errc::no_space, "alloc: arena exhausted by blocks the caller holds (release results or input blocks)");
    }
    if (out.valid()) return {};
    if (Clock::now() >= deadline) return fail(Errc::timeout, "alloc: no block free within the timeout");
    if (impl_->take_wake()) return fail(Errc::canceled, "alloc: woken (Client::wake) before a block was free");
    (void)doorbell_wait(*impl_->bell, [this] { return impl_->results_ready(); }, deadline, impl_->opts.wait);
  }
}

Result<std::uint64_t> Client::submit(std::uint32_t stream, InputBlock& block, const TileMeta& meta, SubmitMode mode,
                                     std::chrono::nanoseconds timeout) {
  auto r = submit_one(stream, block, meta, mode, timeout);
  impl_->pump();
  return r;
}

Result<std::size_t> Client::submit_batch(std::uint32_t stream, std::span<InputBlock> blocks, std::span<const TileMeta> metas,
                                         SubmitMode mode, std::chrono::nanoseconds timeout) {
  if (blocks.size() != metas.size()) return fail(Errc::invalid_argument, "submit_batch: blocks and metas differ in length");
  std::size_t n = 0;
  for (; n < blocks.size(); ++n) {
    auto r = submit_one(stream, blocks[n], metas[n], mode, timeout);
    if (!r) {
      impl_->pump();
      if (n == 0) return fail(std::move(r).error());
      return n;  // the first n were accepted; blocks[n..] are still the caller's
    }
  }
  impl_->pump();  // one pump, so each worker gets one wake-up for the whole batch
  return n;
}

Result<std::uint64_t> Client::submit_one(std::uint32_t stream, InputBlock& block, const TileMeta& meta, SubmitMode mode,
                                         std::chrono::nanoseconds timeout) {
  auto& I = *impl_;
  if (stream >= I.streams.size() || !I.streams[stream].open)
    return fail(Errc::closed, "submit: stream " + std::to_string(stream) + " is not open");
  if (!block.valid() || block.slab_ != &I.slab)
    return fail(Errc::stale_handle, "submit: the input block is not a live block of this client");
  if (I.slab.owner_of(block.block_.handle) != I.slot)
    return fail(Errc::stale_handle, "submit: the input block handle is stale");
  if (dtype_size(meta.dtype) == 0 || meta.shape.ndim == 0 || meta.shape.ndim > 4)
    return fail(Errc::invalid_argument, "submit: tile needs a known dtype and 1 to 4 dimensions");
  const std::optional<std::uint64_t> checked = tensor_nbytes(meta.dtype, meta.shape);
  if (!checked)
    return fail(Errc::invalid_argument, "submit: shape " + meta.shape.str() + " of " + std::string(dtype_name(meta.dtype)) +
                                            " overflows a 64-bit byte count");
  const std::uint64_t nbytes = *checked;
  if (nbytes == 0 || nbytes > block.block_.capacity || nbytes > 0xffffffffULL)
    return fail(Errc::invalid_argument, "submit: shape " + meta.shape.str() + " of " + std::string(dtype_name(meta.dtype)) +
                                            " needs " + std::to_string(nbytes) + " bytes; the block holds " +
                                            std::to_string(block.block_.capacity));
  I.handle_events();  // one acquire load unless a worker event waits (it may be the last worker's)
  if (!I.usable) return fail(Errc::unavailable, "submit: " + I.unavailable_reason());
  StreamState& s = I.streams[stream];
  const auto deadline = detail::deadline_after(Clock::now(), timeout);
  for (;;) {
    Record& slot = s.records[s.next_seq % s.records.size()];
    if (slot.state == Record::State::free && in_flight_ < I.opts.max_in_flight) break;
    if (mode == SubmitMode::fail_fast) return fail(Errc::no_space, "submit: stream is full (backpressure)");
    I.step();
    if (slot.state == Record::State::free && in_flight_ < I.opts.max_in_flight) break;
    if (I.in_flight_unfinished() == 0)
      return fail(Errc::no_space, "submit: every in-flight tile is finished but undelivered: call poll() first");
    if (Clock::now() >= deadline) return fail(Errc::timeout, "submit: stream stayed full for the whole timeout");
    if (I.take_wake()) return fail(Errc::canceled, "submit: woken (Client::wake) while the stream was full");
    (void)doorbell_wait(*I.bell, [&I] { return I.results_ready(); }, deadline, I.opts.wait);
  }
  // The wait above ran worker events: the last worker may be gone by now.
  if (!I.usable) return fail(Errc::unavailable, "submit: " + I.unavailable_reason());
  const std::uint64_t seq = s.next_seq++;
  Record& r = s.records[seq % s.records.size()];
  r = Record{};
  r.state = Record::State::pending;
  r.stream = stream;
  r.seq = seq;
  r.epoch = s.epoch;
  r.input = block.block_;
  r.meta = meta;
  r.submitted = Clock::now();
  const auto dl = meta.deadline.count() != 0 ? meta.deadline : s.opts.deadline;
  if (dl.count() > 0) {
    r.deadline = detail::deadline_after(r.submitted, dl);
    I.timers_armed = true;
  }
  block.slab_ = nullptr;  // the record owns the block now
  ++s.live;
  ++s.stats.submitted;
  ++in_flight_;
  s.pending.push_back(seq);
  return seq;
}

std::size_t Client::poll(std::vector<TileResult>& out, std::size_t max, std::chrono::nanoseconds timeout) {
  auto& I = *impl_;
  // A zero timeout (the busy caller's poll) reads no clock.
  const bool once = timeout <= std::chrono::nanoseconds::zero();
  const auto deadline = once ? Clock::time_point{} : detail::deadline_after(Clock::now(), timeout);
  std::size_t n = 0;
  I.last_poll_woken = false;
  for (;;) {
    I.step();
    while (n < max && I.ready_head < I.ready.size()) {
      out.push_back(std::move(I.ready[I.ready_head++]));
      ++n;
      --in_flight_;
    }
    if (I.ready_head == I.ready.size()) {
      I.ready.clear();
      I.ready_head = 0;
    }
    if (n > 0 || once || Clock::now() >= deadline) return n;
    if (in_flight_ == 0 && !I.events_pending.load(std::memory_order_acquire)) {  // acquire: SYNC[client.events]
      // Nothing can arrive: do not sleep out the whole timeout.
      return 0;
    }
    if (I.take_wake()) {
      I.last_poll_woken = true;
      return 0;
    }
    (void)doorbell_wait(*I.bell, [&I] { return I.results_ready(); },
                        std::min(deadline, Clock::now() + std::chrono::milliseconds(10)), I.opts.wait);
  }
}

Result<void> Client::cancel(std::uint32_t stream, std::uint64_t seq) {
  auto& I = *impl_;
  if (stream >= I.streams.size()) return fail(Errc::invalid_argument, "cancel: no such stream");
  StreamState& s = I.streams[stream];
  if (s.records.empty()) return fail(Errc::invalid_argument, "cancel: no such stream");
  Record& r = s.records[seq % s.records.size()];
  if (r.seq != seq || (r.state != Record::State::pending && r.state != Record::State::dispatched))
    return fail(Errc::not_found, "cancel: tile " + std::to_string(seq) + " is not in flight");
  I.finish(s, r, Outcome::canceled, TileStatus::Canceled, "canceled by the client", {});
  return {};
}

Result<void> Client::cancel_stream(std::uint32_t stream) {
  auto& I = *impl_;
  if (stream >= I.streams.size() || I.streams[stream].records.empty())
    return fail(Errc::invalid_argument, "cancel_stream: no such stream");
  StreamState& s = I.streams[stream];
  // Make workers drop whatever they still have queued, then cancel everything here.
  s.epoch += 1;
  I.publish_epoch(stream, s.epoch);
  for (auto& r : s.records)
    if (r.state == Record::State::pending || r.state == Record::State::dispatched) {
      I.finish(s, r, Outcome::canceled, TileStatus::Canceled, "stream canceled", {});
    }
  s.pending.clear();
  return {};
}

Result<std::uint32_t> Client::advance_epoch(std::uint32_t stream) {
  auto& I = *impl_;
  if (stream >= I.streams.size() || !I.streams[stream].open)
    return fail(Errc::closed, "advance_epoch: stream " + std::to_string(stream) + " is not open");
  StreamState& s = I.streams[stream];
  s.epoch += 1;
  I.publish_epoch(stream, s.epoch);
  for (auto& r : s.records) {
    if ((r.state == Record::State::pending || r.state == Record::State::dispatched) && r.epoch < s.epoch) {
      I.finish(s, r, Outcome::canceled, TileStatus::Canceled, "superseded by epoch " + std::to_string(s.epoch), {});
    }
  }
  return s.epoch;
}

void Client::Impl::publish_epoch(std::uint32_t stream, std::uint32_t epoch) noexcept {
  for (auto& w : workers) {
    if (w.slot == kNoSlot) continue;
    // SYNC[channel.epoch] release: workers acquire it in Tile::cancel_requested / admit.
    arena.channel(w.channel).min_epoch[stream % kMaxStreams].store(epoch, std::memory_order_release);
  }
}

StreamStats Client::stats(std::uint32_t stream) const {
  StreamStats st{};
  if (stream >= impl_->streams.size()) return st;
  const StreamState& s = impl_->streams[stream];
  st = s.stats;
  for (const auto& r : s.records) {
    if (r.state == Record::State::pending) ++st.queued;
    if (r.state == Record::State::dispatched) ++st.running;
  }
  const std::size_t n = std::min<std::size_t>(s.latency_next, s.latency.size());
  if (n > 0) {
    std::vector<double> v(s.latency.begin(), s.latency.begin() + static_cast<std::ptrdiff_t>(n));
    std::sort(v.begin(), v.end());
    st.p50_us = v[n / 2];
    st.p99_us = v[std::min(n - 1, n * 99 / 100)];
  }
  return st;
}

std::uint64_t Client::Impl::in_flight_unfinished() const noexcept {
  std::uint64_t n = 0;
  for (const auto& s : streams)
    for (const auto& r : s.records)
      if (r.state == Record::State::pending || r.state == Record::State::dispatched ||
          r.state == Record::State::abandoned)
        ++n;
  return n;
}

}  // namespace tessera
