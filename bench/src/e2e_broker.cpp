// End to end through the broker: tessera::Client (embedded broker) + a supervised
// pool of the example C++ worker, ordered and unordered streams, N = 1 and 2
// workers, each tile size; the host writes every tile into its arena block and the
// worker reads every byte (op 1: per-tile mean) or touches nothing (op 2: trivial).
// Same host loop (drive_tiles) as every peer, so the figures compare directly.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include <tessera/client.hpp>

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

struct Setup {
  unsigned workers;
  bool ordered;
  std::uint32_t op;         // 1: reads every byte; 2: trivial
  const char* mode;         // "spin" or "spin-then-sleep"
};

// CPU seconds of another process (utime + stime from /proc).
double proc_cpu_s(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto p = s.rfind(')');
  if (p == std::string::npos) return 0;
  std::istringstream in(s.substr(p + 2));
  std::string tok;
  double ut = 0, st = 0;
  for (int field = 3; in >> tok; ++field) {
    if (field == 14) ut = std::stod(tok);
    if (field == 15) {
      st = std::stod(tok);
      break;
    }
  }
  return (ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

class BrokerHost {
 public:
  BrokerHost(Client& c, std::uint32_t stream, std::uint32_t op, bool ordered, double timeout_s)
      : c_(c), stream_(stream), op_(op), ordered_(ordered),
        timeout_(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(timeout_s))) {
    buf_.reserve(256);
  }

  bool send(std::uint64_t seq, std::size_t bytes) {
    InputBlock in;
    if (!c_.alloc(bytes, in, timeout_)) return false;
    write_tile(in.bytes().data(), bytes, seq);
    TileMeta m;
    m.dtype = DType::UInt8;
    m.shape = {static_cast<std::uint32_t>(bytes)};
    m.op = op_;
    m.tag = seq;
    return c_.submit(stream_, in, m, SubmitMode::timeout, timeout_).has_value();
  }

  bool recv(std::uint64_t& seq) {
    const auto end = Clock::now() + timeout_;
    while (head_ == buf_.size()) {
      buf_.clear();
      head_ = 0;
      c_.poll(buf_, 256, std::chrono::milliseconds(10));
      if (Clock::now() > end) return false;
    }
    TileResult& r = buf_[head_++];
    if (r.outcome != Outcome::completed) return false;
    // Unordered streams may complete out of order; the driver wants the due one, so
    // report it in order (exactly-once is still checked by the count).
    seq = ordered_ ? r.meta.tag : next_++;
    r.output.release();
    return true;
  }

 private:
  Client& c_;
  std::uint32_t stream_, op_;
  bool ordered_;
  std::chrono::nanoseconds timeout_;
  std::vector<TileResult> buf_;
  std::size_t head_ = 0;
  std::uint64_t next_ = 0;
};

void run_setup(Context& ctx, const Setup& s, std::uint64_t bytes, bool stream) {
  const std::string worker = ctx.opt.exe_dir + "/tessera-tissue-worker";
  const std::string bench = fmt::format("e2e/tessera-broker/{}-n{}-{}{}", stream ? "stream" : "pingpong", s.workers,
                                        s.ordered ? "ordered" : "unordered", s.op == 2 ? "-trivial" : "");
  if (!std::filesystem::exists(worker)) {
    ctx.skip(bench, "tessera-broker", "tessera-tissue-worker not built next to tessera-bench");
    return;
  }
  ctx.progress(fmt::format("{} {}", bench, human_bytes(bytes)));
  ClientOptions co;
  co.arena.classes = {{4096, 256}, {bytes, 64}};
  co.arena.n_rings = 8;
  co.arena.ring_capacity = 256;
  co.worker_window = 32;
  const bool spin = std::string_view(s.mode) == "spin";
  co.wait.spin_ns = spin ? 200'000'000 : 50'000;
  auto client = Client::embedded(co);
  if (!client) {
    ctx.skip(bench, "tessera-broker", client.error().message);
    return;
  }
  PoolSpec ps;
  ps.argv = {worker};
  ps.count = static_cast<int>(s.workers);
  ps.env["TESSERA_SPIN_NS"] = spin ? "200000000" : "50000";
  if (auto r = (*client)->start_pool(ps); !r) {
    ctx.skip(bench, "tessera-broker", "pool did not start: " + r.error().message);
    return;
  }
  StreamOptions so;
  so.ordering = s.ordered ? Ordering::submission : Ordering::completion;
  so.max_in_flight = 64;
  auto st = (*client)->open_stream(so).value();
  TileRun run = make_run(ctx, bench, "tessera-broker", s.mode, bytes, stream);
  if (stream) run.inflight = 16;  // the broker keeps both workers fed
  std::vector<double> w_cpu0;
  for (const auto& w : (*client)->workers()) w_cpu0.push_back(proc_cpu_s(w.pid));
  const CpuSpan span;
  BrokerHost host(**client, st, s.op, s.ordered, ctx.opt.child_timeout_s);
  Record r = drive_tiles(host, run);
  r.cpu.push_back({"host+broker", process_cpu_s() - span.cpu0});
  double wsum = 0;
  const auto ws = (*client)->workers();
  for (std::size_t i = 0; i < ws.size() && i < w_cpu0.size(); ++i) wsum += proc_cpu_s(ws[i].pid) - w_cpu0[i];
  r.cpu.push_back({"workers", wsum});
  r.cpu_wall_s = static_cast<double>(now_ns() - span.t0) * 1e-9;
  r.note = fmt::format("{} worker(s), {} stream, op {} ({})", s.workers, s.ordered ? "ordered" : "unordered", s.op,
                       s.op == 1 ? "worker reads every byte" : "trivial handler");
  ctx.emit(std::move(r));
}

void e2e(Context& ctx) {
  spdlog::set_level(spdlog::level::warn);  // supervision events would interleave with the table
  const Setup setups[] = {
      {1, true, 1, "spin"}, {2, true, 1, "spin-then-sleep"}, {2, false, 1, "spin-then-sleep"}, {1, true, 2, "spin"}};
  for (const auto& s : setups)
    for (std::uint64_t bytes : kTileSizes) {
      if (s.op == 2 && bytes != kTileSizes[0]) continue;
      run_setup(ctx, s, bytes, true);
    }
  run_setup(ctx, {1, true, 1, "spin"}, kTileSizes[0], false);
  run_setup(ctx, {1, true, 1, "spin-then-sleep"}, kTileSizes[0], false);
}

}  // namespace

TESSERA_BENCH_CASE("e2e/tessera-broker/stream", "Client + embedded broker + C++ worker pool, end to end", e2e);

}  // namespace tessera::bench
