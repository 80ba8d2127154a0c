#include "mask_preview.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "png_writer.hpp"

namespace tessera::overlay::detail {
namespace {

// One band of the chosen slide level is read at a time, at most this many bytes
// (or one preview row, if larger), so the slide is read in few, large regions.
constexpr double kBandBytes = 32.0 * 1024 * 1024;
// A slide whose most detailed level under the preview's is more than this many
// times finer has no usable low level: the preview is then the mask over white,
// rather than a read of the slide at (near) full resolution.
constexpr double kMaxLevelRatio = 16.0;

// The slide level to blend over: the largest downsample not above the preview's.
int pick_level(const Slide& s, double scale) {
  int best = 0;
  double best_ds = 0;
  for (int l = 0; l < s.level_count(); ++l) {
    const double ds = s.level_size(l).downsample;
    if (ds <= scale * 1.001 && ds > best_ds) {
      best = l;
      best_ds = ds;
    }
  }
  return best;
}

}  // namespace

Result<void> write_mask_preview(const std::string& path, const Raster& m, double scale, const Slide* slide) {
  const auto pw = static_cast<int>(m.width), ph = static_cast<int>(m.height);
  // Built in the PNG stream's own row layout, so the encoder compresses it in place.
  PngRaster img(pw, ph, 3);
  const int level = slide && slide->level_count() > 0 ? pick_level(*slide, scale) : -1;
  const double r =
      level >= 0 ? scale / std::max(slide->level_size(level).downsample, 1e-9) : 0;  // slide px per preview px
  if (level >= 0 && r <= kMaxLevelRatio) {
    const auto sw = static_cast<int>(std::ceil(pw * r));
    // Bands are independent (a slide read, then averaging into their own preview rows), so
    // every core takes bands; the budget of slide bytes in memory is split between them.
    const int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1U, 8U));
    int band = std::max(1, static_cast<int>(kBandBytes / threads / (static_cast<double>(sw) * 3 * std::max(1.0, r))));
    // Each preview column's span of slide columns [xs[px], xs[px + 1]), computed once
    // (not per pixel: the floor() calls cost more than the averaging itself).
    std::vector<std::int64_t> xs(static_cast<std::size_t>(pw) + 1);
    for (int px = 0; px <= pw; ++px)
      xs[static_cast<std::size_t>(px)] = std::min<std::int64_t>(sw, static_cast<std::int64_t>(std::floor(px * r)));
    // An integer ratio k (the usual case: pyramid levels are powers of 2 or 4 apart) averages
    // fixed k x k blocks, a loop the compiler unrolls; other ratios take the general spans.
    const int k = static_cast<int>(r);
    const bool whole = static_cast<double>(k) == r && k >= 1 && k <= 4 && static_cast<std::int64_t>(pw) * k <= sw;
    // With a whole ratio and a native tile grid, a band is the fewest whole rows of source
    // tiles that are whole preview rows too: every source tile is decoded once (a band edge
    // inside a tile row decodes that row twice) and the bands in memory are a few MB, not
    // the budget (memory touched for the first time is slow to come by on a VM).
    if (const int native = slide->native_tile(level); whole && native > 0) {
      const int rows = native * (k / std::gcd(native, k));  // slide rows: whole tiles, a multiple of k
      band = std::min(band, std::max(1, rows / k));
    }
    std::atomic<int> next{0};
    std::mutex error_mu;
    std::string error;  // first failure, guarded by error_mu
    auto run = [&] {
      LargeVector<std::uint8_t> rgb;
      // SYNC[none]: a relaxed work counter; the join below orders the rows written.
      for (int py0; (py0 = next.fetch_add(band, std::memory_order_relaxed)) < ph;) {
        const int py1 = std::min(ph, py0 + band);
        const auto sy0 = static_cast<std::int64_t>(std::floor(py0 * r));
        const auto sy1 = std::max(sy0 + 1, static_cast<std::int64_t>(std::floor(py1 * r)));
        const int sh = static_cast<int>(sy1 - sy0);
        rgb.resize(static_cast<std::size_t>(sw) * static_cast<std::size_t>(sh) * 3);
        auto rd = slide->read_region(level, 0, sy0, sw, sh, rgb.data());
        if (!rd) {
          const std::lock_guard lk(error_mu);
          if (error.empty()) error = rd.error().message;
          return;
        }
        for (int py = py0; py < py1; ++py) {
          const auto ya = static_cast<std::int64_t>(std::floor(py * r)) - sy0;
          const auto yb =
              std::min<std::int64_t>(sh, std::max(ya + 1, static_cast<std::int64_t>(std::floor((py + 1) * r)) - sy0));
          std::uint8_t* o = img.row(py);
          if (whole && yb - ya == k) {
            const auto n = static_cast<std::uint32_t>(k * k);
            for (int px = 0; px < pw; ++px, o += 3) {
              std::uint32_t acc[3] = {0, 0, 0};
              for (int y = 0; y < k; ++y) {
                const std::uint8_t* p = &rgb[static_cast<std::size_t>(((ya + y) * sw + static_cast<std::int64_t>(px) * k) * 3)];
                for (int x = 0; x < k; ++x, p += 3) {
                  acc[0] += p[0];
                  acc[1] += p[1];
                  acc[2] += p[2];
                }
              }
              for (int c = 0; c < 3; ++c) o[c] = static_cast<std::uint8_t>(acc[c] / n);
            }
            continue;
          }
          for (int px = 0; px < pw; ++px, o += 3) {
            const std::int64_t xa = xs[static_cast<std::size_t>(px)];
            const std::int64_t xb = std::min<std::int64_t>(sw, std::max(xa + 1, xs[static_cast<std::size_t>(px) + 1]));
            std::uint32_t acc[3] = {0, 0, 0}, n = 0;
            for (std::int64_t y = ya; y < yb; ++y) {
              const std::uint8_t* p = &rgb[static_cast<std::size_t>((y * sw + xa) * 3)];
              for (std::int64_t x = xa; x < xb; ++x, p += 3) {
                acc[0] += p[0];
                acc[1] += p[1];
                acc[2] += p[2];
              }
              n += static_cast<std::uint32_t>(xb - xa);
            }
            for (int c = 0; c < 3; ++c) o[c] = static_cast<std::uint8_t>(n ? acc[c] / n : 255);
          }
        }
      }
    };
    {
      std::vector<std::jthread> helpers;
      for (int i = 1; i < std::min(threads, (ph + band - 1) / band); ++i) helpers.emplace_back(run);
      run();
    }  // joined: every band's rows and `error` are visible
    if (!error.empty()) return fail(Errc::system, "preview '" + path + "': cannot read the slide: " + error);
  } else {
    for (int py = 0; py < ph; ++py) std::fill_n(img.row(py), static_cast<std::size_t>(pw) * 3, std::uint8_t{255});
  }
  // Foreground tinted green (55 % slide, 45 % tint), as the run's overlay always was.
  static constexpr int kTint[3] = {20, 210, 90};
  for (int py = 0; py < ph; ++py) {
    const std::uint8_t* mrow = &m.px[static_cast<std::size_t>(py) * static_cast<std::size_t>(pw)];
    std::uint8_t* o = img.row(py);
    for (int px = 0; px < pw; ++px, o += 3)
      if (mrow[px] != 0)
        for (int c = 0; c < 3; ++c) o[c] = static_cast<std::uint8_t>((o[c] * 55 + kTint[c] * 45) / 100);
  }
  return write_png(path, img);
}

}  // namespace tessera::overlay::detail
