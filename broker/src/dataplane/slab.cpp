// Slab allocator: one CAS per transition on a block's metadata word.
//
// Why not a free-list stack: a Treiber stack needs two steps (pop the index,
// then record the owner), and a process killed between them loses the block
// for good. Here the metadata word is the only state: alloc is CAS free->held(owner),
// free is CAS held(owner)->free(gen+1). A process-local cursor makes the scan O(1):
// it points past the last allocation and cycles through the class's first 16 MiB of
// blocks, so a block is written again only after the peer that read it has long since
// dropped its lines from its own cache. See docs/design/slab.md for the measurement.
#include <tessera/slab.hpp>

#include <algorithm>

namespace tessera {
namespace {
constexpr auto kFree = static_cast<std::uint16_t>(BlockState::free);
constexpr auto kHeld = static_cast<std::uint16_t>(BlockState::held);
}  // namespace

Slab::Slab(const Arena& arena, std::uint32_t owner) noexcept : arena_(&arena), owner_(owner) {
  // Spread the processes' starting points so they do not all CAS the same words.
  for (std::uint32_t c = 0; c < arena.n_classes(); ++c) {
    const SizeClass& sc = arena.size_class(c);
    const std::uint32_t n = sc.block_count;
    const std::uint64_t fit = sc.block_size == 0 ? n : kSlabRotationBytes / sc.block_size;
    window_[c] = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(fit, 1, std::max<std::uint32_t>(n, 1)));
    cursor_[c] = n == 0 ? 0 : static_cast<std::uint32_t>((std::uint64_t{owner} * 2654435761u) % window_[c]);
  }
}

bool Slab::try_alloc_in(std::uint32_t cls, BlockView& out) noexcept {
  SizeClass& sc = arena_->size_class(cls);
  const std::uint32_t n = sc.block_count;
  AtomicU64* metas = arena_->block_meta(cls);
  std::uint32_t i = cursor_[cls];
  for (std::uint32_t k = 0; k < n; ++k, i = (i + 1 == n ? 0 : i + 1)) {
    // relaxed: a hint; the CAS below revalidates.
    std::uint64_t w = metas[i].load(std::memory_order_relaxed);
    if (meta::state(w) != kFree) continue;
    const std::uint64_t held = meta::pack(meta::gen(w), static_cast<std::uint16_t>(owner_), kHeld);
    // SYNC[block.meta] acquire: the previous holder's release in free() happens-before our writes
    // to the payload, so its last reads/writes of the bytes cannot overlap ours.
    if (metas[i].compare_exchange_strong(w, held, std::memory_order_acquire, std::memory_order_relaxed)) {
      cursor_[cls] = i + 1 >= window_[cls] ? 0 : i + 1;  // past the window: start again at block 0
      sc.held_approx.fetch_add(1, std::memory_order_relaxed);  // relaxed: inspection counter
      out.handle = BlockHandle::make(meta::gen(w), cls, i);
      out.data = arena_->block_data(cls, i);
      out.capacity = sc.block_size;
      return true;
    }
  }
  return false;
}

AllocStatus Slab::try_alloc(std::uint64_t bytes, BlockView& out) noexcept {
  const std::uint32_t nc = arena_->n_classes();
  bool fits_somewhere = false;
  for (std::uint32_t c = 0; c < nc; ++c) {
    if (arena_->size_class(c).block_size < bytes) continue;
    fits_somewhere = true;
    if (try_alloc_in(c, out)) return AllocStatus::ok;
  }
  return fits_somewhere ? AllocStatus::no_space : AllocStatus::too_large;
}

AllocStatus Slab::try_alloc_leaving(std::uint64_t bytes, std::uint32_t reserve_percent, BlockView& out) noexcept {
  const std::uint32_t nc = arena_->n_classes();
  bool fits_somewhere = false;
  for (std::uint32_t c = 0; c < nc; ++c) {
    const SizeClass& sc = arena_->size_class(c);
    if (sc.block_size < bytes) continue;
    fits_somewhere = true;
    // relaxed: an approximate occupancy is enough for a soft quota.
    const std::uint64_t held = sc.held_approx.load(std::memory_order_relaxed);
    if ((held + 1) * 100 > std::uint64_t{sc.block_count} * (100 - reserve_percent)) continue;
    if (try_alloc_in(c, out)) return AllocStatus::ok;
  }
  return fits_somewhere ? AllocStatus::no_space : AllocStatus::too_large;
}

Errc Slab::check(BlockHandle h, std::uint64_t& word) const noexcept {
  if (h.null() || h.cls() >= arena_->n_classes()) return Errc::bad_handle;
  const SizeClass& sc = arena_->size_class(h.cls());
  if (h.index() >= sc.block_count) return Errc::bad_handle;
  // acquire: pairs with the release of whoever last changed the word (free/adopt/reclaim).
  word = arena_->block_meta(h.cls())[h.index()].load(std::memory_order_acquire);
  if (meta::gen(word) != h.generation() || meta::state(word) != kHeld) return Errc::stale_handle;
  return Errc::ok;
}

Errc Slab::free(BlockHandle h) noexcept {
  std::uint64_t w = 0;
  if (Errc e = check(h, w); e != Errc::ok) return e;
  if (meta::owner(w) != owner_) return Errc::not_owner;
  const std::uint64_t freed = meta::pack(meta::next_gen(meta::gen(w)), static_cast<std::uint16_t>(kNoSlot), kFree);
  // SYNC[block.meta] release: our payload accesses happen-before the next allocator's acquire.
  if (!arena_->block_meta(h.cls())[h.index()].compare_exchange_strong(w, freed, std::memory_order_release,
                                                                       std::memory_order_relaxed))
    return Errc::stale_handle;  // reclaimed or adopted under us
  arena_->size_class(h.cls()).held_approx.fetch_sub(1, std::memory_order_relaxed);  // relaxed: inspection counter
  return Errc::ok;
}

Errc Slab::adopt(BlockHandle h, std::uint32_t from) noexcept {
  std::uint64_t w = 0;
  if (Errc e = check(h, w); e != Errc::ok) return e;
  if (meta::owner(w) != from) return Errc::not_owner;
  const std::uint64_t mine = meta::pack(meta::gen(w), static_cast<std::uint16_t>(owner_), kHeld);
  // SYNC[block.meta] acq_rel: acquire the previous owner's payload writes; release ours.
  if (!arena_->block_meta(h.cls())[h.index()].compare_exchange_strong(w, mine, std::memory_order_acq_rel,
                                                                       std::memory_order_relaxed))
    return Errc::stale_handle;
  return Errc::ok;
}

Errc Slab::resolve(BlockHandle h, BlockView& out) const noexcept {
  std::uint64_t w = 0;
  if (Errc e = check(h, w); e != Errc::ok) return e;
  out.handle = h;
  out.data = arena_->block_data(h.cls(), h.index());
  out.capacity = arena_->size_class(h.cls()).block_size;
  return Errc::ok;
}

std::uint32_t Slab::owner_of(BlockHandle h) const noexcept {
  std::uint64_t w = 0;
  if (check(h, w) != Errc::ok) return kNoSlot;
  return meta::owner(w);
}

std::uint32_t Slab::reclaim(const Arena& arena, std::uint32_t dead_owner) noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t c = 0; c < arena.n_classes(); ++c) {
    SizeClass& sc = arena.size_class(c);
    AtomicU64* metas = arena.block_meta(c);
    for (std::uint32_t i = 0; i < sc.block_count; ++i) {
      std::uint64_t w = metas[i].load(std::memory_order_relaxed);  // relaxed: CAS revalidates
      while (meta::state(w) == kHeld && meta::owner(w) == dead_owner) {
        const std::uint64_t freed =
            meta::pack(meta::next_gen(meta::gen(w)), static_cast<std::uint16_t>(kNoSlot), kFree);
        // SYNC[block.meta] acq_rel: as free(), on behalf of the dead owner.
        if (metas[i].compare_exchange_weak(w, freed, std::memory_order_acq_rel, std::memory_order_relaxed)) {
          sc.held_approx.fetch_sub(1, std::memory_order_relaxed);  // relaxed: inspection counter
          ++n;
          break;
        }
      }
    }
  }
  return n;
}

std::uint32_t Slab::count_held(const Arena& arena, std::uint32_t owner) noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t c = 0; c < arena.n_classes(); ++c) {
    const AtomicU64* metas = arena.block_meta(c);
    for (std::uint32_t i = 0; i < arena.size_class(c).block_count; ++i) {
      const std::uint64_t w = metas[i].load(std::memory_order_relaxed);  // relaxed: a snapshot
      if (meta::state(w) == kHeld && (owner == kNoSlot || meta::owner(w) == owner)) ++n;
    }
  }
  return n;
}

ClassStats Slab::class_stats(const Arena& arena, std::uint32_t cls) noexcept {
  const SizeClass& sc = arena.size_class(cls);
  std::uint32_t held = 0;
  const AtomicU64* metas = arena.block_meta(cls);
  for (std::uint32_t i = 0; i < sc.block_count; ++i)
    if (meta::state(metas[i].load(std::memory_order_relaxed)) == kHeld) ++held;  // relaxed: a snapshot
  return {sc.block_size, sc.block_count, held};
}

}  // namespace tessera
