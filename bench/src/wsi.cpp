// The main job on a real-format slide, as a user runs it: a generated JPEG-tiled pyramidal
// TIFF (240-px tiles, q85, stained-tissue texture), same cores, same trivial model (the
// example worker's tissue mask), whole job wall time (start to outputs written):
//   tessera overlay, fast reader and OpenSlide reader, tissue detection on and off;
//   the WSInfer-style peer: torch DataLoader(num_workers = cores, batch_size = 32) over
//   openslide-python, model in the main process (bench/python/wsi_dataloader.py);
//   the decode-only floor: every core decoding the same level-0 tiles with libjpeg-turbo
//   (the fast reader's pread + tjDecompress2) and nothing else.
// Repetitions are interleaved (a shared machine drifts); every run is one JSON line and a
// summary line gives the medians and the ratios.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>

#include <tessera/overlay.hpp>

#include "../common/harness.hpp"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;

// A /proc file's text (empty when the process is gone; iostreams throw on ESRCH).
std::string slurp(const std::string& path) {
  std::string s;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return s;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return s;
}

// Sum of the proportional set size (Pss: shared pages split between their users) of a
// process and all its descendants, from /proc.
long tree_pss_kb(int root) {
  std::map<int, int> parent;
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      const int pid = std::atoi(e->d_name);
      if (pid <= 0) continue;
      const std::string s = slurp(std::string("/proc/") + e->d_name + "/stat");
      const auto p = s.rfind(')');
      if (p == std::string::npos) continue;
      std::istringstream in(s.substr(p + 2));
      std::string state;
      int ppid = 0;
      in >> state >> ppid;
      parent[pid] = ppid;
    }
    closedir(d);
  }
  long total = 0;
  for (auto [pid, ppid] : parent) {
    int p = pid;
    while (p > 1 && p != root) p = parent.count(p) ? parent[p] : 0;
    if (p != root) continue;
    std::istringstream f(slurp("/proc/" + std::to_string(pid) + "/smaps_rollup"));
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("Pss:", 0) == 0) total += std::atol(line.c_str() + 4);
  }
  return total;
}

struct RunResult {
  bool ok = false;
  std::string why;
  double wall_s = 0, cpu_s = 0;
  long peak_pss_kb = 0;
  std::int64_t tiles_read = 0;
};

// Runs argv with stdout captured; samples the tree's PSS every 20 ms.
RunResult run_child(const std::vector<std::string>& argv, double timeout_s) {
  RunResult r;
  char tmpl[] = "/tmp/tessera-bench-wsi-outXXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) {
    r.why = "mkstemp failed";
    return r;
  }
  const auto t0 = now_ns();
  Child c = Child::spawn(argv, fd);
  std::atomic<bool> stop{false};
  std::atomic<long> peak{0};
  std::thread sampler([&] {
    while (!stop.load(std::memory_order_acquire)) {  // SYNC[none]: a flag, no data published
      peak.store(std::max(peak.load(std::memory_order_relaxed), tree_pss_kb(c.pid())), std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const Child::Exit e = c.wait(timeout_s);
  r.wall_s = static_cast<double>(now_ns() - t0) / 1e9;
  stop.store(true, std::memory_order_release);
  sampler.join();
  r.cpu_s = e.cpu_s;
  r.peak_pss_kb = peak.load(std::memory_order_relaxed);
  std::ifstream f(tmpl);
  std::string line, last;
  while (std::getline(f, line))
    if (!line.empty() && line[0] == '{') last = line;
  ::close(fd);
  ::unlink(tmpl);
  if (!e.ok) {
    r.why = e.timed_out ? "timed out" : fmt::format("exit {}", e.code);
    return r;
  }
  try {
    const auto j = boost::json::parse(last).as_object();
    r.tiles_read = j.at("read").to_number<std::int64_t>();
    r.ok = true;
  } catch (const std::exception& ex) {
    r.why = std::string("no JSON report: ") + ex.what();
  }
  return r;
}

// Every core decoding every level-0 tile (or the tissue tiles) with nothing else.
RunResult decode_floor(const std::string& path, unsigned threads) {
  RunResult r;
  auto s = overlay::open_fast_tiff(path);
  if (!s) {
    r.why = s.error().message;
    return r;
  }
  const overlay::Slide& slide = **s;
  const int t = slide.native_tile(0);
  const auto ls = slide.level_size(0);
  const std::int64_t cols = (ls.width + t - 1) / t, rows = (ls.height + t - 1) / t, n = cols * rows;
  std::atomic<std::int64_t> next{0};
  std::atomic<bool> bad{false};
  const double cpu0 = process_cpu_s();
  const auto t0 = now_ns();
  std::vector<std::thread> th;
  for (unsigned i = 0; i < threads; ++i)
    th.emplace_back([&] {
      std::vector<std::uint8_t> buf(static_cast<std::size_t>(t) * static_cast<std::size_t>(t) * 3);
      // SYNC[none]: relaxed work counter; join() orders the results.
      for (std::int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < n;)
        if (!slide.read_region(0, (k % cols) * t, (k / cols) * t, t, t, buf.data())) bad.store(true, std::memory_order_relaxed);
    });
  for (auto& x : th) x.join();
  r.wall_s = static_cast<double>(now_ns() - t0) / 1e9;
  r.cpu_s = process_cpu_s() - cpu0;
  r.tiles_read = n;
  r.ok = !bad.load(std::memory_order_relaxed);
  if (!r.ok) r.why = "a tile did not decode";
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void wsi(Context& ctx) {
  const std::int64_t edge = ctx.opt.smoke ? 2048 : ctx.opt.quick ? 8192 : 16384;
  const int reps = ctx.opt.smoke || ctx.opt.quick ? 1 : 3;
  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  const fs::path dir = fs::temp_directory_path() / fmt::format("tessera-bench-wsi-{}-{}", getpid(), std::random_device{}());
  fs::create_directories(dir);
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{dir};
  const std::string slide = (dir / "slide.tif").string();
  ctx.progress(fmt::format("wsi: writing a {}x{} JPEG-tiled slide (240-px tiles, q85)", edge, edge));
  overlay::TestSlideSpec spec;
  spec.width = spec.height = edge;
  spec.tile = 240;
  spec.quality = 85;
  if (auto w = overlay::write_test_slide(slide, spec); !w) {
    ctx.skip("wsi/overlay", "tessera", w.error().message);
    return;
  }
  const std::string tessera = ctx.opt.exe_dir + "/tessera";
  const std::string peer = std::string(TESSERA_BENCH_SOURCE_DIR) + "/bench/python/wsi_dataloader.py";
  const std::string out = (dir / "overlay.png").string();
  struct Variant {
    std::string name, peer, mode;
    std::vector<std::string> argv;  // empty: the in-process decode floor
  };
  std::vector<Variant> vs;
  for (const char* reader : {"fast", "openslide"})
    for (bool all : {true, false}) {
      std::vector<std::string> a = {tessera, "overlay", slide, "--reader", reader, "--workers", std::to_string(cores),
                                    "--readers", std::to_string(cores), "--no-progress", "--json", "--out", out};
      if (all) a.emplace_back("--all-tiles");
      vs.push_back({fmt::format("wsi/tessera-{}/{}", reader, all ? "all-tiles" : "tissue"), std::string("tessera-") + reader,
                    all ? "all-tiles" : "tissue", a});
    }
  for (bool all : {true, false}) {
    std::vector<std::string> a = {ctx.opt.python, peer, slide, "--workers", std::to_string(cores), "--batch", "32"};
    if (!all) a.emplace_back("--tissue");
    vs.push_back({fmt::format("wsi/dataloader-openslide/{}", all ? "all-tiles" : "tissue"), "dataloader", all ? "all-tiles" : "tissue", a});
  }
  vs.push_back({"wsi/floor-decode/all-tiles", "floor", "all-tiles", {}});
  std::map<std::string, std::vector<double>> rate, pss, cpt;
  for (int rep = 0; rep < reps; ++rep)
    for (const auto& v : vs) {
      ctx.progress(fmt::format("{} (repetition {} of {})", v.name, rep + 1, reps));
      const RunResult r = v.argv.empty() ? decode_floor(slide, cores) : run_child(v.argv, ctx.opt.child_timeout_s * 5);
      Record rec;
      rec.bench = v.name;
      rec.peer = v.peer;
      rec.workload = "wsi";
      rec.mode = v.mode;
      rec.tile_bytes = 240 * 240 * 3;
      if (!r.ok) {
        rec.failed = r.why;
        ctx.emit(std::move(rec));
        continue;
      }
      rec.ops = static_cast<std::uint64_t>(r.tiles_read);
      rec.wall_s = r.wall_s;
      rec.ops_per_s = static_cast<double>(r.tiles_read) / r.wall_s;
      rec.cpu.push_back({"single", r.cpu_s});
      rec.cpu_wall_s = r.wall_s;
      rec.note = fmt::format("{}x{} slide, repetition {}; {} tiles read; whole job wall {:.2f} s; {:.3f} CPU-ms per tile; "
                             "peak PSS of the process tree {} MiB",
                             edge, edge, rep + 1, r.tiles_read, r.wall_s, 1e3 * r.cpu_s / static_cast<double>(std::max<std::int64_t>(1, r.tiles_read)),
                             v.argv.empty() ? std::string("n/a (in-process)") : std::to_string(r.peak_pss_kb / 1024));
      rate[v.name].push_back(rec.ops_per_s);
      pss[v.name].push_back(static_cast<double>(r.peak_pss_kb) / 1024);
      cpt[v.name].push_back(1e3 * r.cpu_s / static_cast<double>(std::max<std::int64_t>(1, r.tiles_read)));
      ctx.emit(std::move(rec));
    }
  // Summary: medians, spread and the target ratios.
  std::string s;
  for (const auto& v : vs) {
    const auto& x = rate[v.name];
    if (x.empty()) continue;
    s += fmt::format("{}: {:.0f} tiles/s (min {:.0f}, max {:.0f}), {:.3f} CPU-ms/tile, peak {:.0f} MiB; ", v.name, median(x),
                     *std::min_element(x.begin(), x.end()), *std::max_element(x.begin(), x.end()), median(cpt[v.name]),
                     median(pss[v.name]));
  }
  const double fast = median(rate["wsi/tessera-fast/all-tiles"]), peer_all = median(rate["wsi/dataloader-openslide/all-tiles"]);
  const double floor = median(rate["wsi/floor-decode/all-tiles"]);
  s += fmt::format("ratios (all tiles, medians): tessera-fast / dataloader {:.2f}x (target >= 2), tessera-fast / decode floor "
                   "{:.0f}% (target >= 85%), peak PSS tessera-fast / dataloader {:.2f} (target <= 1)",
                   peer_all > 0 ? fast / peer_all : 0, floor > 0 ? 100 * fast / floor : 0,
                   median(pss["wsi/dataloader-openslide/all-tiles"]) > 0
                       ? median(pss["wsi/tessera-fast/all-tiles"]) / median(pss["wsi/dataloader-openslide/all-tiles"])
                       : 0);
  Record sum;
  sum.bench = "wsi/summary";
  sum.peer = "tessera";
  sum.workload = "wsi";
  sum.mode = "summary";
  sum.tile_bytes = 240 * 240 * 3;
  sum.ops = static_cast<std::uint64_t>(reps) * vs.size();  // the runs summarised
  sum.note = s;
  ctx.progress(s);
  ctx.emit(std::move(sum));
}

}  // namespace

TESSERA_BENCH_CASE("wsi/overlay", "the main job on a generated JPEG-tiled slide: tessera (fast, OpenSlide) vs DataLoader peer vs decode floor", wsi);

}  // namespace tessera::bench
