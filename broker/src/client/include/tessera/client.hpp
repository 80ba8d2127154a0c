// Tessera client API (host side): streams of tiles through an embedded broker to
// a pool of worker processes, with exactly one outcome per tile.
//
//   auto c = tessera::Client::embedded().value();
//   c->start_pool({.argv = {"tessera-example-worker"}, .count = 2}).value();
//   auto s = c->open_stream({.ordering = tessera::Ordering::submission}).value();
//   tessera::InputBlock in;  c->alloc(bytes, in, 1s);  fill(in.bytes());
//   c->submit(s, in, meta);  ...  c->poll(results, 64, 10ms);
//
// Threading: a Client is used from one thread (the data path has no locks); the
// worker supervisor runs on its own thread and hands events over through a queue.
// See docs/guarantees.md for what is promised and how each promise is tested.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <tessera/arena.hpp>
#include <tessera/doorbell.hpp>
#include <tessera/result.hpp>
#include <tessera/slab.hpp>
#include <tessera/tensor.hpp>

namespace tessera {

using TileStatus = fb::TileStatus;

enum class Ordering : std::uint8_t { completion = 0, submission = 1 };
// block: wait up to the call's timeout for room; fail_fast: never wait. `timeout` is
// the same as `block` (both honour the timeout argument), kept for existing callers.
enum class SubmitMode : std::uint8_t { block = 0, fail_fast = 1, timeout = 2 };
enum class Outcome : std::uint8_t { completed = 0, failed = 1, canceled = 2 };
const char* outcome_name(Outcome o) noexcept;

struct ClientOptions {
  ArenaConfig arena{};
  WaitPolicy wait{};
  std::uint32_t max_in_flight = 4096;   // tiles submitted and not yet delivered, all streams
  std::uint32_t worker_window = 64;     // tiles queued at one worker at once (the rest wait
                                        // client-side, where priorities and epochs apply)
  std::uint32_t output_reserve_percent = 25;  // input allocations leave this share of each size
                                              // class to the workers' outputs
};

struct PoolSpec {
  std::vector<std::string> argv;                 // worker command line
  int count = 1;
  std::map<std::string, std::string> env;        // explicit additions (the rest is scrubbed)
  std::vector<std::string> init_scripts;         // Appose init steps, in order (they append)
  // Re-dispatches of a tile whose worker died while running it: at max_retries + 1 such
  // deaths the tile fails as poison ("worker died on this tile N times"). Tiles the dead
  // worker had not taken yet are re-queued without using a retry.
  int max_retries = 1;
  bool restart = true;                           // respawn dead workers (with backoff)
  std::chrono::milliseconds ready_timeout{30'000};
  std::chrono::milliseconds cancel_grace{2'000};
  // A worker that holds tiles and shows no progress (no tile taken or answered, no
  // heartbeat) for this long is killed; its tiles are retried or fail. 0: never.
  std::chrono::milliseconds stall_timeout{60'000};
  // Accelerators, one worker each (overrides count): worker i gets CUDA_VISIBLE_DEVICES=devices[i],
  // so each model owns one device and one ring. Empty: `count` workers, environment untouched.
  std::vector<std::string> devices;
};

struct StreamOptions {
  int priority = 0;                              // higher first (visible tiles before prefetch)
  Ordering ordering = Ordering::completion;
  std::uint32_t max_in_flight = 256;             // per-stream bound (backpressure)
  std::chrono::nanoseconds deadline{0};          // per-tile deadline from submit (0 = none)
};

struct TileMeta {
  DType dtype = DType::UInt8;
  Shape shape{};
  std::uint8_t level = 0;
  std::int32_t x = 0, y = 0;
  std::uint32_t op = 0;                          // handler selector, opaque to Tessera
  std::uint64_t tag = 0;                         // returned with the result
  std::chrono::nanoseconds deadline{0};          // overrides the stream's (0 = stream default)
};

class Client;

// An arena block the client fills in place before submit. Freed if never submitted.
class InputBlock {
 public:
  InputBlock() = default;
  InputBlock(InputBlock&& o) noexcept { *this = std::move(o); }
  InputBlock& operator=(InputBlock&& o) noexcept;
  InputBlock(const InputBlock&) = delete;
  InputBlock& operator=(const InputBlock&) = delete;
  ~InputBlock();
  bool valid() const noexcept { return slab_ != nullptr; }
  std::span<std::byte> bytes() const noexcept { return block_.bytes(); }
  BlockHandle handle() const noexcept { return block_.handle; }
  TensorView view(DType dtype, const Shape& shape) const noexcept {
    return TensorView(block_.data, block_.capacity, dtype, shape);
  }

 private:
  friend class Client;
  Slab* slab_ = nullptr;
  BlockView block_{};
};

// A worker's output, adopted by the client. Freed on destruction (or release()).
class ResultBlock {
 public:
  ResultBlock() = default;
  ResultBlock(ResultBlock&& o) noexcept { *this = std::move(o); }
  ResultBlock& operator=(ResultBlock&& o) noexcept;
  ResultBlock(const ResultBlock&) = delete;
  ResultBlock& operator=(const ResultBlock&) = delete;
  ~ResultBlock() { release(); }
  bool valid() const noexcept { return slab_ != nullptr; }
  const TensorView& view() const noexcept { return view_; }
  void release() noexcept;

 private:
  friend class Client;
  Slab* slab_ = nullptr;
  BlockHandle handle_{};
  TensorView view_{};
};

struct TileResult {
  std::uint32_t stream = 0;
  std::uint64_t seq = 0;
  Outcome outcome = Outcome::failed;
  TileStatus status = TileStatus::Ok;
  std::string error;                 // why, for failed/canceled (worker text, exit code/signal, ...)
  ResultBlock output;                // completed only
  TileMeta meta{};
  std::int32_t worker = -1;          // worker index that answered (-1: none)
  std::uint32_t epoch = 0;
  double latency_us = 0;             // submit -> delivery
};

struct StreamStats {
  std::uint64_t submitted = 0, queued = 0, running = 0, completed = 0, failed = 0, canceled = 0, retried = 0;
  double p50_us = 0, p99_us = 0;     // over the last 4096 delivered tiles
};

struct WorkerInfo {
  std::int32_t index = -1;
  std::uint32_t slot = kNoSlot;
  int pid = 0;
  bool alive = false;
  std::uint64_t in_flight = 0, completed = 0, busy_ns = 0;
  std::uint32_t restarts = 0;
};

class Client {
 public:
  // Starts an embedded broker: a fresh arena and (after start_pool) a supervised pool.
  static Result<std::unique_ptr<Client>> embedded(ClientOptions opts = {});
  // Connects to a running `tessera-broker --listen PATH`: receives its arena (memfd over
  // SCM_RIGHTS) and a channel to each of its workers. `opts.arena` is ignored.
  static Result<std::unique_ptr<Client>> connect(const std::string& socket_path, ClientOptions opts = {},
                                                 std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // ---- worker pool (control path) ----
  // Spawns `count` workers (TESSERA_ARENA_FD/TESSERA_SLOT in their environment) and
  // returns once every one has reported ready, or fails with the worker's own error.
  Result<void> start_pool(const PoolSpec& spec);
  // Low-level: registers a worker slot and its channel for a process the caller
  // starts itself (tests, custom launchers). The caller reports pid and death.
  struct ExternalWorker { std::int32_t index; std::uint32_t slot; int arena_fd; };
  Result<ExternalWorker> add_external_worker(const std::string& name);
  void set_worker_pid(std::int32_t index, int pid);
  // Tells the client a worker is gone: its tiles are retried or failed, its blocks reclaimed.
  void worker_died(std::int32_t index, const std::string& reason);
  std::vector<WorkerInfo> workers() const;
  // Sends SIGKILL to a worker (tests, chaos).
  Result<void> kill_worker(std::int32_t index);

  // ---- streams ----
  Result<std::uint32_t> open_stream(const StreamOptions& opts = {});
  // Cancels everything queued or running in the stream and closes it.
  Result<void> close_stream(std::uint32_t stream);

  // ---- data path (hot: no allocation or syscalls in steady state) ----
  [[nodiscard]] AllocStatus try_alloc(std::uint64_t bytes, InputBlock& out) noexcept;
  // Waits (delivering nothing, but reclaiming) until a block is free or `timeout` passes.
  Result<void> alloc(std::uint64_t bytes, InputBlock& out, std::chrono::nanoseconds timeout);
  // Submits a filled block. Returns the tile's sequence number in its stream.
  Result<std::uint64_t> submit(std::uint32_t stream, InputBlock& block, const TileMeta& meta,
                               SubmitMode mode = SubmitMode::block,
                               std::chrono::nanoseconds timeout = std::chrono::seconds(30));
  // Submits blocks[i] with metas[i] in order and wakes each worker once for the whole
  // batch. Returns how many were accepted (those blocks are consumed); on a partial
  // batch, blocks from the returned index on are still the caller's.
  Result<std::size_t> submit_batch(std::uint32_t stream, std::span<InputBlock> blocks, std::span<const TileMeta> metas,
                                   SubmitMode mode = SubmitMode::block,
                                   std::chrono::nanoseconds timeout = std::chrono::seconds(30));
  // Delivers up to `max` outcomes (appended to `out`), waiting up to `timeout` for the first.
  std::size_t poll(std::vector<TileResult>& out, std::size_t max, std::chrono::nanoseconds timeout);
  // Tiles submitted and not yet delivered.
  std::uint64_t in_flight() const noexcept { return in_flight_; }
  // Thread-safe (callable from any thread while the client exists): makes the blocking
  // poll/alloc/submit on the client's thread return soon; if none is waiting, the next one
  // that would wait returns at once. poll() returns what it has (0 possible, woken() is then
  // true); alloc() and submit() fail with Errc::canceled. Calls that return without waiting
  // leave the wake pending.
  void wake() noexcept;
  // Whether the last poll() returned early because of wake().
  bool woken() const noexcept;

  // ---- cancellation ----
  Result<void> cancel(std::uint32_t stream, std::uint64_t seq);
  Result<void> cancel_stream(std::uint32_t stream);
  // Starts a new viewport epoch: queued tiles of older epochs are canceled at once,
  // running ones are asked to stop, and a late result of an old epoch is delivered as
  // canceled, never as current. Returns the new epoch.
  Result<std::uint32_t> advance_epoch(std::uint32_t stream);

  StreamStats stats(std::uint32_t stream) const;
  const Arena& arena() const noexcept;

  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  Result<std::uint64_t> submit_one(std::uint32_t stream, InputBlock& block, const TileMeta& meta, SubmitMode mode,
                                   std::chrono::nanoseconds timeout);
  std::unique_ptr<Impl> impl_;
  std::uint64_t in_flight_ = 0;
  friend struct Impl;
};

}  // namespace tessera
