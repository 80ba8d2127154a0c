// The client's tile records and its reaction to a corrupting worker, driven from the
// test itself as the worker (the arena attached a second time, its rings used
// directly), so every step happens exactly when the test says.
#include <gtest/gtest.h>

#include <unistd.h>

#include <tessera/client.hpp>
#include <tessera/ring.hpp>

using namespace std::chrono_literals;
using tessera::Client;
using tessera::Outcome;
using tessera::TileResult;

namespace {

tessera::ClientOptions small_options() {
  tessera::ClientOptions o;
  o.arena.classes = {{4096, 64}};
  o.arena.n_rings = 8;
  o.arena.ring_capacity = 16;
  o.wait.spin_ns = 10'000;
  return o;
}

// The test's side of one external worker: its channel's rings in a second mapping.
struct FakeWorker {
  tessera::Arena arena;
  std::uint32_t slot = 0;
  std::uint32_t channel = 0;

  static FakeWorker attach(Client& c, std::int32_t& index) {
    auto ew = c.add_external_worker("fake").value();
    index = ew.index;
    FakeWorker w{tessera::Arena::attach_fd(::dup(ew.arena_fd)).value(), ew.slot, 0};
    for (std::uint32_t ch = 0; ch < w.arena.n_channels(); ++ch)
      if (w.arena.channel(ch).state.load(std::memory_order_acquire) == static_cast<std::uint32_t>(tessera::ChannelState::open) &&
          w.arena.channel(ch).worker_slot == ew.slot)
        w.channel = ch;
    c.set_worker_pid(ew.index, static_cast<int>(::getpid()));
    return w;
  }

  std::size_t take(std::vector<tessera::TileDesc>& out) {
    tessera::RingConsumer requests(arena, arena.channel(channel).request_ring);
    out.resize(16);
    const std::size_t n = requests.try_pop_batch({out.data(), out.size()});
    out.resize(n);
    return n;
  }
};

std::uint64_t submit(Client& c, std::uint32_t stream) {
  tessera::InputBlock in;
  EXPECT_TRUE(c.alloc(64, in, 1s).has_value());
  tessera::TileMeta m;
  m.shape = {64};
  return c.submit(stream, in, m).value();
}

std::vector<TileResult> collect(Client& c, std::size_t n) {
  std::vector<TileResult> got;
  const auto end = tessera::Clock::now() + 5s;
  while (got.size() < n && tessera::Clock::now() < end) c.poll(got, n - got.size(), 50ms);
  return got;
}

TEST(ClientRecords, CorruptResultRingIsTheWorkersDeathNeverAnEmptyRing) {
  auto client = Client::embedded(small_options()).value();
  std::int32_t index = -1;
  FakeWorker w = FakeWorker::attach(*client, index);
  const auto stream = client->open_stream({}).value();
  const auto seq = submit(*client, stream);
  std::vector<tessera::TileDesc> taken;
  ASSERT_EQ(w.take(taken), 1u);
  // The worker writes an index no ring can have: more than its capacity ahead of the head.
  auto& ring = w.arena.ring(w.arena.channel(w.channel).response_ring);
  ring.tail.store(ring.head.load(std::memory_order_relaxed) + 1000, std::memory_order_release);
  const auto got = collect(*client, 1);
  ASSERT_EQ(got.size(), 1u) << "the tile got no outcome: the corrupt ring was read as empty";
  EXPECT_EQ(got[0].seq, seq);
  EXPECT_EQ(got[0].outcome, Outcome::failed);
  EXPECT_NE(got[0].error.find("corrupted its result ring"), std::string::npos) << got[0].error;
  EXPECT_NE(got[0].error.find("tail"), std::string::npos) << "what was seen is named: " << got[0].error;
  EXPECT_FALSE(client->workers()[static_cast<std::size_t>(index)].alive);
  EXPECT_EQ(tessera::Slab::count_held(client->arena(), w.slot), 0u);
}

TEST(ClientRecords, AnswerForAStreamNeverOpenedIsTheWorkersDeath) {
  auto client = Client::embedded(small_options()).value();
  std::int32_t index = -1;
  FakeWorker w = FakeWorker::attach(*client, index);
  const auto stream = client->open_stream({}).value();
  submit(*client, stream);
  std::vector<tessera::TileDesc> taken;
  ASSERT_EQ(w.take(taken), 1u);
  tessera::TileDesc answer = taken[0];
  answer.mutate_stream(9);  // this client opened stream 0 only
  answer.mutate_kind(tessera::fb::Kind::Canceled);
  answer.mutate_block(0);
  tessera::RingProducer results(w.arena, w.arena.channel(w.channel).response_ring);
  ASSERT_EQ(results.try_push(answer), tessera::RingStatus::ok);
  results.notify();
  const auto got = collect(*client, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::failed);
  EXPECT_NE(got[0].error.find("stream 9"), std::string::npos) << got[0].error;
  EXPECT_FALSE(client->workers()[static_cast<std::size_t>(index)].alive);
}

TEST(ClientRecords, OrderedStreamKeepsACanceledTilesOutcomeWhenItsWorkerDies) {
  auto client = Client::embedded(small_options()).value();
  std::int32_t index = -1;
  FakeWorker w = FakeWorker::attach(*client, index);
  tessera::StreamOptions so;
  so.ordering = tessera::Ordering::submission;
  const auto stream = client->open_stream(so).value();
  const auto first = submit(*client, stream);
  const auto second = submit(*client, stream);
  std::vector<tessera::TileDesc> taken;
  ASSERT_EQ(w.take(taken), 2u);
  // The second tile is canceled while the worker holds it (abandoned, its outcome parked
  // behind the first), then the worker dies holding both.
  ASSERT_TRUE(client->cancel(stream, second).has_value());
  client->worker_died(index, "killed by the test");
  const auto got = collect(*client, 2);
  ASSERT_EQ(got.size(), 2u) << "an outcome was lost";
  EXPECT_EQ(got[0].seq, first);
  EXPECT_EQ(got[0].outcome, Outcome::failed);
  EXPECT_EQ(got[1].seq, second);
  EXPECT_EQ(got[1].outcome, Outcome::canceled);
  EXPECT_EQ(client->in_flight(), 0u);
  EXPECT_EQ(tessera::Slab::count_held(client->arena(), w.slot), 0u);
}

}  // namespace
