// The C++ example worker driven over real pipes by a test host: the Appose
// protocol on stdin/stdout, and a handler that prints never corrupts it.
#include <gtest/gtest.h>

#include <set>

#include "host.hpp"

using namespace std::chrono_literals;
using tessera::appose::ResponseType;
using tessera::test::Rig;
using tessera::test::WorkerProc;

namespace {

const std::string kTissue = tessera::test::kBinDir + "/tessera-tissue-worker";
const std::string kSdkWorker = tessera::test::kBinDir + "/tessera-sdk-test-worker";

std::uint64_t submit(Rig& r, std::uint32_t stream, std::uint32_t op, int salt) {
  tessera::InputBlock in;
  EXPECT_TRUE(r.client->alloc(16 * 16 * 3, in, 5s).has_value());
  for (std::size_t i = 0; i < 16 * 16 * 3; ++i) in.bytes()[i] = static_cast<std::byte>((i + static_cast<std::size_t>(salt)) & 0xff);
  tessera::TileMeta m;
  m.shape = {16, 16, 3};
  m.op = op;
  auto seq = r.client->submit(stream, in, m);
  EXPECT_TRUE(seq.has_value()) << (seq ? "" : seq.error().message);
  return seq ? *seq : ~0ULL;
}

}  // namespace

TEST(WorkerProtocol, ReadyAnswersLaunchThenCompletionWithPidAndSlot) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  ASSERT_TRUE(w.execute("t-ready", "tessera.ready"));
  auto first = w.read_line();
  ASSERT_TRUE(first.has_value()) << "no answer; stderr: " << w.stderr_text();
  auto launch = tessera::appose::parse_response(*first);
  ASSERT_TRUE(launch.has_value()) << *first;
  EXPECT_EQ(launch.value().type, ResponseType::launch);
  EXPECT_EQ(launch.value().task, "t-ready");
  auto done = w.await_terminal("t-ready");
  ASSERT_TRUE(done.has_value());
  ASSERT_EQ(done->type, ResponseType::completion);
  ASSERT_TRUE(done->outputs.has_value());
  EXPECT_EQ(done->outputs->at("pid").as_int64(), w.pid);
  EXPECT_EQ(done->outputs->at("slot").as_int64(), static_cast<std::int64_t>(rig.ews[0].slot));
}

TEST(WorkerProtocol, StatsCountTheTilesTheWorkerHandled) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  auto s = rig.client->open_stream().value();
  for (int i = 0; i < 5; ++i) submit(rig, s, 0, i);
  ASSERT_EQ(rig.collect(5).size(), 5u);
  // The worker counts a publish just after the client can see it: ask until it settles.
  std::uint64_t published = 0;
  std::optional<tessera::appose::Response> done;
  for (int i = 0; i < 100 && published != 5; ++i) {
    const std::string task = "t-stats-" + std::to_string(i);
    ASSERT_TRUE(w.execute(task, "tessera.stats"));
    done = w.await_terminal(task);
    ASSERT_TRUE(done.has_value());
    ASSERT_EQ(done->type, ResponseType::completion);
    published = done->outputs->at("published").to_number<std::uint64_t>();
    if (published != 5) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(published, 5u);
  EXPECT_EQ(done->outputs->at("taken").to_number<std::uint64_t>(), 5u);
  EXPECT_EQ(done->outputs->at("rejected").to_number<std::uint64_t>(), 0u);
}

TEST(WorkerProtocol, UnknownScriptIsAFailureNamingTheScript) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  ASSERT_TRUE(w.execute("t-unknown", "import antigravity"));
  auto done = w.await_terminal("t-unknown");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->type, ResponseType::failure);
  ASSERT_TRUE(done->error.has_value());
  EXPECT_NE(done->error->find("import antigravity"), std::string::npos) << *done->error;
}

TEST(WorkerProtocol, BlankAndMalformedLinesAreSkippedAndTheNextRequestIsAnswered) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  ASSERT_TRUE(w.send("\n   \nnot json at all\n[1,2,3]\n{\"task\":\"no-type\"}\n{\"task\":\"x\",\"requestType\":\"CRASH\"}\n{\"truncated\":"));
  ASSERT_TRUE(w.send("\n"));  // ends the truncated line: one more malformed request
  ASSERT_TRUE(w.execute("t-after", "tessera.stats"));
  auto first = w.read_line();
  ASSERT_TRUE(first.has_value()) << "worker went deaf; stderr: " << w.stderr_text();
  auto launch = tessera::appose::parse_response(*first);
  ASSERT_TRUE(launch.has_value());
  EXPECT_EQ(launch.value().task, "t-after") << "junk lines must get no response";
  auto done = w.await_terminal("t-after");
  ASSERT_TRUE(done.has_value());
  ASSERT_EQ(done->type, ResponseType::completion);
  EXPECT_EQ(done->outputs->at("bad_request_lines").to_number<std::uint64_t>(), 5u);
  EXPECT_NE(w.stderr_text().find("ignoring request line"), std::string::npos) << "skipped lines are logged";
}

TEST(WorkerProtocol, CancelOfAnUnknownTaskIsHarmless) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  ASSERT_TRUE(w.send("{\"task\":\"never-started\",\"requestType\":\"CANCEL\"}\n"));
  ASSERT_TRUE(w.execute("t-ready", "tessera.ready"));
  auto done = w.await_terminal("t-ready");
  ASSERT_TRUE(done.has_value()) << w.stderr_text();
  EXPECT_EQ(done->type, ResponseType::completion);
  // And the data path still works.
  auto s = rig.client->open_stream().value();
  submit(rig, s, 0, 1);
  auto got = rig.collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, tessera::Outcome::completed) << got[0].error;
}

TEST(WorkerProtocol, StdinEofExitsZero) {
  Rig rig;
  WorkerProc& w = rig.add({kTissue});
  ASSERT_TRUE(w.execute("t-ready", "tessera.ready"));
  ASSERT_TRUE(w.await_terminal("t-ready").has_value());
  EXPECT_EQ(w.close_stdin_and_wait(), 0) << w.stderr_text();
}

TEST(WorkerProtocol, MissingArenaIsReportedWithItsMessageAndExitsNonZero) {
  WorkerProc w = WorkerProc::spawn({kTissue}, -1, 0);
  const int code = w.wait_exit();
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "worker did not exit";
  EXPECT_NE(w.stderr_text().find("TESSERA_ARENA_FD"), std::string::npos) << w.stderr_text();
}

TEST(WorkerProtocol, HandlerPrintsNeverCorruptAProtocolLine) {
  Rig rig;
  WorkerProc& w = rig.add({kSdkWorker});
  auto s = rig.client->open_stream().value();
  constexpr int kTiles = 40;
  int asked = 0;
  for (int i = 0; i < kTiles; ++i) {
    submit(rig, s, 1, i);
    if (i % 4 == 0) {
      ASSERT_TRUE(w.execute("stats-" + std::to_string(asked++), "tessera.stats"));
    }
  }
  auto got = rig.collect(kTiles);
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kTiles));
  for (const auto& r : got) EXPECT_EQ(r.outcome, tessera::Outcome::completed) << r.error;
  ASSERT_TRUE(w.execute("last", "tessera.stats"));
  // Every line on the protocol descriptor is a whole, valid response; each task is answered.
  std::set<std::string> completed;
  for (;;) {
    auto line = w.read_line();
    ASSERT_TRUE(line.has_value()) << "protocol stalled; stderr: " << w.stderr_text();
    EXPECT_EQ(line->find("NOISE"), std::string::npos) << "stray output in the protocol: " << *line;
    auto r = tessera::appose::parse_response(*line);
    ASSERT_TRUE(r.has_value()) << "corrupt protocol line: " << *line;
    if (r.value().type == ResponseType::completion) completed.insert(r.value().task);
    if (r.value().task == "last" && tessera::appose::is_terminal(r.value().type)) break;
  }
  EXPECT_EQ(completed.size(), static_cast<std::size_t>(asked + 1));
  const std::string err = w.stderr_text();
  for (const char* marker : {"NOISE-printf", "NOISE-cout", "NOISE-puts", "NOISE-write"})
    EXPECT_NE(err.find(marker), std::string::npos) << marker << " should have gone to stderr";
}
