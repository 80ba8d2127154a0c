// Every structure that lives in the shared-memory arena, in one header, so the
// cross-process ABI can be reviewed in one place. Only fixed-width integers and
// always-lock-free atomics; offsets, never pointers. See docs/design/arena.md.
//
//  offset 0                                                       total_size
//  +--------------+--------------+-----------+----------+---------+--------------------+
//  | ArenaHeader  | Participant  | SizeClass | Doorbell | Ring    | BlockMeta arrays   |  ... payload
//  | (4 KiB)      | [kMaxPart.]  | [n_class] | [n_bell] | [n_ring]| (u64 per block)    |  blocks, page
//  |              |  64 B each   | 128 B each| 64 B each| hdr+slots|                   |  aligned
//  +--------------+--------------+-----------+----------+---------+--------------------+
//  every region starts on a 4 KiB boundary; payload blocks start on a page boundary.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <tessera/tile_generated.h>

namespace tessera {

inline constexpr std::size_t kCacheLine = 64;   // never hardware_destructive_interference_size (ABI-unstable)
inline constexpr std::size_t kPageSize = 4096;
inline constexpr std::uint64_t kArenaMagic = 0x3141524553534554ULL;  // "TESSERA1" little-endian
inline constexpr std::uint32_t kLayoutVersion = 1;
inline constexpr std::uint32_t kMaxParticipants = 64;
inline constexpr std::uint32_t kMaxClasses = 16;
inline constexpr std::uint32_t kMaxBlocksPerClass = 1u << 24;  // index field of a handle is 24 bits
inline constexpr std::uint32_t kMaxRings = 1024;
inline constexpr std::uint32_t kMaxDoorbells = 1024;
inline constexpr std::uint32_t kNoSlot = 0xffff;

using TileDesc = fb::TileDesc;
static_assert(sizeof(TileDesc) == 64, "descriptor slot is one cache line");
static_assert(alignof(TileDesc) <= kCacheLine);

using AtomicU32 = std::atomic<std::uint32_t>;
using AtomicU64 = std::atomic<std::uint64_t>;
static_assert(AtomicU32::is_always_lock_free && AtomicU64::is_always_lock_free,
              "shared-memory atomics must be address-free (lock-free)");
static_assert(sizeof(AtomicU32) == 4 && sizeof(AtomicU64) == 8);

// ---------------------------------------------------------------------------------
// ArenaHeader: the first page. `ready` is written last (release) by the creator;
// attach validates magic, version, sizes, uid and ready (acquire) before anything else.
//
//  0        8        12       16                24       28       32
//  | magic  | version| hdrsz  | total_size      | c_pid  | c_uid  | c_start (u64) ...
struct ArenaHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;         // sizeof(ArenaHeader)
  std::uint64_t total_size;          // bytes of the whole mapping
  std::uint32_t creator_pid;
  std::uint32_t creator_uid;
  std::uint64_t creator_start_time;  // /proc/<pid>/stat starttime (clock ticks): pid-reuse proof
  std::uint64_t arena_id;            // random; distinguishes arenas in handles held by SDKs
  std::uint32_t n_participants;      // == kMaxParticipants
  std::uint32_t n_classes;
  std::uint32_t n_doorbells;
  std::uint32_t n_rings;
  std::uint32_t ring_capacity;       // slots per ring, power of two
  std::uint32_t reserved0;
  std::uint64_t participants_offset;
  std::uint64_t classes_offset;
  std::uint64_t doorbells_offset;
  std::uint64_t rings_offset;
  std::uint64_t ring_stride;         // bytes per ring (header + slots)
  std::uint64_t meta_offset;         // first BlockMeta array
  std::uint64_t data_offset;         // first payload block
  std::uint64_t channels_offset;     // Channel[n_channels]
  std::uint32_t n_channels;          // == n_rings / 2
  std::uint32_t reserved1;
  std::uint8_t pad0[kCacheLine * 3 - 144];
  AtomicU32 ready;                   // SYNC[arena.ready]: 0 while building, kReadyValue when usable
  AtomicU32 shutting_down;           // 1 once the owner started tearing down (relaxed hint)
  std::uint8_t pad1[kCacheLine - 8];
};
inline constexpr std::uint32_t kReadyValue = 0x52454459;  // "YDER"
static_assert(offsetof(ArenaHeader, ready) == 3 * kCacheLine);
static_assert(sizeof(ArenaHeader) == 4 * kCacheLine);

// ---------------------------------------------------------------------------------
// Participant: a process using the arena. Its slot index is the owner id recorded
// in every block it holds, so a supervisor can reclaim everything a dead process held.
enum class ParticipantState : std::uint32_t { free = 0, claiming = 1, alive = 2, dead = 3 };
enum class Role : std::uint32_t { none = 0, broker = 1, client = 2, worker = 3, tool = 4 };

struct Participant {
  AtomicU32 state;             // SYNC[participant.state] release after pid/role are written
  std::uint32_t role;          // Role
  std::uint32_t pid;
  AtomicU32 channel_version;   // SYNC[participant.channels] bumped (release) when a channel to it opens/closes
  std::uint64_t start_time;    // /proc starttime of pid
  AtomicU64 heartbeat_ns;      // CLOCK_MONOTONIC of the last sign of life (relaxed: a hint)
  char name[32];
};
static_assert(sizeof(Participant) == kCacheLine);

// ---------------------------------------------------------------------------------
// SizeClass: one slab of equal blocks. Each block has a BlockMeta word that is the
// single source of truth for its state; allocation is one CAS on that word.
struct SizeClass {
  std::uint64_t block_size;    // bytes, multiple of kPageSize
  std::uint32_t block_count;
  std::uint32_t reserved;
  std::uint64_t meta_offset;   // BlockMeta[block_count]
  std::uint64_t data_offset;   // block i at data_offset + i * block_size
  std::uint8_t pad0[kCacheLine - 32];
  AtomicU32 held_approx;       // blocks held (relaxed counter, for inspection only)
  std::uint8_t pad1[kCacheLine - 4];
};
static_assert(sizeof(SizeClass) == 2 * kCacheLine);

// BlockMeta word (u64):  generation:32 | owner:16 | state:16
//  state free: owner == kNoSlot; generation is the one the next allocation hands out.
//  state held: owner = participant slot; a handle is valid iff its generation matches.
//  free() bumps the generation, so every handle to a freed block is detected as stale.
enum class BlockState : std::uint16_t { free = 0, held = 1 };

// ---------------------------------------------------------------------------------
// Doorbell: how a consumer sleeps. `seq` is the futex word; `waiters` counts sleepers
// so that producers skip the futex syscall when nobody sleeps.
struct Doorbell {
  AtomicU32 seq;       // SYNC[doorbell.seq] bumped (release) by notify before FUTEX_WAKE
  AtomicU32 waiters;   // SYNC[doorbell.waiters] RMW by sleepers and notifiers (acq_rel)
  std::uint8_t pad[kCacheLine - 8];
};
static_assert(sizeof(Doorbell) == kCacheLine);

// ---------------------------------------------------------------------------------
// Ring: single-producer single-consumer ring of TileDesc slots.
//
//  +0    line 0: capacity, mask, doorbells, endpoint slots, state   (set by the broker)
//  +64   line 1: tail  (written by the producer only)
//  +128  line 2: head  (written by the consumer only)
//  +192  line 3: pad (keeps slots off the index lines)
//  +256  slots[capacity] of 64 B
enum class RingState : std::uint32_t { unused = 0, open = 1, closed = 2 };

struct RingHeader {
  std::uint32_t capacity;          // power of two
  std::uint32_t mask;
  std::uint32_t consumer_doorbell; // notified after a push (index into doorbells)
  std::uint32_t producer_doorbell; // notified after a pop (for producers waiting on "full")
  AtomicU32 producer_slot;         // participant that may push (kNoSlot: none) (relaxed: set while idle)
  AtomicU32 consumer_slot;         // participant that may pop
  AtomicU32 state;                 // RingState; SYNC[ring.state] release by the broker
  AtomicU32 reset_count;           // incremented on every reset (inspection)
  std::uint8_t pad0[kCacheLine - 32];
  AtomicU64 tail;                  // SYNC[ring.tail] release by producer -> acquire by consumer
  std::uint8_t pad1[kCacheLine - 8];
  AtomicU64 head;                  // SYNC[ring.head] release by consumer -> acquire by producer
  std::uint8_t pad2[kCacheLine - 8];
  std::uint8_t pad3[kCacheLine];
};
static_assert(sizeof(RingHeader) == 4 * kCacheLine);
static_assert(offsetof(RingHeader, tail) == kCacheLine);
static_assert(offsetof(RingHeader, head) == 2 * kCacheLine);

// ---------------------------------------------------------------------------------
// Channel: a client <-> worker pair of rings. Channel c uses rings 2c (requests,
// client -> worker) and 2c+1 (results, worker -> client). The client writes the
// per-stream minimum epoch; the worker drops queued requests below it without running
// them (viewport supersession) and its handler can poll it (cooperative cancel).
inline constexpr std::uint32_t kMaxStreams = 16;   // per client; stream ids 0..15

enum class ChannelState : std::uint32_t { unused = 0, open = 1, closing = 2 };

struct Channel {
  AtomicU32 state;              // SYNC[channel.state] release by the broker after the fields below
  std::uint32_t client_slot;
  std::uint32_t worker_slot;
  std::uint32_t request_ring;
  std::uint32_t response_ring;
  std::uint32_t client_doorbell;
  std::uint32_t worker_doorbell;
  AtomicU32 generation;         // bumped on every open (relaxed: read after acquiring state)
  AtomicU32 worker_detached;    // SYNC[channel.detached] generation the worker let go of (release by the
                                // worker after it stopped using the rings -> acquire by the broker)
  std::uint8_t pad0[kCacheLine - 36];
  AtomicU32 min_epoch[kMaxStreams];  // SYNC[channel.epoch] release by the client -> acquire by the worker
};
static_assert(sizeof(Channel) == 2 * kCacheLine);

}  // namespace tessera
