// `tessera-broker --appose` against hostile or nonsense requests: every bad field is a
// FAILURE naming it, a burst of workers.start requests keeps threads and virtual memory
// bounded, and only segments a pool worker created are adopted (another application's
// segment survives). The broker runs as a real process on pipes; the pool worker is the
// scripted fake worker (/usr/bin/python3).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <tessera/appose.hpp>

using namespace std::chrono_literals;
namespace ap = tessera::appose;

namespace {

// The broker on pipes; stderr goes to a memfd shown on failure. Always killed and reaped.
class Broker {
 public:
  Broker() {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return;
    err_ = ::memfd_create("broker-stderr", MFD_CLOEXEC);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      if (err_ >= 0) ::dup2(err_, 2);
      const char* argv[] = {TESSERA_BROKER_EXE, "--appose", nullptr};
      ::execv(argv[0], const_cast<char**>(argv));
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~Broker() {
    if (in_ >= 0) ::close(in_);
    if (pid_ > 0) {
      int st = 0;
      for (int i = 0; i < 500 && ::waitpid(pid_, &st, WNOHANG) == 0; ++i) std::this_thread::sleep_for(10ms);
      if (::waitpid(pid_, &st, WNOHANG) == 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &st, 0);
      }
    }
    if (out_ >= 0) ::close(out_);
    if (err_ >= 0) ::close(err_);
  }
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  pid_t pid() const { return pid_; }

  std::string execute(const std::string& op, const std::string& inputs_json) {
    std::string id = "t";
    id += std::to_string(++next_);  // appended: g++ 12 warns falsely (-Wrestrict) on "t" + std::string
    std::string line = R"({"task":")";
    line.append(id).append(R"(","requestType":"EXECUTE","script":")").append(op).append(R"(","inputs":)");
    line.append(inputs_json).append("}\n");
    std::size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::write(in_, line.data() + off, line.size() - off);
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    return id;
  }

  // The terminal response of task `id` (other tasks' terminals are kept for later).
  std::optional<ap::Response> await(const std::string& id, std::chrono::milliseconds timeout = 20s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      for (auto it = done_.begin(); it != done_.end(); ++it) {
        if (it->task == id) {
          ap::Response r = std::move(*it);
          done_.erase(it);
          return r;
        }
      }
      const auto nl = pending_.find('\n');
      if (nl != std::string::npos) {
        auto r = ap::parse_response(std::string_view(pending_).substr(0, nl));
        pending_.erase(0, nl + 1);
        if (r && ap::is_terminal(r.value().type)) done_.push_back(std::move(r).value());
        continue;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd pf{out_, POLLIN, 0};
      if (::poll(&pf, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      pending_.append(buf, static_cast<std::size_t>(n));
    }
  }

  std::string run(const std::string& op, const std::string& inputs_json, ap::ResponseType expect) {
    const std::string id = execute(op, inputs_json);
    auto r = await(id);
    if (!r) {
      ADD_FAILURE() << op << " " << inputs_json << ": no terminal response; broker stderr:\n" << stderr_text();
      return {};
    }
    EXPECT_EQ(r->type, expect) << op << " " << inputs_json << " -> " << ap::encode(*r);
    return r->error.value_or(r->outputs ? ap::to_ascii_json(*r->outputs) : std::string());
  }

  std::string stderr_text() const {
    if (err_ < 0) return {};
    std::string s(1 << 16, '\0');
    const ssize_t n = ::pread(err_, s.data(), s.size(), 0);
    s.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    return s;
  }

  // A field of /proc/<pid>/status, in its own unit (kB for VmSize), or -1.
  long status_field(const std::string& key) const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    for (std::string line; std::getline(f, line);) {
      if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, err_ = -1;
  int next_ = 0;
  std::string pending_;
  std::vector<ap::Response> done_;
};

const std::string kWorkerArgv = R"(["/usr/bin/python3", ")" TESSERA_FAKE_WORKER R"("])";

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A segment of "another application", created by the test, removed at scope exit.
struct ForeignSegment {
  std::string name;
  explicit ForeignSegment(std::string n) : name(std::move(n)) {
    const int fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd >= 0) {
      if (::ftruncate(fd, 4096) != 0) name.clear();
      ::close(fd);
    } else {
      name.clear();
    }
  }
  ~ForeignSegment() {
    if (!name.empty()) ::shm_unlink(("/" + name).c_str());
  }
  bool exists() const {
    struct stat st {};
    return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
  }
};

std::string random_hex(int digits) {
  std::random_device rd;
  std::string s;
  for (int i = 0; i < digits; ++i) s.push_back("0123456789abcdef"[rd() % 16]);
  return s;
}

}  // namespace

TEST(BrokerApposeInputs, NonsenseFieldsAreFailuresNamingTheField) {
  Broker b;
  const auto F = ap::ResponseType::failure;
  for (const char* count : {"1e300", "-3", "1.5", "\"2\"", "0", "true", "99999999999999999999999"}) {
    const std::string e = b.run("workers.start", R"({"argv":)" + kWorkerArgv + R"(,"count":)" + count + "}", F);
    EXPECT_TRUE(contains(e, "'count'")) << count << ": " << e;
  }
  std::string e = b.run("workers.start", R"({"argv":["/usr/bin/python3\u0000", "x"]})", F);
  EXPECT_TRUE(contains(e, "argv") && contains(e, "NUL")) << e;
  e = b.run("workers.start", R"({"argv":["/bin/true"],"env":{"A":"b\u0000c"}})", F);
  EXPECT_TRUE(contains(e, "env.A") && contains(e, "NUL")) << e;
  e = b.run("workers.start", R"({"argv":["/bin/true"],"ready_timeout_ms":-5})", F);
  EXPECT_TRUE(contains(e, "'ready_timeout_ms'")) << e;
  e = b.run("workers.start", R"({"argv":["/bin/true"],"max_task_retries":1e300})", F);
  EXPECT_TRUE(contains(e, "'max_task_retries'")) << e;
  e = b.run("worker.run", R"({"script":"noop","worker":99999999999})", F);
  EXPECT_TRUE(contains(e, "'worker'")) << e;
  e = b.run("worker.run", R"({"script":"noop","worker":"0"})", F);
  EXPECT_TRUE(contains(e, "'worker'")) << e;
  e = b.run("workers.stop", R"({"workers":[1.5]})", F);
  EXPECT_TRUE(contains(e, "workers[0]")) << e;
  // Nothing was started by any of them, and the broker still serves.
  const std::string stats = b.run("stats", "{}", ap::ResponseType::completion);
  EXPECT_TRUE(contains(stats, R"("workers":0)")) << stats;
}

TEST(BrokerApposeInputs, ABurstOfWorkersStartKeepsThreadsAndVirtualMemoryBounded) {
  Broker b;
  (void)b.run("ping", "{}", ap::ResponseType::completion);
  const long threads0 = b.status_field("Threads");
  const long vm0 = b.status_field("VmSize");
  ASSERT_GT(threads0, 0);
  // Each request's worker exits at once: a start failure, answered as that request's FAILURE.
  constexpr int kRequests = 300;
  std::vector<std::string> ids;
  for (int i = 0; i < kRequests; ++i)
    ids.push_back(b.execute("workers.start", R"({"argv":["/bin/false"],"max_start_failures":0,"ready_timeout_ms":2000})"));
  long max_threads = 0;
  for (const auto& id : ids) {
    auto r = b.await(id, 60s);
    ASSERT_TRUE(r.has_value()) << "no answer for " << id << "; stderr:\n" << b.stderr_text();
    EXPECT_TRUE(ap::is_terminal(r->type));
    max_threads = std::max(max_threads, b.status_field("Threads"));
  }
  const long vm1 = b.status_field("VmSize");
  // One thread per request kept an 8 MiB stack mapped until shutdown (300 x 8 MiB = 2.4 GiB).
  EXPECT_LE(max_threads, threads0 + 4) << "threads grew with the number of requests";
  EXPECT_LT(vm1 - vm0, 256 * 1024) << "virtual memory grew by " << (vm1 - vm0) << " kB over " << kRequests << " requests";
  const std::string stats = b.run("stats", "{}", ap::ResponseType::completion);
  EXPECT_TRUE(contains(stats, R"("blocking_threads":)")) << stats;
}

TEST(BrokerApposeInputs, OnlySegmentsAPoolWorkerCreatedAreAdoptedAndOthersSurvive) {
  // Created before the broker starts: no pool worker can have made them.
  ForeignSegment well_formed("psm_" + random_hex(8));
  ForeignSegment other_app("tessera_test_victim_" + std::to_string(::getpid()) + "_" + random_hex(8));
  ASSERT_FALSE(well_formed.name.empty());
  ASSERT_FALSE(other_app.name.empty());
  std::this_thread::sleep_for(20ms);  // a later coarse-clock tick for the broker's start
  Broker b;
  const std::string started = b.run("workers.start", R"({"argv":)" + kWorkerArgv + R"(,"ready_timeout_ms":30000})",
                                    ap::ResponseType::completion);
  ASSERT_TRUE(contains(started, "workers")) << started;
  const auto echo_shm = [&](const std::string& name_json) {
    return b.run("worker.run",
                 R"({"script":"echo","inputs":{"img":{"appose_type":"shm","name":)" + name_json + R"(,"rsize":64}}})",
                 ap::ResponseType::failure);
  };
  std::string e = echo_shm("\"" + other_app.name + "\"");
  EXPECT_TRUE(contains(e, "not an Appose segment name") && contains(e, "outputs.img.name")) << e;
  e = echo_shm("\"" + well_formed.name + "\"");
  EXPECT_TRUE(contains(e, "existed before this broker started")) << e;
  for (const char* bad : {R"("..")", R"("../psm_12345678")", R"("psm_1234567/")", R"("psm_zzzzzzzz")", R"("")", "7"}) {
    e = echo_shm(bad);
    EXPECT_TRUE(contains(e, "outputs.img.name")) << bad << ": " << e;
  }
  e = echo_shm("\"psm_" + random_hex(8) + "\"");  // well-formed, absent
  EXPECT_TRUE(contains(e, "cannot be opened")) << e;
  // A release naming them unlinks nothing: they were never adopted.
  const std::string rel = b.run("shm.release", R"({"names":[")" + well_formed.name + R"(",")" + other_app.name + R"("]})",
                                ap::ResponseType::completion);
  EXPECT_TRUE(contains(rel, R"("released":0)")) << rel;
  // A segment the worker creates is adopted, and released on request.
  const std::string out = b.run("worker.run", R"({"script":"shm_out 64"})", ap::ResponseType::completion);
  const auto at = out.find("psm_");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string made = out.substr(at, out.find('"', at) - at);
  const std::string rel2 = b.run("shm.release", R"({"names":[")" + made + R"("]})", ap::ResponseType::completion);
  EXPECT_TRUE(contains(rel2, R"("released":1)")) << rel2;
  (void)b.run("shutdown", "{}", ap::ResponseType::completion);
  EXPECT_TRUE(well_formed.exists()) << "the broker unlinked a segment it did not own";
  EXPECT_TRUE(other_app.exists()) << "the broker unlinked another application's segment";
}
