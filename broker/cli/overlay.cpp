// `tessera overlay`: the main job. Opens a slide (fast reader or OpenSlide), finds the
// tissue tiles, decodes them with reader threads into arena blocks, runs them through the
// embedded broker and a worker pool and streams the masks into the outputs (pyramidal TIFF,
// GeoJSON, PNG preview), written atomically.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <tessera/overlay.hpp>

#include <tessera/mask_writer.hpp>
#include "subcommand.hpp"

namespace tessera::cli {
namespace {

struct OverlayArgs {
  std::string slide;            // empty: built-in synthetic slide
  std::int64_t size = 8192;     // synthetic slide edge (level 0)
  std::uint64_t seed = 1;
  int tile = 0;                 // 0: the level's native tile edge, else 256
  int overlap = 0;
  int level = 0;
  int workers = 2;
  int readers = 0;
  std::string reader = "auto";
  std::string worker = "cpp";   // cpp | numpy | torch | a command line
  std::string out_png = "tessera-overlay.png";
  std::string out_tiff, out_geojson;
  bool no_outputs = false;
  bool all_tiles = false;
  std::uint32_t in_flight = 0;  // 0: overlay::default_in_flight(workers, batch)
  bool verify = true;
  bool progress = false, no_progress = false;
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

void draw_progress(std::int64_t done, std::int64_t total, Clock::time_point t0) {
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  const int width = 30;
  const int fill = total > 0 ? static_cast<int>(width * done / total) : width;
  const double rate = s > 0 ? static_cast<double>(done) / s : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
  std::fprintf(stderr, "\r  [%s%s] %lld/%lld tiles  %.0f tiles/s  ETA %02d:%02d ",
               std::string(static_cast<std::size_t>(fill), '#').c_str(), std::string(static_cast<std::size_t>(width - fill), ' ').c_str(),
               static_cast<long long>(done), static_cast<long long>(total), rate, static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

// Checks every tile against the in-process oracle before passing it on (built-in slide only).
class VerifyingWriter final : public overlay::MaskWriter {
 public:
  VerifyingWriter(overlay::MaskWriter* next, const overlay::Slide& s, const overlay::TileGrid& g) : next_(next), slide_(s), grid_(g) {}
  Result<void> put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows, std::size_t stride) override {
    int rc = 0, rr = 0;
    if (auto r = overlay::reference_tile_mask(slide_, grid_, col, row, ref_, rc, rr); !r) return r;
    bool same = rc == cols && rr == rows;
    for (int y = 0; same && y < rows; ++y)
      same = std::equal(mask + static_cast<std::size_t>(y) * stride, mask + static_cast<std::size_t>(y) * stride + cols,
                        ref_.begin() + static_cast<std::ptrdiff_t>(y) * cols);
    ++checked;
    if (!same) ++differing;
    for (int y = 0; y < rows; ++y)
      for (int x = 0; x < cols; ++x) tissue += mask[static_cast<std::size_t>(y) * stride + static_cast<std::size_t>(x)] != 0;
    return next_ != nullptr ? next_->put_tile(col, row, mask, cols, rows, stride) : Result<void>{};
  }
  Result<void> mark_failed(std::int64_t col, std::int64_t row, const std::string& why) override {
    return next_ != nullptr ? next_->mark_failed(col, row, why) : Result<void>{};
  }
  Result<void> finish(const overlay::Slide* s) override { return next_ != nullptr ? next_->finish(s) : Result<void>{}; }
  overlay::WriteTimes times() const override { return next_ != nullptr ? next_->times() : overlay::WriteTimes{}; }
  std::int64_t checked = 0, differing = 0, tissue = 0;

 private:
  overlay::MaskWriter* next_;
  const overlay::Slide& slide_;
  overlay::TileGrid grid_;
  std::vector<std::uint8_t> ref_;
};

// Counts tiles only (--no-outputs, and builds without the mask writer).
class NullWriter final : public overlay::MaskWriter {
 public:
  Result<void> put_tile(std::int64_t, std::int64_t, const std::uint8_t*, int, int, std::size_t) override { return {}; }
  Result<void> mark_failed(std::int64_t, std::int64_t, const std::string&) override { return {}; }
  Result<void> finish(const overlay::Slide*) override { return {}; }
};

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      o += fmt::format("\\u{:04x}", static_cast<int>(c));
      continue;
    }
    o += c;
  }
  return o;
}

int run(const OverlayArgs& a) {
  const auto t_start = Clock::now();
  spdlog::set_level(a.verbose ? spdlog::level::info : spdlog::level::warn);
  std::unique_ptr<overlay::Slide> slide;
  if (a.slide.empty()) {
    const auto t = Clock::now();
    slide = overlay::synthetic_slide(a.size, a.size, a.seed);
    fmt::print("slide:    {} (rendered in {:.2f} s)\n", slide->description(), std::chrono::duration<double>(Clock::now() - t).count());
  } else {
    const auto kind = a.reader == "fast"        ? overlay::ReaderKind::fast
                      : a.reader == "openslide" ? overlay::ReaderKind::openslide
                                                : overlay::ReaderKind::automatic;
    auto s = overlay::open_slide(a.slide, kind);
    if (!s) {
      fmt::print(stderr, "tessera overlay: {}\n", s.error().message);
      return 2;
    }
    slide = std::move(*s);
    fmt::print("slide:    {}\n", slide->description());
  }
  if (a.level < 0 || a.level >= slide->level_count()) {
    fmt::print(stderr, "tessera overlay: '{}': level {} does not exist (the slide has {})\n",
               a.slide.empty() ? "built-in slide" : a.slide, a.level, slide->level_count());
    return 2;
  }
  overlay::PipelineOptions po;
  const int native = slide->native_tile(a.level);
  // Tiles aligned to the native grid decode each source tile once (see docs/overlay.md).
  po.grid.tile = a.tile > 0 ? a.tile : (native >= 64 && native <= 1024 ? native : 256);
  po.grid.overlap = a.overlap;
  po.grid.level = a.level;
  const std::uint32_t in_flight =
      a.in_flight > 0 ? a.in_flight
                      : overlay::default_in_flight(a.devices.empty() ? a.workers : static_cast<int>(a.devices.size()), a.batch);
  po.max_in_flight = in_flight;
  po.readers = a.readers > 0 ? a.readers : overlay::default_readers();
  po.all_tiles = a.all_tiles;
  const auto ls = slide->level_size(a.level);
  po.grid.width = ls.width;
  po.grid.height = ls.height;

  // The outputs: nothing under the final names until finish() succeeds.
  overlay::MaskGeometry geo;
  geo.width = ls.width;
  geo.height = ls.height;
  geo.tile = po.grid.tile;
  geo.downsample = ls.downsample;
  geo.mpp_x = slide->mpp_x();
  geo.mpp_y = slide->mpp_y();
  std::unique_ptr<overlay::MaskWriter> writer;
  overlay::MaskOutputs outs;
  if (!a.no_outputs) {
    outs.png = a.out_png;
    const auto stem = std::filesystem::path(a.out_png).replace_extension();
    outs.tiff = a.out_tiff.empty() ? stem.string() + ".tiff" : a.out_tiff;
    outs.geojson = a.out_geojson.empty() ? stem.string() + ".geojson" : a.out_geojson;
    auto w = overlay::MaskWriter::create(outs, geo);
    if (!w) {
      fmt::print(stderr, "tessera overlay: {}\n", w.error().message);
      return 2;
    }
    writer = std::move(*w);
  } else {
    writer = std::make_unique<NullWriter>();
  }
  const bool verify = a.verify && a.slide.empty() && (a.worker == "cpp" || a.worker == "numpy");
  VerifyingWriter checker(writer.get(), *slide, po.grid);
  overlay::MaskWriter& sink = verify ? static_cast<overlay::MaskWriter&>(checker) : *writer;

  const std::uint64_t edge = static_cast<std::uint64_t>(po.grid.input_edge());
  auto client = Client::embedded(overlay::pipeline_client_options(edge, in_flight, po.readers, a.batch));
  if (!client) {
    fmt::print(stderr, "tessera overlay: cannot create the arena: {}\n", client.error().message);
    return 1;
  }
  auto pool = overlay::example_pool({.worker = a.worker, .count = a.workers, .batch = a.batch, .devices = a.devices},
                                    self_dir().string());
  if (!pool) {
    fmt::print(stderr, "tessera overlay: {}\n", pool.error().message);
    return 2;
  }
  const PoolSpec spec = std::move(*pool);
  std::string cmd;
  for (const auto& part : spec.argv) cmd += (cmd.empty() ? "" : " ") + part;
  fmt::print("workers:  {} x {}; readers: {}\n", spec.devices.empty() ? spec.count : static_cast<int>(spec.devices.size()),
             cmd, po.readers);
  if (auto r = (*client)->start_pool(spec); !r) {
    fmt::print(stderr, "tessera overlay: the worker pool did not start: {}\n", r.error().message);
    return 1;
  }
  fmt::print("tiles:    {} of {}x{} px (overlap {}, native tile {}) at level {} ({}x{} px)\n", po.grid.count(), po.grid.tile,
             po.grid.tile, a.overlap, native, a.level, ls.width, ls.height);
  const bool bar = !a.no_progress && (a.progress || isatty(2) != 0);
  const auto t0 = Clock::now();
  if (bar) po.progress = [t0](std::int64_t d, std::int64_t t) {
    static Clock::time_point last{};
    if (d == t || Clock::now() - last > std::chrono::milliseconds(200)) {
      last = Clock::now();
      draw_progress(d, t, t0);
    }
  };
  auto rep = overlay::run_pipeline(**client, *slide, po, sink);
  if (!rep) {
    fmt::print(stderr, "tessera overlay: {}\n", rep.error().message);
    return 1;
  }
  const std::int64_t processed = rep->tiles - rep->skipped;
  int rc = 0;
  if (processed > 0 && rep->completed == 0) {
    // Nothing could be read or run: no outputs (the writer removes its temp files).
    fmt::print(stderr, "tessera overlay: '{}': every tile failed; first: {}\n", a.slide.empty() ? "built-in slide" : a.slide,
               rep->failures.empty() ? "?" : rep->failures.front().why);
    return 1;
  }
  const auto tw = Clock::now();
  if (auto f = sink.finish(slide.get()); !f) {
    fmt::print(stderr, "tessera overlay: writing the outputs failed: {}\n", f.error().message);
    return 1;
  }
  const double write_s = std::chrono::duration<double>(Clock::now() - tw).count();
  const double wall = std::chrono::duration<double>(Clock::now() - t_start).count();
  rusage self{};
  getrusage(RUSAGE_SELF, &self);
  const double cpu_s = rep->host_cpu_s + rep->workers_cpu_s;
  const double per_tile = processed > 0 ? cpu_s / static_cast<double>(processed) : 0;

  fmt::print("done:     {} tiles: {} read, {} skipped as background (tissue on level {}), {} completed, {} failed\n", rep->tiles,
             processed, rep->skipped, rep->thumb_level, rep->completed, rep->failed);
  fmt::print("rate:     {:.0f} tiles/s over {:.3f} s; whole job {:.3f} s; latency p50 {:.1f} us, p99 {:.1f} us\n", rep->tiles_per_s,
             rep->seconds, wall, rep->p50_us, rep->p99_us);
  fmt::print("stages:   tissue {:.3f} s, read+decode {:.3f} s ({} readers, summed), workers {:.3f} s (summed), stitch {:.3f} s, "
             "write {:.3f} s\n",
             rep->tissue_s, rep->read_s, rep->readers, rep->worker_s, rep->stitch_s, write_s);
  const overlay::WriteTimes wt = sink.times();
  if (!a.no_outputs)
    fmt::print("write:    pyramid {:.3f} s, GeoJSON {:.3f} s beside preview {:.3f} s, sync+rename {:.3f} s\n", wt.pyramid_s,
               wt.geojson_s, wt.png_s, wt.commit_s);
  fmt::print("cpu:      {:.2f} CPU-s ({:.3f} ms per tile); peak RSS {} MiB (workers {} MiB)\n", cpu_s, 1e3 * per_tile,
             self.ru_maxrss / 1024, rep->workers_peak_rss_kb / 1024);
  std::string util;
  for (double u : rep->worker_utilisation) util += fmt::format("{}{:.0f}%", util.empty() ? "" : " ", 100 * u);
  fmt::print("workers:  utilisation {}\n", util);
  for (const auto& f : rep->failures) fmt::print("failed:   tile ({},{}): {}\n", f.col, f.row, f.why);
  if (rep->failed > 0 || rep->canceled > 0) rc = 3;
  if (verify) {
    fmt::print("verify:   {} of {} tiles equal the in-process reference\n", checker.checked - checker.differing, checker.checked);
    if (checker.differing != 0 || checker.checked != rep->completed) rc = 1;
  }
  if (!a.no_outputs)
    for (const auto& p : {outs.tiff, outs.geojson, outs.png})
      if (!p.empty()) fmt::print("output:   {}\n", std::filesystem::absolute(p).string());
  if (a.json) {
    std::string fails;
    for (const auto& f : rep->failures)
      fails += fmt::format("{}{{\"col\":{},\"row\":{},\"why\":\"{}\"}}", fails.empty() ? "" : ",", f.col, f.row, json_escape(f.why));
    std::string wu;
    for (double u : rep->worker_utilisation) wu += fmt::format("{}{:.3f}", wu.empty() ? "" : ",", u);
    fmt::print("{{\"slide\":\"{}\",\"reader\":\"{}\",\"tiles\":{},\"read\":{},\"skipped\":{},\"completed\":{},\"failed\":{},"
               "\"canceled\":{},\"tile\":{},\"readers\":{},\"workers\":{},\"worker\":\"{}\",\"seconds\":{:.6f},\"wall_s\":{:.6f},"
               "\"tiles_per_s\":{:.1f},\"stages\":{{\"tissue_s\":{:.6f},\"read_decode_s\":{:.6f},\"workers_s\":{:.6f},"
               "\"stitch_s\":{:.6f},\"write_s\":{:.6f},\"write_pyramid_s\":{:.6f},\"write_geojson_s\":{:.6f},"
               "\"write_png_s\":{:.6f},\"write_commit_s\":{:.6f}}},\"p50_us\":{:.2f},\"p99_us\":{:.2f},\"cpu_s\":{:.3f},"
               "\"cpu_ms_per_tile\":{:.4f},\"peak_rss_kb\":{},\"workers_peak_rss_kb\":{},\"worker_utilisation\":[{}],"
               "\"failures\":[{}]}}\n",
               json_escape(a.slide), slide->reader(), rep->tiles, processed, rep->skipped, rep->completed, rep->failed,
               rep->canceled, po.grid.tile, rep->readers, a.workers, json_escape(a.worker), rep->seconds, wall,
               rep->tiles_per_s, rep->tissue_s, rep->read_s, rep->worker_s, rep->stitch_s, write_s, wt.pyramid_s, wt.geojson_s,
               wt.png_s, wt.commit_s, rep->p50_us, rep->p99_us,
               cpu_s, 1e3 * per_tile, self.ru_maxrss, rep->workers_peak_rss_kb, wu, fails);
  }
  return rc;
}

struct MakeSlideArgs {
  std::string path;
  overlay::TestSlideSpec spec;
  std::vector<std::int64_t> box;
};

}  // namespace

Subcommand add_overlay(CLI::App& parent) {
  auto args = std::make_shared<OverlayArgs>();
  CLI::App* app = parent.add_subcommand(
      "overlay", "Overlay inference on a slide: tissue tiles decoded in parallel, run through the broker, streamed to the outputs");
  app->add_option("slide", args->slide, "Slide file (JPEG-tiled TIFF/SVS: fast reader; other formats: OpenSlide); "
                                        "default: the built-in synthetic slide");
  app->add_option("--size", args->size, "Edge of the synthetic slide at level 0, pixels")->check(CLI::Range(256, 65536));
  app->add_option("--seed", args->seed, "Seed of the synthetic slide");
  app->add_option("--tile", args->tile, "Tile edge, pixels (default: the level's native tile edge, else 256)")->check(CLI::Range(16, 4096));
  app->add_option("--overlap", args->overlap, "Context pixels added on each side of a tile")->check(CLI::Range(0, 512));
  app->add_option("--level", args->level, "Pyramid level to run on");
  app->add_option("--workers,-n", args->workers, "Worker processes")->check(CLI::Range(1, 32));
  app->add_option("--readers", args->readers, "Decoding threads (default: one per online core)")->check(CLI::Range(1, 64));
  app->add_option("--reader", args->reader, "auto (fast for JPEG-tiled TIFF/SVS, else OpenSlide), fast or openslide")
      ->check(CLI::IsMember({"auto", "fast", "openslide"}));
  app->add_option("--worker", args->worker, "cpp (C++ example), numpy, torch (Python examples), or a command line");
  app->add_option("--out-png,--out,-o", args->out_png, "PNG preview to write (the TIFF and GeoJSON go next to it)");
  app->add_option("--out-tiff", args->out_tiff, "Pyramidal tiled TIFF of the mask (default: <png stem>.tiff)");
  app->add_option("--out-geojson", args->out_geojson, "GeoJSON of the mask regions (default: <png stem>.geojson)");
  app->add_flag("--no-outputs", args->no_outputs, "Write nothing (benchmarks)");
  app->add_flag("--all-tiles", args->all_tiles, "Read every tile (no tissue detection)");
  app->add_option("--in-flight", args->in_flight, "Tiles in flight (default: 64, or 4 x workers x --batch when larger)")->check(CLI::Range(1, 4096));
  app->add_flag("!--no-verify", args->verify, "Skip the per-tile comparison with the in-process reference (built-in slide)");
  app->add_flag("--progress", args->progress, "Progress bar on stderr even when it is not a terminal");
  app->add_flag("--no-progress", args->no_progress, "No progress bar");
  app->add_flag("--json", args->json, "Also print the report as one JSON line");
  app->add_flag("--verbose,-v", args->verbose, "Log worker supervision events");
  app->add_option("--devices", args->devices, "One worker per device, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; overrides --workers)")
      ->delimiter(',');
  app->add_option("--batch", args->batch, "--worker torch: run the batch handler, up to N tiles per forward pass")
      ->check(CLI::Range(0, 1024));
  return {app, [args] { return run(*args); }};
}

Subcommand add_make_slide(CLI::App& parent) {
  auto args = std::make_shared<MakeSlideArgs>();
  CLI::App* app = parent.add_subcommand("make-slide", "Write a JPEG-tiled pyramidal test slide (generic TIFF or Aperio SVS)");
  app->group("");  // hidden: for tests, benchmarks and trying the job without a scanner's file
  app->add_option("path", args->path, "File to write")->required();
  app->add_option("--width", args->spec.width, "Level-0 width")->check(CLI::Range(16, 1 << 22));
  app->add_option("--height", args->spec.height, "Level-0 height")->check(CLI::Range(16, 1 << 22));
  app->add_option("--tile", args->spec.tile, "Native tile edge (a multiple of 16)");
  app->add_option("--quality", args->spec.quality, "JPEG quality");
  app->add_flag("--aperio", args->spec.aperio, "Aperio SVS (description with MPP, RGB photometric)");
  app->add_option("--seed", args->spec.seed, "Texture seed");
  app->add_option("--tissue-box", args->box, "x0 y0 x1 y1: tissue only inside (level-0 px); glass tiles far away are left out")
      ->expected(4);
  return {app, [args] {
            if (args->box.size() == 4) std::copy(args->box.begin(), args->box.end(), args->spec.tissue);
            if (auto r = overlay::write_test_slide(args->path, args->spec); !r) {
              fmt::print(stderr, "tessera make-slide: {}\n", r.error().message);
              return 1;
            }
            return 0;
          }};
}

}  // namespace tessera::cli
