// Arena geometry, creation, attach validation and the participant table.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <tessera/arena.hpp>
#include <tessera/handle.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using test::small_config;

// ---------------------------------------------------------------------------------
// Geometry / config validation

TEST(ArenaGeometry, DefaultConfigIsValidAndPageAligned) {
  ArenaConfig cfg;
  auto g = compute_geometry(cfg);
  ASSERT_TRUE(g) << g.error().message;
  for (std::uint64_t off : {g->participants_offset, g->classes_offset, g->doorbells_offset, g->rings_offset,
                            g->meta_offset, g->data_offset, g->total_size})
    EXPECT_EQ(off % kPageSize, 0u) << off;
  EXPECT_LT(g->participants_offset, g->classes_offset);
  EXPECT_LT(g->classes_offset, g->doorbells_offset);
  EXPECT_LT(g->doorbells_offset, g->rings_offset);
  EXPECT_LE(g->rings_offset + g->ring_stride * cfg.n_rings, g->meta_offset);
  ASSERT_EQ(g->class_data_offset.size(), cfg.classes.size());
  std::uint64_t end = g->data_offset;
  for (std::size_t c = 0; c < cfg.classes.size(); ++c) {
    EXPECT_EQ(g->class_data_offset[c], end);
    end += cfg.classes[c].block_size * cfg.classes[c].block_count;
  }
  EXPECT_EQ(end, g->total_size);
}

TEST(ArenaGeometry, BlockSizesAreRoundedUpToWholePages) {
  ArenaConfig cfg = small_config();
  cfg.classes = {{100, 2}, {4097, 2}};
  auto g = compute_geometry(cfg);
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->class_data_offset[1] - g->class_data_offset[0], 2 * kPageSize);
  EXPECT_EQ(g->total_size - g->class_data_offset[1], 2 * 2 * kPageSize);
}

TEST(ArenaGeometry, RejectsImpossibleConfigsWithInvalidArgument) {
  struct Case {
    const char* what;
    void (*mutate)(ArenaConfig&);
  };
  const Case cases[] = {
      {"no classes", [](ArenaConfig& c) { c.classes.clear(); }},
      {"17 classes", [](ArenaConfig& c) {
         c.classes.clear();
         for (std::uint64_t i = 1; i <= 17; ++i) c.classes.push_back({i * kPageSize, 1});
       }},
      {"not increasing", [](ArenaConfig& c) { c.classes = {{8192, 1}, {8192, 1}}; }},
      {"equal after rounding", [](ArenaConfig& c) { c.classes = {{4000, 1}, {4096, 1}}; }},
      {"decreasing", [](ArenaConfig& c) { c.classes = {{8192, 1}, {4096, 1}}; }},
      {"zero blocks", [](ArenaConfig& c) { c.classes = {{4096, 0}}; }},
      {"zero size", [](ArenaConfig& c) { c.classes = {{0, 4}}; }},
      {"too many blocks", [](ArenaConfig& c) { c.classes = {{4096, kMaxBlocksPerClass + 1}}; }},
      {"huge block", [](ArenaConfig& c) { c.classes = {{(1ULL << 36) + 1, 1}}; }},
      {"arena too large", [](ArenaConfig& c) { c.classes = {{1ULL << 30, 4096}}; }},
      {"ring capacity not pow2", [](ArenaConfig& c) { c.ring_capacity = 1000; }},
      {"ring capacity 1", [](ArenaConfig& c) { c.ring_capacity = 1; }},
      {"ring capacity 2^21", [](ArenaConfig& c) { c.ring_capacity = 1u << 21; }},
      {"no doorbells", [](ArenaConfig& c) { c.n_doorbells = 0; }},
      {"fewer doorbells than participants", [](ArenaConfig& c) { c.n_doorbells = kMaxParticipants - 1; }},
      {"too many doorbells", [](ArenaConfig& c) { c.n_doorbells = kMaxDoorbells + 1; }},
      {"too many rings", [](ArenaConfig& c) { c.n_rings = kMaxRings + 1; }},
  };
  for (const Case& k : cases) {
    ArenaConfig cfg = small_config();
    k.mutate(cfg);
    auto g = compute_geometry(cfg);
    ASSERT_FALSE(g) << k.what;
    EXPECT_EQ(g.error().code, Errc::invalid_argument) << k.what;
    EXPECT_NE(g.error().message.find("arena config"), std::string::npos) << k.what << ": " << g.error().message;
    auto a = Arena::create(cfg);
    EXPECT_FALSE(a) << k.what;
  }
}

// ---------------------------------------------------------------------------------
// Create / attach

TEST(Arena, CreateFillsTheHeaderAndMarksItReady) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  const ArenaHeader& h = a->header();
  EXPECT_EQ(h.magic, kArenaMagic);
  EXPECT_EQ(h.layout_version, kLayoutVersion);
  EXPECT_EQ(h.header_size, sizeof(ArenaHeader));
  EXPECT_EQ(h.total_size, a->size());
  EXPECT_EQ(h.creator_pid, static_cast<std::uint32_t>(getpid()));
  EXPECT_EQ(h.creator_uid, static_cast<std::uint32_t>(geteuid()));
  EXPECT_NE(h.creator_start_time, 0u) << "start time must identify the creator (pid-reuse proof)";
  EXPECT_EQ(h.ready.load(), kReadyValue);
  EXPECT_TRUE(a->creator_alive());
  EXPECT_TRUE(Arena::validate(a->base(), a->size()));
}

TEST(Arena, MemfdIsPrivateSealedAndCloseOnExec) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  struct stat st {};
  ASSERT_EQ(fstat(a->fd(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_uid, geteuid());
  const int seals = fcntl(a->fd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(fcntl(a->fd(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_NE(ftruncate(a->fd(), 0), 0) << "a sealed arena cannot be shrunk under its users";
}

TEST(Arena, SecondMappingOfTheSameMemfdSeesTheSameBytes) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  auto b = Arena::attach_fd(dup(a->fd()));
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_NE(a->base(), b->base());
  EXPECT_EQ(a->size(), b->size());
  EXPECT_EQ(b->header().arena_id, a->header().arena_id);
  std::memcpy(a->block_data(1, 3), "hello arena", 12);
  EXPECT_STREQ(reinterpret_cast<const char*>(b->block_data(1, 3)), "hello arena");
  std::memcpy(b->block_data(0, 0), "and back", 9);
  EXPECT_STREQ(reinterpret_cast<const char*>(a->block_data(0, 0)), "and back");
}

TEST(Arena, MoveTransfersOwnership) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  std::byte* base = a->base();
  Arena moved(std::move(*a));
  EXPECT_FALSE(a->valid());
  EXPECT_EQ(a->fd(), -1);
  EXPECT_EQ(moved.base(), base);
  Arena assigned;
  assigned = std::move(moved);
  EXPECT_FALSE(moved.valid());
  EXPECT_EQ(assigned.base(), base);
}

// Fixture: a live arena whose shared header the test corrupts, then attaches through a dup.
class ArenaAttach : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = Arena::create(small_config());
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
  }
  Result<Arena> attach() { return Arena::attach_fd(dup(arena_.fd())); }
  void expect_error(Errc code, const std::string& words) {
    auto r = attach();
    ASSERT_FALSE(r) << "attach accepted a bad arena";
    EXPECT_EQ(r.error().code, code) << errc_name(r.error().code) << ": " << r.error().message;
    EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
  }
  Arena arena_;
};

TEST_F(ArenaAttach, AcceptsAnUntouchedArena) { ASSERT_TRUE(attach()); }

TEST_F(ArenaAttach, WrongMagicIsBadMagic) {
  arena_.header().magic ^= 1;
  expect_error(Errc::bad_magic, "magic");
}

TEST_F(ArenaAttach, WrongVersionIsBadVersion) {
  arena_.header().layout_version = kLayoutVersion + 1;
  expect_error(Errc::bad_version, "version");
}

TEST_F(ArenaAttach, NotReadyIsNotReady) {
  arena_.header().ready.store(0);
  expect_error(Errc::not_ready, "initialising");
}

TEST_F(ArenaAttach, TotalSizeThatDisagreesWithTheFileIsBadSize) {
  arena_.header().total_size += kPageSize;
  expect_error(Errc::bad_size, "mapping size");
}

TEST_F(ArenaAttach, RingCountThatDisagreesWithOffsetsIsBadSize) {
  // (A count that still fits in the page-rounded ring region describes a safe layout and
  // is accepted: validation recomputes every offset, it does not compare counts.)
  arena_.header().n_rings += 100;
  expect_error(Errc::bad_size, "arena");
}

TEST_F(ArenaAttach, MisalignedOrOutOfRangeClassTableIsBadSize) {
  const std::uint64_t good = arena_.header().classes_offset;
  arena_.header().classes_offset = good + 1;  // would be a misaligned SizeClass read
  expect_error(Errc::bad_size, "size-class table");
  arena_.header().classes_offset = ~0ULL - kPageSize + 1;
  expect_error(Errc::bad_size, "size-class table");
}

TEST_F(ArenaAttach, ImpossibleRingCountIsBadSize) {
  arena_.header().n_rings = kMaxRings + 1;
  expect_error(Errc::bad_size, "impossible layout");
}

TEST_F(ArenaAttach, BlockCountThatDisagreesWithOffsetsIsBadSize) {
  arena_.size_class(0).block_count += 1;
  expect_error(Errc::bad_size, "arena");
}

TEST_F(ArenaAttach, HeaderCreatedByAnotherUserIsPermission) {
  arena_.header().creator_uid = static_cast<std::uint32_t>(geteuid()) + 1;
  expect_error(Errc::permission, "another user");
}

TEST_F(ArenaAttach, DescriptorWithMode0644IsPermission) {
  ASSERT_EQ(fchmod(arena_.fd(), 0644), 0);
  expect_error(Errc::permission, "0600");
}

TEST_F(ArenaAttach, FileOwnedByAnotherUidIsPermission) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to chown the memfd";
  ASSERT_EQ(fchown(arena_.fd(), 65534, 65534), 0);
  auto r = attach();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::permission) << r.error().message;
  EXPECT_NE(r.error().message.find("uid"), std::string::npos) << r.error().message;
}

TEST_F(ArenaAttach, AttachFailureClosesTheDescriptorOnlyWhenAsked) {
  arena_.header().magic = 0;
  const int keep = dup(arena_.fd());
  ASSERT_FALSE(Arena::attach_fd(keep, /*close_on_error=*/false));
  EXPECT_GE(fcntl(keep, F_GETFD), 0);
  const int gone = dup(arena_.fd());
  ASSERT_FALSE(Arena::attach_fd(gone, /*close_on_error=*/true));
  errno = 0;
  EXPECT_EQ(fcntl(gone, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
  close(keep);
}

TEST_F(ArenaAttach, RegularFileWithAValidImageIsRejectedAsNotAMemfd) {
  const std::string path = "/tmp/" + test::unique_name("tessera-notmemfd");
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  unlink(path.c_str());  // nothing left behind, even if an assertion fails below
  ASSERT_EQ(write(fd, arena_.base(), arena_.size()), static_cast<ssize_t>(arena_.size()));
  auto r = Arena::attach_fd(fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::invalid_argument) << r.error().message;
  EXPECT_NE(r.error().message.find("memfd"), std::string::npos) << r.error().message;
}

TEST_F(ArenaAttach, UnsealedMemfdWithAValidImageIsRejected) {
  const int fd = memfd_create("tessera-unsealed", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  ASSERT_EQ(write(fd, arena_.base(), arena_.size()), static_cast<ssize_t>(arena_.size()));
  auto r = Arena::attach_fd(fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::invalid_argument) << r.error().message;
}

TEST_F(ArenaAttach, TooSmallFileIsBadSize) {
  const int fd = memfd_create("tessera-small", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  ASSERT_EQ(write(fd, arena_.base(), 100), 100);
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  auto r = Arena::attach_fd(fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::bad_size) << r.error().message;
  EXPECT_NE(r.error().message.find("smaller"), std::string::npos) << r.error().message;
}

TEST_F(ArenaAttach, TruncatedImageInASealedMemfdIsBadSize) {
  const int fd = memfd_create("tessera-trunc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  const std::size_t half = arena_.size() / 2 / kPageSize * kPageSize;
  ASSERT_EQ(write(fd, arena_.base(), half), static_cast<ssize_t>(half));
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  auto r = Arena::attach_fd(fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::bad_size) << r.error().message;
}

TEST(ArenaAttachFd, InvalidDescriptorIsASystemError) {
  auto r = Arena::attach_fd(-1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::system);
  EXPECT_FALSE(r.error().message.empty());
}

TEST(ArenaAttachFd, PipeIsNotAMemoryFile) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  auto r = Arena::attach_fd(p[0]);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::invalid_argument) << r.error().message;
  close(p[1]);
}

TEST(ArenaAttachProc, AttachesThroughProcSelfFd) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  auto b = Arena::attach_proc(getpid(), a->fd());
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->header().arena_id, a->header().arena_id);
}

TEST(ArenaAttachProc, MissingDescriptorNamesThePath) {
  auto r = Arena::attach_proc(getpid(), 987654);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::system);
  EXPECT_NE(r.error().message.find("/fd/987654"), std::string::npos) << r.error().message;
}

// ---------------------------------------------------------------------------------
// Participants

TEST(ArenaParticipants, RegisterRecordsRolePidNameAndIsAlive) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a) << a.error().message;
  auto s = a->register_participant(Role::worker, getpid(), "unit-worker");
  ASSERT_TRUE(s) << s.error().message;
  const Participant& p = a->participant(*s);
  EXPECT_EQ(p.state.load(), static_cast<std::uint32_t>(ParticipantState::alive));
  EXPECT_EQ(p.role, static_cast<std::uint32_t>(Role::worker));
  EXPECT_EQ(p.pid, static_cast<std::uint32_t>(getpid()));
  EXPECT_STREQ(p.name, "unit-worker");
  EXPECT_NE(p.start_time, 0u);
  EXPECT_TRUE(a->participant_alive(*s));
}

TEST(ArenaParticipants, LongNamesAreTruncatedAndTerminated) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a);
  auto s = a->register_participant(Role::client, getpid(), std::string(100, 'x'));
  ASSERT_TRUE(s);
  EXPECT_EQ(std::strlen(a->participant(*s).name), sizeof(Participant::name) - 1);
}

TEST(ArenaParticipants, ExitedProcessIsNotAlive) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pause();  // killed by the parent
    _exit(0);
  }
  auto s = a->register_participant(Role::worker, child, "short-lived");
  ASSERT_TRUE(s);
  EXPECT_TRUE(a->participant_alive(*s));
  kill(child, SIGKILL);
  int st = 0;
  ASSERT_EQ(waitpid(child, &st, 0), child);
  EXPECT_FALSE(a->participant_alive(*s));
}

TEST(ArenaParticipants, RecycledPidWithAnotherStartTimeIsNotAlive) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a);
  auto s = a->register_participant(Role::worker, getpid(), "me");
  ASSERT_TRUE(s);
  a->participant(*s).start_time += 1;  // as if our pid had been reused by another process
  EXPECT_FALSE(a->participant_alive(*s));
}

TEST(ArenaParticipants, MarkDeadThenReleaseFreesTheSlot) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a);
  auto s = a->register_participant(Role::client, getpid(), "c");
  ASSERT_TRUE(s);
  a->mark_dead(*s);
  EXPECT_EQ(a->participant(*s).state.load(), static_cast<std::uint32_t>(ParticipantState::dead));
  EXPECT_FALSE(a->participant_alive(*s));
  auto other = a->register_participant(Role::client, getpid(), "d");
  ASSERT_TRUE(other);
  EXPECT_NE(*other, *s) << "a dead slot is not reused before release";
  a->release_participant(*s);
  auto again = a->register_participant(Role::client, getpid(), "e");
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *s);
  EXPECT_FALSE(a->participant_alive(kMaxParticipants));
  a->mark_dead(kMaxParticipants);            // out of range: ignored, no crash
  a->release_participant(kMaxParticipants);  // idem
}

TEST(ArenaParticipants, AllSlotsInUseIsNoSpace) {
  auto a = Arena::create(small_config());
  ASSERT_TRUE(a);
  for (std::uint32_t i = 0; i < kMaxParticipants; ++i) {
    auto s = a->register_participant(Role::client, getpid(), "p");
    ASSERT_TRUE(s) << i;
    EXPECT_EQ(*s, i);
  }
  auto full = a->register_participant(Role::client, getpid(), "one too many");
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code, Errc::no_space);
  EXPECT_NE(full.error().message.find("participant"), std::string::npos);
}

TEST(ProcessStartTime, IsNonZeroForLiveProcessesAndZeroOtherwise) {
  EXPECT_NE(process_start_time(getpid()), 0u);
  EXPECT_EQ(process_start_time(getpid()), process_start_time(getpid()));
  EXPECT_NE(process_start_time(1), 0u);
  EXPECT_EQ(process_start_time(0), 0u);
  EXPECT_EQ(process_start_time(-5), 0u);
  EXPECT_EQ(process_start_time(0x3fffffff), 0u);
}

}  // namespace
}  // namespace tessera
