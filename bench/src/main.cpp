// tessera-bench: runs every registered bench case (or those matching --filter),
// writes one JSON line per result, then a Markdown report and PNG plots.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "../common/harness.hpp"
#include "report.hpp"

namespace fs = std::filesystem;
using namespace tessera::bench;

namespace {

std::string exe_dir() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

std::string one_line(const Record& r) {
  if (!r.skipped.empty()) return fmt::format("SKIP  {:<28} {}", r.bench, r.skipped);
  std::string size = r.tile_bytes == kDescBytes ? "64 B" : human_bytes(r.tile_bytes);
  std::string s = fmt::format("{:<5} {:<28} {:>9} {:<16}", r.failed.empty() ? "ok" : "FAIL", r.bench, size, r.mode);
  if (!r.failed.empty()) return s + " " + r.failed;
  if (r.latency && r.latency->count > 0)
    s += fmt::format(" p50 {:>10.3f} µs  p99 {:>10.3f} µs", r.latency->p50 * 1e-3, r.latency->p99 * 1e-3);
  if (r.ops_per_s > 0) s += fmt::format("  {:>12.0f} /s", r.ops_per_s);
  if (r.gb_per_s > 0) s += fmt::format("  {:>6.2f} GB/s", r.gb_per_s);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera-bench: Tessera's data plane against the floors of this machine and the IPC peers users would "
               "otherwise pick, in one run"};
  Options opt;
  std::string out_file, filter, report_dir;
  bool list = false, no_report = false;
  app.add_flag("--quick", opt.quick, "small sample counts: the whole suite in under a minute");
  app.add_flag("--smoke", opt.smoke, "tiny sample counts (CI); implies --quick; timings are meaningless");
  app.add_option("--out", out_file, "write one JSON line per result to FILE");
  app.add_option("--filter", filter, "run only cases whose name matches this regex (see --list)");
  app.add_option("--report", report_dir, "directory for report.md, results.jsonl and plots (default: <build>/bench-report)");
  app.add_flag("--no-report", no_report, "skip the Markdown report and the plots");
  app.add_flag("--list", list, "list the cases and exit");
  app.add_option("--timeout", opt.child_timeout_s, "seconds before a stuck peer is killed")->check(CLI::PositiveNumber);
  app.add_option("--python", opt.python, "Python interpreter with numpy (for the Python peers)");
  bool no_probe = false;
  app.add_flag("--no-cacheline-probe", no_probe, "do not run the short cache-line ping-pong after each measurement");
  CLI11_PARSE(app, argc, argv);
  if (opt.smoke) opt.quick = true;
  opt.cacheline_probe = !no_probe && !opt.smoke;  // smoke: spinning probes on a busy CI host only cost time
  opt.exe_dir = exe_dir();

  auto& cases = registry();
  std::sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) {
    auto rank = [](const std::string& n) { return n.rfind("floor/", 0) == 0 ? 0 : n.find("tessera") != std::string::npos ? 1 : 2; };
    return std::pair(rank(a.name), a.name) < std::pair(rank(b.name), b.name);
  });
  std::regex re;
  try {
    re = std::regex(filter.empty() ? ".*" : filter);
  } catch (const std::regex_error& e) {
    std::cerr << "tessera-bench: bad --filter regex: " << e.what() << "\n";
    return 2;
  }
  std::vector<const Case*> selected;
  for (const auto& c : cases)
    if (std::regex_search(c.name, re)) selected.push_back(&c);
  if (list) {
    for (const auto* c : selected) std::cout << fmt::format("{:<30} {}\n", c->name, c->about);
    return 0;
  }
  if (selected.empty()) {
    std::cerr << "tessera-bench: no case matches --filter '" << filter << "'\n";
    return 2;
  }

  if (report_dir.empty()) report_dir = (fs::path(opt.exe_dir).parent_path() / "bench-report").string();
  std::error_code ec;
  if (!no_report) fs::create_directories(report_dir, ec);

  Context ctx;
  ctx.opt = opt;
  ctx.env = detect_environment();
  std::ofstream out;
  if (!out_file.empty()) {
    out.open(out_file, std::ios::trunc);
    if (!out) {
      std::cerr << "tessera-bench: cannot write " << out_file << "\n";
      return 2;
    }
  }
  std::ofstream all;
  if (!no_report) all.open(fs::path(report_dir) / "results.jsonl", std::ios::trunc);
  const bool tty = isatty(STDERR_FILENO) != 0;
  std::size_t index = 0;
  std::string current;
  ctx.on_progress = [&](const std::string& what) {
    if (tty) std::fprintf(stderr, "\r\033[K[%zu/%zu] %s", index + 1, selected.size(), what.c_str());
    else std::fprintf(stderr, "[%zu/%zu] %s\n", index + 1, selected.size(), what.c_str());
    std::fflush(stderr);
  };
  ctx.on_record = [&](const Record& r) {
    const std::string line = to_json_line(ctx.env, r);
    if (out) out << line << '\n' << std::flush;
    if (all) all << line << '\n' << std::flush;
    if (tty) std::fprintf(stderr, "\r\033[K");
    std::printf("%s\n", one_line(r).c_str());
    std::fflush(stdout);
  };
  std::printf("tessera-bench %s: git %s, %s, %s, %u cores%s\n", opt.smoke ? "(smoke)" : opt.quick ? "(quick)" : "",
              ctx.env.git_sha.c_str(), ctx.env.compiler.c_str(), ctx.env.cpu_model.c_str(), ctx.env.cores,
              ctx.env.build_type == "Release" ? "" : " (not a Release build: numbers are not representative)");
  const std::uint64_t t0 = now_ns();
  for (index = 0; index < selected.size(); ++index) {
    current = selected[index]->name;
    if (tty) ctx.progress(current);
    selected[index]->run(ctx);
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  std::size_t failed = 0;
  for (const auto& r : ctx.records) failed += r.failed.empty() ? 0 : 1;
  std::printf("%zu results (%zu failed) in %.1f s\n", ctx.records.size(), failed,
              static_cast<double>(now_ns() - t0) * 1e-9);
  if (!no_report) {
    const ReportFiles rep = write_report(report_dir, ctx.env, ctx.records);
    std::printf("report: %s\n", rep.markdown.c_str());
    for (const auto& p : rep.plots) std::printf("plot:   %s\n", p.c_str());
    if (!rep.plot_note.empty()) std::printf("plots:  %s\n", rep.plot_note.c_str());
  }
  return failed == 0 ? 0 : 1;
}
