// Worker SDK data path with real worker processes: zero copy both ways, per-tile
// error isolation, forged/stale/foreign requests, kill -9 mid-tile.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include <tessera/ring.hpp>

#include "host.hpp"

using namespace std::chrono_literals;
using tessera::Outcome;
using tessera::test::Rig;
using tessera::test::WorkerProc;

namespace {

const std::string kTissue = tessera::test::kBinDir + "/tessera-tissue-worker";
const std::string kSdkWorker = tessera::test::kBinDir + "/tessera-sdk-test-worker";

std::uint64_t offset_in(const tessera::Arena& a, const std::byte* p) { return static_cast<std::uint64_t>(p - a.base()); }

}  // namespace

TEST(WorkerDataPath, WorkerReadsTheClientsBlockInPlaceAndTheClientReadsTheWorkersOutputInPlace) {
  Rig rig;
  rig.add({kSdkWorker});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  constexpr int kTiles = 20;
  std::vector<std::uint64_t> in_offsets, sums;
  for (int i = 0; i < kTiles; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE(rig.client->alloc(4096, in, 5s).has_value());
    std::uint64_t sum = 0;
    for (std::size_t k = 0; k < 4096; ++k) {
      const auto v = static_cast<std::uint8_t>((k * 7 + static_cast<std::size_t>(i)) & 0xff);
      in.bytes()[k] = static_cast<std::byte>(v);
      sum += v;
    }
    in_offsets.push_back(offset_in(rig.client->arena(), in.bytes().data()));
    sums.push_back(sum);
    ASSERT_TRUE(rig.client->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {4096}, .op = 0}).has_value());
  }
  auto got = rig.collect(kTiles);
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kTiles));
  for (int i = 0; i < kTiles; ++i) {
    const auto& r = got[static_cast<std::size_t>(i)];
    ASSERT_EQ(r.outcome, Outcome::completed) << r.error;
    const auto o = r.output.view().as<const std::uint64_t>();
    ASSERT_EQ(o.size(), 3u);
    EXPECT_EQ(o[0], in_offsets[static_cast<std::size_t>(i)]) << "the worker read another address than the client's block";
    EXPECT_EQ(o[1], offset_in(rig.client->arena(), r.output.view().data()))
        << "the client reads the result somewhere else than where the worker wrote it";
    EXPECT_EQ(o[2], sums[static_cast<std::size_t>(i)]) << "the worker saw other bytes";
  }
}

// The example worker's op 0 (tissue mask) against the rule written out here: 255 where
// R + G + B < 3 x 200, else 0. Pixels on both sides of the threshold and random ones, in
// tiles whose pixel counts leave every rest after the vector loop (the worker runs the
// AVX2 copy of the loop where the CPU has it, the SSE2 baseline elsewhere).
TEST(ExampleWorker, TissueMaskIsTheRuleOnEveryPixel) {
  Rig rig;
  rig.add({kTissue});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  std::vector<std::vector<std::uint8_t>> expect;
  std::uint64_t x = 0x2545F4914F6CDD1Dull;  // xorshift: a fixed, replayable stream
  const auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return static_cast<std::uint8_t>(x >> 56);
  };
  for (const auto& [h, w] : {std::pair{1, 1}, std::pair{7, 13}, std::pair{33, 31}, std::pair{240, 240}, std::pair{17, 257}}) {
    const std::size_t n = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
    std::vector<std::uint8_t> rgb(n * 3);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint8_t* p = &rgb[3 * i];
      if (i % 3 == 0) {
        // A sum of 599, 600 or 601, spread over the channels in a random way.
        const int sum = 599 + static_cast<int>(i / 3 % 3);
        const int r = std::min(255, sum - 2 * (next() % 90) - 90);
        const int g = std::min(255, (sum - r) / 2);
        p[0] = static_cast<std::uint8_t>(r);
        p[1] = static_cast<std::uint8_t>(g);
        p[2] = static_cast<std::uint8_t>(sum - r - g);
        ASSERT_EQ(p[0] + p[1] + p[2], sum);
      } else {
        p[0] = next();
        p[1] = next();
        p[2] = next();
      }
    }
    std::vector<std::uint8_t> m(n);
    for (std::size_t i = 0; i < n; ++i) m[i] = rgb[3 * i] + rgb[3 * i + 1] + rgb[3 * i + 2] < 600 ? 255 : 0;
    expect.push_back(std::move(m));
    tessera::InputBlock in;
    ASSERT_TRUE(rig.client->alloc(rgb.size(), in, 5s).has_value());
    std::memcpy(in.bytes().data(), rgb.data(), rgb.size());
    const tessera::TileMeta meta{.dtype = tessera::DType::UInt8,
                                 .shape = {static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(w), 3},
                                 .op = 0};
    ASSERT_TRUE(rig.client->submit(s, in, meta).has_value());
  }
  auto got = rig.collect(expect.size());
  ASSERT_EQ(got.size(), expect.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
    const auto o = got[i].output.view().as<const std::uint8_t>();
    ASSERT_EQ(o.size(), expect[i].size());
    EXPECT_TRUE(std::equal(o.begin(), o.end(), expect[i].begin())) << "tile " << i;
  }
}

// The example worker's op 1 (mean of every byte) against a plain loop: a constant tile of
// every byte value 0..255, and random tiles whose lengths leave every kind of rest after
// the 64-byte PSADBW blocks (none, whole 8-byte SWAR words, single bytes), and a tile
// shorter than one block (without SSE2: several SWAR flushes plus a tail).
TEST(ExampleWorker, MeanOfEveryByteIsExactForEveryByteValue) {
  Rig rig;
  rig.add({kTissue});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  std::vector<float> expect;
  const auto submit = [&](const std::vector<std::uint8_t>& bytes) {
    tessera::InputBlock in;
    ASSERT_TRUE(rig.client->alloc(bytes.size(), in, 5s).has_value());
    std::memcpy(in.bytes().data(), bytes.data(), bytes.size());
    std::uint64_t sum = 0;
    for (const std::uint8_t v : bytes) sum += v;
    expect.push_back(static_cast<float>(static_cast<double>(sum) / static_cast<double>(bytes.size())));
    const auto len = static_cast<std::uint32_t>(bytes.size());
    ASSERT_TRUE(rig.client->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = {len}, .op = 1}).has_value());
  };
  for (int v = 0; v < 256; ++v) submit(std::vector<std::uint8_t>(16 * 16 * 3, static_cast<std::uint8_t>(v)));
  submit(std::vector<std::uint8_t>(65536, 255));  // 8,192 words: 64 flushes of full lanes
  std::uint64_t x = 0x9E3779B97F4A7C15ull;  // xorshift: a fixed, replayable stream
  for (const std::size_t len : {std::size_t{12291}, std::size_t{65533}, std::size_t{7}}) {
    std::vector<std::uint8_t> bytes(len);
    for (auto& b : bytes) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b = static_cast<std::uint8_t>(x >> 56);
    }
    submit(bytes);
  }
  auto got = rig.collect(expect.size());
  ASSERT_EQ(got.size(), expect.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
    const auto o = got[i].output.view().as<const float>();
    ASSERT_EQ(o.size(), 1u);
    EXPECT_EQ(o[0], expect[i]) << "tile " << i << (i < 256 ? " (constant " + std::to_string(i) + ")" : " (random)");
  }
}

TEST(WorkerDataPath, AHandlerErrorFailsOnlyThatTileWithItsMessage) {
  Rig rig;
  rig.add({kSdkWorker});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  for (int i = 0; i < 9; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE(rig.client->alloc(64, in, 5s).has_value());
    ASSERT_TRUE(rig.client->submit(s, in, {.shape = {64}, .op = static_cast<std::uint32_t>(i % 3 == 1 ? 2 : 0)}).has_value());
  }
  auto got = rig.collect(9);
  ASSERT_EQ(got.size(), 9u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (i % 3 == 1) {
      EXPECT_EQ(got[i].outcome, Outcome::failed);
      EXPECT_EQ(got[i].status, tessera::TileStatus::HandlerError);
      EXPECT_NE(got[i].error.find("op 2 always throws (tile " + std::to_string(i) + ")"), std::string::npos) << got[i].error;
    } else {
      EXPECT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
    }
  }
}

// Requests pushed straight into the channel's request ring, as a buggy or hostile
// client could: the worker answers each with the right status and carries on.
class ForgedRequests : public ::testing::Test {
 protected:
  void SetUp() override {
    worker_ = &rig_.add({kTissue});
    const tessera::Arena& a = rig_.client->arena();
    for (std::uint32_t c = 0; c < a.n_channels(); ++c) {
      const tessera::Channel& ch = a.channel(c);
      // acquire: SYNC[channel.state]; the channel was opened by this thread anyway.
      if (ch.state.load(std::memory_order_acquire) == static_cast<std::uint32_t>(tessera::ChannelState::open) &&
          ch.worker_slot == rig_.ews[0].slot) {
        requests_ = tessera::RingProducer(a, ch.request_ring);
        results_ = tessera::RingConsumer(a, ch.response_ring);
        client_slot_ = ch.client_slot;
      }
    }
    ASSERT_TRUE(requests_.valid());
  }

  tessera::TileDesc request(std::uint64_t seq, std::uint64_t block, tessera::DType dtype, const tessera::Shape& shape,
                            std::uint64_t nbytes) {
    tessera::TileDesc d{};
    d.mutate_seq(seq);
    d.mutate_block(block);
    d.mutate_kind(tessera::fb::Kind::Request);
    tessera::set_desc_tensor(d, dtype, shape, nbytes);
    return d;
  }

  // Pushes one descriptor and waits for its answer (10 s at most).
  tessera::TileDesc roundtrip(const tessera::TileDesc& d) {
    EXPECT_EQ(requests_.try_push(d), tessera::RingStatus::ok);
    requests_.notify();
    tessera::TileDesc r{};
    const auto end = std::chrono::steady_clock::now() + 10s;
    while (results_.try_pop(r) != tessera::RingStatus::ok) {
      if (std::chrono::steady_clock::now() > end) {
        ADD_FAILURE() << "no answer for seq " << d.seq() << "; stderr: " << worker_->stderr_text();
        return r;
      }
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(r.seq(), d.seq());
    return r;
  }

  // Takes over the answer's block (output or error text) and returns the text, then frees it.
  std::string take_block(const tessera::TileDesc& r) {
    std::string text;
    if (r.block() == 0) return text;
    tessera::Slab slab(rig_.client->arena(), client_slot_);
    const tessera::BlockHandle h{r.block()};
    EXPECT_EQ(slab.adopt(h, rig_.ews[0].slot), tessera::Errc::ok);
    tessera::BlockView b;
    if (slab.resolve(h, b) == tessera::Errc::ok && r.kind() == tessera::fb::Kind::Error)
      text.assign(reinterpret_cast<const char*>(b.data), r.nbytes());
    EXPECT_EQ(slab.free(h), tessera::Errc::ok);
    return text;
  }

  tessera::BlockView tissue_block(tessera::Slab& slab) {
    tessera::BlockView b;
    EXPECT_EQ(slab.try_alloc(16 * 16 * 3, b), tessera::AllocStatus::ok);
    for (std::size_t i = 0; i < 16 * 16 * 3; ++i) b.data[i] = static_cast<std::byte>(i % 3 == 0 ? 10 : 250);
    return b;
  }

  Rig rig_;
  WorkerProc* worker_ = nullptr;
  tessera::RingProducer requests_;
  tessera::RingConsumer results_;
  std::uint32_t client_slot_ = tessera::kNoSlot;
};

TEST_F(ForgedRequests, EachBadRequestGetsItsStatusAndTheWorkerCarriesOn) {
  tessera::Slab slab(rig_.client->arena(), client_slot_);
  const tessera::Shape rgb{16, 16, 3};
  const auto ok_request = [&](std::uint64_t seq) {
    const auto b = tissue_block(slab);
    const auto r = roundtrip(request(seq, b.handle.raw, tessera::DType::UInt8, rgb, 768));
    EXPECT_EQ(r.kind(), tessera::fb::Kind::Result);
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::Ok));
    (void)take_block(r);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  };
  ok_request(1);

  {  // stale: the block was freed (its generation moved on)
    const auto b = tissue_block(slab);
    ASSERT_EQ(slab.free(b.handle), tessera::Errc::ok);
    const auto r = roundtrip(request(2, b.handle.raw, tessera::DType::UInt8, rgb, 768));
    EXPECT_EQ(r.kind(), tessera::fb::Kind::Error);
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::StaleBlock));
    EXPECT_NE(take_block(r).find("input block rejected"), std::string::npos);
  }
  {  // forged: class and index out of range
    const auto r = roundtrip(request(3, tessera::BlockHandle::make(12345, 7, 999999).raw, tessera::DType::UInt8, rgb, 768));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::StaleBlock));
    (void)take_block(r);
  }
  {  // foreign: a live block held by another participant, not this channel's client
    // Another worker's slot (registered, never started): a participant other than the client.
    const auto other = rig_.client->add_external_worker("other").value();
    tessera::Slab theirs(rig_.client->arena(), other.slot);
    tessera::BlockView b;
    ASSERT_EQ(theirs.try_alloc(768, b), tessera::AllocStatus::ok);
    const auto r = roundtrip(request(4, b.handle.raw, tessera::DType::UInt8, rgb, 768));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::StaleBlock));
    EXPECT_NE(take_block(r).find("not held by this channel's client"), std::string::npos);
    EXPECT_EQ(theirs.free(b.handle), tessera::Errc::ok);
  }
  {  // shape larger than the block
    const auto b = tissue_block(slab);
    const auto r = roundtrip(request(5, b.handle.raw, tessera::DType::UInt8, {1000, 1000, 3}, 3'000'000));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput));
    EXPECT_NE(take_block(r).find("input tensor invalid"), std::string::npos);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  {  // unknown dtype
    const auto b = tissue_block(slab);
    const auto r = roundtrip(request(6, b.handle.raw, tessera::DType::Invalid, rgb, 768));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput));
    (void)take_block(r);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  {  // nbytes disagrees with dtype x shape
    const auto b = tissue_block(slab);
    const auto r = roundtrip(request(7, b.handle.raw, tessera::DType::UInt8, rgb, 100));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput));
    (void)take_block(r);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  {  // a valid tensor of the wrong dtype for this handler
    const auto b = tissue_block(slab);
    const auto r = roundtrip(request(8, b.handle.raw, tessera::DType::Float32, {4, 4}, 64));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput));
    EXPECT_NE(take_block(r).find("mask needs uint8"), std::string::npos);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  ok_request(9);

  // The worker counted what it rejected, and holds nothing.
  ASSERT_TRUE(worker_->execute("st", "tessera.stats"));
  auto done = worker_->await_terminal("st");
  ASSERT_TRUE(done.has_value());
  // Requests 2-7 are rejected by the SDK before any handler runs; 8 fails in the handler.
  EXPECT_EQ(done->outputs->at("rejected").to_number<std::uint64_t>(), 6u);
  EXPECT_EQ(done->outputs->at("taken").to_number<std::uint64_t>(), 9u);
  EXPECT_EQ(tessera::Slab::count_held(rig_.client->arena(), rig_.ews[0].slot), 0u);
  EXPECT_EQ(tessera::Slab::count_held(rig_.client->arena(), client_slot_), 0u);
}

TEST(WorkerDataPath, KillNineMidTileReturnsItsBlocksAndEveryTileGetsExactlyOneOutcome) {
  Rig rig;
  WorkerProc& w = rig.add({kSdkWorker});
  const std::uint32_t slot = rig.ews[0].slot;
  auto s = rig.client->open_stream().value();
  constexpr int kTiles = 6;
  for (int i = 0; i < kTiles; ++i) {
    tessera::InputBlock in;
    ASSERT_TRUE(rig.client->alloc(64, in, 5s).has_value());
    ASSERT_TRUE(rig.client->submit(s, in, {.shape = {64}, .op = 5}).has_value());
  }
  // Wait until the worker holds an output block (it is inside the handler).
  const auto end = std::chrono::steady_clock::now() + 10s;
  while (tessera::Slab::count_held(rig.client->arena(), slot) == 0 && std::chrono::steady_clock::now() < end) {
    std::vector<tessera::TileResult> none;
    rig.client->poll(none, 1, 5ms);
    ASSERT_TRUE(none.empty()) << "a held tile was answered early";
  }
  ASSERT_GT(tessera::Slab::count_held(rig.client->arena(), slot), 0u) << w.stderr_text();
  ASSERT_EQ(::kill(w.pid, SIGKILL), 0);
  EXPECT_EQ(w.wait_exit(), 128 + SIGKILL);
  rig.client->worker_died(rig.ews[0].index, "killed by signal 9");
  EXPECT_EQ(tessera::Slab::count_held(rig.client->arena(), slot), 0u) << "the dead worker's blocks were not reclaimed";

  auto got = rig.collect(kTiles, 10s);
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kTiles));
  std::set<std::uint64_t> seqs;
  for (const auto& r : got) {
    EXPECT_TRUE(seqs.insert(r.seq).second) << "duplicate outcome for seq " << r.seq;
    EXPECT_EQ(r.outcome, Outcome::failed);
    EXPECT_EQ(r.status, tessera::TileStatus::WorkerDied);
    EXPECT_NE(r.error.find("signal 9"), std::string::npos) << r.error;
  }
  std::vector<tessera::TileResult> extra;
  rig.client->poll(extra, 16, 100ms);
  EXPECT_TRUE(extra.empty()) << "more outcomes than tiles";
  got.clear();
  EXPECT_EQ(tessera::Slab::count_held(rig.client->arena(), tessera::kNoSlot), 0u);
}

TEST_F(ForgedRequests, AShapeWhoseByteCountOverflowsOrIsEmptyIsRejectedBeforeAnyHandler) {
  tessera::Slab slab(rig_.client->arena(), client_slot_);
  // 4294967295 * 4294967295 * 12288 * 2863311531 wraps to 4096 in 64 bits.
  const tessera::Shape wraps{4294967295u, 4294967295u, 12288u, 2863311531u};
  std::uint64_t seq = 1;
  for (const std::uint64_t nbytes : {std::uint64_t{4096}, std::uint64_t{0}}) {
    tessera::BlockView b;
    ASSERT_EQ(slab.try_alloc(4096, b), tessera::AllocStatus::ok);
    const auto r = roundtrip(request(seq++, b.handle.raw, tessera::DType::UInt8, wraps, nbytes));
    EXPECT_EQ(r.kind(), tessera::fb::Kind::Error) << "nbytes " << nbytes;
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput)) << "nbytes " << nbytes;
    EXPECT_NE(take_block(r).find("input tensor invalid"), std::string::npos);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  {  // a zero dimension: 0 bytes stated, 0 computed, still no tile
    tessera::BlockView b;
    ASSERT_EQ(slab.try_alloc(4096, b), tessera::AllocStatus::ok);
    const auto r = roundtrip(request(seq++, b.handle.raw, tessera::DType::UInt8, {16, 16, 3, 0}, 0));
    EXPECT_EQ(r.status(), static_cast<std::uint16_t>(tessera::TileStatus::BadInput));
    (void)take_block(r);
    EXPECT_EQ(slab.free(b.handle), tessera::Errc::ok);
  }
  {  // the client side refuses the same shape at the call
    tessera::InputBlock in;
    ASSERT_TRUE(rig_.client->alloc(4096, in, 1s).has_value());
    tessera::TileMeta m;
    m.shape = wraps;
    const auto st = rig_.client->open_stream().value();
    const auto sub = rig_.client->submit(st, in, m);
    ASSERT_FALSE(sub.has_value());
    EXPECT_EQ(sub.error().code, tessera::Errc::invalid_argument);
    EXPECT_NE(sub.error().message.find("overflows"), std::string::npos) << sub.error().message;
  }
  ASSERT_TRUE(worker_->execute("st", "tessera.stats"));
  auto done = worker_->await_terminal("st");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->outputs->at("rejected").to_number<std::uint64_t>(), 3u);
  EXPECT_EQ(tessera::Slab::count_held(rig_.client->arena(), rig_.ews[0].slot), 0u);
}
