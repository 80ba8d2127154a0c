// The shared-memory arena: one memfd mapping that holds the header, the
// participant table, the slab allocator's metadata and payload blocks, doorbells
// and rings. The kernel frees it when the last descriptor and mapping are gone,
// so no process crash can leak it (docs/design/arena.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <tessera/layout.hpp>
#include <tessera/result.hpp>

namespace tessera {

struct SizeClassConfig {
  std::uint64_t block_size = 0;   // rounded up to a whole page
  std::uint32_t block_count = 0;
};

struct ArenaConfig {
  std::vector<SizeClassConfig> classes = {
      {64 * 1024, 64}, {256 * 1024, 64}, {1024 * 1024, 32}, {4 * 1024 * 1024, 16}};
  std::uint32_t n_rings = 64;
  std::uint32_t ring_capacity = 1024;   // power of two
  std::uint32_t n_doorbells = 64;       // doorbell i belongs to participant slot i (>= 64)
  bool prefault = true;                 // touch every page at creation (no first-touch cost per tile)
  std::string debug_name = "tessera-arena";  // memfd name shown in /proc/<pid>/fd (not a namespace)
};

// Sizes and offsets derived from a config (pure function; also used to validate
// a header received from another process).
struct ArenaGeometry {
  std::uint64_t participants_offset, classes_offset, doorbells_offset, rings_offset, ring_stride,
      channels_offset, meta_offset, data_offset, total_size;
  std::vector<std::uint64_t> class_meta_offset, class_data_offset;
};
Result<ArenaGeometry> compute_geometry(const ArenaConfig& cfg);

class Arena {
 public:
  // Creates a fresh arena in an anonymous, sealed memfd (mode 0600, close-on-exec).
  static Result<Arena> create(const ArenaConfig& cfg);
  // Maps an arena from a descriptor (inherited at spawn or received over SCM_RIGHTS).
  // Validates owner uid, mode, size and the whole header; never trusts it blindly.
  // The Arena takes ownership of `fd` on success and closes it on failure only if `close_on_error`.
  static Result<Arena> attach_fd(int fd, bool close_on_error = true);
  // Opens /proc/<pid>/fd/<fd> read-write and attaches (used by `tessera inspect`).
  static Result<Arena> attach_proc(int pid, int fd);
  // Validates a header image of `len` bytes (what attach does after mmap). Exposed for fuzzing.
  static Result<void> validate(const void* base, std::size_t len) noexcept;

  Arena() = default;
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  bool valid() const noexcept { return base_ != nullptr; }
  int fd() const noexcept { return fd_; }
  std::byte* base() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }

  ArenaHeader& header() const noexcept { return *reinterpret_cast<ArenaHeader*>(base_); }
  Participant& participant(std::uint32_t slot) const noexcept {
    return at<Participant>(header().participants_offset)[slot];
  }
  SizeClass& size_class(std::uint32_t c) const noexcept { return at<SizeClass>(header().classes_offset)[c]; }
  AtomicU64* block_meta(std::uint32_t c) const noexcept { return at<AtomicU64>(size_class(c).meta_offset); }
  std::byte* block_data(std::uint32_t c, std::uint32_t i) const noexcept {
    const SizeClass& sc = size_class(c);
    return base_ + sc.data_offset + std::uint64_t{i} * sc.block_size;
  }
  Doorbell& doorbell(std::uint32_t i) const noexcept { return at<Doorbell>(header().doorbells_offset)[i]; }
  RingHeader& ring(std::uint32_t i) const noexcept {
    return *reinterpret_cast<RingHeader*>(base_ + header().rings_offset + std::uint64_t{i} * header().ring_stride);
  }
  TileDesc* ring_slots(std::uint32_t i) const noexcept {
    return reinterpret_cast<TileDesc*>(reinterpret_cast<std::byte*>(&ring(i)) + sizeof(RingHeader));
  }
  Channel& channel(std::uint32_t i) const noexcept { return at<Channel>(header().channels_offset)[i]; }
  std::uint32_t n_channels() const noexcept { return header().n_channels; }
  std::uint32_t n_classes() const noexcept { return header().n_classes; }
  std::uint32_t n_rings() const noexcept { return header().n_rings; }
  std::uint32_t n_doorbells() const noexcept { return header().n_doorbells; }

  // ---- participants (control path) ----
  // Claims a free participant slot for `pid` (CAS free -> claiming -> alive).
  Result<std::uint32_t> register_participant(Role role, int pid, const std::string& name);
  // Marks a slot dead (its blocks can then be reclaimed) and, after reclaim, free.
  void mark_dead(std::uint32_t slot) noexcept;
  // Records the process behind a slot registered before it was spawned (pid 0).
  void set_participant_pid(std::uint32_t slot, int pid) noexcept;
  void release_participant(std::uint32_t slot) noexcept;
  // True while the process recorded in `slot` still runs (pid and start time match).
  bool participant_alive(std::uint32_t slot) const noexcept;
  // True while the creator recorded in the header still runs.
  bool creator_alive() const noexcept;

  // ---- rings (control path, broker only) ----
  // Resets a ring to empty and (re)binds its endpoints. Both endpoints must be idle or dead.
  void reset_ring(std::uint32_t ring, std::uint32_t producer_slot, std::uint32_t consumer_slot,
                  std::uint32_t consumer_doorbell, std::uint32_t producer_doorbell) noexcept;
  void close_ring(std::uint32_t ring) noexcept;

  // ---- channels (control path, broker only) ----
  // Opens a free channel between a client and a worker: resets its two rings, binds
  // endpoints and doorbells, clears the stream epochs, and bumps both participants'
  // channel_version so their data-plane loops pick it up.
  Result<std::uint32_t> open_channel(std::uint32_t client_slot, std::uint32_t worker_slot,
                                     std::uint32_t client_doorbell, std::uint32_t worker_doorbell);
  // Closes both rings (endpoints see `closed`); the entry stays `closing` until
  // release_channel, so it is not reused while its rings are being drained.
  void close_channel(std::uint32_t ch) noexcept;
  void release_channel(std::uint32_t ch) noexcept;
  // True once the worker acknowledged that it no longer uses the channel's current
  // generation (it never pushes to it again).
  bool worker_detached(std::uint32_t ch) const noexcept;

 private:
  template <class T>
  T* at(std::uint64_t off) const noexcept {
    return reinterpret_cast<T*>(base_ + off);
  }
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
};

// /proc/<pid>/stat start time in clock ticks, 0 if the process does not exist.
std::uint64_t process_start_time(int pid) noexcept;

}  // namespace tessera
