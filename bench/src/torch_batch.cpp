// Per-tile vs batched PyTorch inference through Tessera, against the same model fed
// from in-process tensors on the same batches (bench/python/torch_batch_bench.py: the
// torch example's net on the CPU, one thread per process). The Python side measures
// every configuration several times, interleaved, and prints one JSON line each; this
// file turns them into records with the ratios in the note.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include <boost/json.hpp>
#include <fmt/core.h>

#include "../common/harness.hpp"

namespace tessera::bench {
namespace {

namespace json = boost::json;

bool torch_ready(Context& ctx, std::string& script, std::string& pythonpath, std::string& why) {
  script = ctx.opt.exe_dir + "/tessera-bench-torch-batch.py";
  pythonpath = (std::filesystem::path(ctx.opt.exe_dir).parent_path() / "python").string();
  if (!std::filesystem::exists(script)) {
    why = "helper script tessera-bench-torch-batch.py not found next to tessera-bench";
    return false;
  }
  if (!std::filesystem::exists(pythonpath + "/tessera_examples/torch_worker.py")) {
    why = "the tessera Python package (with tessera_examples) is not built";
    return false;
  }
  const std::string cmd = ctx.opt.python + " -c 'import torch, numpy' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    why = ctx.opt.python + " with torch not available (apt install python3-torch)";
    return false;
  }
  return true;
}

void run_case(Context& ctx, int edge) {
  const std::string bench = "torch/batch/" + std::to_string(edge);
  std::string script, pythonpath, why;
  if (!torch_ready(ctx, script, pythonpath, why)) {
    ctx.skip(bench, "tessera", why);
    return;
  }
  const int per_rep = static_cast<int>(ctx.count(edge >= 256 ? 256 : 1024, 16));
  const int reps = ctx.opt.smoke ? 1 : ctx.opt.quick ? 3 : 5;
  const std::string batches = ctx.opt.smoke ? "1,8" : "1,8,32";
  ctx.progress(bench + fmt::format(": {} tiles x {} reps per configuration", per_rep, reps));
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    Record r;
    r.bench = bench;
    r.peer = "tessera";
    r.failed = "pipe2";
    ctx.emit(r);
    return;
  }
  Child child = Child::spawn({"/usr/bin/env", "PYTHONPATH=" + pythonpath, ctx.opt.python, script, "--tile", std::to_string(edge),
                              "--tiles", std::to_string(per_rep), "--reps", std::to_string(reps), "--batches", batches},
                             out[1]);
  close(out[1]);
  std::string text;
  {
    Watchdog wd(ctx.opt.child_timeout_s * 4);  // 7 configurations, each measured `reps` times
    char buf[4096];
    for (;;) {
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n > 0) text.append(buf, static_cast<std::size_t>(n));
      else if (n < 0 && errno == EINTR && !watchdog_fired()) continue;
      else break;
    }
  }
  close(out[0]);
  const auto ex = child.wait(watchdog_fired() ? 0.1 : 30);
  struct Line {
    double rate = 0, lo = 0, hi = 0;
  };
  std::map<std::string, Line> lines;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    const std::string one = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? text.size() : end + 1;
    boost::system::error_code ec;
    const json::value v = json::parse(one, ec);
    if (ec || !v.is_object()) continue;
    const auto& o = v.as_object();
    lines[std::string(o.at("config").as_string())] = {o.at("tiles_per_s").to_number<double>(), o.at("min").to_number<double>(),
                                                      o.at("max").to_number<double>()};
  }
  if (!ex.ok || lines.empty()) {
    Record r;
    r.bench = bench;
    r.peer = "tessera";
    r.failed = ex.timed_out || watchdog_fired() ? "torch benchmark timed out" : "torch benchmark failed (see its stderr)";
    ctx.emit(r);
    return;
  }
  const double per_tile = lines.count("tessera/per-tile") ? lines["tessera/per-tile"].rate : 0;
  for (const auto& [config, l] : lines) {
    Record r;
    const auto slash = config.find('/');
    r.bench = bench + "/" + config;
    r.peer = config.substr(0, slash);
    r.workload = config.substr(slash + 1);
    r.mode = "n/a";
    r.tile_bytes = static_cast<std::uint64_t>(edge) * static_cast<std::uint64_t>(edge) * 3;
    r.ops = static_cast<std::uint64_t>(per_rep) * static_cast<std::uint64_t>(reps);
    r.ops_per_s = l.rate;
    r.gb_per_s = l.rate * static_cast<double>(r.tile_bytes) * 1e-9;
    r.wall_s = static_cast<double>(r.ops) / l.rate;
    r.note = fmt::format("tiles/s median of {} reps, spread {:.1f}..{:.1f}", reps, l.lo, l.hi);
    if (r.peer == "tessera" && r.workload.rfind("batch-", 0) == 0) {
      const std::string peer = "in-process/" + r.workload;
      if (lines.count(peer) && lines[peer].rate > 0) r.note += fmt::format("; {:.2f}x in-process", l.rate / lines[peer].rate);
      if (per_tile > 0) r.note += fmt::format("; {:.2f}x Tessera per-tile", l.rate / per_tile);
    }
    ctx.emit(r);
  }
}

}  // namespace

TESSERA_BENCH_CASE("torch/batch/256", "torch example net, 256 px tiles: Tessera per-tile vs batched vs in-process (CPU)",
                   [](Context& ctx) { run_case(ctx, 256); });
TESSERA_BENCH_CASE("torch/batch/64", "torch example net, 64 px tiles: Tessera per-tile vs batched vs in-process (CPU)",
                   [](Context& ctx) { run_case(ctx, 64); });

}  // namespace tessera::bench
