// Batch handlers (tessera::serve_batched) in a real worker process: assembly and
// publication in order, uneven batches, mixed shapes, the partial-batch deadline,
// per-tile failures and exceptions inside a batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "host.hpp"

using namespace std::chrono_literals;
using tessera::Outcome;
using tessera::test::Rig;

namespace {

const std::string kBatchWorker = tessera::test::kBinDir + "/tessera-sdk-batch-worker";

tessera::ClientOptions batch_client_options() {
  auto o = tessera::test::small_client_options();
  o.arena.ring_capacity = 128;
  o.worker_window = 128;
  return o;
}

struct Sent {
  std::vector<std::uint64_t> sums;
  std::vector<std::uint64_t> bytes;
};

// Submits one tile per entry of `shapes` (uint8, contents from the index), op from `ops`.
Sent submit(Rig& rig, std::uint32_t s, const std::vector<tessera::Shape>& shapes, const std::vector<std::uint32_t>& ops) {
  Sent sent;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const std::size_t n = shapes[i].elements();
    tessera::InputBlock in;
    EXPECT_TRUE(rig.client->alloc(n, in, 5s).has_value());
    std::uint64_t sum = 0;
    for (std::size_t k = 0; k < n; ++k) {
      const auto v = static_cast<std::uint8_t>((k * 13 + i * 7) & 0xff);
      in.bytes()[k] = static_cast<std::byte>(v);
      sum += v;
    }
    sent.sums.push_back(sum);
    sent.bytes.push_back(n);
    EXPECT_TRUE(rig.client->submit(s, in, {.dtype = tessera::DType::UInt8, .shape = shapes[i], .x = static_cast<std::int32_t>(i), .op = ops[i]})
                    .has_value());
  }
  return sent;
}

std::span<const std::uint64_t> words(const tessera::TileResult& r) { return r.output.view().as<const std::uint64_t>(); }

}  // namespace

TEST(BatchHandler, OutputsLandInTheirTilesInOrderWithUnevenBatches) {
  Rig rig(batch_client_options());
  rig.add({kBatchWorker, "32", "200"});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  const Sent sent = submit(rig, s, std::vector<tessera::Shape>(70, tessera::Shape{256}), std::vector<std::uint32_t>(70, 0));
  auto got = rig.collect(70);
  ASSERT_EQ(got.size(), 70u);
  std::set<std::uint64_t> sizes;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
    const auto o = words(got[i]);
    ASSERT_EQ(o.size(), 4u);
    EXPECT_EQ(o[0], i) << "a batch slice went to another tile";
    EXPECT_EQ(o[1], sent.sums[i]) << "the assembled batch holds other bytes for this tile";
    EXPECT_LE(o[2], 32u);
    sizes.insert(o[2]);
  }
  EXPECT_TRUE(sizes.count(32)) << "no full batch formed";
  EXPECT_TRUE(sizes.count(70 % 32)) << "the last, uneven batch is missing";
}

TEST(BatchHandler, MixedShapesAreSplitIntoUniformBatches) {
  Rig rig(batch_client_options());
  rig.add({kBatchWorker, "8", "100"});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  const std::vector<tessera::Shape> kinds = {{64}, {16, 8}, {4, 4, 3}};
  std::vector<tessera::Shape> shapes;
  for (int i = 0; i < 45; ++i) shapes.push_back(kinds[static_cast<std::size_t>(i) % 3]);
  const Sent sent = submit(rig, s, shapes, std::vector<std::uint32_t>(shapes.size(), 0));
  auto got = rig.collect(shapes.size());
  ASSERT_EQ(got.size(), shapes.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
    const auto o = words(got[i]);
    EXPECT_EQ(o[0], i);
    EXPECT_EQ(o[1], sent.sums[i]);
    EXPECT_LE(o[2], 8u);
    EXPECT_EQ(o[3], sent.bytes[i]) << "tile " << i << " ran in a batch of another shape";
  }
}

TEST(BatchHandler, APartialBatchGoesAfterMaxWait) {
  Rig rig(batch_client_options());
  rig.add({kBatchWorker, "32", "600"});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  const auto t0 = std::chrono::steady_clock::now();
  (void)submit(rig, s, std::vector<tessera::Shape>(3, tessera::Shape{64}), {0, 0, 0});
  auto got = rig.collect(3);
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(got.size(), 3u);
  for (const auto& r : got) {
    ASSERT_EQ(r.outcome, Outcome::completed) << r.error;
    EXPECT_EQ(words(r)[2], 3u) << "the three tiles were not one partial batch";
  }
  EXPECT_GE(elapsed, 500ms) << "a partial batch ran before max_wait";
  EXPECT_LT(elapsed, 20s);
}

TEST(BatchHandler, AHandlerFailsSingleTilesAndPublishesTheRest) {
  Rig rig(batch_client_options());
  rig.add({kBatchWorker, "16", "50"});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  const Sent sent = submit(rig, s, std::vector<tessera::Shape>(30, tessera::Shape{32}), std::vector<std::uint32_t>(30, 1));
  auto got = rig.collect(30);
  ASSERT_EQ(got.size(), 30u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (i % 3 == 0) {
      EXPECT_EQ(got[i].outcome, Outcome::failed);
      EXPECT_NE(got[i].error.find("x=" + std::to_string(i) + " is a multiple of 3"), std::string::npos) << got[i].error;
    } else {
      ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
      EXPECT_EQ(words(got[i])[0], i);
      EXPECT_EQ(words(got[i])[1], sent.sums[i]);
    }
  }
}

TEST(BatchHandler, AnExceptionFailsEveryTileOfItsBatchOnly) {
  Rig rig(batch_client_options());
  rig.add({kBatchWorker, "16", "50"});
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  // The throwing tiles have their own shape, hence their own batch.
  std::vector<tessera::Shape> shapes;
  std::vector<std::uint32_t> ops;
  for (int i = 0; i < 14; ++i) {
    const bool bad = i >= 5 && i < 9;
    shapes.push_back(bad ? tessera::Shape{48} : tessera::Shape{32});
    ops.push_back(bad ? 2 : 0);
  }
  (void)submit(rig, s, shapes, ops);
  auto got = rig.collect(shapes.size());
  ASSERT_EQ(got.size(), shapes.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (ops[i] == 2) {
      EXPECT_EQ(got[i].outcome, Outcome::failed);
      EXPECT_NE(got[i].error.find("op 2 throws"), std::string::npos) << got[i].error;
    } else {
      ASSERT_EQ(got[i].outcome, Outcome::completed) << got[i].error;
      EXPECT_EQ(words(got[i])[0], i);
    }
  }
}
