// Multi-process tests: real processes (fork+exec of tessera_mp_helper) share a fresh
// arena through an inherited memfd; some are killed with SIGKILL mid-operation.
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include <tessera/ring.hpp>
#include <tessera/slab.hpp>

#include "mp_common.hpp"
#include "test_support.hpp"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;

std::string helper() { return test::exe_dir() + "/tessera_mp_helper"; }

constexpr std::uint32_t kRing = 0;
constexpr std::uint32_t kConsumerBell = 10;
constexpr std::uint32_t kProducerBell = 11;

class MultiProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access(helper().c_str(), X_OK), 0) << helper();
    auto a = Arena::create(test::small_config(32));
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
    arena_.reset_ring(kRing, kNoSlot, kNoSlot, kConsumerBell, kProducerBell);
    auto me = arena_.register_participant(Role::broker, getpid(), "mp-test");
    ASSERT_TRUE(me);
    me_ = *me;
  }

  std::optional<Child> spawn(const std::vector<std::string>& args) {
    Child::Options opt;
    opt.inherit_fds = {arena_.fd()};
    opt.capture_stdout = true;
    return Child::spawn(helper(), args, opt);
  }
  std::string fd() const { return std::to_string(arena_.fd()); }

  // Reads the "slot N" line a registering helper prints first.
  static std::optional<std::uint32_t> read_slot(Child& c) {
    auto line = c.read_line(10s);
    if (!line || line->rfind("slot ", 0) != 0) return std::nullopt;
    return static_cast<std::uint32_t>(std::stoul(line->substr(5)));
  }

  // After a participant died: it is seen dead, every block it held returns, its slot frees.
  void reclaim_dead(std::uint32_t slot) {
    EXPECT_FALSE(arena_.participant_alive(slot)) << "a killed process must not look alive";
    arena_.mark_dead(slot);
    Slab::reclaim(arena_, slot);
    EXPECT_EQ(Slab::count_held(arena_, slot), 0u);
    arena_.release_participant(slot);
  }

  // Every block can be allocated again exactly once: none lost, none double-freed.
  void expect_every_block_allocatable_once() {
    ASSERT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
    Slab s(arena_, me_);
    std::set<std::pair<std::uint32_t, std::uint32_t>> seen;
    std::vector<BlockHandle> got;
    BlockView v;
    while (s.try_alloc(1, v) == AllocStatus::ok) {
      EXPECT_TRUE(seen.emplace(v.handle.cls(), v.handle.index()).second) << "block handed out twice";
      got.push_back(v.handle);
    }
    EXPECT_EQ(seen.size(), test::total_blocks(arena_));
    for (BlockHandle h : got) EXPECT_EQ(s.free(h), Errc::ok);
  }

  Arena arena_;
  std::uint32_t me_ = 0;
};

TEST_F(MultiProcess, ProducerAndConsumerProcessesKeepOrderAndPayload) {
  constexpr std::uint64_t kCount = 20'000;
  // The producer starts first (the consumer adopts from its slot); it sleeps on its
  // doorbell once the ring is full.
  auto prod = spawn({"producer", fd(), std::to_string(kRing), std::to_string(kCount), "7"});
  ASSERT_TRUE(prod);
  auto prod_slot = read_slot(*prod);
  ASSERT_TRUE(prod_slot);
  auto cons2 = spawn({"consumer", fd(), std::to_string(kRing), std::to_string(kCount), std::to_string(*prod_slot)});
  ASSERT_TRUE(cons2);
  ASSERT_TRUE(read_slot(*cons2));
  const auto pst = prod->wait(60s);
  const auto cst = cons2->wait(60s);
  ASSERT_TRUE(pst) << "producer timed out";
  ASSERT_TRUE(cst) << "consumer timed out";
  EXPECT_TRUE(test::exited_ok(pst)) << "producer status " << *pst;
  EXPECT_TRUE(test::exited_ok(cst)) << "consumer status " << *cst << " (2 order, 3 payload, 4 handle, 5 timeout)";
  EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
  EXPECT_EQ(arena_.ring(kRing).head.load(), kCount);
  EXPECT_EQ(arena_.ring(kRing).tail.load(), kCount);
}

TEST_F(MultiProcess, BlocksOfAllocatorsKilledMidLoopAreAllReclaimed) {
  std::mt19937 rng(static_cast<std::uint32_t>(test::test_seed(21)));
  std::uint32_t reclaimed_total = 0;
  const test::Deadline deadline(60s);
  for (int round = 0; round < 12 && !deadline.expired(); ++round) {
    std::vector<Child> kids;
    std::vector<std::uint32_t> slots;
    for (int k = 0; k < 2; ++k) {
      auto c = spawn({"slab-loop", fd(), std::to_string(rng())});
      ASSERT_TRUE(c);
      auto s = read_slot(*c);
      ASSERT_TRUE(s);
      slots.push_back(*s);
      kids.push_back(std::move(*c));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20'000));
    for (auto& c : kids) c.kill(SIGKILL);
    for (auto& c : kids) {
      auto st = c.wait(10s);
      ASSERT_TRUE(st);
      EXPECT_TRUE(WIFSIGNALED(*st) && WTERMSIG(*st) == SIGKILL) << "helper failed by itself: " << *st;
    }
    for (std::uint32_t s : slots) {
      reclaimed_total += Slab::count_held(arena_, s);
      reclaim_dead(s);
    }
    EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u) << "round " << round;
  }
  EXPECT_GT(reclaimed_total, 0u) << "the helpers were killed while holding blocks at least once";
  expect_every_block_allocatable_once();
}

TEST_F(MultiProcess, ProducerKilledMidStreamLeavesAnOrderedRingAndReclaimableBlocks) {
  std::mt19937 rng(static_cast<std::uint32_t>(test::test_seed(22)));
  Slab mine(arena_, me_);
  RingConsumer cons(arena_, kRing);
  for (int round = 0; round < 6; ++round) {
    arena_.reset_ring(kRing, kNoSlot, me_, kConsumerBell, kProducerBell);
    cons = RingConsumer(arena_, kRing);
    auto prod = spawn({"producer", fd(), std::to_string(kRing), "0", std::to_string(rng())});
    ASSERT_TRUE(prod);
    auto slot = read_slot(*prod);
    ASSERT_TRUE(slot);
    std::uint64_t expect = 0;
    auto drain = [&] {
      TileDesc d;
      RingStatus st;
      while ((st = cons.try_pop(d)) == RingStatus::ok) {
        cons.notify();
        ASSERT_EQ(d.seq(), expect) << "lost, duplicated or reordered";
        ++expect;
        const BlockHandle h{d.block()};
        BlockView v;
        ASSERT_EQ(mine.resolve(h, v), Errc::ok);
        ASSERT_TRUE(mp::check(v.data, d.nbytes(), d.seq())) << "payload of seq " << d.seq();
        ASSERT_EQ(mine.adopt(h, *slot), Errc::ok);
        ASSERT_EQ(mine.free(h), Errc::ok);
      }
      ASSERT_NE(st, RingStatus::corrupt);
    };
    // The kill window starts once the producer has published (under a sanitizer on a
    // loaded machine its start-up alone can outlast the window).
    const test::Deadline started(std::chrono::seconds(10));
    while (expect == 0 && !started.expired()) {
      drain();
      if (HasFatalFailure()) return;
    }
    const test::Deadline run(std::chrono::milliseconds(5 + rng() % 40));
    while (!run.expired()) {
      drain();
      if (HasFatalFailure()) return;
    }
    prod->kill(SIGKILL);
    ASSERT_TRUE(prod->wait(10s));
    drain();  // what it published before dying is complete and in order
    if (HasFatalFailure()) return;
    const RingHeader& rh = arena_.ring(kRing);
    EXPECT_EQ(rh.head.load(), rh.tail.load());
    EXPECT_GT(expect, 0u);
    reclaim_dead(*slot);  // blocks it allocated but never pushed
    EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
  }
  expect_every_block_allocatable_once();
}

TEST_F(MultiProcess, ConsumerKilledMidStreamLeavesConsistentIndicesAndReclaimableBlocks) {
  std::mt19937 rng(static_cast<std::uint32_t>(test::test_seed(23)));
  Slab mine(arena_, me_);
  for (int round = 0; round < 6; ++round) {
    arena_.reset_ring(kRing, me_, kNoSlot, kConsumerBell, kProducerBell);
    RingProducer prod(arena_, kRing);
    auto cons = spawn({"consumer", fd(), std::to_string(kRing), "0", std::to_string(me_)});
    ASSERT_TRUE(cons);
    auto slot = read_slot(*cons);
    ASSERT_TRUE(slot);
    std::uint64_t seq = 0;
    const test::Deadline run(std::chrono::milliseconds(5 + rng() % 40));
    while (!run.expired()) {
      BlockView v;
      if (mine.try_alloc(1 + rng() % 8192, v) != AllocStatus::ok) continue;
      const auto n = static_cast<std::uint32_t>(1 + rng() % v.capacity);
      mp::fill(v.data, n, seq);
      bool pushed = false;
      while (!(pushed = prod.try_push(mp::desc(seq, me_, v.handle.raw, n)) == RingStatus::ok) && !run.expired()) {
      }
      if (!pushed) {
        ASSERT_EQ(mine.free(v.handle), Errc::ok);
        break;
      }
      prod.notify();
      ++seq;
    }
    cons->kill(SIGKILL);
    auto st = cons->wait(10s);
    ASSERT_TRUE(st);
    ASSERT_TRUE(WIFSIGNALED(*st)) << "consumer failed a check by itself: exit " << WEXITSTATUS(*st);
    const RingHeader& rh = arena_.ring(kRing);
    const std::uint64_t head = rh.head.load(), tail = rh.tail.load();
    EXPECT_EQ(tail, seq);
    EXPECT_LE(head, tail);
    EXPECT_LE(tail - head, arena_.header().ring_capacity);
    // The rest of the stream is still there, in order: take over as consumer.
    RingConsumer rest(arena_, kRing);
    TileDesc d;
    std::uint64_t expect = head;
    while (rest.try_pop(d) == RingStatus::ok) {
      EXPECT_EQ(d.seq(), expect++);
      EXPECT_EQ(mine.free(BlockHandle{d.block()}), Errc::ok);
    }
    EXPECT_EQ(expect, seq);
    reclaim_dead(*slot);
    // A descriptor popped but not yet adopted when the consumer died is still ours.
    Slab::reclaim(arena_, me_);
    EXPECT_EQ(Slab::count_held(arena_, kNoSlot), 0u);
  }
  expect_every_block_allocatable_once();
}

// Every /proc/<pid>/fd link and /proc/<pid>/maps line that mentions `needle`.
std::vector<std::string> proc_references(const std::string& needle) {
  std::vector<std::string> hits;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return {"cannot open /proc"};
  while (dirent* e = readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string dir = std::string("/proc/") + e->d_name;
    if (DIR* fds = opendir((dir + "/fd").c_str())) {
      while (dirent* f = readdir(fds)) {
        char link[4096];
        const ssize_t n = readlink((dir + "/fd/" + f->d_name).c_str(), link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = '\0';
        if (std::strstr(link, needle.c_str()) != nullptr) hits.push_back(dir + "/fd/" + f->d_name + " -> " + link);
      }
      closedir(fds);
    }
    std::ifstream maps(dir + "/maps");
    for (std::string line; std::getline(maps, line);)
      if (line.find(needle) != std::string::npos) hits.push_back(dir + "/maps: " + line);
  }
  closedir(proc);
  return hits;
}

std::set<std::string> dev_shm_entries() {
  std::set<std::string> out;
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d)) out.insert(e->d_name);
    closedir(d);
  }
  return out;
}

TEST(ArenaLifetime, KernelFreesTheArenaOnceEveryHolderIsGone) {
  ArenaConfig cfg = test::small_config();
  const std::string name = cfg.debug_name;
  auto a = Arena::create(cfg);
  ASSERT_TRUE(a) << a.error().message;
  Child::Options opt;
  opt.inherit_fds = {a->fd()};
  opt.capture_stdout = true;
  auto holder = Child::spawn(helper(), {"hold", std::to_string(a->fd())}, opt);
  ASSERT_TRUE(holder);
  ASSERT_EQ(holder->read_line(10s), std::optional<std::string>("attached"));
  EXPECT_FALSE(proc_references("memfd:" + name).empty()) << "the test must be able to see a live arena";
  *a = Arena{};  // the creator closes its descriptor and mapping
  const auto still = proc_references("memfd:" + name);
  EXPECT_FALSE(still.empty()) << "the holder keeps it alive";
  for (const auto& s : still)
    EXPECT_NE(s.find("/proc/" + std::to_string(holder->pid()) + "/"), std::string::npos) << s;
  holder->kill(SIGKILL);
  ASSERT_TRUE(holder->wait(10s));
  const auto left = proc_references("memfd:" + name);
  EXPECT_TRUE(left.empty()) << left.front();
  for (const auto& e : dev_shm_entries()) {
    EXPECT_EQ(e.find(name), std::string::npos) << "/dev/shm gained " << e;
    EXPECT_EQ(e.find(std::to_string(getpid())), std::string::npos) << "/dev/shm gained " << e;
  }
}

}  // namespace
}  // namespace tessera
