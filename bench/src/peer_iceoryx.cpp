// Eclipse iceoryx 2.0 zero-copy publish/subscribe (Debian iceoryx + libiceoryx-posh-dev)
// with the same tile workload: the host loans a chunk, writes the tile into it and
// publishes; the worker takes it, reads every byte, releases it and publishes an
// 8-byte reply. Busy poll ("spin") and WaitSet ("sleep") modes. The suite starts its
// own RouDi daemon (iox-roudi) with a generated config and stops it by pid.
//
// iceoryx allows one runtime per process, so both host and worker are forked
// children; the host child reports its measurement through a shared mapping.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <pwd.h>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;

constexpr const char* kRoudi = "/usr/bin/iox-roudi";

// RouDi with mempools for every tile size (+ chunk header) and for descriptors/replies.
class Roudi {
 public:
  bool start(std::string& why) {
    if (!fs::exists(kRoudi)) {
      why = "iox-roudi not installed (apt install iceoryx)";
      return false;
    }
    if (fs::exists("/dev/shm/iceoryx_mgmt") || fs::exists("/tmp/roudi")) {
      why = "another RouDi seems to be running (/dev/shm/iceoryx_mgmt or /tmp/roudi exists); iceoryx 2.0 allows one";
      return false;
    }
    dir_ = fs::temp_directory_path() / ("tessera-bench-roudi-" + unique_token());
    fs::create_directories(dir_);
    const fs::path cfg = dir_ / "roudi.toml";
    std::ofstream(cfg) << "[general]\nversion = 1\n\n[[segment]]\n\n"
                          "[[segment.mempool]]\nsize = 1024\ncount = 2000\n\n"
                          "[[segment.mempool]]\nsize = 200000\ncount = 40\n\n"
                          "[[segment.mempool]]\nsize = 1050000\ncount = 40\n\n"
                          "[[segment.mempool]]\nsize = 3150000\ncount = 24\n";
    const std::string log = (dir_ / "roudi.log").string();
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    child_ = Child::spawn({kRoudi, "-c", cfg.string(), "-l", "warning"}, fd);
    if (fd >= 0) ::close(fd);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      if (fs::exists("/tmp/roudi") && fs::exists("/dev/shm/iceoryx_mgmt")) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        return true;
      }
      if (kill(child_.pid(), 0) != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    why = "RouDi did not come up within 10 s (see its log in " + dir_.string() + ")";
    stop();
    return false;
  }
  void stop() {
    if (child_.running()) {
      kill(child_.pid(), SIGTERM);
      const auto ex = child_.wait(10);  // SIGKILL after 10 s
      (void)ex;
    }
    std::error_code ec;
    if (!dir_.empty()) {
      fs::remove_all(dir_, ec);
      // We started this RouDi (none existed before): remove what it leaves behind when
      // it exits uncleanly, so the next run (ours or anyone's) can start one.
      const passwd* pw = getpwuid(geteuid());
      const std::string user_seg = pw != nullptr ? "/dev/shm/" + std::string(pw->pw_name) : std::string();
      for (const std::string& f : {std::string("/tmp/roudi"), std::string("/tmp/roudi.lock"),
                                   std::string("/tmp/iox-unique-roudi.lock"), std::string("/dev/shm/iceoryx_mgmt"), user_seg})
        if (!f.empty()) fs::remove(f, ec);
      dir_.clear();
    }
  }
  ~Roudi() { stop(); }

 private:
  Child child_;
  fs::path dir_;
};

iox::capro::IdString_t id(const std::string& s) { return iox::capro::IdString_t(iox::cxx::TruncateToCapacity, s); }

void init_runtime(const std::string& name) {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn);
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name));
}

iox::popo::PublisherOptions pub_options() {
  iox::popo::PublisherOptions o;
  o.historyCapacity = 0;
  o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;  // lossless
  return o;
}

iox::popo::SubscriberOptions sub_options() {
  iox::popo::SubscriberOptions o;
  o.queueCapacity = 16;
  o.historyRequest = 0;
  o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;  // lossless
  return o;
}

// Waits for one sample: busy poll or WaitSet. Returns nullptr on timeout.
const void* take(iox::popo::UntypedSubscriber& sub, iox::popo::WaitSet<>* ws, Deadline& dl) {
  for (;;) {
    auto r = sub.take();
    if (!r.has_error()) return r.value();
    if (ws != nullptr) {
      if (dl.expired_now()) return nullptr;
      (void)ws->timedWait(iox::units::Duration::fromMilliseconds(100));
    } else if (dl.expired()) {
      return nullptr;
    }
  }
}

class IceHost {
 public:
  IceHost(iox::popo::UntypedPublisher& pub, iox::popo::UntypedSubscriber& sub, iox::popo::WaitSet<>* ws, double to)
      : pub_(pub), sub_(sub), ws_(ws), dl_(to) {}
  bool send(std::uint64_t seq, std::size_t n) {
    for (;;) {
      auto chunk = pub_.loan(static_cast<std::uint32_t>(n), 64);
      if (!chunk.has_error()) {
        write_tile(chunk.value(), n, seq);
        pub_.publish(chunk.value());
        return true;
      }
      if (dl_.expired()) return false;
    }
  }
  bool recv(std::uint64_t& seq) {
    const void* p = take(sub_, ws_, dl_);
    if (p == nullptr) return false;
    std::memcpy(&seq, p, sizeof seq);
    sub_.release(p);
    return true;
  }

 private:
  iox::popo::UntypedPublisher& pub_;
  iox::popo::UntypedSubscriber& sub_;
  iox::popo::WaitSet<>* ws_;
  Deadline dl_;
};

bool wait_subscribed(iox::popo::UntypedPublisher& pub, double s) {
  Deadline dl(s);
  while (!pub.hasSubscribers()) {
    if (dl.expired_now()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

struct HostReport {
  int ok;
  double wall_s, ops_per_s;
  Summary lat;
  double cdf[101];
  char err[200];
};

Record run_ice(Context& ctx, const TileRun& run, bool waitset) {
  Record r = base_record(run);
  const std::string tok = unique_token();
  const std::string inst = "run-" + tok;
  SharedMapping box(sizeof(HostReport) + 4096);
  auto* rep = new (box.data()) HostReport{};
  const double to = ctx.opt.child_timeout_s;
  const std::uint64_t total = run.warmup + run.count;
  const CpuSpan span;
  // Children leave through std::exit so that the runtime deregisters from RouDi.
  auto worker_body = [&]() -> int {
    init_runtime("tb-w-" + tok);
    iox::popo::UntypedSubscriber sub({id("tessera-bench"), id(inst), id("req")}, sub_options());
    iox::popo::UntypedPublisher pub({id("tessera-bench"), id(inst), id("rep")}, pub_options());
    iox::popo::WaitSet<> ws;
    if (waitset && ws.attachState(sub, iox::popo::SubscriberState::HAS_DATA).has_error()) return kExitSetup;
    if (!wait_subscribed(pub, 20)) return kExitSetup;
    Deadline dl(to);
    for (std::uint64_t k = 0; k < total; ++k) {
      const void* p = take(sub, waitset ? &ws : nullptr, dl);
      if (p == nullptr) return kExitTimeout;
      const auto n = iox::mepoo::ChunkHeader::fromUserPayload(p)->userPayloadSize();
      const bool ok = n == run.bytes && read_tile(p, n) == k;
      sub.release(p);
      if (!ok) return kExitCorrupt;
      for (;;) {
        auto c = pub.loan(sizeof k, 8);
        if (!c.has_error()) {
          std::memcpy(c.value(), &k, sizeof k);
          pub.publish(c.value());
          break;
        }
        if (dl.expired()) return kExitTimeout;
      }
    }
    if (waitset) ws.detachState(sub, iox::popo::SubscriberState::HAS_DATA);
    return 0;
  };
  Child worker = Child::fork_run([&]() -> int { std::exit(worker_body()); });
  auto host_body = [&]() -> int {
    init_runtime("tb-h-" + tok);
    iox::popo::UntypedPublisher pub({id("tessera-bench"), id(inst), id("req")}, pub_options());
    iox::popo::UntypedSubscriber sub({id("tessera-bench"), id(inst), id("rep")}, sub_options());
    iox::popo::WaitSet<> ws;
    if (waitset && ws.attachState(sub, iox::popo::SubscriberState::HAS_DATA).has_error()) return kExitSetup;
    if (!wait_subscribed(pub, 20)) {
      std::snprintf(rep->err, sizeof rep->err, "worker never subscribed");
      return kExitSetup;
    }
    IceHost h(pub, sub, waitset ? &ws : nullptr, to);
    Record hr = drive_tiles(h, run);
    if (!hr.failed.empty()) {
      std::snprintf(rep->err, sizeof rep->err, "%s", hr.failed.c_str());
      return kExitTimeout;
    }
    rep->wall_s = hr.wall_s;
    rep->ops_per_s = hr.ops_per_s;
    rep->lat = *hr.latency;
    for (std::size_t i = 0; i < 101 && i < hr.cdf.size(); ++i) rep->cdf[i] = hr.cdf[i];
    rep->ok = 1;
    if (waitset) ws.detachState(sub, iox::popo::SubscriberState::HAS_DATA);
    return 0;
  };
  Child host = Child::fork_run([&]() -> int { std::exit(host_body()); });
  const auto hx = host.wait(to + 30);
  finish_child(r, worker, span, hx.ok ? 10 : 0.2);
  std::error_code ec;
  for (const char* who : {"tb-h-", "tb-w-"})
    for (const char* ext : {"", ".lock"}) fs::remove(fs::path("/tmp") / (who + tok + ext), ec);
  r.cpu[0].cpu_s = hx.cpu_s;  // the "host" is the forked host child, not the driver
  if (!hx.ok || rep->ok != 1) {
    r.failed = rep->err[0] != '\0' ? std::string(rep->err) : fmt::format("iceoryx host exited with {}", hx.code);
    return r;
  }
  r.ops = run.count;
  r.wall_s = rep->wall_s;
  r.ops_per_s = rep->ops_per_s;
  r.gb_per_s = r.ops_per_s * static_cast<double>(run.bytes) * 1e-9;
  r.latency = rep->lat;
  r.cdf.assign(rep->cdf, rep->cdf + 101);
  r.note = waitset ? "WaitSet wake-ups, loaned chunks (zero-copy)" : "busy poll, loaned chunks (zero-copy)";
  return r;
}

void iceoryx_cases(Context& ctx) {
  Roudi roudi;
  std::string why;
  if (!roudi.start(why)) {
    ctx.skip("tile/iceoryx", "iceoryx", why);
    return;
  }
  std::vector<std::uint64_t> sizes{kDescBytes};
  sizes.insert(sizes.end(), std::begin(kTileSizes), std::end(kTileSizes));
  for (const bool stream : {false, true})
    for (const std::uint64_t bytes : sizes)
      for (const bool ws : {false, true}) {
        const std::string bench = fmt::format("tile/iceoryx/{}", stream ? "stream" : "pingpong");
        ctx.progress(fmt::format("{} {} {}", bench, human_bytes(bytes), ws ? "waitset" : "busy poll"));
        ctx.emit(run_ice(ctx, make_run(ctx, bench, "iceoryx", ws ? "sleep" : "spin", bytes, stream, 2.0), ws));
      }
  roudi.stop();
}

TESSERA_BENCH_CASE("tile/iceoryx", "Eclipse iceoryx 2.0 zero-copy pub/sub (busy poll and WaitSet); starts its own RouDi",
                   iceoryx_cases);

}  // namespace
}  // namespace tessera::bench
