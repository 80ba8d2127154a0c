// Arena creation, attach and validation. Control path: returns Result, never throws.
#include <tessera/arena.hpp>
#include <tessera/doorbell.hpp>
#include <tessera/handle.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

namespace tessera {
namespace {

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }
constexpr bool is_pow2(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::uint64_t random_u64() noexcept {
  std::uint64_t v = 0;
  if (getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) v = static_cast<std::uint64_t>(getpid()) << 32 ^ 0x9e3779b97f4a7c15ULL;
  return v;
}

// Rebuilds the config a header describes (counts only), to recompute the geometry.
Result<ArenaConfig> config_from_header(const ArenaHeader& h, const SizeClass* classes, std::size_t len) {
  ArenaConfig cfg;
  cfg.classes.clear();
  if (h.n_classes == 0 || h.n_classes > kMaxClasses) return fail(Errc::bad_size, "arena header: bad size-class count");
  if (h.classes_offset > len || len - h.classes_offset < sizeof(SizeClass) * h.n_classes)
    return fail(Errc::bad_size, "arena header: size-class table outside the mapping");
  for (std::uint32_t c = 0; c < h.n_classes; ++c) cfg.classes.push_back({classes[c].block_size, classes[c].block_count});
  cfg.n_rings = h.n_rings;
  cfg.ring_capacity = h.ring_capacity;
  cfg.n_doorbells = h.n_doorbells;
  return cfg;
}

}  // namespace

Result<ArenaGeometry> compute_geometry(const ArenaConfig& cfg) {
  if (cfg.classes.empty() || cfg.classes.size() > kMaxClasses)
    return fail(Errc::invalid_argument, "arena config: 1 to 16 size classes required");
  if (cfg.n_rings > kMaxRings) return fail(Errc::invalid_argument, "arena config: too many rings");
  if (cfg.n_doorbells < kMaxParticipants || cfg.n_doorbells > kMaxDoorbells)
    return fail(Errc::invalid_argument, "arena config: 64 to 1024 doorbells required (one per participant slot)");
  if (!is_pow2(cfg.ring_capacity) || cfg.ring_capacity < 2 || cfg.ring_capacity > (1u << 20))
    return fail(Errc::invalid_argument, "arena config: ring capacity must be a power of two in [2, 2^20]");
  ArenaGeometry g{};
  std::uint64_t off = kPageSize;  // header page
  g.participants_offset = off;
  off = align_up(off + sizeof(Participant) * kMaxParticipants, kPageSize);
  g.classes_offset = off;
  off = align_up(off + sizeof(SizeClass) * cfg.classes.size(), kPageSize);
  g.doorbells_offset = off;
  off = align_up(off + sizeof(Doorbell) * cfg.n_doorbells, kPageSize);
  g.rings_offset = off;
  g.ring_stride = sizeof(RingHeader) + sizeof(TileDesc) * std::uint64_t{cfg.ring_capacity};
  off = align_up(off + g.ring_stride * cfg.n_rings, kPageSize);
  g.channels_offset = off;
  off = align_up(off + sizeof(Channel) * (cfg.n_rings / 2), kPageSize);
  g.meta_offset = off;
  std::uint64_t prev_size = 0;
  for (const auto& c : cfg.classes) {
    if (c.block_size == 0 || c.block_count == 0 || c.block_count > kMaxBlocksPerClass)
      return fail(Errc::invalid_argument, "arena config: every size class needs a size and 1..2^24 blocks");
    const std::uint64_t bs = align_up(c.block_size, kPageSize);
    if (bs <= prev_size) return fail(Errc::invalid_argument, "arena config: size classes must be strictly increasing");
    if (bs > (1ULL << 36)) return fail(Errc::invalid_argument, "arena config: block size too large");
    prev_size = bs;
    g.class_meta_offset.push_back(off);
    off += sizeof(AtomicU64) * c.block_count;
  }
  off = align_up(off, kPageSize);
  g.data_offset = off;
  for (const auto& c : cfg.classes) {
    g.class_data_offset.push_back(off);
    const std::uint64_t bytes = align_up(c.block_size, kPageSize) * c.block_count;
    if (bytes > (1ULL << 40) || off + bytes < off) return fail(Errc::invalid_argument, "arena config: arena too large");
    off += bytes;
  }
  g.total_size = off;
  return g;
}

Result<Arena> Arena::create(const ArenaConfig& cfg) {
  auto geo = compute_geometry(cfg);
  if (!geo) return fail(std::move(geo).error());
  const ArenaGeometry& g = *geo;

  int fd = memfd_create(cfg.debug_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return fail(Error::sys("memfd_create"));
  if (fchmod(fd, 0600) != 0 || ftruncate(fd, static_cast<off_t>(g.total_size)) != 0) {
    auto e = Error::sys("arena: size the memfd");
    close(fd);
    return fail(std::move(e));
  }
  // No participant may grow or shrink the arena under the others (a shrink would SIGBUS them).
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    auto e = Error::sys("arena: seal the memfd");
    close(fd);
    return fail(std::move(e));
  }
  const int flags = MAP_SHARED | (cfg.prefault ? MAP_POPULATE : 0);
  void* p = mmap(nullptr, g.total_size, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (p == MAP_FAILED) {
    auto e = Error::sys("arena: mmap");
    close(fd);
    return fail(std::move(e));
  }
  Arena a;
  a.base_ = static_cast<std::byte*>(p);
  a.size_ = g.total_size;
  a.fd_ = fd;

  // The memfd is zero-filled, so every atomic starts at 0; construct them in place anyway.
  auto* h = new (a.base_) ArenaHeader{};
  h->magic = kArenaMagic;
  h->layout_version = kLayoutVersion;
  h->header_size = sizeof(ArenaHeader);
  h->total_size = g.total_size;
  h->creator_pid = static_cast<std::uint32_t>(getpid());
  h->creator_uid = static_cast<std::uint32_t>(geteuid());
  h->creator_start_time = process_start_time(getpid());
  h->arena_id = random_u64();
  h->n_participants = kMaxParticipants;
  h->n_classes = static_cast<std::uint32_t>(cfg.classes.size());
  h->n_doorbells = cfg.n_doorbells;
  h->n_rings = cfg.n_rings;
  h->ring_capacity = cfg.ring_capacity;
  h->participants_offset = g.participants_offset;
  h->classes_offset = g.classes_offset;
  h->doorbells_offset = g.doorbells_offset;
  h->rings_offset = g.rings_offset;
  h->ring_stride = g.ring_stride;
  h->meta_offset = g.meta_offset;
  h->data_offset = g.data_offset;
  h->channels_offset = g.channels_offset;
  h->n_channels = cfg.n_rings / 2;

  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) new (&a.participant(i)) Participant{};
  for (std::uint32_t c = 0; c < h->n_classes; ++c) {
    auto* sc = new (&a.size_class(c)) SizeClass{};
    sc->block_size = align_up(cfg.classes[c].block_size, kPageSize);
    sc->block_count = cfg.classes[c].block_count;
    sc->meta_offset = g.class_meta_offset[c];
    sc->data_offset = g.class_data_offset[c];
    AtomicU64* m = a.block_meta(c);
    for (std::uint32_t i = 0; i < sc->block_count; ++i)
      new (&m[i]) AtomicU64(meta::pack(1, static_cast<std::uint16_t>(kNoSlot), static_cast<std::uint16_t>(BlockState::free)));
  }
  for (std::uint32_t i = 0; i < cfg.n_doorbells; ++i) new (&a.doorbell(i)) Doorbell{};
  for (std::uint32_t i = 0; i < h->n_channels; ++i) new (&a.channel(i)) Channel{};
  for (std::uint32_t r = 0; r < cfg.n_rings; ++r) {
    auto* rh = new (&a.ring(r)) RingHeader{};
    rh->capacity = cfg.ring_capacity;
    rh->mask = cfg.ring_capacity - 1;
    rh->producer_slot.store(kNoSlot, std::memory_order_relaxed);  // relaxed: not yet published
    rh->consumer_slot.store(kNoSlot, std::memory_order_relaxed);
  }
  // SYNC[arena.ready] release: publishes the whole layout -> acquired in validate().
  h->ready.store(kReadyValue, std::memory_order_release);
  return a;
}

Result<void> Arena::validate(const void* base, std::size_t len) noexcept {
  if (base == nullptr || len < kPageSize) return fail(Errc::bad_size, "arena: mapping smaller than a header page");
  const auto& h = *static_cast<const ArenaHeader*>(base);
  if (h.magic != kArenaMagic) return fail(Errc::bad_magic, "arena: bad magic (not a Tessera arena)");
  if (h.layout_version != kLayoutVersion)
    return fail(Errc::bad_version, "arena: layout version " + std::to_string(h.layout_version) + ", expected " +
                                       std::to_string(kLayoutVersion));
  // SYNC[arena.ready] acquire: pairs with the creator's release in create().
  if (h.ready.load(std::memory_order_acquire) != kReadyValue) return fail(Errc::not_ready, "arena: creator has not finished initialising");
  if (h.header_size != sizeof(ArenaHeader)) return fail(Errc::bad_size, "arena: header size mismatch");
  if (h.total_size != len) return fail(Errc::bad_size, "arena: header size " + std::to_string(h.total_size) +
                                                          " != mapping size " + std::to_string(len));
  if (h.creator_uid != geteuid()) return fail(Errc::permission, "arena: created by another user");
  if (h.n_participants != kMaxParticipants) return fail(Errc::bad_size, "arena: participant table size mismatch");
  // The class table is read before the geometry check: its offset must be in range and
  // page aligned (as compute_geometry places it) so the reads below are in bounds and aligned.
  if (h.classes_offset >= len || h.classes_offset % kPageSize != 0)
    return fail(Errc::bad_size, "arena: size-class table offset is outside the mapping or misaligned");
  const auto* classes = reinterpret_cast<const SizeClass*>(static_cast<const std::byte*>(base) + h.classes_offset);
  auto cfg = config_from_header(h, classes, len);
  if (!cfg) return fail(std::move(cfg).error());
  auto geo = compute_geometry(*cfg);
  if (!geo) return fail(Errc::bad_size, "arena: header describes an impossible layout: " + geo.error().message);
  const ArenaGeometry& g = *geo;
  if (g.total_size != h.total_size || g.participants_offset != h.participants_offset ||
      g.classes_offset != h.classes_offset || g.doorbells_offset != h.doorbells_offset ||
      g.rings_offset != h.rings_offset || g.ring_stride != h.ring_stride || g.meta_offset != h.meta_offset ||
      g.data_offset != h.data_offset || g.channels_offset != h.channels_offset || h.n_channels != h.n_rings / 2)
    return fail(Errc::bad_size, "arena: header offsets disagree with its sizes");
  for (std::uint32_t c = 0; c < h.n_classes; ++c) {
    if (classes[c].meta_offset != g.class_meta_offset[c] || classes[c].data_offset != g.class_data_offset[c] ||
        classes[c].block_size % kPageSize != 0)
      return fail(Errc::bad_size, "arena: size class " + std::to_string(c) + " is inconsistent");
  }
  return {};
}

Result<Arena> Arena::attach_fd(int fd, bool close_on_error) {
  auto bail = [&](Error e) -> Result<Arena> {
    if (close_on_error && fd >= 0) close(fd);
    return fail(std::move(e));
  };
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) return bail(Error::sys("arena: fstat"));
  if (!S_ISREG(st.st_mode)) return bail(Error{Errc::invalid_argument, "arena: descriptor is not a memory file"});
  if (st.st_uid != geteuid()) return bail(Error{Errc::permission, "arena: owned by uid " + std::to_string(st.st_uid)});
  if ((st.st_mode & 077) != 0) return bail(Error{Errc::permission, "arena: accessible to other users (mode must be 0600)"});
  if (static_cast<std::uint64_t>(st.st_size) < kPageSize) return bail(Error{Errc::bad_size, "arena: smaller than a header page"});
  // Only a sealed memfd is accepted: a file that a peer could shrink would SIGBUS every mapping.
  const int seals = fcntl(fd, F_GET_SEALS);
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_GROW;
  if (seals < 0 || (seals & kNeeded) != kNeeded)
    return bail(Error{Errc::invalid_argument, "arena: descriptor is not a sealed memfd (shrink/grow seals missing)"});
  const auto len = static_cast<std::size_t>(st.st_size);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return bail(Error::sys("arena: mmap"));
  if (auto v = validate(p, len); !v) {
    munmap(p, len);
    return bail(std::move(v).error());
  }
  Arena a;
  a.base_ = static_cast<std::byte*>(p);
  a.size_ = len;
  a.fd_ = fd;
  return a;
}

Result<Arena> Arena::attach_proc(int pid, int fd) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  int f = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f < 0) return fail(Error::sys("arena: open " + path));
  return attach_fd(f, true);
}

Arena::Arena(Arena&& o) noexcept : base_(o.base_), size_(o.size_), fd_(o.fd_) {
  o.base_ = nullptr;
  o.size_ = 0;
  o.fd_ = -1;
}

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    this->~Arena();
    new (this) Arena(std::move(o));
  }
  return *this;
}

Arena::~Arena() {
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
  base_ = nullptr;
  fd_ = -1;
}

Result<std::uint32_t> Arena::register_participant(Role role, int pid, const std::string& name) {
  for (std::uint32_t s = 0; s < kMaxParticipants; ++s) {
    Participant& p = participant(s);
    auto expected = static_cast<std::uint32_t>(ParticipantState::free);
    // acquire: if we win, the previous user's writes (release in release_participant) are visible.
    if (!p.state.compare_exchange_strong(expected, static_cast<std::uint32_t>(ParticipantState::claiming),
                                         std::memory_order_acquire, std::memory_order_relaxed))
      continue;
    p.role = static_cast<std::uint32_t>(role);
    p.pid = static_cast<std::uint32_t>(pid);
    p.start_time = process_start_time(pid);
    std::memset(p.name, 0, sizeof p.name);
    std::strncpy(p.name, name.c_str(), sizeof p.name - 1);
    p.heartbeat_ns.store(0, std::memory_order_relaxed);  // relaxed: a liveness hint only
    // SYNC[participant.state] release: publishes role/pid/name -> acquired by inspectors.
    p.state.store(static_cast<std::uint32_t>(ParticipantState::alive), std::memory_order_release);
    return s;
  }
  return fail(Errc::no_space, "arena: all " + std::to_string(kMaxParticipants) + " participant slots are in use");
}

void Arena::mark_dead(std::uint32_t slot) noexcept {
  if (slot >= kMaxParticipants) return;
  // release: anything we recorded before is visible to whoever reclaims.
  participant(slot).state.store(static_cast<std::uint32_t>(ParticipantState::dead), std::memory_order_release);
}

void Arena::set_participant_pid(std::uint32_t slot, int pid) noexcept {
  if (slot >= kMaxParticipants) return;
  Participant& p = participant(slot);
  p.pid = static_cast<std::uint32_t>(pid);
  p.start_time = process_start_time(pid);
  // SYNC[participant.state] release: republishes pid/start_time -> acquired by participant_alive.
  p.state.store(static_cast<std::uint32_t>(ParticipantState::alive), std::memory_order_release);
}

void Arena::release_participant(std::uint32_t slot) noexcept {
  if (slot >= kMaxParticipants) return;
  // SYNC[participant.state] release -> acquired by the next register_participant CAS.
  participant(slot).state.store(static_cast<std::uint32_t>(ParticipantState::free), std::memory_order_release);
}

bool Arena::participant_alive(std::uint32_t slot) const noexcept {
  if (slot >= kMaxParticipants) return false;
  const Participant& p = participant(slot);
  // acquire: pairs with the release in register_participant before reading pid.
  if (p.state.load(std::memory_order_acquire) != static_cast<std::uint32_t>(ParticipantState::alive)) return false;
  const std::uint64_t st = process_start_time(static_cast<int>(p.pid));
  return st != 0 && st == p.start_time;
}

bool Arena::creator_alive() const noexcept {
  const std::uint64_t st = process_start_time(static_cast<int>(header().creator_pid));
  return st != 0 && st == header().creator_start_time;
}

void Arena::reset_ring(std::uint32_t r, std::uint32_t producer_slot, std::uint32_t consumer_slot,
                       std::uint32_t consumer_doorbell, std::uint32_t producer_doorbell) noexcept {
  RingHeader& rh = ring(r);
  rh.consumer_doorbell = consumer_doorbell < n_doorbells() ? consumer_doorbell : 0;
  rh.producer_doorbell = producer_doorbell < n_doorbells() ? producer_doorbell : 0;
  // relaxed: both endpoints are idle or dead; the state store below publishes all of it.
  rh.tail.store(0, std::memory_order_relaxed);
  rh.head.store(0, std::memory_order_relaxed);
  rh.producer_slot.store(producer_slot, std::memory_order_relaxed);
  rh.consumer_slot.store(consumer_slot, std::memory_order_relaxed);
  rh.reset_count.fetch_add(1, std::memory_order_relaxed);  // relaxed: inspection counter
  // SYNC[ring.state] release: publishes the reset indices/bindings -> acquire in Ring* constructors.
  rh.state.store(static_cast<std::uint32_t>(RingState::open), std::memory_order_release);
}

void Arena::close_ring(std::uint32_t r) noexcept {
  // SYNC[ring.state] release: endpoints observe "closed" after everything before it.
  ring(r).state.store(static_cast<std::uint32_t>(RingState::closed), std::memory_order_release);
}

Result<std::uint32_t> Arena::open_channel(std::uint32_t client_slot, std::uint32_t worker_slot,
                                          std::uint32_t client_doorbell, std::uint32_t worker_doorbell) {
  if (client_slot >= kMaxParticipants || worker_slot >= kMaxParticipants)
    return fail(Errc::invalid_argument, "open_channel: participant slot out of range");
  if (client_doorbell >= n_doorbells() || worker_doorbell >= n_doorbells())
    return fail(Errc::invalid_argument, "open_channel: doorbell out of range");
  for (std::uint32_t c = 0; c < n_channels(); ++c) {
    Channel& ch = channel(c);
    // acquire: see the previous user's teardown before reusing the entry.
    if (ch.state.load(std::memory_order_acquire) != static_cast<std::uint32_t>(ChannelState::unused)) continue;
    ch.client_slot = client_slot;
    ch.worker_slot = worker_slot;
    ch.request_ring = 2 * c;
    ch.response_ring = 2 * c + 1;
    ch.client_doorbell = client_doorbell;
    ch.worker_doorbell = worker_doorbell;
    for (auto& e : ch.min_epoch) e.store(0, std::memory_order_relaxed);  // relaxed: published by state below
    ch.generation.fetch_add(1, std::memory_order_relaxed);                 // relaxed: published by state below
    reset_ring(2 * c, client_slot, worker_slot, worker_doorbell, client_doorbell);
    reset_ring(2 * c + 1, worker_slot, client_slot, client_doorbell, worker_doorbell);
    // SYNC[channel.state] release: publishes the fields and ring resets -> acquired by endpoints.
    ch.state.store(static_cast<std::uint32_t>(ChannelState::open), std::memory_order_release);
    // SYNC[participant.channels] release: tells both endpoints to rescan the channel table.
    participant(client_slot).channel_version.fetch_add(1, std::memory_order_release);
    participant(worker_slot).channel_version.fetch_add(1, std::memory_order_release);
    doorbell_notify(doorbell(worker_doorbell));
    return c;
  }
  return fail(Errc::no_space, "open_channel: all " + std::to_string(n_channels()) + " channels are in use");
}

void Arena::close_channel(std::uint32_t c) noexcept {
  if (c >= n_channels()) return;
  Channel& ch = channel(c);
  close_ring(ch.request_ring);
  close_ring(ch.response_ring);
  // SYNC[channel.state] release: endpoints see `closing` (not open) at their next rescan.
  ch.state.store(static_cast<std::uint32_t>(ChannelState::closing), std::memory_order_release);
  participant(ch.client_slot).channel_version.fetch_add(1, std::memory_order_release);  // SYNC[participant.channels]
  participant(ch.worker_slot).channel_version.fetch_add(1, std::memory_order_release);  // SYNC[participant.channels]
  doorbell_notify(doorbell(ch.worker_doorbell));
  doorbell_notify(doorbell(ch.client_doorbell));
}

void Arena::release_channel(std::uint32_t c) noexcept {
  if (c >= n_channels()) return;
  // SYNC[channel.state] release -> acquired by open_channel when reusing the entry.
  channel(c).state.store(static_cast<std::uint32_t>(ChannelState::unused), std::memory_order_release);
}

bool Arena::worker_detached(std::uint32_t c) const noexcept {
  if (c >= n_channels()) return true;
  const Channel& ch = channel(c);
  // SYNC[channel.detached] acquire: pairs with the worker's release in refresh_channels.
  return ch.worker_detached.load(std::memory_order_acquire) == ch.generation.load(std::memory_order_relaxed);
}

std::uint64_t process_start_time(int pid) noexcept {
  if (pid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Field 2 (comm) may contain spaces and parentheses: start after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  ++p;
  // After ')': field 3 (state) ... field 22 (starttime). Each space starts the next field,
  // so stop once the space before field 22 has been passed.
  int field = 2;
  while (*p != '\0' && field < 22) {
    if (*p == ' ') ++field;
    ++p;
  }
  // A zombie still has /proc/<pid>/stat; treat state Z/X as not running.
  const char* st = std::strrchr(buf, ')');
  if (st != nullptr && st[1] == ' ' && (st[2] == 'Z' || st[2] == 'X')) return 0;
  return std::strtoull(p, nullptr, 10);
}

}  // namespace tessera
