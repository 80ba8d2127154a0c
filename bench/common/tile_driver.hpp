// The host side of every tile workload, shared by all transports so that each peer
// runs exactly the same loop: keep up to `inflight` tiles outstanding, time each
// tile from "start writing it" to "its reply arrived", check replies come back in
// order, and measure throughput over the window after the warm-up.
//
// A Host provides:
//   bool send(std::uint64_t seq, std::size_t bytes);  // write the tile + hand it off (may block, bounded)
//   bool recv(std::uint64_t& seq);                    // wait for the next reply (bounded); false = broken
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "harness.hpp"

namespace tessera::bench {

struct TileRun {
  std::string bench, peer, mode;
  std::uint64_t bytes = 0;
  unsigned inflight = 1;   // 1 = ping-pong
  std::uint64_t count = 0;
  std::uint64_t warmup = 0;
};

// Streaming keeps this many tiles in flight (bounded, lossless).
inline constexpr unsigned kStreamInflight = 8;

// Sample counts per tile size for a full run (quick/smoke scale these down).
inline std::uint64_t full_count(std::uint64_t bytes, bool stream) {
  std::uint64_t n = bytes <= 64 ? 100'000 : bytes <= 200'000 ? 4'000 : bytes <= 1'100'000 ? 2'000 : 800;
  return stream ? n * 2 : n;
}

inline TileRun make_run(const Context& ctx, std::string bench, std::string peer, std::string mode,
                        std::uint64_t bytes, bool stream, double slow_factor = 1.0) {
  TileRun r;
  r.bench = std::move(bench);
  r.peer = std::move(peer);
  r.mode = std::move(mode);
  r.bytes = bytes;
  r.inflight = stream ? kStreamInflight : 1;
  r.count = ctx.count(static_cast<std::uint64_t>(static_cast<double>(full_count(bytes, stream)) / slow_factor), 8);
  r.warmup = std::max<std::uint64_t>(ctx.warmup_of(r.count), 4 * r.inflight);
  return r;
}

inline Record base_record(const TileRun& run) {
  Record r;
  r.bench = run.bench;
  r.peer = run.peer;
  r.workload = run.inflight > 1 ? "stream" : "pingpong";
  r.mode = run.mode;
  r.tile_bytes = run.bytes;
  r.inflight = run.inflight;
  r.warmup = run.warmup;
  return r;
}

template <class Host>
Record drive_tiles(Host& h, const TileRun& run) {
  Record r = base_record(run);
  const std::uint64_t total = run.warmup + run.count;
  std::vector<std::uint64_t> sent_at(run.inflight, 0);
  Samples lat(run.count);
  std::uint64_t sent = 0, done = 0, t_start = now_ns();
  while (done < total) {
    while (sent < total && sent - done < run.inflight) {
      const std::uint64_t t = now_ns();
      if (!h.send(sent, run.bytes)) {
        r.failed = fmt::format("send of tile {} failed (timeout, no space or peer died)", sent);
        return r;
      }
      sent_at[sent % run.inflight] = t;
      ++sent;
    }
    std::uint64_t s = ~std::uint64_t{0};
    if (!h.recv(s)) {
      r.failed = fmt::format("no reply for tile {} (timeout or peer died)", done);
      return r;
    }
    if (s != done) {
      r.failed = fmt::format("reply {} arrived where {} was due (lost or reordered)", s, done);
      return r;
    }
    const std::uint64_t t = now_ns();
    if (done >= run.warmup) lat.add(t - sent_at[done % run.inflight]);
    ++done;
    if (done == run.warmup) t_start = t;
  }
  r.wall_s = static_cast<double>(now_ns() - t_start) * 1e-9;
  r.ops = run.count;
  r.ops_per_s = r.wall_s > 0 ? static_cast<double>(run.count) / r.wall_s : 0;
  r.gb_per_s = r.ops_per_s * static_cast<double>(run.bytes) * 1e-9;
  r.latency = lat.summarize();
  r.cdf = lat.cdf(101);
  return r;
}

// Reaps the worker, records per-process CPU seconds, and turns a bad exit into a failure.
struct CpuSpan {
  double cpu0 = process_cpu_s();
  std::uint64_t t0 = now_ns();
};

inline void finish_child(Record& r, Child& c, const CpuSpan& span, double timeout_s) {
  const auto ex = c.wait(r.failed.empty() ? timeout_s : 0.2);
  r.cpu.push_back({"host", process_cpu_s() - span.cpu0});
  r.cpu.push_back({"worker", ex.cpu_s});
  r.cpu_wall_s = static_cast<double>(now_ns() - span.t0) * 1e-9;
  if (r.failed.empty() && !ex.ok) {
    static const char* const kWhy[] = {"ok", "?", "?", "timeout", "lost, reordered or corrupt tile", "set-up failed"};
    const char* why = ex.code >= 0 && ex.code <= 5 ? kWhy[ex.code] : "?";
    r.failed = ex.timed_out ? "worker timed out" : fmt::format("worker exited with {} ({})", ex.code, why);
  }
}

// Worker exit codes.
inline constexpr int kExitTimeout = 3;
inline constexpr int kExitCorrupt = 4;
inline constexpr int kExitSetup = 5;

}  // namespace tessera::bench
