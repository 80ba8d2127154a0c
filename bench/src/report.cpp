#include "report.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;

const Record* find(const std::vector<Record>& rs, std::string_view peer, std::string_view workload,
                   std::string_view mode, std::uint64_t bytes) {
  for (const auto& r : rs)
    if (r.skipped.empty() && r.failed.empty() && r.peer == peer && r.workload == workload &&
        (mode.empty() || r.mode == mode) && r.tile_bytes == bytes)
      return &r;
  return nullptr;
}

double p50(const Record* r) { return r != nullptr && r->latency ? r->latency->p50 : 0; }
double p99(const Record* r) { return r != nullptr && r->latency ? r->latency->p99 : 0; }

std::string us(double ns) {
  if (ns <= 0) return "—";
  if (ns < 1000) return fmt::format("{:.3f} µs", ns * 1e-3);
  if (ns < 100'000) return fmt::format("{:.1f} µs", ns * 1e-3);
  return fmt::format("{:.0f} µs", ns * 1e-3);
}

std::string rate(double per_s) {
  if (per_s <= 0) return "—";
  if (per_s >= 1e6) return fmt::format("{:.2f} M/s", per_s * 1e-6);
  if (per_s >= 1e3) return fmt::format("{:.1f} k/s", per_s * 1e-3);
  return fmt::format("{:.0f} /s", per_s);
}

std::string ratio(double x) { return x > 0 ? fmt::format("{:.2f}×", x) : "—"; }

struct Peer {
  const char* id;
  const char* label;
  const char* mode;   // the mode compared (spinning peers vs Tessera spin; sleeping vs spin-then-sleep)
  const char* tessera_mode;
};
// Order of the columns; ratios are against Tessera in the matching wait mode.
constexpr Peer kPeers[] = {
    {"plain-ring", "plain SPSC ring (spin)", "spin", "spin"},
    {"boost-spsc", "Boost spsc_queue (spin)", "spin", "spin"},
    {"iceoryx", "iceoryx 2.0 (busy poll)", "spin", "spin"},
    {"iceoryx", "iceoryx 2.0 (WaitSet)", "sleep", "spin-then-sleep"},
    {"uds", "Unix socket", "sleep", "spin-then-sleep"},
    {"pipe", "pipe (64 KiB)", "sleep", "spin-then-sleep"},
    {"pipe-1m", "pipe (1 MiB)", "sleep", "spin-then-sleep"},
    {"bip-mq", "Boost.Interprocess message_queue", "sleep", "spin-then-sleep"},
    {"zmq", "ZeroMQ ipc://", "sleep", "spin-then-sleep"},
    {"appose-cpp", "Appose-style (C++)", "sleep", "spin-then-sleep"},
    {"appose-py", "Appose-style (Python)", "sleep", "spin-then-sleep"},
};

std::vector<std::uint64_t> all_sizes() {
  std::vector<std::uint64_t> v{kDescBytes};
  v.insert(v.end(), std::begin(kTileSizes), std::end(kTileSizes));
  return v;
}

std::string size_label(std::uint64_t b) { return b == kDescBytes ? "64 B desc" : human_bytes(b); }

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

std::string safe(std::string s) {
  for (char& c : s)
    if (c == ' ' || c == '/' || c == '(' || c == ')' || c == '.' || c == ':') c = '_';
  return s;
}

}  // namespace

ReportFiles write_report(const std::string& dir, const Environment& env, const std::vector<Record>& rs) {
  ReportFiles out;
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::ostringstream md;
  md << "# Tessera benchmark report\n\n";
  md << fmt::format("- git `{}`, {} {} ({}), flags `{}`\n", env.git_sha, env.compiler, env.build_type.empty() ? "" : "",
                    env.build_type, env.flags);
  md << fmt::format("- CPU: {}, {} cores; started {}\n\n", env.cpu_model, env.cores, env.started_utc);

  // ---- floors ----
  const Record* cl = find(rs, "floor", "pingpong", "spin", 8);
  const Record* fx = find(rs, "floor", "pingpong", "sleep", 4);
  md << "## Floors (same run)\n\n";
  md << fmt::format("- cache-line ping-pong round trip: p50 {}, p99 {}\n", us(p50(cl)), us(p99(cl)));
  md << fmt::format("- futex wake-up round trip (both sleep): p50 {}, p99 {}\n\n", us(p50(fx)), us(p99(fx)));
  md << "| tile | memcpy | read | memcpy+read (per tile) |\n|---|---|---|---|\n";
  for (auto b : kTileSizes) {
    const Record* m = find(rs, "floor", "memcpy", "", b);
    const Record* rd = find(rs, "floor", "read", "", b);
    const Record* mr = find(rs, "floor", "memcpy+read", "", b);
    md << fmt::format("| {} | {:.1f} GB/s | {:.1f} GB/s | {} |\n", human_bytes(b), m ? m->gb_per_s : 0.0,
                      rd ? rd->gb_per_s : 0.0, us(mr && mr->latency ? mr->latency->mean : 0));
  }

  // ---- key targets ----
  md << "\n## Targets (issues 2 and 6)\n\n| what | measured | reference | ratio | target | met |\n|---|---|---|---|---|---|\n";
  auto row = [&](const std::string& what, const std::string& measured, const std::string& ref, double r,
                 const std::string& target, std::optional<bool> met) {
    md << fmt::format("| {} | {} | {} | {} | {} | {} |\n", what, measured, ref, ratio(r), target,
                      met ? (*met ? "yes" : "**no**") : "n/a");
  };
  const Record* dpp = find(rs, "tessera", "pingpong", "spin", kDescBytes);
  if (dpp && cl) {
    const double r = p50(dpp) / p50(cl);
    row("descriptor round trip p50, spinning", us(p50(dpp)) + " (p99 " + us(p99(dpp)) + ")",
        "cache line " + us(p50(cl)), r, "≤ 4× floor, ≤ 0.3 µs", r <= 4.0 && p50(dpp) <= 300);
  }
  const Record* ice64 = find(rs, "iceoryx", "pingpong", "spin", kDescBytes);
  if (dpp && ice64) {
    const double r = p50(ice64) / p50(dpp);
    row("descriptor round trip vs iceoryx busy poll", us(p50(dpp)), "iceoryx " + us(p50(ice64)), r, "≥ 7× faster",
        r >= 7.0);
  }
  const Record* bt = find(rs, "tessera", "oneway-batched", "spin", kDescBytes);
  const Record* bp = find(rs, "plain-ring", "oneway-batched", "spin", kDescBytes);
  const Record* bb = find(rs, "boost-spsc", "oneway-batched", "spin", kDescBytes);
  if (bt) {
    row("one-way batched descriptors/s", rate(bt->ops_per_s), "target 14 M/s", bt->ops_per_s / 14e6, "≥ 14 M/s",
        bt->ops_per_s >= 14e6);
    if (bp) row("batched vs plain ring", rate(bt->ops_per_s), "plain ring " + rate(bp->ops_per_s),
                bt->ops_per_s / bp->ops_per_s, "(comparison)", std::nullopt);
    if (bb) row("batched vs Boost spsc_queue", rate(bt->ops_per_s), "Boost " + rate(bb->ops_per_s),
                bt->ops_per_s / bb->ops_per_s, "(comparison)", std::nullopt);
  }
  const Record* bpp = find(rs, "boost-spsc", "pingpong", "spin", kDescBytes);
  if (dpp && bpp)
    row("descriptor round trip vs Boost spsc_queue", us(p50(dpp)), "Boost " + us(p50(bpp)), p50(dpp) / p50(bpp),
        "(comparison; < 1 = Tessera faster)", std::nullopt);
  const Record* slp = find(rs, "tessera", "pingpong", "sleep", kDescBytes);
  if (slp && fx) {
    const double r = p50(slp) / p50(fx);
    row("blocking round trip p50 (no spin window)", us(p50(slp)), "futex " + us(p50(fx)), r, "≤ 1.2× futex", r <= 1.2);
  }
  const Record* sts = find(rs, "tessera", "pingpong", "spin-then-sleep", kDescBytes);
  if (sts && fx)
    row("round trip p50, default policy (spin window, then futex)", us(p50(sts)), "futex " + us(p50(fx)),
        p50(sts) / p50(fx), "(back-to-back requests stay in the spin window)", std::nullopt);
  for (const auto& r : rs)
    if (r.workload == "idle" && r.failed.empty())
      for (const auto& c : r.cpu)
        if (c.role == "worker_waiting")
          row("idle consumer CPU after its spin window", fmt::format("{:.2f} ms in {:.2f} s", c.cpu_s * 1e3, r.wall_s),
              "spin window 50 µs", 0, "≈ 0", c.cpu_s < 0.01 * r.wall_s + 0.002);
  for (auto b : {std::uint64_t{196'608}, std::uint64_t{3'145'728}}) {
    const Record* al = find(rs, "tessera", "alloc", "n/a", b);
    if (al && al->latency)
      row("slab alloc+free pair, " + human_bytes(b), fmt::format("{:.1f} ns", al->latency->p50), "target 100 ns",
          al->latency->p50 / 100.0, "≤ 100 ns", al->latency->p50 <= 100);
  }
  const Record* t3 = find(rs, "tessera", "stream", "spin", 3'145'728);
  const Record* f3 = find(rs, "floor", "memcpy+read", "", 3'145'728);
  if (t3 && f3 && f3->latency && t3->ops_per_s > 0) {
    const double per = 1e9 / t3->ops_per_s;
    row("3 MiB tile streaming, time per tile", us(per), "memcpy+read " + us(f3->latency->mean),
        per / f3->latency->mean, "≤ 1.3× floor", per <= 1.3 * f3->latency->mean);
  }
  const Record* t196 = find(rs, "tessera", "stream", "spin", 196'608);
  if (t196) {
    struct Cmp {
      const char* peer;
      const char* mode;
      double target;
      const char* text;
    };
    for (const Cmp& c : {Cmp{"iceoryx", "spin", 3.0, "≥ 3× iceoryx (target is end to end through the broker)"},
                         Cmp{"appose-cpp", "sleep", 40.0, "≥ 40× Appose-style"},
                         Cmp{"appose-py", "sleep", 40.0, "≥ 40× Appose-style"},
                         Cmp{"plain-ring", "spin", 0.65, "≥ 65 % of the bare ring"}}) {
      const Record* p = find(rs, c.peer, "stream", c.mode, 196'608);
      if (p && p->ops_per_s > 0) {
        const double r = t196->ops_per_s / p->ops_per_s;
        row(fmt::format("196 KiB streaming vs {}", c.peer), rate(t196->ops_per_s), rate(p->ops_per_s), r, c.text,
            r >= c.target);
      }
    }
  }

  // ---- per-size tables ----
  auto table = [&](const char* title, const char* workload, bool throughput) {
    md << "\n## " << title << "\n\n| tile | Tessera (spin) | Tessera (spin-then-sleep) |";
    for (const Peer& p : kPeers) md << " " << p.label << " |";
    md << "\n|---|---|---|";
    for (std::size_t i = 0; i < std::size(kPeers); ++i) md << "---|";
    md << "\n";
    for (auto b : all_sizes()) {
      const Record* ts = find(rs, "tessera", workload, "spin", b);
      const Record* tz = find(rs, "tessera", workload, "spin-then-sleep", b);
      auto cell = [&](const Record* r) { return throughput ? rate(r ? r->ops_per_s : 0) : us(p50(r)); };
      md << "| " << size_label(b) << " | " << cell(ts) << " | " << cell(tz) << " |";
      for (const Peer& p : kPeers) {
        const Record* r = find(rs, p.id, workload, p.mode, b);
        const Record* t = std::string_view(p.tessera_mode) == "spin" ? ts : tz;
        if (r == nullptr) {
          md << " — |";
          continue;
        }
        double x = 0;
        if (t) x = throughput ? t->ops_per_s / r->ops_per_s : p50(r) / p50(t);
        md << " " << cell(r) << (x > 0 ? fmt::format(" (T {:.1f}×)", x) : "") << " |";
      }
      md << "\n";
    }
  };
  table("Streaming throughput (tiles/s, 8 in flight; “T n×” = Tessera is n× faster)", "stream", true);
  table("Round-trip latency p50 (ping-pong; “T n×” = Tessera is n× faster)", "pingpong", false);

  // ---- skipped / failed ----
  md << "\n## Skipped and failed\n\n";
  bool any = false;
  for (const auto& r : rs) {
    if (!r.skipped.empty()) md << fmt::format("- skipped {}: {}\n", r.bench, r.skipped), any = true;
    if (!r.failed.empty())
      md << fmt::format("- FAILED {} {} {}: {}\n", r.bench, size_label(r.tile_bytes), r.mode, r.failed), any = true;
  }
  if (!any) md << "none\n";

  md << "\n## Cache placement\n\nA short cache-line ping-pong runs right after each measurement "
        "(`cacheline_rtt_after_ns` in the JSON): ";
  double lo = 1e18, hi = 0;
  for (const auto& r : rs)
    if (r.cacheline_rtt_after_ns > 0) lo = std::min(lo, r.cacheline_rtt_after_ns), hi = std::max(hi, r.cacheline_rtt_after_ns);
  if (hi > 0) md << fmt::format("it ranged from {} to {} in this run.\n", us(lo), us(hi));
  else md << "not run.\n";

  // ---- plots ----
  if (!have_gnuplot()) {
    out.plot_note = "gnuplot not found: no plots";
  } else {
    const fs::path d(dir);
    std::ostringstream gp;
    gp << "set terminal pngcairo size 900,560 noenhanced font ',10'\n";
    // throughput vs tile size
    std::vector<std::pair<std::string, std::string>> series;  // file, title
    auto tput_series = [&](const char* peer, const char* mode, const std::string& title) {
      std::ostringstream dat;
      int n = 0;
      for (auto b : kTileSizes)
        if (const Record* r = find(rs, peer, "stream", mode, b)) dat << b << ' ' << r->ops_per_s << '\n', ++n;
      if (n == 0) return;
      const std::string f = "tput_" + safe(title) + ".dat";
      std::ofstream(d / f) << dat.str();
      series.emplace_back(f, title);
    };
    tput_series("tessera", "spin", "Tessera (spin)");
    tput_series("tessera", "spin-then-sleep", "Tessera (spin-then-sleep)");
    for (const Peer& p : kPeers) tput_series(p.id, p.mode, p.label);
    {
      std::ostringstream dat;
      for (auto b : kTileSizes)
        if (const Record* r = find(rs, "floor", "memcpy+read", "", b)) dat << b << ' ' << r->ops_per_s << '\n';
      std::ofstream(d / "tput_floor.dat") << dat.str();
      series.emplace_back("tput_floor.dat", "floor: memcpy+read, one thread");
    }
    if (!series.empty()) {
      gp << "set output '" << (d / "throughput.png").string() << "'\n"
         << "set title 'Streaming throughput vs tile size (8 in flight, every byte written and read)'\n"
         << "set logscale xy\nset xlabel 'tile size (bytes)'\nset ylabel 'tiles/s'\nset key outside right\n"
         << "set grid\nplot ";
      for (std::size_t i = 0; i < series.size(); ++i)
        gp << (i ? ", " : "") << "'" << (d / series[i].first).string() << "' using 1:2 with linespoints title '"
           << series[i].second << "'";
      gp << "\nunset logscale\n";
      out.plots.push_back((d / "throughput.png").string());
    }
    // latency CDFs
    auto cdf_plot = [&](std::uint64_t bytes, const std::string& png, const std::string& title) {
      std::vector<std::pair<std::string, std::string>> cs;
      auto add = [&](const Record* r, const std::string& label) {
        if (r == nullptr || r->cdf.empty()) return;
        const std::string f = fmt::format("cdf_{}_{}.dat", bytes, safe(label));
        std::ofstream o(d / f);
        for (std::size_t k = 0; k < r->cdf.size(); ++k)
          o << r->cdf[k] * 1e-3 << ' ' << static_cast<double>(k) / static_cast<double>(r->cdf.size() - 1) << '\n';
        cs.emplace_back(f, label);
      };
      add(find(rs, "tessera", "pingpong", "spin", bytes), "Tessera (spin)");
      add(find(rs, "tessera", "pingpong", "spin-then-sleep", bytes), "Tessera (spin-then-sleep)");
      if (bytes == kDescBytes) {
        add(find(rs, "tessera", "pingpong", "sleep", bytes), "Tessera (sleep)");
        add(cl, "floor: cache line");
        add(fx, "floor: futex");
      }
      for (const Peer& p : kPeers) add(find(rs, p.id, "pingpong", p.mode, bytes), p.label);
      if (cs.empty()) return;
      gp << "set output '" << (d / png).string() << "'\nset title '" << title << "'\n"
         << "set logscale x\nset xlabel 'round trip (µs)'\nset ylabel 'fraction of round trips'\nset key outside right\n"
         << "set grid\nset yrange [0:1]\nplot ";
      for (std::size_t i = 0; i < cs.size(); ++i)
        gp << (i ? ", " : "") << "'" << (d / cs[i].first).string() << "' using 1:2 with lines lw 2 title '"
           << cs[i].second << "'";
      gp << "\nunset logscale\nset autoscale y\n";
      out.plots.push_back((d / png).string());
    };
    cdf_plot(196'608, "latency_cdf_196k.png", "Round-trip latency CDF, 196,608 B tiles (ping-pong)");
    cdf_plot(kDescBytes, "latency_cdf_desc.png", "Round-trip latency CDF, 64-byte descriptors (ping-pong)");
    const fs::path script = d / "plots.gp";
    std::ofstream(script) << gp.str();
    const std::string cmd = "gnuplot '" + script.string() + "' 2>'" + (d / "gnuplot.log").string() + "'";
    if (std::system(cmd.c_str()) != 0) {
      out.plot_note = "gnuplot failed (see gnuplot.log)";
      out.plots.clear();
    }
  }
  if (!out.plots.empty()) {
    md << "\n## Plots\n\n";
    for (const auto& p : out.plots) md << "![" << fs::path(p).stem().string() << "](" << fs::path(p).filename().string() << ")\n";
  } else if (!out.plot_note.empty()) {
    md << "\n(" << out.plot_note << ")\n";
  }
  out.markdown = (fs::path(dir) / "report.md").string();
  std::ofstream(out.markdown) << md.str();
  return out;
}

}  // namespace tessera::bench
