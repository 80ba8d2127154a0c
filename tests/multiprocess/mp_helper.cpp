// tessera_mp_helper: a real process for the multi-process tests. It attaches to an
// inherited arena descriptor and plays one role until done or killed.
//
//   tessera_mp_helper slab-loop FD SEED              alloc/free forever
//   tessera_mp_helper producer FD RING COUNT SEED    alloc+fill+push COUNT tiles (0: forever)
//   tessera_mp_helper consumer FD RING COUNT FROM    pop+check+adopt+free COUNT tiles (0: forever)
//   tessera_mp_helper hold FD                        attach, then wait to be killed
//   tessera_mp_helper create-and-hold NAME NBLOCKS   create an arena, hold blocks, wait to be killed
//
// Every role that registers prints "slot N" first. Exit codes: 0 ok, 1 usage/attach,
// 2 order error, 3 payload error, 4 handle error, 5 timeout.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tessera/doorbell.hpp>
#include <tessera/ring.hpp>
#include <tessera/slab.hpp>

#include "mp_common.hpp"

namespace {

using namespace tessera;
using namespace std::chrono_literals;

int usage() {
  std::fprintf(stderr, "usage: tessera_mp_helper ROLE ARGS... (see source)\n");
  return 1;
}

bool attach(const char* fd_text, Arena& out) {
  auto a = Arena::attach_fd(std::atoi(fd_text));
  if (!a) {
    std::fprintf(stderr, "mp_helper: attach: %s\n", a.error().message.c_str());
    return false;
  }
  out = std::move(*a);
  return true;
}

std::uint32_t register_self(Arena& a, const char* name) {
  auto s = a.register_participant(Role::worker, getpid(), name);
  if (!s) {
    std::fprintf(stderr, "mp_helper: register: %s\n", s.error().message.c_str());
    std::exit(1);
  }
  std::printf("slot %u\n", *s);
  std::fflush(stdout);
  return *s;
}

int slab_loop(Arena& a, std::uint64_t seed) {
  const std::uint32_t me = register_self(a, "mp-slab");
  Slab slab(a, me);
  std::mt19937_64 rng(seed);
  std::vector<BlockHandle> held;
  for (;;) {
    if (held.size() < 16 && (held.empty() || rng() % 2 == 0)) {
      BlockView v;
      if (slab.try_alloc(rng() % 65536, v) == AllocStatus::ok) {
        std::memset(v.data, static_cast<int>(me), 64);
        held.push_back(v.handle);
      }
    } else if (!held.empty()) {
      const std::size_t k = rng() % held.size();
      if (slab.free(held[k]) != Errc::ok) return 4;
      held[k] = held.back();
      held.pop_back();
    }
  }
}

int producer(Arena& a, std::uint32_t ring, std::uint64_t count, std::uint64_t seed) {
  const std::uint32_t me = register_self(a, "mp-producer");
  Slab slab(a, me);
  RingProducer prod(a, ring);
  std::mt19937_64 rng(seed);
  WaitPolicy pol;
  pol.spin_ns = 5'000;
  for (std::uint64_t seq = 0; count == 0 || seq < count;) {
    BlockView v;
    const std::uint64_t bytes = 1 + rng() % 8192;
    if (slab.try_alloc(bytes, v) != AllocStatus::ok) {
      std::this_thread::yield();
      continue;
    }
    mp::fill(v.data, bytes, seq);
    const TileDesc d = mp::desc(seq, me, v.handle.raw, static_cast<std::uint32_t>(bytes));
    for (;;) {
      const RingStatus st = prod.try_push(d);
      if (st == RingStatus::ok) break;
      if (st != RingStatus::full) return 4;
      if (doorbell_wait(prod.producer_doorbell(), [&] { return prod.free_approx() > 0; }, Clock::now() + 30s,
                        pol) != WaitStatus::ready)
        return 5;
    }
    prod.notify();
    ++seq;
  }
  return 0;
}

int consumer(Arena& a, std::uint32_t ring, std::uint64_t count, std::uint32_t from) {
  const std::uint32_t me = register_self(a, "mp-consumer");
  Slab slab(a, me);
  RingConsumer cons(a, ring);
  WaitPolicy pol;
  pol.spin_ns = 5'000;
  std::uint64_t expect = 0;
  while (count == 0 || expect < count) {
    if (doorbell_wait(cons.consumer_doorbell(), [&] { return cons.ready(); }, Clock::now() + 30s, pol) !=
        WaitStatus::ready)
      return 5;
    TileDesc d;
    RingStatus st;
    while ((st = cons.try_pop(d)) == RingStatus::ok) {
      cons.notify();
      if (d.seq() != expect) return 2;
      ++expect;
      const BlockHandle h{d.block()};
      BlockView v;
      if (slab.resolve(h, v) != Errc::ok) return 4;
      if (!mp::check(v.data, d.nbytes(), d.seq())) return 3;
      if (slab.adopt(h, from) != Errc::ok) return 4;
      if (slab.free(h) != Errc::ok) return 4;
    }
    if (st == RingStatus::corrupt) return 4;
  }
  return 0;
}

int create_and_hold(const char* name, std::uint32_t nblocks) {
  ArenaConfig cfg;
  cfg.classes = {{64 * 1024, 16}, {1024 * 1024, 4}};
  cfg.n_rings = 4;
  cfg.ring_capacity = 64;
  cfg.prefault = false;
  cfg.debug_name = name;
  auto a = Arena::create(cfg);
  if (!a) {
    std::fprintf(stderr, "mp_helper: create: %s\n", a.error().message.c_str());
    return 1;
  }
  auto s = a->register_participant(Role::broker, getpid(), "mp-holder");
  if (!s) return 1;
  Slab slab(*a, *s);
  for (std::uint32_t i = 0; i < nblocks; ++i) {
    BlockView v;
    if (slab.try_alloc(i % 2 == 0 ? 1000 : 500'000, v) != AllocStatus::ok) return 4;
  }
  a->reset_ring(1, *s, *s, 2, 3);
  RingProducer prod(*a, 1);
  for (std::uint64_t i = 0; i < 5; ++i)
    if (prod.try_push(mp::desc(i, *s, 0, 0)) != RingStatus::ok) return 4;
  std::printf("ready %u %d\n", *s, a->fd());
  std::fflush(stdout);
  for (;;) pause();  // the test kills us
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string role = argv[1];
  if (role == "create-and-hold" && argc == 4) return create_and_hold(argv[2], static_cast<std::uint32_t>(std::atoi(argv[3])));
  Arena a;
  if (!attach(argv[2], a)) return 1;
  auto num = [&](int i) { return std::strtoull(argv[i], nullptr, 10); };
  if (role == "slab-loop" && argc == 4) return slab_loop(a, num(3));
  if (role == "producer" && argc == 6) return producer(a, static_cast<std::uint32_t>(num(3)), num(4), num(5));
  if (role == "consumer" && argc == 6)
    return consumer(a, static_cast<std::uint32_t>(num(3)), num(4), static_cast<std::uint32_t>(num(5)));
  if (role == "hold" && argc == 3) {
    std::printf("attached\n");
    std::fflush(stdout);
    for (;;) pause();
  }
  return usage();
}
