// Slab allocator over the arena's size classes. Lock-free and crash-safe by
// construction: a block's state lives in one 64-bit metadata word, and every
// transition (alloc, free, transfer, reclaim) is a single CAS on it, so a process
// killed at any instruction leaves each block either held by it (reclaimable) or free.
// See docs/design/slab.md.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include <tessera/arena.hpp>
#include <tessera/handle.hpp>

namespace tessera {

enum class AllocStatus : std::uint8_t { ok = 0, no_space, too_large };

// A resolved block: where its bytes are in this process's mapping.
struct BlockView {
  BlockHandle handle;
  std::byte* data = nullptr;
  std::uint64_t capacity = 0;   // block size (>= requested bytes)
  std::span<std::byte> bytes() const noexcept { return {data, capacity}; }
};

struct ClassStats {
  std::uint64_t block_size;
  std::uint32_t block_count;
  std::uint32_t held;
};

class Slab {
 public:
  // A process-local view. `owner` is this process's participant slot.
  Slab(const Arena& arena, std::uint32_t owner) noexcept;

  // Hot path: takes the smallest block of at least `bytes`, falling back to larger
  // classes. "No space" is a normal outcome. No syscalls, no locks, no allocation.
  [[nodiscard]] AllocStatus try_alloc(std::uint64_t bytes, BlockView& out) noexcept;
  // As try_alloc, but leaves every class at least `reserve_percent` % free for others
  // (clients keep room for the workers' outputs, so inputs cannot starve them).
  [[nodiscard]] AllocStatus try_alloc_leaving(std::uint64_t bytes, std::uint32_t reserve_percent, BlockView& out) noexcept;
  // Frees a block this participant holds. Errc::stale_handle / bad_handle / not_owner otherwise.
  [[nodiscard]] Errc free(BlockHandle h) noexcept;
  // Moves ownership of a held block from `from` to this participant (e.g. a client
  // adopting a worker's result block). Fails if the block moved on meanwhile.
  [[nodiscard]] Errc adopt(BlockHandle h, std::uint32_t from) noexcept;
  // Validates a handle from another process (range, generation, held) and maps it.
  [[nodiscard]] Errc resolve(BlockHandle h, BlockView& out) const noexcept;
  // Owner of a held block (kNoSlot if free/stale).
  [[nodiscard]] std::uint32_t owner_of(BlockHandle h) const noexcept;

  // Control path: frees every block held by `dead_owner`. Returns how many. Safe while
  // other participants allocate and free concurrently.
  static std::uint32_t reclaim(const Arena& arena, std::uint32_t dead_owner) noexcept;
  // Counts blocks held by `owner` (inspection, tests).
  static std::uint32_t count_held(const Arena& arena, std::uint32_t owner) noexcept;
  static ClassStats class_stats(const Arena& arena, std::uint32_t cls) noexcept;

  std::uint32_t owner() const noexcept { return owner_; }
  const Arena& arena() const noexcept { return *arena_; }

 private:
  [[nodiscard]] bool try_alloc_in(std::uint32_t cls, BlockView& out) noexcept;
  Errc check(BlockHandle h, std::uint64_t& word) const noexcept;

  const Arena* arena_;
  std::uint32_t owner_;
  std::array<std::uint32_t, kMaxClasses> cursor_{};   // process-local scan start per class
  std::array<std::uint32_t, kMaxClasses> window_{};   // the cursor cycles through blocks [0, window)
};

// Bytes of a class the allocation cursor cycles through before it starts again at the
// class's first block (docs/design/slab.md, "Which block comes next").
inline constexpr std::uint64_t kSlabRotationBytes = 16ull << 20;

}  // namespace tessera
