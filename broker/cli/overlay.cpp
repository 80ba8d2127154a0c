// `tessera overlay`: the main job. Tiles a slide, runs every tile through the
// embedded broker and a worker pool, stitches the masks and writes the overlay.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <tessera/overlay.hpp>

#include "subcommand.hpp"

namespace tessera::cli {
namespace {

struct OverlayArgs {
  std::string slide;            // empty: built-in synthetic slide
  std::int64_t size = 8192;     // synthetic slide edge (level 0)
  std::uint64_t seed = 1;
  int tile = 256;
  int overlap = 0;
  int level = 0;
  int workers = 2;
  std::string worker = "cpp";   // cpp | numpy | torch | a command line
  std::string out = "tessera-overlay.png";
  std::string mask_out;
  std::uint32_t in_flight = 256;
  bool unordered = false;
  bool verify = true;
  bool no_progress = false;
  bool json = false;
  bool verbose = false;
  std::vector<std::string> devices;  // one worker per device (CUDA_VISIBLE_DEVICES)
  int batch = 0;                     // --worker torch: tiles per forward pass (0: per tile)
};

std::filesystem::path self_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : p.parent_path();
}

// The worker command for --worker.
PoolSpec pool_for(const OverlayArgs& a) {
  PoolSpec p;
  p.count = a.workers;
  const auto bin = self_dir();
  const auto py = bin.parent_path() / "python";
  if (a.worker == "cpp") {
    p.argv = {(bin / "tessera-tissue-worker").string()};
  } else if (a.worker == "numpy" || a.worker == "torch") {
    if (a.worker == "numpy")
      p.argv = {"/usr/bin/python3", "-m", "tessera.worker", "tessera_examples.numpy_worker:handler"};
    else
      p.argv = {"/usr/bin/python3", "-m", "tessera.worker",
                a.batch > 0 ? "tessera_examples.torch_worker:handle_batch" : "tessera_examples.torch_worker:handler", "--init",
                "tessera_examples.torch_worker:init"};
    if (a.worker == "torch" && a.batch > 0) {
      p.argv.push_back("--batch");
      p.argv.push_back(std::to_string(a.batch));
    }
    p.env["PYTHONPATH"] = py.string();
    p.ready_timeout = std::chrono::milliseconds(120'000);  // importing torch takes seconds
  } else {
    // A command line, split on spaces.
    std::string cur;
    for (char c : a.worker) {
      if (c == ' ') {
        if (!cur.empty()) p.argv.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    if (!cur.empty()) p.argv.push_back(cur);
    p.env["PYTHONPATH"] = py.string();
  }
  p.devices = a.devices;
  return p;
}

ArenaConfig arena_for(std::uint64_t in_bytes, std::uint64_t out_bytes, std::uint32_t in_flight) {
  auto page = [](std::uint64_t v) { return (v + kPageSize - 1) / kPageSize * kPageSize; };
  std::map<std::uint64_t, std::uint32_t> classes{{kPageSize, 256}};  // small blocks: error texts, tiny outputs
  classes[page(in_bytes)] += in_flight + 32;
  classes[page(out_bytes)] += in_flight + 32;
  ArenaConfig cfg;
  cfg.classes.clear();
  for (auto [size, count] : classes) cfg.classes.push_back({size, count});
  cfg.n_rings = 64;
  cfg.ring_capacity = 1024;
  return cfg;
}

void draw_progress(std::int64_t done, std::int64_t total, Clock::time_point t0) {
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  const int width = 30;
  const int fill = total > 0 ? static_cast<int>(width * done / total) : width;
  std::fprintf(stderr, "\r  [%s%s] %lld/%lld tiles  %.0f tiles/s ", std::string(static_cast<std::size_t>(fill), '#').c_str(),
               std::string(static_cast<std::size_t>(width - fill), ' ').c_str(), static_cast<long long>(done),
               static_cast<long long>(total), s > 0 ? static_cast<double>(done) / s : 0.0);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

int run(const OverlayArgs& a) {
  spdlog::set_level(a.verbose ? spdlog::level::info : spdlog::level::warn);
  std::unique_ptr<overlay::Slide> slide;
  if (a.slide.empty()) {
    const auto t = Clock::now();
    slide = overlay::synthetic_slide(a.size, a.size, a.seed);
    fmt::print("slide:    {} (rendered in {:.2f} s)\n", slide->description(), std::chrono::duration<double>(Clock::now() - t).count());
  } else {
    auto s = overlay::open_slide(a.slide);
    if (!s) {
      fmt::print(stderr, "tessera overlay: {}\n", s.error().message);
      return 2;
    }
    slide = std::move(*s);
    fmt::print("slide:    {}\n", slide->description());
  }
  if (a.level < 0 || a.level >= slide->level_count()) {
    fmt::print(stderr, "tessera overlay: level {} does not exist (the slide has {})\n", a.level, slide->level_count());
    return 2;
  }
  overlay::PipelineOptions po;
  po.grid.tile = a.tile;
  po.grid.overlap = a.overlap;
  po.grid.level = a.level;
  po.max_in_flight = a.in_flight;
  po.ordered = !a.unordered;
  const auto ls = slide->level_size(a.level);
  const std::uint64_t edge = static_cast<std::uint64_t>(po.grid.input_edge());
  ClientOptions co;
  co.arena = arena_for(edge * edge * 3, edge * edge, a.in_flight);
  co.max_in_flight = a.in_flight * 2;
  co.worker_window = std::max<std::uint32_t>(co.worker_window, 2 * static_cast<std::uint32_t>(a.batch));  // room for full batches
  auto client = Client::embedded(co);
  if (!client) {
    fmt::print(stderr, "tessera overlay: cannot create the arena: {}\n", client.error().message);
    return 1;
  }
  const PoolSpec spec = pool_for(a);
  std::string cmd;
  for (const auto& part : spec.argv) cmd += (cmd.empty() ? "" : " ") + part;
  fmt::print("workers:  {} x {}\n", spec.devices.empty() ? spec.count : static_cast<int>(spec.devices.size()), cmd);
  if (auto r = (*client)->start_pool(spec); !r) {
    fmt::print(stderr, "tessera overlay: the worker pool did not start: {}\n", r.error().message);
    return 1;
  }
  const auto grid_tiles = ((ls.width + a.tile - 1) / a.tile) * ((ls.height + a.tile - 1) / a.tile);
  fmt::print("tiles:    {} of {}x{} px (overlap {}) at level {} ({}x{} px)\n", grid_tiles, a.tile, a.tile, a.overlap,
             a.level, ls.width, ls.height);
  const bool tty = isatty(2) != 0 && !a.no_progress;
  const auto t0 = Clock::now();
  if (tty) po.progress = [t0](std::int64_t d, std::int64_t t) {
    static Clock::time_point last{};
    if (d == t || Clock::now() - last > std::chrono::milliseconds(100)) {
      last = Clock::now();
      draw_progress(d, t, t0);
    }
  };
  std::vector<std::uint8_t> mask;
  auto rep = overlay::run_pipeline(**client, *slide, po, mask);
  if (!rep) {
    fmt::print(stderr, "tessera overlay: {}\n", rep.error().message);
    return 1;
  }
  fmt::print("done:     {} completed, {} failed, {} canceled in {:.3f} s\n", rep->completed, rep->failed, rep->canceled, rep->seconds);
  fmt::print("rate:     {:.0f} tiles/s, latency p50 {:.1f} us, p99 {:.1f} us\n", rep->tiles_per_s, rep->p50_us, rep->p99_us);
  std::string util;
  for (double u : rep->worker_utilisation) util += fmt::format("{}{:.0f}%", util.empty() ? "" : " ", 100 * u);
  fmt::print("workers:  utilisation {}\n", util);
  for (const auto& e : rep->errors) fmt::print("error:    {}\n", e);
  int rc = rep->completed == rep->tiles ? 0 : 1;
  if (a.verify && a.slide.empty() && (a.worker == "cpp" || a.worker == "numpy")) {
    std::vector<std::uint8_t> ref;
    overlay::reference_mask(*slide, po.grid, ref);
    const bool same = ref == mask;
    std::size_t tissue = 0;
    for (auto v : mask) tissue += v != 0;
    fmt::print("verify:   stitched mask {} the in-process reference ({:.1f}% tissue)\n", same ? "equals" : "DIFFERS FROM",
               100.0 * static_cast<double>(tissue) / static_cast<double>(std::max<std::size_t>(1, mask.size())));
    if (!same) rc = 1;
  }
  if (auto w = overlay::write_overlay_png(a.out, *slide, a.level, mask); !w) {
    fmt::print(stderr, "tessera overlay: {}\n", w.error().message);
    return 1;
  }
  fmt::print("overlay:  {}\n", std::filesystem::absolute(a.out).string());
  if (!a.mask_out.empty()) {
    if (auto w = overlay::write_png(a.mask_out, mask.data(), static_cast<int>(ls.width), static_cast<int>(ls.height), 1); !w) {
      fmt::print(stderr, "tessera overlay: {}\n", w.error().message);
      return 1;
    }
    fmt::print("mask:     {}\n", std::filesystem::absolute(a.mask_out).string());
  }
  if (a.json)
    fmt::print("{{\"tiles\":{},\"completed\":{},\"failed\":{},\"canceled\":{},\"seconds\":{:.6f},\"tiles_per_s\":{:.1f},"
               "\"p50_us\":{:.2f},\"p99_us\":{:.2f},\"workers\":{},\"worker\":\"{}\"}}\n",
               rep->tiles, rep->completed, rep->failed, rep->canceled, rep->seconds, rep->tiles_per_s, rep->p50_us,
               rep->p99_us, a.workers, a.worker);
  return rc;
}

}  // namespace

Subcommand add_overlay(CLI::App& parent) {
  auto args = std::make_shared<OverlayArgs>();
  CLI::App* app = parent.add_subcommand("overlay", "Overlay inference on a slide: tile, run through the broker, stitch, write a PNG");
  app->add_option("slide", args->slide, "Slide file (OpenSlide formats); default: the built-in synthetic slide");
  app->add_option("--size", args->size, "Edge of the synthetic slide at level 0, pixels")->check(CLI::Range(256, 65536));
  app->add_option("--seed", args->seed, "Seed of the synthetic slide");
  app->add_option("--tile", args->tile, "Tile edge, pixels")->check(CLI::Range(16, 4096));
  app->add_option("--overlap", args->overlap, "Context pixels added on each side of a tile")->check(CLI::Range(0, 512));
  app->add_option("--level", args->level, "Pyramid level to run on");
  app->add_option("--workers,-n", args->workers, "Worker processes")->check(CLI::Range(1, 32));
  app->add_option("--worker", args->worker, "cpp (C++ example), numpy, torch (Python examples), or a command line");
  app->add_option("--out,-o", args->out, "Overlay PNG to write");
  app->add_option("--mask-out", args->mask_out, "Also write the full-resolution mask as a PNG");
  app->add_option("--in-flight", args->in_flight, "Tiles in flight")->check(CLI::Range(1, 4096));
  app->add_flag("--unordered", args->unordered, "Collect masks as they complete (default: submission order)");
  app->add_flag("!--no-verify", args->verify, "Skip the comparison with the in-process reference");
  app->add_flag("--no-progress", args->no_progress, "No progress bar");
  app->add_flag("--json", args->json, "Also print the report as one JSON line");
  app->add_flag("--verbose,-v", args->verbose, "Log worker supervision events");
  app->add_option("--devices", args->devices, "One worker per device, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; overrides --workers)")
      ->delimiter(',');
  app->add_option("--batch", args->batch, "--worker torch: run the batch handler, up to N tiles per forward pass")
      ->check(CLI::Range(0, 1024));
  return {app, [args] { return run(*args); }};
}

}  // namespace tessera::cli
