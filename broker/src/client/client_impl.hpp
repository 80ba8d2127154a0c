// Private state of tessera::Client (one thread; no locks on the data path).
#pragma once

#include <tessera/client.hpp>
#include <tessera/ring.hpp>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera {
namespace detail {

using tessera::deadline_after;  // doorbell.hpp

// Fixed-capacity FIFO of sequence numbers with push_front (for retries). No allocation
// after construction.
class SeqQueue {
 public:
  void reset(std::size_t capacity) { buf_.assign(capacity + 1, 0); head_ = tail_ = 0; }
  bool empty() const noexcept { return head_ == tail_; }
  std::size_t size() const noexcept { return (tail_ + buf_.size() - head_) % buf_.size(); }
  std::uint64_t front() const noexcept { return buf_[head_]; }
  void pop_front() noexcept { head_ = (head_ + 1) % buf_.size(); }
  void push_back(std::uint64_t v) noexcept { buf_[tail_] = v; tail_ = (tail_ + 1) % buf_.size(); }
  void push_front(std::uint64_t v) noexcept { head_ = (head_ + buf_.size() - 1) % buf_.size(); buf_[head_] = v; }
  void clear() noexcept { head_ = tail_ = 0; }

 private:
  std::vector<std::uint64_t> buf_;
  std::size_t head_ = 0, tail_ = 0;
};

// One submitted tile, from submit until its outcome is delivered and no worker holds
// its input. The transitions are tabled in docs/design/client.md.
struct Record {
  // Where the tile is.
  enum class State : std::uint8_t {
    free = 0,
    pending,     // queued client-side (priorities and epochs apply here)
    dispatched,  // in a worker's ring or being processed; no outcome yet
    abandoned,   // outcome decided (canceled/deadline) but the worker may still read the input
    finished,    // outcome decided and the input released; the outcome waits for its turn
  };
  // Where its outcome is, once decided.
  enum class Delivery : std::uint8_t {
    none = 0,
    parked,      // ordered streams: in `parked`, waiting for every earlier sequence number
    delivered,   // in the client's ready queue
  };
  State state = State::free;
  Delivery delivery = Delivery::none;
  // Deaths of a worker that had taken this tile (popped it from its ring) and not
  // answered it. A tile with strikes is a suspect: dispatched alone to an idle worker,
  // so a further death is its own; at max_retries + 1 strikes it fails as poison.
  std::uint8_t strikes = 0;
  std::int32_t worker = -1;
  std::uint64_t ring_pos = 0;  // its index in the worker's request ring (taken iff < the ring's head)
  std::uint32_t stream = 0;
  std::uint32_t epoch = 0;
  std::uint64_t seq = 0;
  BlockView input{};
  TileMeta meta{};
  Clock::time_point submitted{}, deadline{}, abandoned_at{};
  TileResult parked{};      // ordered streams: outcome waiting for its turn
};

struct StreamState {
  bool open = false;
  StreamOptions opts{};
  std::uint32_t epoch = 0;
  std::uint64_t next_seq = 0;
  std::uint64_t next_deliver = 0;   // ordered streams
  std::uint64_t live = 0;           // records not free
  std::vector<Record> records;      // indexed by seq % max_in_flight
  SeqQueue pending;
  StreamStats stats{};
  std::vector<double> latency;      // ring of recent latencies (us)
  std::uint64_t latency_next = 0;
};

struct WorkerState {
  std::int32_t index = -1;
  std::uint32_t slot = kNoSlot;
  std::uint32_t channel = 0;
  std::uint32_t generation = 0;
  int pid = 0;
  bool alive = false;
  bool gave_up = false;
  bool needs_notify = false;
  bool external = false;        // started by the caller (add_external_worker): never signalled by us
  bool holds_suspect = false;   // it runs a suspect tile alone (nothing else is dispatched to it)
  std::uint64_t pushed = 0;     // descriptors pushed into its current request ring
  std::uint64_t in_flight = 0, completed = 0, busy_ns = 0;
  Clock::time_point busy_since{};
  std::uint32_t restarts = 0;
  std::string fault;  // set when it wrote something impossible; cleared by its recovery
  RingProducer requests;
  RingConsumer results;
};

// Who owns the client's workers: the embedded pool (pool.cpp) or a standalone broker
// (connect.cpp). Called on the client's thread only.
class WorkerControl {
 public:
  virtual ~WorkerControl() = default;
  // Worker `w` died and this client finished recovery steps 1-2 (drained what it
  // published, retried or failed what it held); the owner does the rest
  // (pool/arena_pool.hpp). `w.slot` becomes kNoSlot when the worker is gone for good.
  virtual void recovered(WorkerState& w) = 0;
  // Kills a worker (cancel escalation, Client::kill_worker); its death is then reported.
  virtual Result<void> kill(std::int32_t index) = 0;
  // Whether a dead worker may come back (then its pending tiles wait for it).
  virtual bool restarts(std::int32_t index) const = 0;
  virtual void shutdown() noexcept = 0;
};

// Rejects options no client can work with (max_in_flight 0: no tile could ever be
// submitted); the message names the field. Called by embedded() and connect().
Result<void> check_client_options(const ClientOptions& o);

}  // namespace detail

struct Client::Impl {
  struct Event {
    enum class Kind : std::uint8_t { ready, died, gave_up };
    Kind kind;
    std::int32_t worker;
    int pid = 0;
    std::string text;
    std::int64_t channel = -1;   // remote mode: the channel the broker opened for this worker
    std::uint32_t slot = kNoSlot; // remote mode: the worker's participant slot
  };

  Impl(Arena a, std::uint32_t slot, ClientOptions o);
  ~Impl();

  // Called from any thread (the supervisor's).
  void post_event(Event e);

  void handle_events();
  Result<std::int32_t> new_worker_slot(const std::string& name, std::int32_t index);
  Result<void> open_worker_channel(detail::WorkerState& w);
  void on_worker_ready(std::int32_t index, int pid);
  void on_worker_died(std::int32_t index, const std::string& reason);
  void on_worker_gave_up(std::int32_t index, const std::string& why);
  void fail_all_pending(const std::string& why);
  // Whether a submitted tile can still run: some worker is alive or may come back.
  // Kept in `usable` (read on every submit/alloc) and refreshed on every worker event.
  void update_usable();
  std::string unavailable_reason() const;
  void rebuild_dispatch_order();
  void release_input(detail::Record& r) noexcept;
  void mark_busy(detail::WorkerState& w) noexcept;
  void mark_idle(detail::WorkerState& w) noexcept;
  // Who may still read a finished tile's input: a worker (cancel, deadline: keep the
  // block until it answers or dies) or nobody (it answered or died; not dispatched).
  enum class Holder : std::uint8_t { none, worker };
  void finish(detail::StreamState& s, detail::Record& r, Outcome outcome, TileStatus status, std::string error,
              ResultBlock output, Holder input = Holder::worker);
  void delivered(detail::StreamState& s, detail::Record& r) noexcept;
  void settle_abandoned(detail::StreamState& s, detail::Record& r) noexcept;
  void flush_ordered(detail::StreamState& s);
  void pump();
  std::size_t drain_worker(detail::WorkerState& w);
  std::size_t drain_all();
  void on_answer(detail::WorkerState& w, const TileDesc& d);
  void peer_fault(detail::WorkerState& w, const std::string& seen);
  void drop_answer_block(detail::WorkerState& w, const TileDesc& d) noexcept;
  void check_timers();
  bool results_ready() noexcept;
  void step();
  void publish_epoch(std::uint32_t stream, std::uint32_t epoch) noexcept;
  std::uint64_t in_flight_unfinished() const noexcept;

  Arena arena;
  std::uint32_t slot;
  ClientOptions opts;
  Slab slab;
  Doorbell* bell;
  std::vector<detail::StreamState> streams;
  std::vector<std::uint32_t> stream_order;   // open streams, highest priority first
  std::vector<detail::WorkerState> workers;
  std::vector<TileResult> ready;             // outcomes waiting for poll(), FIFO from ready_head
  std::size_t ready_head = 0;
  std::vector<TileDesc> scratch;
  int max_retries = 1;
  std::chrono::milliseconds cancel_grace{2000};
  Clock::time_point next_timer_check{};
  // Set by the first tile given a deadline or abandoned to its worker; until then
  // check_timers() has nothing to look at and reads no clock on the loop's rounds.
  bool timers_armed = false;
  std::uint64_t stray_answers = 0;
  std::uint64_t reclaimed_blocks = 0;
  std::string last_pool_error;
  bool usable = false;

  // The workers' owner: set by start_pool (embedded) or connect (remote); none for
  // workers added with add_external_worker.
  std::unique_ptr<detail::WorkerControl> control;
  void bind_worker_channel(std::int32_t index, std::uint32_t channel, std::uint32_t worker_slot);

  // Client::wake (any thread) -> the client thread's waits. SYNC[client.wake]
  std::atomic<bool> wake_pending{false};
  bool last_poll_woken = false;
  bool take_wake() noexcept;

  std::mutex events_mu;                             // control path only
  std::deque<Event> events;
  std::atomic<bool> events_pending{false};
};

}  // namespace tessera
