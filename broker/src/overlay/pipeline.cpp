// The tile pipeline of the main job: read -> submit -> poll -> stitch.
#include <tessera/overlay.hpp>

#include <png.h>

#include <algorithm>
#include <cstring>

#include "tissue_mask.hpp"

namespace tessera::overlay {
namespace {

struct Pending {
  InputBlock block;
  TileMeta meta;
  bool filled = false;
};

// Copies the inner (overlap-cropped) part of a tile mask into the level mask.
void stitch(const TileGrid& g, const TileResult& r, std::vector<std::uint8_t>& mask) {
  const auto m = r.output.view().as<const std::uint8_t>();
  const int edge = g.input_edge();
  if (m.size() != static_cast<std::size_t>(edge) * static_cast<std::size_t>(edge)) return;
  const std::int64_t x0 = r.meta.x, y0 = r.meta.y;
  for (int row = 0; row < g.tile; ++row) {
    const std::int64_t y = y0 + row;
    if (y >= g.height) break;
    const int cols = static_cast<int>(std::min<std::int64_t>(g.tile, g.width - x0));
    if (cols <= 0) break;
    std::memcpy(&mask[static_cast<std::size_t>(y * g.width + x0)],
                &m[static_cast<std::size_t>((row + g.overlap) * edge + g.overlap)], static_cast<std::size_t>(cols));
  }
}

}  // namespace

Result<PipelineReport> run_pipeline(Client& client, const Slide& slide, const PipelineOptions& opts,
                                    std::vector<std::uint8_t>& mask) {
  TileGrid g = opts.grid;
  if (g.level < 0 || g.level >= slide.level_count())
    return fail(Errc::invalid_argument, "pipeline: slide has no level " + std::to_string(g.level));
  if (g.tile < 8 || g.overlap < 0 || g.overlap > g.tile) return fail(Errc::invalid_argument, "pipeline: bad tile size/overlap");
  const LevelSize ls = slide.level_size(g.level);
  g.width = ls.width;
  g.height = ls.height;
  mask.assign(static_cast<std::size_t>(g.width * g.height), 0);

  StreamOptions so;
  so.ordering = opts.ordered ? Ordering::submission : Ordering::completion;
  so.max_in_flight = opts.max_in_flight;
  auto stream = client.open_stream(so);
  if (!stream) return fail(std::move(stream).error());

  const int edge = g.input_edge();
  const std::uint64_t nbytes = static_cast<std::uint64_t>(edge) * static_cast<std::uint64_t>(edge) * 3;
  const std::int64_t total = g.count();
  PipelineReport rep;
  rep.tiles = total;
  std::int64_t next = 0, done = 0;
  Pending pend;
  std::vector<TileResult> results;
  results.reserve(256);
  const auto t0 = Clock::now();
  while (done < total) {
    // Submit as much as the stream and the arena take without blocking.
    bool stalled = false;
    while (next < total || pend.filled) {
      if (!pend.filled) {
        if (client.try_alloc(nbytes, pend.block) != AllocStatus::ok) {
          stalled = true;
          break;
        }
        const std::int64_t col = next % g.cols(), row = next / g.cols();
        pend.meta = TileMeta{};
        pend.meta.dtype = DType::UInt8;
        pend.meta.shape = {static_cast<std::uint32_t>(edge), static_cast<std::uint32_t>(edge), 3};
        pend.meta.level = static_cast<std::uint8_t>(g.level);
        pend.meta.x = static_cast<std::int32_t>(col * g.tile);
        pend.meta.y = static_cast<std::int32_t>(row * g.tile);
        pend.meta.op = opts.op;
        pend.meta.tag = static_cast<std::uint64_t>(next);
        auto rd = slide.read_region(g.level, pend.meta.x - g.overlap, pend.meta.y - g.overlap, edge, edge,
                                    reinterpret_cast<std::uint8_t*>(pend.block.bytes().data()));
        if (!rd) return fail(std::move(rd).error());
        pend.filled = true;
        ++next;
      }
      auto s = client.submit(*stream, pend.block, pend.meta, SubmitMode::fail_fast);
      if (!s) {
        if (s.error().code == Errc::no_space) {
          stalled = true;
          break;
        }
        return fail(std::move(s).error());
      }
      pend.filled = false;
    }
    client.poll(results, 256, stalled || next >= total ? std::chrono::milliseconds(20) : std::chrono::milliseconds(0));
    for (auto& r : results) {
      ++done;
      switch (r.outcome) {
        case Outcome::completed: ++rep.completed; stitch(g, r, mask); break;
        case Outcome::failed:
          ++rep.failed;
          if (rep.errors.size() < 5) rep.errors.push_back(r.error);
          break;
        case Outcome::canceled: ++rep.canceled; break;
      }
    }
    results.clear();
    if (opts.progress) opts.progress(done, total);
  }
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  rep.tiles_per_s = rep.seconds > 0 ? static_cast<double>(total) / rep.seconds : 0;
  const StreamStats st = client.stats(*stream);
  rep.p50_us = st.p50_us;
  rep.p99_us = st.p99_us;
  for (const auto& w : client.workers())
    rep.worker_utilisation.push_back(rep.seconds > 0 ? static_cast<double>(w.busy_ns) / 1e9 / rep.seconds : 0);
  (void)client.close_stream(*stream);
  return rep;
}

void reference_mask(const Slide& slide, const TileGrid& grid, std::vector<std::uint8_t>& mask, int threshold) {
  const LevelSize ls = slide.level_size(grid.level);
  mask.assign(static_cast<std::size_t>(ls.width * ls.height), 0);
  const int w = static_cast<int>(std::min<std::int64_t>(ls.width, 4096));
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(w) * 3);
  for (std::int64_t y = 0; y < ls.height; ++y)
    for (std::int64_t x = 0; x < ls.width; x += w) {
      const int n = static_cast<int>(std::min<std::int64_t>(w, ls.width - x));
      (void)slide.read_region(grid.level, x, y, n, 1, rgb.data());
      examples::tissue_mask(rgb.data(), &mask[static_cast<std::size_t>(y * ls.width + x)], static_cast<std::size_t>(n), threshold);
    }
}

Result<void> write_png(const std::string& path, const std::uint8_t* data, int width, int height, int channels) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(width);
  img.height = static_cast<png_uint_32>(height);
  img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  if (png_image_write_to_file(&img, path.c_str(), 0, data, 0, nullptr) == 0)
    return fail(Errc::system, "png: cannot write '" + path + "': " + img.message);
  return {};
}

Result<void> write_overlay_png(const std::string& path, const Slide& slide, int level, const std::vector<std::uint8_t>& mask,
                               int max_side) {
  const LevelSize ls = slide.level_size(level);
  if (mask.size() != static_cast<std::size_t>(ls.width * ls.height)) return fail(Errc::invalid_argument, "overlay: mask size mismatch");
  const int f = static_cast<int>(std::max<std::int64_t>(1, (std::max(ls.width, ls.height) + max_side - 1) / max_side));
  const int ow = static_cast<int>((ls.width + f - 1) / f), oh = static_cast<int>((ls.height + f - 1) / f);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(ow) * static_cast<std::size_t>(oh) * 3);
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(ls.width) * 3);
  std::vector<std::uint32_t> acc(static_cast<std::size_t>(ow) * 4);
  for (int oy = 0; oy < oh; ++oy) {
    std::fill(acc.begin(), acc.end(), 0);
    for (int dy = 0; dy < f; ++dy) {
      const std::int64_t y = static_cast<std::int64_t>(oy) * f + dy;
      if (y >= ls.height) break;
      auto rd = slide.read_region(level, 0, y, static_cast<int>(ls.width), 1, rgb.data());
      if (!rd) return rd;
      for (std::int64_t x = 0; x < ls.width; ++x) {
        std::uint32_t* a = &acc[static_cast<std::size_t>(x / f) * 4];
        const std::uint8_t* p = &rgb[static_cast<std::size_t>(x) * 3];
        const bool tissue = mask[static_cast<std::size_t>(y * ls.width + x)] != 0;
        // Tissue is tinted green (55 % slide, 45 % tint); glass is left as it is.
        a[0] += tissue ? (p[0] * 55 + 20 * 45) / 100 : p[0];
        a[1] += tissue ? (p[1] * 55 + 210 * 45) / 100 : p[1];
        a[2] += tissue ? (p[2] * 55 + 90 * 45) / 100 : p[2];
        a[3] += 1;
      }
    }
    for (int ox = 0; ox < ow; ++ox) {
      const std::uint32_t* a = &acc[static_cast<std::size_t>(ox) * 4];
      for (int c = 0; c < 3; ++c)
        out[(static_cast<std::size_t>(oy) * ow + ox) * 3 + static_cast<std::size_t>(c)] =
            static_cast<std::uint8_t>(a[3] ? a[c] / a[3] : 255);
    }
  }
  return write_png(path, out.data(), ow, oh, 3);
}

}  // namespace tessera::overlay
