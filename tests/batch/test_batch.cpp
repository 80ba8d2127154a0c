// `tessera batch` end to end on real nats-server processes (JetStream, file storage):
// several node processes share one work queue; killed nodes, poison slides, a server
// restart and SIGTERM lose no slide and duplicate no output. Every test starts its own
// server on a free loopback port with its own store directory and stops it by pid.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include <boost/json.hpp>

#include <tessera/batch/batch.hpp>

#include "test_support.hpp"

namespace fs = std::filesystem;
namespace b = tessera::batch;
using tessera::test::Child;
using tessera::test::unique_name;
using tessera::test::wait_until;
using namespace std::chrono_literals;

namespace {

const std::string kTessera = std::string(TESSERA_BIN_DIR) + "/tessera";

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

bool port_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `cmd` (a shell line) to completion; returns {exit code, stdout}.
std::pair<int, std::string> run(const std::string& cmd, std::chrono::milliseconds timeout = 60s) {
  auto c = Child::spawn("/bin/sh", {"-c", cmd}, {.inherit_fds = {}, .capture_stdout = true});
  if (!c) return {-1, ""};
  std::string out = c->read_all(timeout);
  auto st = c->wait(5s);
  if (!st || !WIFEXITED(*st)) return {-1, out};
  return {WEXITSTATUS(*st), out};
}

// A temporary directory removed at the end of the test.
struct TempDir {
  TempDir() : path(fs::temp_directory_path() / unique_name("tessera-batch")) { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

// One nats-server with JetStream, file storage in its own directory, loopback only.
class NatsServer {
 public:
  explicit NatsServer(const fs::path& dir) : store_(dir / "js"), log_(dir / "nats-server.log"), port_(free_port()) {}

  bool start() {
    const std::string cmd = "exec " + shell_quote(TESSERA_NATS_SERVER) + " -js -sd " + shell_quote(store_.string()) +
                            " -a 127.0.0.1 -p " + std::to_string(port_) + " >>" + shell_quote(log_.string()) + " 2>&1";
    auto c = Child::spawn("/bin/sh", {"-c", cmd}, {});
    if (!c) return false;
    proc_ = std::move(*c);
    return wait_until([&] { return port_open(port_); }, 10s);
  }
  // kill -9 (file storage keeps the stream, the consumer and the status bucket).
  void kill() {
    proc_.kill(SIGKILL);
    proc_.wait(5s);
  }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

 private:
  fs::path store_, log_;
  int port_;
  Child proc_;
};

struct Batch {
  TempDir dir;
  NatsServer server{dir.path};
  std::string stream = "t" + std::to_string(::getpid());
  fs::path out = dir.path / "out";
  std::vector<Child> nodes;

  std::string common() const { return " --nats " + server.url() + " --stream " + stream; }

  // Submits; retries while JetStream is still starting up.
  std::pair<int, std::string> submit(const std::string& args) {
    std::pair<int, std::string> r;
    for (int i = 0; i < 20; ++i) {
      r = run(shell_quote(kTessera) + " batch submit" + common() + " --out " + shell_quote(out.string()) + " --json " + args);
      if (r.first == 0) break;
      std::this_thread::sleep_for(250ms);
    }
    return r;
  }

  // Starts a node process in its own working directory; its log goes to node-<name>.log.
  Child& start_node(const std::string& name, const std::string& extra = "") {
    const fs::path wd = dir.path / ("node-" + name);
    fs::create_directories(wd);
    const std::string cmd = "cd " + shell_quote(wd.string()) + " && exec " + shell_quote(kTessera) + " batch node" +
                            common() + " --name " + name + " -v " + extra + " >>" +
                            shell_quote((dir.path / ("node-" + name + ".log")).string()) + " 2>&1";
    nodes.push_back(*Child::spawn("/bin/sh", {"-c", cmd}, {}));
    return nodes.back();
  }

  std::optional<b::BatchStatus> status() {
    b::ConnectOptions co;
    co.url = server.url();
    co.connect_timeout = 1s;
    auto s = b::Session::connect(co);
    if (!s) return std::nullopt;
    b::BatchNames names;
    names.stream = stream;
    auto st = b::read_status(**s, names);
    if (!st) return std::nullopt;
    return *st;
  }

  // Waits until nothing is pending or running; returns the final status.
  std::optional<b::BatchStatus> wait_finished(std::chrono::milliseconds timeout, std::int64_t expect_total) {
    std::optional<b::BatchStatus> last;
    wait_until(
        [&] {
          last = status();
          return last && last->total() == expect_total && last->finished();
        },
        timeout);
    return last;
  }

  // Waits for an item running on `node` with some tiles done; returns its id.
  std::optional<b::StatusEntry> wait_running_on(const std::string& node, std::chrono::milliseconds timeout) {
    std::optional<b::StatusEntry> found;
    wait_until(
        [&] {
          auto st = status();
          if (!st) return false;
          for (const auto& e : st->items)
            if (e.status.state == b::ItemState::running && e.status.node == node && e.status.tiles_done > 0) found = e;
          return found.has_value();
        },
        timeout);
    return found;
  }

  std::string logs() {
    std::string all;
    for (const auto& e : fs::directory_iterator(dir.path))
      if (e.path().extension() == ".log") all += "== " + e.path().filename().string() + "\n" + read_file(e.path());
    return all;
  }

  // Names of the finished files in out/ (temp files of an unfinished write excluded).
  std::set<std::string> outputs() const {
    std::set<std::string> names;
    if (!fs::exists(out)) return names;
    for (const auto& e : fs::directory_iterator(out))
      if (e.is_regular_file() && e.path().filename().string().find(".tmp-") == std::string::npos)
        names.insert(e.path().filename().string());
    return names;
  }
  // Temp files of unfinished writes (under out/.partial/, or "*.tmp-*" next to the outputs).
  std::size_t partial_files() const {
    std::size_t n = 0;
    if (!fs::exists(out)) return n;
    for (const auto& e : fs::recursive_directory_iterator(out))
      if (e.is_regular_file() && (e.path().parent_path().filename() == ".partial" ||
                                  e.path().filename().string().find(".tmp-") != std::string::npos))
        ++n;
    return n;
  }
};

std::string synthetic_args(int n, int size, int seed0) {
  std::string s;
  for (int i = 0; i < n; ++i) s += " synthetic:" + std::to_string(size) + ":" + std::to_string(seed0 + i);
  return s;
}

// Output files of a slide.
std::size_t outputs_per_slide() {
  b::SlideJob j;
  j.stem = "x";
  return b::output_names(j).size();
}

boost::json::object parse_object(const std::string& line) {
  boost::system::error_code ec;
  auto v = boost::json::parse(line.substr(line.find('{')), ec);
  return ec || !v.is_object() ? boost::json::object{} : v.as_object();
}

}  // namespace

TEST(BatchWorkItem, IdIsStableAndCoversTheSpec) {
  b::SlideJob a;
  a.slide = "/data/a.svs";
  a.stem = "a";
  a.out_dir = "/out";
  b::SlideJob c = a;
  c.submitted_ms = 12345;  // not part of the identity
  EXPECT_EQ(b::item_id(a), b::item_id(c));
  EXPECT_EQ(b::item_id(a).size(), 32u);
  c.tile = 512;
  EXPECT_NE(b::item_id(a), b::item_id(c));
  a.id = b::item_id(a);
  auto back = b::job_from_json(b::to_json(a));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->slide, a.slide);
  EXPECT_EQ(back->id, a.id);
  // A tampered item (content no longer matches its id) is rejected.
  std::string text = b::to_json(a);
  text.replace(text.find("a.svs"), 5, "b.svs");
  EXPECT_FALSE(b::job_from_json(text));
}

TEST(BatchConnect, RedactsCredentialsInUrls) {
  EXPECT_EQ(b::redact_url("nats://alice:s3cret@h1:4222"), "nats://***@h1:4222");
  EXPECT_EQ(b::redact_url("nats://tok@h1:4222,tls://bob:pw@h2:4443"), "nats://***@h1:4222,tls://***@h2:4443");
  EXPECT_EQ(b::redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
}

// 3 nodes, 12 slides: every output exists once and equals a single-node `tessera overlay`.
TEST(Batch, ThreeNodesProduceEveryOutputOnceAndByteIdentical) {
  Batch bt;
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  const int kSlides = 12, kSize = 1024;
  const std::string slides = synthetic_args(kSlides, kSize, 100);
  auto [rc, out] = bt.submit("--ack-wait 5" + slides);
  ASSERT_EQ(rc, 0) << out << bt.logs();
  EXPECT_EQ(parse_object(out)["published"].as_int64(), kSlides) << out;
  // Resubmitting the same batch adds nothing.
  auto [rc2, out2] = bt.submit("--ack-wait 5" + slides);
  ASSERT_EQ(rc2, 0) << out2;
  EXPECT_EQ(parse_object(out2)["published"].as_int64(), 0) << out2;

  for (const char* n : {"n1", "n2", "n3"}) bt.start_node(n, "--exit-when-idle 3");
  auto st = bt.wait_finished(60s, kSlides);
  ASSERT_TRUE(st) << bt.logs();
  EXPECT_EQ(st->done, kSlides) << bt.logs();
  EXPECT_EQ(st->failed, 0);
  for (auto& n : bt.nodes) EXPECT_TRUE(tessera::test::exited_ok(n.wait(20s))) << bt.logs();
  std::map<std::string, int> per_node;
  for (const auto& e : st->items) {
    EXPECT_EQ(e.status.attempt, 1) << e.status.stem;  // nothing ran twice
    ++per_node[e.status.node];
  }
  EXPECT_GE(per_node.size(), 2u) << "the work was not shared";

  // `status` agrees and says everything is done (exit code 0).
  auto [src, sout] = run(shell_quote(kTessera) + " batch status" + bt.common());
  EXPECT_EQ(src, 0) << sout;

  // Exactly the expected files, once each, nothing half-written.
  auto stem_of = [&](int i) { return "synthetic-" + std::to_string(kSize) + "-" + std::to_string(100 + i); };
  auto names_of = [&](int i) {
    b::SlideJob j;
    j.stem = stem_of(i);
    return b::output_names(j);
  };
  std::set<std::string> expected;
  for (int i = 0; i < kSlides; ++i)
    for (const auto& n : names_of(i)) expected.insert(n);
  EXPECT_EQ(bt.outputs(), expected);
  EXPECT_EQ(bt.partial_files(), 0u);

  // The same slides through single-node `tessera overlay`, six at a time.
  const fs::path ref = bt.dir.path / "ref";
  fs::create_directories(ref);
  for (int first = 0; first < kSlides; first += 6) {
    std::string cmd;
    for (int i = first; i < std::min(kSlides, first + 6); ++i) {
      const auto names = names_of(i);
      cmd += shell_quote(kTessera) + " overlay --no-progress --no-verify --tile 256 --size " + std::to_string(kSize) +
             " --seed " + std::to_string(100 + i) + " --out " + shell_quote((ref / names[0]).string());
      cmd += " >/dev/null & ";
    }
    auto [orc, oout] = run(cmd + "wait", 90s);
    ASSERT_EQ(orc, 0) << oout;
  }
  for (int i = 0; i < kSlides; ++i)
    for (const auto& n : names_of(i)) {
      const std::string mine = read_file(bt.out / n);
      EXPECT_FALSE(mine.empty()) << n;
      EXPECT_TRUE(mine == read_file(ref / n)) << n << " differs from the single-node run";
    }
}

// kill -9 of a node mid-slide: the item comes back after the ack wait and another node
// completes it; every slide is done once in the outputs.
TEST(Batch, KilledNodesItemIsRedeliveredAndCompleted) {
  Batch bt;
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  // op 6: the example worker sleeps 50 ms per tile, then masks it -> a slide takes about a second.
  auto [rc, out] = bt.submit("--op 6 --ack-wait 2" + synthetic_args(4, 2048, 200));
  ASSERT_EQ(rc, 0) << out;
  Child& victim = bt.start_node("victim");
  auto running = bt.wait_running_on("victim", 30s);
  ASSERT_TRUE(running) << bt.logs();
  victim.kill(SIGKILL);
  victim.wait(5s);
  const std::int64_t killed_ms = b::unix_ms();
  bt.start_node("r1", "--exit-when-idle 4");
  bt.start_node("r2", "--exit-when-idle 4");
  auto st = bt.wait_finished(60s, 4);
  ASSERT_TRUE(st) << bt.logs();
  EXPECT_EQ(st->done, 4) << bt.logs();
  for (const auto& e : st->items) {
    if (e.id != running->id) continue;
    EXPECT_GE(e.status.attempt, 2) << "the killed item was not redelivered";
    EXPECT_NE(e.status.node, "victim");
    RecordProperty("recovery_ms", std::to_string(e.status.started_ms - killed_ms));
    std::printf("killed item restarted %lld ms after the kill (ack wait 2000 ms)\n",
                static_cast<long long>(e.status.started_ms - killed_ms));
  }
  EXPECT_EQ(bt.outputs().size(), 4 * outputs_per_slide());
}

// A corrupt slide fails on every attempt: terminated after --max-attempts with its error
// in status; the rest completes and status exits non-zero.
TEST(Batch, PoisonSlideIsTerminatedAndReported) {
  Batch bt;
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  const fs::path poison = bt.dir.path / "poison.svs";
  {
    std::ofstream f(poison, std::ios::binary);
    f << "II*\0 this is not a slide";
  }
  auto [rc, out] = bt.submit(synthetic_args(4, 1024, 300) + " " + poison.string());
  ASSERT_EQ(rc, 0) << out;
  bt.start_node("p1", "--max-attempts 2 --exit-when-idle 4");
  bt.start_node("p2", "--max-attempts 2 --exit-when-idle 4");
  auto st = bt.wait_finished(60s, 5);
  ASSERT_TRUE(st) << bt.logs();
  EXPECT_EQ(st->done, 4) << bt.logs();
  ASSERT_EQ(st->failed, 1) << bt.logs();
  for (const auto& e : st->items)
    if (e.status.state == b::ItemState::failed) {
      EXPECT_EQ(e.status.stem, "poison");
      EXPECT_EQ(e.status.attempt, 2);
      EXPECT_FALSE(e.status.error.empty());
    }
  auto [src, sout] = run(shell_quote(kTessera) + " batch status" + bt.common());
  EXPECT_EQ(src, 1) << sout;
  EXPECT_NE(sout.find("failed   poison"), std::string::npos) << sout;
  EXPECT_EQ(bt.outputs().size(), 4 * outputs_per_slide());
  EXPECT_EQ(bt.partial_files(), 0u);
}

// nats-server killed and restarted mid-batch on the same port and store: the nodes
// reconnect and the batch completes.
TEST(Batch, ServerRestartMidBatchCompletes) {
  Batch bt;
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  auto [rc, out] = bt.submit("--op 6 --ack-wait 3" + synthetic_args(6, 1536, 400));
  ASSERT_EQ(rc, 0) << out;
  bt.start_node("s1", "--exit-when-idle 6");
  bt.start_node("s2", "--exit-when-idle 6");
  ASSERT_TRUE(bt.wait_running_on("s1", 30s) || bt.wait_running_on("s2", 5s)) << bt.logs();
  bt.server.kill();
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  auto st = bt.wait_finished(90s, 6);
  ASSERT_TRUE(st) << bt.logs();
  EXPECT_EQ(st->done, 6) << bt.logs();
  EXPECT_EQ(bt.outputs().size(), 6 * outputs_per_slide());
  EXPECT_EQ(bt.partial_files(), 0u);
}

// SIGTERM: a node with a long drain finishes its slide and exits 0; a node with a short
// drain releases its slide (exit 3), which another node completes. Nothing stays running.
TEST(Batch, SigtermFinishesOrReleasesTheCurrentItem) {
  Batch bt;
  ASSERT_TRUE(bt.server.start()) << bt.logs();
  // 324 grid tiles, about half of them tissue (the rest are never read), at 50 ms on two
  // workers: ~4 s a slide, twice the 2-s status heartbeat, so the test sees each item
  // running with tiles done (3072-px slides, ~80 tissue tiles, took ~2 s on a fast host
  // and were seen only at their end; 1536-px ones were never seen mid-run).
  auto [rc, out] = bt.submit("--op 6 --ack-wait 30" + synthetic_args(3, 4608, 500));
  ASSERT_EQ(rc, 0) << out;
  Child& patient = bt.start_node("patient", "--drain-timeout 60");
  auto p_item = bt.wait_running_on("patient", 30s);
  ASSERT_TRUE(p_item) << bt.logs();
  patient.kill(SIGTERM);
  auto pst = patient.wait(30s);
  ASSERT_TRUE(pst && WIFEXITED(*pst)) << bt.logs();
  EXPECT_EQ(WEXITSTATUS(*pst), 0) << bt.logs();

  Child& hasty = bt.start_node("hasty", "--drain-timeout 0.2");
  auto h_item = bt.wait_running_on("hasty", 30s);
  ASSERT_TRUE(h_item) << bt.logs();
  hasty.kill(SIGTERM);
  auto hst = hasty.wait(10s);
  ASSERT_TRUE(hst && WIFEXITED(*hst)) << bt.logs();
  EXPECT_EQ(WEXITSTATUS(*hst), 3) << bt.logs();
  // Released, not left running (the ack wait is 30 s: only the Nak brings it back now).
  auto mid = bt.status();
  ASSERT_TRUE(mid);
  for (const auto& e : mid->items) EXPECT_NE(e.status.state, b::ItemState::running) << e.status.stem;

  bt.start_node("closer", "--exit-when-idle 4");
  auto st = bt.wait_finished(60s, 3);
  ASSERT_TRUE(st) << bt.logs();
  EXPECT_EQ(st->done, 3) << bt.logs();
  for (const auto& e : st->items) {
    if (e.id == p_item->id) {
      EXPECT_EQ(e.status.node, "patient");
    }
    if (e.id == h_item->id) {
      EXPECT_EQ(e.status.node, "closer");
    }
  }
  EXPECT_EQ(bt.outputs().size(), 3 * outputs_per_slide());
}
