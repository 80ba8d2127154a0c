// A worker process in an arena: spawned with the arena memfd and its participant
// slot, ready once the Appose init scripts and `tessera.ready` completed, and
// recovered by the one sequence below when it dies. The embedded client
// (Client::start_pool) and the standalone broker (tessera-broker --listen) both
// use this; nothing else spawns arena workers or reclaims what a dead one held.
//
// Recovery of a dead worker (docs/design/crash-recovery.md):
//   1. every client drains the results the worker published,
//   2. every client retries or fails the tiles the worker held,
//   3. its channels are closed and released,         (ArenaPool::recover)
//   4. the blocks it held return to the arena,        (ArenaPool::recover)
//   5. it is respawned, with backoff, off the caller's thread, and
//   6. each client's channel to it is reopened once it is ready.
// Steps 1-2 run in Client::Impl::on_worker_died (the same code for an embedded and
// a remote client); steps 3-5 here; step 6 is the owner's (one channel per client).
#pragma once

#include <tessera/arena.hpp>
#include <tessera/client.hpp>
#include <tessera/result.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace tessera::pool {

// What a worker process is given: the arena memfd at this descriptor number and its
// participant slot, both named in its environment.
inline constexpr int kArenaFd = 3;
inline constexpr const char* kArenaFdEnv = "TESSERA_ARENA_FD";
inline constexpr const char* kSlotEnv = "TESSERA_SLOT";
// The init script that completes once the worker attached the arena and runs its tile loop.
inline constexpr const char* kReadyScript = "tessera.ready";

struct Event {
  enum class Kind : std::uint8_t { ready, died, gave_up };
  Kind kind = Kind::ready;
  int index = -1;
  int pid = 0;
  std::string text;   // died: how it exited (and its last stderr lines); gave_up: why
};
// Called on the pool's threads; must not block.
using EventHandler = std::function<void(Event)>;

class ArenaPool {
 public:
  static Result<std::unique_ptr<ArenaPool>> create(Arena& arena, EventHandler on_event);
  ~ArenaPool();  // shutdown()
  ArenaPool(const ArenaPool&) = delete;
  ArenaPool& operator=(const ArenaPool&) = delete;

  // Starts worker `index` (the owner's numbering) in participant `slot` and returns
  // its pid once it is ready; `spec.restart` decides whether recover() respawns it.
  Result<int> start(int index, std::uint32_t slot, const PoolSpec& spec);
  // Recovery steps 3-5 for worker `index`, once every client finished steps 1-2:
  // closes and releases `channels`, reclaims the blocks of `slot`, and respawns the
  // worker in the same slot (reported as a ready or gave_up event), or, when it does
  // not restart, marks the slot dead and releases it. Returns the blocks reclaimed.
  std::uint64_t recover(int index, std::uint32_t slot, std::span<const std::uint32_t> channels);
  bool restarts(int index) const;
  Result<void> kill(int index);
  void shutdown();

  class Impl;

 private:
  explicit ArenaPool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Steps 3-4 alone, for a worker no pool supervises (Client::add_external_worker):
// with `keep_slot` false the slot is also marked dead and released.
std::uint64_t reclaim_dead_worker(Arena& arena, std::uint32_t slot, std::span<const std::uint32_t> channels,
                                  bool keep_slot);

}  // namespace tessera::pool
