// The worker C ABI: in process (a client and a C-ABI worker on one arena, one
// thread), and a worker written in C driven over real pipes. Both C headers are
// included in this C++ translation unit on purpose (they must coexist).
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include <tessera/client.h>
#include <tessera/worker.h>

#include "host.hpp"

using namespace std::chrono_literals;
using tessera::Outcome;
using tessera::test::Rig;
using tessera::test::WorkerProc;

namespace {

const std::string kCWorker = tessera::test::kBinDir + "/tessera-sdk-c-worker";

// A client with external worker slots, and C-ABI workers attached to them in this process.
struct InProcess {
  std::unique_ptr<tessera::Client> client = tessera::Client::embedded(tessera::test::small_client_options()).value();
  std::vector<tessera::Client::ExternalWorker> ews;
  std::vector<tessera_worker_t*> workers;
  std::uint32_t stream = client->open_stream().value();

  // dispatch: whether the client sends tiles to this worker.
  tessera_worker_t* open(bool dispatch = true) {
    auto ew = client->add_external_worker("inproc").value();
    if (dispatch) client->set_worker_pid(ew.index, ::getpid());
    ews.push_back(ew);
    const int fd = ::fcntl(ew.arena_fd, F_DUPFD_CLOEXEC, 3);
    ::setenv("TESSERA_ARENA_FD", std::to_string(fd).c_str(), 1);
    ::setenv("TESSERA_SLOT", std::to_string(ew.slot).c_str(), 1);
    tessera_worker_t* w = nullptr;
    tessera_worker_options_t o;
    tessera_worker_options_init(&o);
    o.spin_ns = 1000;
    EXPECT_EQ(tessera_worker_open_env(&o, &w), 0) << tessera_last_error();
    ::unsetenv("TESSERA_ARENA_FD");
    ::unsetenv("TESSERA_SLOT");
    workers.push_back(w);
    return w;
  }
  ~InProcess() {
    for (auto* w : workers) tessera_worker_close(w);
  }
  std::uint64_t submit(std::uint32_t op = 0, std::uint64_t* offset = nullptr) {
    tessera::InputBlock in;
    EXPECT_TRUE(client->alloc(16 * 16 * 3, in, 1s).has_value());
    for (std::size_t i = 0; i < 16 * 16 * 3; ++i) in.bytes()[i] = static_cast<std::byte>(i & 0xff);
    if (offset != nullptr) *offset = static_cast<std::uint64_t>(in.bytes().data() - client->arena().base());
    tessera::TileMeta m;
    m.shape = {16, 16, 3};
    m.level = 2;
    m.x = 5;
    m.y = -7;
    m.op = op;
    m.tag = 42;
    return client->submit(stream, in, m).value();
  }
  tessera_tile_t take_one(tessera_worker_t* w) {
    tessera_tile_t t = 0;
    EXPECT_EQ(tessera_worker_take(w, &t, 1, 1'000'000'000), 1) << tessera_last_error();
    return t;
  }
  std::vector<tessera::TileResult> collect(std::size_t n) {
    std::vector<tessera::TileResult> out;
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (out.size() < n && std::chrono::steady_clock::now() < end) client->poll(out, n - out.size(), 10ms);
    return out;
  }
};

std::uint64_t answer_with_one_byte(tessera_worker_t* w, tessera_tile_t t) {
  const std::uint32_t shape[1] = {1};
  void* data = nullptr;
  std::uint64_t cap = 0;
  tessera_output_t out = 0;
  EXPECT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, shape, 1, &data, &cap, &out), 0) << tessera_last_error();
  static_cast<std::uint8_t*>(data)[0] = 77;
  EXPECT_EQ(tessera_worker_publish(w, t, out), 0) << tessera_last_error();
  return out;
}

}  // namespace

TEST(WorkerCApi, TakeReadsTheTileInPlaceAndPublishReachesTheClient) {
  InProcess p;
  tessera_worker_t* w = p.open();
  std::uint64_t offset = 0;
  const std::uint64_t seq = p.submit(9, &offset);
  const tessera_tile_t t = p.take_one(w);
  tessera_tile_info_t info;
  ASSERT_EQ(tessera_worker_tile_info(w, t, &info), 0) << tessera_last_error();
  EXPECT_EQ(info.seq, seq);
  EXPECT_EQ(info.op, 9u);
  EXPECT_EQ(info.x, 5);
  EXPECT_EQ(info.y, -7);
  EXPECT_EQ(info.level, 2u);
  EXPECT_EQ(info.dtype, TESSERA_DTYPE_UINT8);
  ASSERT_EQ(info.ndim, 3u);
  EXPECT_EQ(info.dims[0], 16u);
  EXPECT_EQ(info.dims[2], 3u);
  EXPECT_EQ(info.dims[3], 0u);
  EXPECT_EQ(info.strides[0], 48);
  EXPECT_EQ(info.strides[2], 1);
  EXPECT_EQ(info.nbytes, 768u);
  EXPECT_EQ(info.arena_offset, offset) << "the worker must read the client's block in place";
  EXPECT_EQ(static_cast<const std::uint8_t*>(info.data)[200], 200);
  EXPECT_EQ(tessera_worker_cancel_requested(w, t), 0);
  answer_with_one_byte(w, t);
  auto got = p.collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::completed) << got[0].error;
  EXPECT_EQ(got[0].meta.tag, 42u);
  ASSERT_EQ(got[0].output.view().nbytes(), 1u);
  EXPECT_EQ(static_cast<std::uint8_t>(got[0].output.view().data()[0]), 77);
  tessera_worker_stats_t st;
  ASSERT_EQ(tessera_worker_stats(w, &st), 0);
  EXPECT_EQ(st.taken, 1u);
  EXPECT_EQ(st.published, 1u);
}

TEST(WorkerCApi, AnsweredTileAndPublishedOutputHandlesAreStale) {
  InProcess p;
  tessera_worker_t* w = p.open();
  p.submit();
  const tessera_tile_t t = p.take_one(w);
  const tessera_output_t out = answer_with_one_byte(w, t);
  tessera_tile_info_t info;
  EXPECT_EQ(tessera_worker_tile_info(w, t, &info), -TESSERA_ESTALE);
  EXPECT_NE(std::string(tessera_last_error()).find("answered"), std::string::npos) << tessera_last_error();
  EXPECT_EQ(tessera_last_error_code(), -TESSERA_ESTALE);
  EXPECT_EQ(tessera_worker_fail(w, t, TESSERA_TILE_HANDLER_ERROR, "late"), -TESSERA_ESTALE);
  EXPECT_EQ(tessera_worker_cancel(w, t), -TESSERA_ESTALE);
  EXPECT_EQ(tessera_worker_free_output(w, out), -TESSERA_ESTALE);
  EXPECT_STREQ(tessera_strerror(-TESSERA_ESTALE), "stale_handle");
  // Exactly one outcome reached the client.
  auto got = p.collect(2);
  EXPECT_EQ(got.size(), 1u);
}

TEST(WorkerCApi, HandlesOfAnotherWorkerOrKindOrForgedAreRejected) {
  InProcess p;
  tessera_worker_t* w1 = p.open(true);
  tessera_worker_t* w2 = p.open(false);  // attached, but the client sends it nothing
  p.submit();
  const tessera_tile_t t = p.take_one(w1);
  tessera_tile_info_t info;
  EXPECT_EQ(tessera_worker_tile_info(w2, t, &info), -TESSERA_EBADHANDLE);
  EXPECT_NE(std::string(tessera_last_error()).find("another worker"), std::string::npos) << tessera_last_error();
  EXPECT_EQ(tessera_worker_cancel(w2, t), -TESSERA_EBADHANDLE);
  const std::uint32_t shape[1] = {8};
  void* data = nullptr;
  tessera_output_t out = 0;
  ASSERT_EQ(tessera_worker_alloc_output(w1, TESSERA_DTYPE_UINT8, shape, 1, &data, nullptr, &out), 0);
  EXPECT_EQ(tessera_worker_tile_info(w1, out, &info), -TESSERA_EBADHANDLE) << "an output handle is not a tile";
  EXPECT_EQ(tessera_worker_publish(w1, out, t), -TESSERA_EBADHANDLE) << "arguments swapped";
  EXPECT_EQ(tessera_worker_publish(w2, t, out), -TESSERA_EBADHANDLE);
  EXPECT_EQ(tessera_worker_tile_info(w1, 0x1234567890abcdefULL, &info), -TESSERA_EBADHANDLE);
  EXPECT_EQ(tessera_worker_tile_info(w1, (t & ~0xffffffULL) | 0xfffff0ULL, &info), -TESSERA_EBADHANDLE);
  EXPECT_EQ(tessera_worker_tile_info(w1, t + (1ULL << 24), &info), -TESSERA_ESTALE) << "wrong generation";
  EXPECT_EQ(tessera_worker_tile_info(w1, 0, &info), -TESSERA_EINVAL);
  // None of it consumed the real handles.
  EXPECT_EQ(tessera_worker_publish(w1, t, out), 0) << tessera_last_error();
  auto got = p.collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::completed);
}

TEST(WorkerCApi, FailCarriesTheMessageAndStatusToTheClient) {
  InProcess p;
  tessera_worker_t* w = p.open();
  p.submit();
  const tessera_tile_t t = p.take_one(w);
  EXPECT_EQ(tessera_worker_fail(w, t, TESSERA_TILE_OK, "not a failure"), -TESSERA_EINVAL);
  ASSERT_EQ(tessera_worker_fail(w, t, TESSERA_TILE_UNSUPPORTED, "boom 7 from C"), 0);
  auto got = p.collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::failed);
  EXPECT_EQ(got[0].status, tessera::TileStatus::Unsupported);
  EXPECT_NE(got[0].error.find("boom 7 from C"), std::string::npos) << got[0].error;
}

TEST(WorkerCApi, CancelRequestedTurnsTrueAfterANewEpoch) {
  InProcess p;
  tessera_worker_t* w = p.open();
  p.submit();
  const tessera_tile_t t = p.take_one(w);
  EXPECT_EQ(tessera_worker_cancel_requested(w, t), 0);
  ASSERT_TRUE(p.client->advance_epoch(p.stream).has_value());
  EXPECT_EQ(tessera_worker_cancel_requested(w, t), 1);
  EXPECT_EQ(tessera_worker_cancel(w, t), 0);
  auto got = p.collect(2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, Outcome::canceled);
}

TEST(WorkerCApi, CloseFailsUnansweredTilesAndFreesUnpublishedOutputs) {
  InProcess p;
  tessera_worker_t* w = p.open();
  p.submit();
  p.submit();
  tessera_tile_t t[2];
  int n = 0;
  for (int i = 0; i < 50 && n < 2; ++i) {
    const int got = tessera_worker_take(w, t + n, static_cast<size_t>(2 - n), 100'000'000);
    ASSERT_GE(got, 0) << tessera_last_error();
    n += got;
  }
  ASSERT_EQ(n, 2);
  const std::uint32_t shape[1] = {100};
  void* data = nullptr;
  tessera_output_t out = 0;
  ASSERT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, shape, 1, &data, nullptr, &out), 0);
  const std::uint32_t slot = p.ews[0].slot;
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), slot), 1u);
  tessera_worker_close(w);
  p.workers.clear();
  auto got = p.collect(2);
  ASSERT_EQ(got.size(), 2u);
  for (const auto& r : got) {
    EXPECT_EQ(r.outcome, Outcome::failed);
    EXPECT_NE(r.error.find("dropped without an answer"), std::string::npos) << r.error;
  }
  got.clear();
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), slot), 0u);
}

TEST(WorkerCApi, BadArgumentsAreErrorsNotCrashes) {
  InProcess p;
  tessera_worker_t* w = p.open();
  tessera_tile_t t = 0;
  EXPECT_EQ(tessera_worker_take(nullptr, &t, 1, 0), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_take(w, nullptr, 1, 0), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_take(w, &t, 0, 0), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_take(w, &t, 1, 0), 0) << "nothing queued: a timeout, not an error";
  const std::uint32_t shape[2] = {4, 4};
  void* data = nullptr;
  tessera_output_t out = 0;
  EXPECT_EQ(tessera_worker_alloc_output(w, 99, shape, 2, &data, nullptr, &out), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, shape, 0, &data, nullptr, &out), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, shape, 5, &data, nullptr, &out), -TESSERA_EINVAL);
  const std::uint32_t huge[2] = {100000, 100000};
  EXPECT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, huge, 2, &data, nullptr, &out), -TESSERA_EINVAL);
  EXPECT_NE(std::string(tessera_last_error()).find("no block class"), std::string::npos) << tessera_last_error();
  EXPECT_EQ(tessera_worker_stats(w, nullptr), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_slot(w), static_cast<int>(p.ews[0].slot));
  EXPECT_EQ(tessera_dtype_size(TESSERA_DTYPE_FLOAT64), 8u);
  EXPECT_EQ(tessera_dtype_size(-1), 0u);
  EXPECT_STREQ(tessera_strerror(12345), "unknown");
  EXPECT_EQ(tessera_set_last_error(TESSERA_ETIMEDOUT, "mine"), -TESSERA_ETIMEDOUT);
  EXPECT_STREQ(tessera_last_error(), "mine");
  tessera_worker_close(nullptr);
}

TEST(WorkerCApi, AllocOutputRejectsAShapeWhoseByteCountOverflows) {
  InProcess p;
  tessera_worker_t* w = p.open();
  // The product wraps to 4096 in 64 bits: a block that small exists, so a wrap would succeed.
  const std::uint32_t wraps[4] = {4294967295u, 4294967295u, 12288u, 2863311531u};
  void* data = nullptr;
  tessera_output_t out = 0;
  EXPECT_EQ(tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, wraps, 4, &data, nullptr, &out), -TESSERA_EINVAL);
  EXPECT_NE(std::string(tessera_last_error()).find("overflows"), std::string::npos) << tessera_last_error();
  EXPECT_EQ(out, 0u);
  EXPECT_EQ(data, nullptr);
  EXPECT_EQ(tessera::Slab::count_held(p.client->arena(), p.ews[0].slot), 0u);
}

// Object handles (tessera_client_t*, tessera_worker_t*) of destroyed objects are stale,
// never dereferenced: under the asan preset a dereference would be a heap-use-after-free.
TEST(CAbiObjectHandles, ClientUseAfterDestroyAndDoubleDestroyAreEinval) {
  const tessera_size_class_t classes[1] = {{4096, 8}};
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  o.classes = classes;
  o.n_classes = 1;
  o.n_rings = 2;
  o.prefault = 0;
  tessera_client_t* c = nullptr;
  ASSERT_EQ(tessera_client_create(&o, &c), 0) << tessera_last_error();
  std::uint32_t stream = 0;
  ASSERT_EQ(tessera_client_open_stream(c, nullptr, &stream), 0) << tessera_last_error();
  tessera_client_destroy(c);
  EXPECT_EQ(tessera_client_open_stream(c, nullptr, &stream), -TESSERA_EINVAL);
  EXPECT_NE(std::string(tessera_last_error()).find("not a live client"), std::string::npos) << tessera_last_error();
  void* data = nullptr;
  tessera_block_t block = 0;
  EXPECT_EQ(tessera_client_alloc(c, 64, 0, &data, nullptr, &block), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_client_in_flight(c), 0u);
  EXPECT_EQ(tessera_client_arena_base(c), nullptr);
  char buf[64];
  EXPECT_EQ(tessera_client_last_error(c, buf, sizeof buf, nullptr), -TESSERA_EINVAL);
  tessera_client_destroy(c);  // double destroy: detected, nothing freed twice
  EXPECT_NE(std::string(tessera_last_error()).find("destroyed twice"), std::string::npos) << tessera_last_error();

  // A new client may get the old one's memory; the old handle stays stale all the same.
  tessera_client_t* c2 = nullptr;
  ASSERT_EQ(tessera_client_create(&o, &c2), 0) << tessera_last_error();
  EXPECT_NE(c2, c);
  EXPECT_EQ(tessera_client_open_stream(c, nullptr, &stream), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_client_open_stream(c2, nullptr, &stream), 0) << tessera_last_error();
  // Forged: an ordinary address, a worker's handle, garbage bits.
  int not_a_client = 0;
  EXPECT_EQ(tessera_client_open_stream(reinterpret_cast<tessera_client_t*>(&not_a_client), nullptr, &stream), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_client_open_stream(reinterpret_cast<tessera_client_t*>(std::uintptr_t{0xdeadbeefc1}), nullptr, &stream),
            -TESSERA_EINVAL);
  tessera_client_destroy(reinterpret_cast<tessera_client_t*>(&not_a_client));  // not freed: not ours
  tessera_client_destroy(c2);
}

TEST(CAbiObjectHandles, WorkerUseAfterCloseAndDoubleCloseAreEinval) {
  InProcess p;
  tessera_worker_t* w = p.open();
  p.workers.clear();
  tessera_worker_close(w);
  tessera_tile_t t = 0;
  EXPECT_EQ(tessera_worker_take(w, &t, 1, 0), -TESSERA_EINVAL);
  EXPECT_NE(std::string(tessera_last_error()).find("not a live worker"), std::string::npos) << tessera_last_error();
  EXPECT_EQ(tessera_worker_slot(w), -TESSERA_EINVAL);
  EXPECT_EQ(tessera_worker_request_stop(w), -TESSERA_EINVAL);
  tessera_worker_close(w);  // double close
  EXPECT_NE(std::string(tessera_last_error()).find("closed twice"), std::string::npos) << tessera_last_error();
  // A client handle is not a worker handle, and the other way round.
  tessera_worker_t* w2 = p.open();
  EXPECT_EQ(tessera_worker_slot(reinterpret_cast<tessera_worker_t*>(p.client.get())), -TESSERA_EINVAL);
  tessera_client_t* as_client = reinterpret_cast<tessera_client_t*>(w2);
  std::uint32_t stream = 0;
  EXPECT_EQ(tessera_client_open_stream(as_client, nullptr, &stream), -TESSERA_EINVAL);
  EXPECT_GE(tessera_worker_slot(w2), 0) << tessera_last_error();
}

TEST(WorkerCApi, RequestStopEndsTake) {
  InProcess p;
  tessera_worker_t* w = p.open();
  ASSERT_EQ(tessera_worker_request_stop(w), 0);
  tessera_tile_t t = 0;
  EXPECT_EQ(tessera_worker_take(w, &t, 1, 1'000'000'000), -TESSERA_ECLOSED);
}

TEST(WorkerCApi, OpenEnvWithoutABrokerNamesTheMissingVariable) {
  ::unsetenv("TESSERA_ARENA_FD");
  tessera_worker_t* w = reinterpret_cast<tessera_worker_t*>(0x1);
  EXPECT_EQ(tessera_worker_open_env(nullptr, &w), -TESSERA_EUNAVAILABLE);
  EXPECT_EQ(w, nullptr);
  EXPECT_NE(std::string(tessera_last_error()).find("TESSERA_ARENA_FD"), std::string::npos) << tessera_last_error();
}

// ---- a worker written in C, over real pipes ----

namespace {
void submit_rgb(Rig& r, std::uint32_t s, std::uint32_t op, std::uint8_t value, std::uint64_t* offset = nullptr) {
  tessera::InputBlock in;
  ASSERT_TRUE(r.client->alloc(16 * 16 * 3, in, 5s).has_value());
  for (std::size_t i = 0; i < 16 * 16 * 3; ++i) in.bytes()[i] = static_cast<std::byte>(value);
  if (offset != nullptr) *offset = static_cast<std::uint64_t>(in.bytes().data() - r.client->arena().base());
  ASSERT_TRUE(r.client->submit(s, in, {.shape = {16, 16, 3}, .op = op}).has_value());
}

void check_c_worker(Rig& rig, bool serve_mode) {
  auto s = rig.client->open_stream({.ordering = tessera::Ordering::submission}).value();
  std::uint64_t off = 0;
  submit_rgb(rig, s, 0, 10);
  submit_rgb(rig, s, 0, 250);
  submit_rgb(rig, s, 1, 1, &off);
  submit_rgb(rig, s, 3, 0);
  submit_rgb(rig, s, 0, 10);
  if (serve_mode) submit_rgb(rig, s, 7, 0);
  const std::size_t n = serve_mode ? 6 : 5;
  auto got = rig.collect(n);
  ASSERT_EQ(got.size(), n) << rig.procs[0].stderr_text();
  ASSERT_EQ(got[0].outcome, Outcome::completed) << got[0].error;
  EXPECT_EQ(got[0].output.view().as<const std::uint8_t>()[0], 255);
  ASSERT_EQ(got[1].outcome, Outcome::completed) << got[1].error;
  EXPECT_EQ(got[1].output.view().as<const std::uint8_t>()[0], 0);
  ASSERT_EQ(got[2].outcome, Outcome::completed) << got[2].error;
  const auto where = got[2].output.view().as<const std::uint64_t>();
  ASSERT_EQ(where.size(), 3u);
  EXPECT_EQ(where[0], off) << "zero copy in";
  EXPECT_EQ(where[1], static_cast<std::uint64_t>(got[2].output.view().data() - rig.client->arena().base())) << "zero copy out";
  EXPECT_EQ(where[2], 768u);
  EXPECT_EQ(got[3].outcome, Outcome::failed);
  EXPECT_NE(got[3].error.find("op 3 fails on purpose"), std::string::npos) << got[3].error;
  EXPECT_EQ(got[4].outcome, Outcome::completed) << "the worker carries on after a failed tile";
  if (serve_mode) {
    EXPECT_EQ(got[5].outcome, Outcome::failed);
    EXPECT_NE(got[5].error.find("without answering"), std::string::npos) << got[5].error;
  }
}
}  // namespace

TEST(WorkerCApiProcess, CWorkerServesTilesAndTheProtocolStaysClean) {
  Rig rig;
  WorkerProc& w = rig.add({kCWorker});
  check_c_worker(rig, true);
  ASSERT_TRUE(w.execute("t-ready", "tessera.ready"));
  auto first = w.read_line();
  ASSERT_TRUE(first.has_value());
  EXPECT_TRUE(tessera::appose::parse_response(*first).has_value()) << "stray printf reached the protocol: " << *first;
  auto done = w.await_terminal("t-ready");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->type, tessera::appose::ResponseType::completion);
  EXPECT_EQ(w.close_stdin_and_wait(), 0) << w.stderr_text();
  // C stdio buffers a redirected stdout: the text shows up on stderr by exit at the latest.
  EXPECT_NE(w.stderr_text().find("stray stdout from the handler"), std::string::npos);
}

TEST(WorkerCApiProcess, CWorkerOwnLoopAnswersAndStopsOnSigterm) {
  Rig rig;
  WorkerProc& w = rig.add({kCWorker, "loop"});
  check_c_worker(rig, false);
  ASSERT_EQ(::kill(w.pid, SIGTERM), 0);
  EXPECT_EQ(w.wait_exit(), 0) << w.stderr_text();
}
