// MaskWriter: the three outputs of a run (pyramidal TIFF, GeoJSON, PNG preview),
// each written to a temp file next to its final name and renamed into place only
// when all of them are complete. The pyramid is the single source: the GeoJSON is
// traced from one of its small levels and the preview is made from another.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <thread>
#include <vector>

#include <tessera/mask_writer.hpp>
#include <tessera/overlay.hpp>

#include "atomic_output.hpp"
#include "mask_geojson.hpp"
#include "mask_preview.hpp"
#include "pyramid_tiff.hpp"

namespace tessera::overlay {
namespace {

// The GeoJSON is traced on the first pyramid level whose longest side is at most
// this (the tracer holds the level, a label image and edge bits: ~6 bytes a pixel).
constexpr std::int64_t kTraceMaxSide = 4096;
// The PNG preview is the first pyramid level whose longest side is at most this.
constexpr std::int64_t kPreviewMaxSide = 2048;
constexpr int kMaxTile = 4096;
constexpr std::int64_t kMaxSide = std::numeric_limits<std::uint32_t>::max() / 2;  // TIFF sizes are 32-bit

class Writer final : public MaskWriter {
 public:
  Result<void> init(const MaskOutputs& out, const MaskGeometry& g) {
    g_ = g;
    if (!out.tiff.empty()) {
      auto t = detail::AtomicOutput::create(out.tiff);
      if (!t) return fail(std::move(t).error());
      tiff_ = std::move(*t);
    }
    if (!out.geojson.empty()) {
      auto t = detail::AtomicOutput::create(out.geojson);
      if (!t) return fail(std::move(t).error());
      geojson_ = std::move(*t);
    }
    if (!out.png.empty()) {
      auto t = detail::AtomicOutput::create(out.png);
      if (!t) return fail(std::move(t).error());
      png_ = std::move(*t);
    }
    if (!tiff_.active()) {
      // GeoJSON and PNG are made from the pyramid, so it is written anyway, to a
      // temp file that is never renamed.
      auto t = detail::AtomicOutput::create((geojson_.active() ? out.geojson : out.png) + ".pyramid");
      if (!t) return fail(std::move(t).error());
      tiff_scratch_ = true;
      tiff_ = std::move(*t);
    }
    auto p = detail::PyramidTiff::create(tiff_.temp_path(), g);
    if (!p) return fail(std::move(p).error());
    pyramid_ = std::move(*p);
    return {};
  }

  Result<void> put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows,
                        std::size_t stride) override {
    if (!pyramid_) return fail(Errc::invalid_argument, "mask writer: put_tile after finish");
    return pyramid_->put_tile(col, row, mask, cols, rows, stride);
  }

  Result<void> mark_failed(std::int64_t col, std::int64_t row, const std::string& why) override {
    if (!pyramid_) return fail(Errc::invalid_argument, "mask writer: mark_failed after finish");
    const std::int64_t cols = (g_.width + g_.tile - 1) / g_.tile, rows = (g_.height + g_.tile - 1) / g_.tile;
    if (col < 0 || row < 0 || col >= cols || row >= rows)
      return fail(Errc::invalid_argument, "mask writer: failed tile (" + std::to_string(col) + "," +
                                              std::to_string(row) + ") is outside the grid");
    // Level-0 rectangle of the tile, clipped at the mask's edge.
    const double d = g_.downsample;
    detail::FailedTile f;
    f.x0 = std::llround(static_cast<double>(col * g_.tile) * d);
    f.y0 = std::llround(static_cast<double>(row * g_.tile) * d);
    f.x1 = std::llround(static_cast<double>(std::min(g_.width, (col + 1) * g_.tile)) * d);
    f.y1 = std::llround(static_cast<double>(std::min(g_.height, (row + 1) * g_.tile)) * d);
    f.why = why;
    failed_.push_back(std::move(f));
    return {};
  }

  Result<void> finish(const Slide* slide) override {
    if (!pyramid_) return fail(Errc::invalid_argument, "mask writer: finish called twice");
    using Seconds = std::chrono::duration<double>;
    auto t = std::chrono::steady_clock::now();
    auto s = pyramid_->finish();
    times_.pyramid_s = Seconds(std::chrono::steady_clock::now() - t).count();
    // The preview and the GeoJSON only read the finished pyramid: the preview runs on a
    // second thread beside the tracing.
    Result<void> png = {};
    std::jthread preview;
    if (s && png_.active())
      preview = std::jthread([&] {
        const auto t0 = std::chrono::steady_clock::now();
        const int k = pyramid_->level_at_most(kPreviewMaxSide);
        auto r = pyramid_->read_level(k);
        png = r ? detail::write_mask_preview(png_.temp_path(), *r,
                                             g_.downsample * static_cast<double>(std::int64_t{1} << k), slide)
                : Result<void>(fail(std::move(r).error()));
        times_.png_s = Seconds(std::chrono::steady_clock::now() - t0).count();
      });
    t = std::chrono::steady_clock::now();
    // The GeoJSON is traced on the most detailed level of at most 4096 px whose
    // regions fit the corner budget; a mask of very many tiny regions moves to a
    // smaller level (the smallest, <= 1024 px, always fits: <= 2^20 corners).
    for (int k = pyramid_->level_at_most(kTraceMaxSide); s && geojson_.active(); ++k) {
      auto r = pyramid_->read_level(k);
      if (!r) {
        s = fail(std::move(r).error());
        break;
      }
      detail::GeoJsonSpec spec;
      spec.scale = g_.downsample * static_cast<double>(std::int64_t{1} << k);
      spec.bound_w = static_cast<double>(g_.width) * g_.downsample;
      spec.bound_h = static_cast<double>(g_.height) * g_.downsample;
      spec.class_name = g_.class_name;
      if (k + 1 >= pyramid_->level_count()) spec.max_corners = std::numeric_limits<std::size_t>::max();
      s = detail::write_geojson(geojson_.temp_path(), *r, spec, failed_);
      if (s || s.error().code != Errc::no_space) break;
      s = {};
    }
    if (geojson_.active()) times_.geojson_s = Seconds(std::chrono::steady_clock::now() - t).count();
    if (preview.joinable()) preview.join();  // png and times_.png_s are visible after the join
    if (s && !png) s = png;
    pyramid_.reset();
    if (!s) return s;
    if (tiff_scratch_) tiff_.discard();
    t = std::chrono::steady_clock::now();
    // Every output is complete: rename them into place. Should a rename fail, the
    // ones already renamed are removed again, so a run leaves all outputs or none.
    std::vector<std::string> placed;
    for (detail::AtomicOutput* o : {&tiff_, &geojson_, &png_}) {
      if (!o->active()) continue;
      const std::string final_path = o->final_path();
      auto c = o->commit();
      if (!c) {
        for (const auto& p : placed) std::remove(p.c_str());
        return c;
      }
      placed.push_back(final_path);
    }
    times_.commit_s = Seconds(std::chrono::steady_clock::now() - t).count();
    return {};
  }

  WriteTimes times() const override { return times_; }

 private:
  MaskGeometry g_;
  detail::AtomicOutput tiff_, geojson_, png_;
  bool tiff_scratch_ = false;
  std::unique_ptr<detail::PyramidTiff> pyramid_;
  std::vector<detail::FailedTile> failed_;
  WriteTimes times_;
};

}  // namespace

Result<std::unique_ptr<MaskWriter>> MaskWriter::create(const MaskOutputs& out, const MaskGeometry& g) {
  if (out.tiff.empty() && out.geojson.empty() && out.png.empty())
    return fail(Errc::invalid_argument, "mask writer: no output file named");
  const std::string name = !out.tiff.empty() ? out.tiff : !out.geojson.empty() ? out.geojson : out.png;
  if (g.width <= 0 || g.height <= 0 || g.width > kMaxSide || g.height > kMaxSide)
    return fail(Errc::invalid_argument, "mask writer '" + name + "': bad mask size " + std::to_string(g.width) + "x" +
                                            std::to_string(g.height));
  if (g.tile < 16 || g.tile > kMaxTile || g.tile % 16 != 0)
    return fail(Errc::invalid_argument, "mask writer '" + name + "': tile edge " + std::to_string(g.tile) +
                                            " is not a multiple of 16 in [16, " + std::to_string(kMaxTile) +
                                            "] (TIFF tiles must be)");
  if (!(g.downsample > 0) || !std::isfinite(g.downsample) || !(g.mpp_x >= 0) || !(g.mpp_y >= 0) ||
      !std::isfinite(g.mpp_x) || !std::isfinite(g.mpp_y))
    return fail(Errc::invalid_argument, "mask writer '" + name + "': bad downsample or MPP");
  auto w = std::make_unique<Writer>();
  auto s = w->init(out, g);
  if (!s) return fail(std::move(s).error());
  return std::unique_ptr<MaskWriter>(std::move(w));
}

}  // namespace tessera::overlay
