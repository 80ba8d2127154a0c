// The overlay's output writer: how fast MaskWriter::put_tile takes the per-tile masks
// a run produces, against the floor of copying the same bytes. Masks come from the
// built-in synthetic slide through the example workers' tissue rule (binary, 255 on
// tissue), and as an 8-bit "probability" (darkness on tissue, 0 on glass) that
// compresses worse. The source tiles repeat over a 24576 x 24576 grid (--quick:
// 12288; --smoke: 2048), all tiles put in row order as a pipeline would.
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include <tessera/overlay.hpp>

#include "../common/harness.hpp"
#include <tessera/mask_writer.hpp>
#include "tissue_mask.hpp"

namespace tessera::bench {
namespace {

constexpr int kTile = 256;
constexpr std::int64_t kSourceSide = 4096;  // 16 x 16 distinct source tiles

struct Source {
  std::vector<std::vector<std::uint8_t>> binary, probability;  // one kTile^2 mask per source tile
};

Source make_source() {
  auto slide = overlay::synthetic_slide(kSourceSide, kSourceSide, 7);
  Source s;
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(kTile) * kTile * 3);
  for (std::int64_t r = 0; r < kSourceSide / kTile; ++r)
    for (std::int64_t c = 0; c < kSourceSide / kTile; ++c) {
      (void)slide->read_region(0, c * kTile, r * kTile, kTile, kTile, rgb.data());
      std::vector<std::uint8_t> b(static_cast<std::size_t>(kTile) * kTile), p(b.size());
      examples::tissue_mask(rgb.data(), b.data(), b.size());
      for (std::size_t i = 0; i < p.size(); ++i)
        p[i] = b[i] ? static_cast<std::uint8_t>(255 - (rgb[3 * i] + rgb[3 * i + 1] + rgb[3 * i + 2]) / 3) : 0;
      s.binary.push_back(std::move(b));
      s.probability.push_back(std::move(p));
    }
  return s;
}

void run_writer(Context& ctx, const Source& src, bool probability, std::int64_t side) {
  const auto& tiles = probability ? src.probability : src.binary;
  const std::int64_t per_side = kSourceSide / kTile, grid = side / kTile;
  const auto dir = std::filesystem::temp_directory_path() / ("tessera-bench-mask-" + unique_token());
  std::filesystem::create_directories(dir);
  overlay::MaskGeometry g;
  g.width = g.height = side;
  g.tile = kTile;
  g.mpp_x = g.mpp_y = 0.25;
  overlay::MaskOutputs out{(dir / "mask.tif").string(), (dir / "mask.geojson").string(), (dir / "mask.png").string()};
  Record r;
  r.bench = std::string("overlay/mask-writer/") + (probability ? "probability" : "binary");
  r.peer = "tessera";
  r.workload = "put-tile";
  r.mode = "n/a";
  r.tile_bytes = static_cast<std::uint64_t>(kTile) * kTile;
  const double cpu0 = process_cpu_s();
  const std::uint64_t start = now_ns();
  {
    auto w = overlay::MaskWriter::create(out, g);
    if (!w) {
      r.failed = w.error().message;
    } else {
      Samples s(static_cast<std::size_t>(grid * grid));
      const std::uint64_t t0 = now_ns();
      for (std::int64_t row = 0; row < grid && r.failed.empty(); ++row)
        for (std::int64_t col = 0; col < grid; ++col) {
          const auto& m = tiles[static_cast<std::size_t>((row % per_side) * per_side + col % per_side)];
          const std::uint64_t a = now_ns();
          auto st = (*w)->put_tile(col, row, m.data(), kTile, kTile, kTile);
          s.add(now_ns() - a);
          if (!st) {
            r.failed = st.error().message;
            break;
          }
        }
      const std::uint64_t t1 = now_ns();
      const double put_cpu = process_cpu_s() - cpu0;
      auto f = (*w)->finish(nullptr);
      const std::uint64_t t2 = now_ns();
      if (!f && r.failed.empty()) r.failed = f.error().message;
      r.ops = static_cast<std::uint64_t>(grid * grid);
      r.wall_s = static_cast<double>(t1 - t0) * 1e-9;
      r.ops_per_s = static_cast<double>(r.ops) / r.wall_s;
      r.gb_per_s = static_cast<double>(r.ops * r.tile_bytes) / r.wall_s * 1e-9;
      r.latency = s.summarize();
      r.cdf = s.cdf(101);
      std::error_code ec;
      const auto bytes = std::filesystem::file_size(out.tiff, ec);
      rusage ru{};
      getrusage(RUSAGE_SELF, &ru);
      r.note = std::to_string(side) + "^2 mask, 256-px tiles; put_tile CPU " +
               std::to_string(put_cpu / static_cast<double>(r.ops) * 1e6) + " us/tile; finish (levels, GeoJSON, PNG) " +
               std::to_string(static_cast<double>(t2 - t1) * 1e-9) + " s; TIFF " + human_bytes(ec ? 0 : bytes) +
               "; peak RSS of the bench process " + std::to_string(ru.ru_maxrss / 1024) + " MiB";
    }
  }  // the writer is gone (and its temp files with it, had it failed) before the directory goes
  r.cpu = {ProcessCpu{"single", process_cpu_s() - cpu0}};
  r.cpu_wall_s = static_cast<double>(now_ns() - start) * 1e-9;
  std::filesystem::remove_all(dir);
  ctx.emit(std::move(r));
}

// The floor: copying the same tile bytes into one tile buffer (what any writer must do).
void run_copy_floor(Context& ctx, const Source& src, std::int64_t side) {
  const std::int64_t per_side = kSourceSide / kTile, grid = side / kTile;
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(kTile) * kTile);
  Record r;
  r.bench = "overlay/mask-writer/copy-floor";
  r.peer = "floor";
  r.workload = "put-tile";
  r.mode = "n/a";
  r.tile_bytes = buf.size();
  const std::uint64_t t0 = now_ns();
  std::uint64_t sink = 0;
  for (std::int64_t row = 0; row < grid; ++row)
    for (std::int64_t col = 0; col < grid; ++col) {
      const auto& m = src.binary[static_cast<std::size_t>((row % per_side) * per_side + col % per_side)];
      std::memcpy(buf.data(), m.data(), buf.size());
      sink += buf[static_cast<std::size_t>(col) % buf.size()];
    }
  r.ops = static_cast<std::uint64_t>(grid * grid);
  r.wall_s = std::max(1e-9, static_cast<double>(now_ns() - t0) * 1e-9);
  r.ops_per_s = static_cast<double>(r.ops) / r.wall_s;
  r.gb_per_s = static_cast<double>(r.ops * r.tile_bytes) / r.wall_s * 1e-9;
  r.note = "checksum " + std::to_string(sink & 0xff);
  ctx.emit(std::move(r));
}

void mask_writer_bench(Context& ctx) {
  ctx.progress("overlay: mask writer (synthetic masks)");
  const std::int64_t side = ctx.opt.smoke ? 2048 : ctx.opt.quick ? 12288 : 24576;
  const Source src = make_source();
  run_copy_floor(ctx, src, side);
  run_writer(ctx, src, false, side);
  run_writer(ctx, src, true, side);
}

}  // namespace

TESSERA_BENCH_CASE("overlay/mask-writer", "MaskWriter::put_tile on tissue masks (binary and 8-bit) vs copying them",
                   mask_writer_bench);

}  // namespace tessera::bench
