#include "pyramid_tiff.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <thread>

#include <tiffio.h>
#include <unistd.h>
#include <zlib.h>

namespace tessera::overlay::detail {
namespace {

// Deflate level of the lower levels (zlib): masks are long runs, so level 1 is within a
// few percent of level 6 in size and several times faster (docs/design/overlay-outputs.md).
constexpr int kDeflateLevel = 1;
// Deflate level of every tile libtiff encodes (level 0, through libdeflate): on mask tiles
// libdeflate's level 2 is ~1.6x faster than its level 1 at the same size (its level-1
// matcher handles long runs poorly; docs/design/overlay-outputs.md, "Throughput").
constexpr int kTiffDeflateLevel = 2;
// Level-0 masks above 2 GiB uncompressed are written as BigTIFF (64-bit offsets);
// classic TIFF stays the default because every reader opens it.
constexpr std::int64_t kBigTiffPixels = std::int64_t{1} << 31;

TIFF* as_tiff(void* p) {
  return static_cast<TIFF*>(p);
}

int on_tiff_error(TIFF*, void* user, const char* module, const char* fmt, va_list ap) {
  char msg[512];
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  auto* s = static_cast<std::string*>(user);
  *s = std::string(module ? module : "libtiff") + ": " + msg;
  return 1;  // handled: nothing on stderr
}

int on_tiff_warning(TIFF*, void*, const char*, const char*, va_list) {
  return 1;
}

TIFF* open_tiff(const std::string& path, const char* mode, std::string* last_error) {
  TIFFOpenOptions* opts = TIFFOpenOptionsAlloc();
  if (!opts) return nullptr;
  TIFFOpenOptionsSetErrorHandlerExtR(opts, on_tiff_error, last_error);
  TIFFOpenOptionsSetWarningHandlerExtR(opts, on_tiff_warning, nullptr);
  TIFF* t = TIFFOpenExt(path.c_str(), mode, opts);
  TIFFOpenOptionsFree(opts);
  return t;
}

struct TiffCloser {
  void operator()(TIFF* t) const { TIFFClose(t); }
};
using TiffPtr = std::unique_ptr<TIFF, TiffCloser>;

}  // namespace

Error PyramidTiff::tiff_error(const std::string& what) const {
  std::string m = "mask TIFF '" + path_ + "': " + what;
  if (!last_error_->empty()) m += ": " + *last_error_;
  if (errno != 0) m += std::string(" (") + std::strerror(errno) + ")";
  return Error{Errc::system, m};
}

Result<std::unique_ptr<PyramidTiff>> PyramidTiff::create(const std::string& path, const MaskGeometry& g) {
  std::unique_ptr<PyramidTiff> p(new PyramidTiff());
  p->path_ = path;
  p->g_ = g;
  p->tile_ = g.tile;
  p->big_ = g.width * g.height > kBigTiffPixels;
  p->threads_ = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1U, 16U));
  std::int64_t w = g.width, h = g.height;
  for (;;) {
    Level l;
    l.width = w;
    l.height = h;
    l.cols = (w + g.tile - 1) / g.tile;
    l.rows = (h + g.tile - 1) / g.tile;
    l.nonzero.assign(static_cast<std::size_t>(l.cols * l.rows), false);
    p->levels_.push_back(std::move(l));
    if (std::max(w, h) <= kSmallestLevelSide) break;
    w = (w + 1) / 2;
    h = (h + 1) / 2;
  }
  const std::size_t tile_bytes = static_cast<std::size_t>(g.tile) * static_cast<std::size_t>(g.tile);
  p->written0_.assign(p->levels_[0].nonzero.size(), false);
  p->buf_.assign(tile_bytes, 0);
  // The zero tile, compressed once at the best level (84 bytes for 256 x 256; 307 at
  // level 1): every background tile is a copy of these bytes.
  uLongf zlen = compressBound(static_cast<uLong>(tile_bytes));
  p->zero_.resize(zlen);
  if (compress2(p->zero_.data(), &zlen, p->buf_.data(), static_cast<uLong>(tile_bytes), Z_BEST_COMPRESSION) != Z_OK)
    return fail(Errc::system, "mask TIFF '" + path + "': cannot compress the zero tile");
  p->zero_.resize(zlen);

  // The staging file keeps the temp name's ".tmp-..." tail, so a killed run never leaves
  // a file a viewer mistakes for output.
  const auto tmp_at = path.rfind(".tmp-");
  p->staging_path_ = tmp_at == std::string::npos ? path + ".level0.tmp"
                                                 : path.substr(0, tmp_at) + ".level0" + path.substr(tmp_at);
  errno = 0;
  p->staging_ = open_tiff(p->staging_path_, p->big_ ? "w8" : "w", p->last_error_.get());
  if (!p->staging_) return fail(p->tiff_error("cannot open the staging file '" + p->staging_path_ + "'"));
  p->tif_ = p->staging_;  // set_level_tags writes to tif_
  auto s = p->set_level_tags(0);
  p->tif_ = nullptr;
  if (!s) return fail(std::move(s).error());
  errno = 0;
  p->tif_ = open_tiff(path, p->big_ ? "w8" : "w", p->last_error_.get());
  if (!p->tif_) return fail(p->tiff_error("cannot open for writing"));
  s = p->set_level_tags(0);
  if (!s) return fail(std::move(s).error());
  return p;
}

PyramidTiff::~PyramidTiff() {
  if (staging_) TIFFClose(as_tiff(staging_));
  if (!staging_path_.empty()) ::unlink(staging_path_.c_str());
  if (tif_) TIFFClose(as_tiff(tif_));
}

int PyramidTiff::level_at_most(std::int64_t side) const noexcept {
  for (int k = 0; k < level_count(); ++k)
    if (std::max(level_width(k), level_height(k)) <= side) return k;
  return level_count() - 1;
}

Result<void> PyramidTiff::set_level_tags(int k) {
  TIFF* t = as_tiff(tif_);
  const Level& l = levels_[static_cast<std::size_t>(k)];
  bool ok = TIFFSetField(t, TIFFTAG_IMAGEWIDTH, static_cast<std::uint32_t>(l.width)) &&
            TIFFSetField(t, TIFFTAG_IMAGELENGTH, static_cast<std::uint32_t>(l.height)) &&
            TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8) && TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1) &&
            TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_UINT) &&
            TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK) &&
            TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG) &&
            TIFFSetField(t, TIFFTAG_TILEWIDTH, static_cast<std::uint32_t>(tile_)) &&
            TIFFSetField(t, TIFFTAG_TILELENGTH, static_cast<std::uint32_t>(tile_)) &&
            TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE) &&
            TIFFSetField(t, TIFFTAG_ZIPQUALITY, kTiffDeflateLevel) && TIFFSetField(t, TIFFTAG_SOFTWARE, "Tessera");
  // OpenSlide's generic TIFF reader takes every later tiled directory marked
  // reduced-resolution as a pyramid level.
  if (k > 0) ok = ok && TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_REDUCEDIMAGE);
  if (k == 0) {
    char desc[256];
    std::snprintf(desc, sizeof desc, "Tessera mask: class=%s, analysed-level downsample=%.9g", g_.class_name.c_str(),
                  g_.downsample);
    ok = ok && TIFFSetField(t, TIFFTAG_IMAGEDESCRIPTION, desc);
  }
  if (g_.mpp_x > 0 && g_.mpp_y > 0) {
    // Pixels per centimetre of this level: 1e4 um / (um per level-0 pixel * level downsample).
    const double f = g_.downsample * static_cast<double>(std::int64_t{1} << k);
    ok = ok && TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, RESUNIT_CENTIMETER) &&
         TIFFSetField(t, TIFFTAG_XRESOLUTION, 1e4 / (g_.mpp_x * f)) &&
         TIFFSetField(t, TIFFTAG_YRESOLUTION, 1e4 / (g_.mpp_y * f));
  }
  if (!ok) return fail(tiff_error("cannot set the tags of level " + std::to_string(k)));
  return {};
}

// Only for a tile not written yet: libtiff then appends the bytes at the end of the file.
Result<void> PyramidTiff::write_zero_tile(std::uint32_t index) {
  errno = 0;
  if (TIFFWriteRawTile(as_tiff(tif_), index, zero_.data(), static_cast<tmsize_t>(zero_.size())) < 0)
    return fail(tiff_error("cannot write tile " + std::to_string(index)));
  return {};
}

Result<void> PyramidTiff::put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows,
                                   std::size_t stride) {
  if (finished_ || !staging_) return fail(Errc::invalid_argument, "mask TIFF '" + path_ + "': put_tile after finish");
  Level& l0 = levels_[0];
  const std::string at = "tile (" + std::to_string(col) + "," + std::to_string(row) + ")";
  if (col < 0 || row < 0 || col >= l0.cols || row >= l0.rows)
    return fail(Errc::invalid_argument, "mask TIFF '" + path_ + "': " + at + " is outside the " +
                                            std::to_string(l0.cols) + "x" + std::to_string(l0.rows) + " grid");
  const std::int64_t max_cols = std::min<std::int64_t>(tile_, l0.width - col * tile_);
  const std::int64_t max_rows = std::min<std::int64_t>(tile_, l0.height - row * tile_);
  if (!mask || cols < 1 || rows < 1 || cols > max_cols || rows > max_rows || stride < static_cast<std::size_t>(cols))
    return fail(Errc::invalid_argument, "mask TIFF '" + path_ + "': " + at + ": bad extent " + std::to_string(cols) +
                                            "x" + std::to_string(rows) + " (stride " + std::to_string(stride) + ")");
  std::uint8_t any = 0;
  std::uint8_t* dst = buf_.data();
  const auto t = static_cast<std::size_t>(tile_);
  if (cols < tile_ || rows < tile_) std::fill(buf_.begin(), buf_.end(), 0);
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* src = mask + static_cast<std::size_t>(y) * stride;
    std::memcpy(dst + static_cast<std::size_t>(y) * t, src, static_cast<std::size_t>(cols));
    for (int x = 0; x < cols; ++x) any |= src[x];
  }
  const auto idx = static_cast<std::size_t>(row * l0.cols + col);
  l0.nonzero[idx] = any != 0;
  // A background tile costs nothing now (finish() writes the shared zero tile),
  // unless it replaces one written before: libtiff rewrites a tile only through
  // the encoder (a raw rewrite would append to the old bytes).
  if (any == 0 && !written0_[idx]) return {};
  errno = 0;
  if (TIFFWriteEncodedTile(as_tiff(staging_), static_cast<std::uint32_t>(idx), dst, static_cast<tmsize_t>(buf_.size())) < 0)
    return fail(tiff_error("cannot write " + at + " to the staging file"));
  written0_[idx] = true;
  return {};
}

// Level 0 into the output in grid order: a background tile is the shared zero tile, any
// other is copied from the staging file as it is (compressed; not decoded again).
Result<void> PyramidTiff::copy_level0_in_grid_order() {
  errno = 0;
  if (!TIFFWriteDirectory(as_tiff(staging_))) return fail(tiff_error("cannot finish the staging file"));
  TIFFClose(as_tiff(staging_));
  staging_ = nullptr;
  const Level& l0 = levels_[0];
  // A mask with no tissue at all put nothing in the staging file, and libtiff then writes
  // a directory without tile offsets that it will not read back: every tile is the zero tile.
  const bool none_written = std::none_of(written0_.begin(), written0_.end(), [](bool w) { return w; });
  TiffPtr rd(none_written ? nullptr : open_tiff(staging_path_, "r", last_error_.get()));
  if (!none_written && !rd) return fail(tiff_error("cannot read back the staging file '" + staging_path_ + "'"));
  std::vector<std::uint8_t> raw;
  for (std::size_t i = 0; i < l0.nonzero.size(); ++i) {
    const auto idx = static_cast<std::uint32_t>(i);
    if (!l0.nonzero[i]) {
      if (auto s = write_zero_tile(idx); !s) return s;
      continue;
    }
    const std::uint64_t n = TIFFGetStrileByteCount(rd.get(), idx);
    raw.resize(static_cast<std::size_t>(n));
    errno = 0;
    if (n == 0 || TIFFReadRawTile(rd.get(), idx, raw.data(), static_cast<tmsize_t>(n)) != static_cast<tmsize_t>(n))
      return fail(tiff_error("cannot read back tile " + std::to_string(i) + " of the staging file"));
    if (TIFFWriteRawTile(as_tiff(tif_), idx, raw.data(), static_cast<tmsize_t>(n)) < 0)
      return fail(tiff_error("cannot write tile " + std::to_string(i)));
  }
  rd.reset();
  ::unlink(staging_path_.c_str());
  staging_path_.clear();
  return {};
}

// Level k from level k-1, one band of tile rows at a time: every thread takes rows of
// the band, reads the four children of each tile through its own reader, downsamples
// and compresses; the calling thread then appends the band's tiles in grid order (so
// the bytes do not depend on the thread count). Memory: one band of compressed tiles.
Result<void> PyramidTiff::build_level(int k) {
  const Level& up = levels_[static_cast<std::size_t>(k - 1)];
  Level& l = levels_[static_cast<std::size_t>(k)];
  const auto t = static_cast<std::size_t>(tile_);
  const std::size_t half = t / 2;
  const int threads = static_cast<int>(std::clamp<std::int64_t>(l.rows, 1, threads_));

  struct Lane {
    TiffPtr rd;
    std::string last_error;
    std::vector<std::uint8_t> child, px, packed;  // packed: compressBound(T²), reused
    std::string error;  // empty: the lane's rows of this band are done
  };
  std::vector<Lane> lanes(static_cast<std::size_t>(threads));
  for (auto& ln : lanes) {
    errno = 0;
    ln.rd.reset(open_tiff(path_, "r", &ln.last_error));
    if (!ln.rd || !TIFFSetDirectory(ln.rd.get(), static_cast<tdir_t>(k - 1)))
      return fail(tiff_error("cannot read back level " + std::to_string(k - 1) +
                             (ln.last_error.empty() ? "" : ": " + ln.last_error)));
    ln.child.resize(t * t);
    ln.px.resize(t * t);
    ln.packed.resize(compressBound(static_cast<uLong>(t * t)));
  }
  // Compressed tile per column of each row of the band (empty: background).
  std::vector<std::vector<std::vector<std::uint8_t>>> band(static_cast<std::size_t>(threads));
  for (auto& row : band) row.resize(static_cast<std::size_t>(l.cols));

  auto make_row = [&](Lane& ln, std::int64_t r, std::vector<std::vector<std::uint8_t>>& out) {
    for (std::int64_t c = 0; c < l.cols; ++c) {
      auto& z = out[static_cast<std::size_t>(c)];
      z.clear();
      bool any_child = false;
      std::fill(ln.px.begin(), ln.px.end(), 0);
      for (int dy = 0; dy < 2; ++dy)
        for (int dx = 0; dx < 2; ++dx) {
          const std::int64_t cc = 2 * c + dx, cr = 2 * r + dy;
          if (cc >= up.cols || cr >= up.rows) continue;
          const auto cidx = static_cast<std::size_t>(cr * up.cols + cc);
          if (!up.nonzero[cidx]) continue;
          any_child = true;
          if (TIFFReadEncodedTile(ln.rd.get(), static_cast<std::uint32_t>(cidx), ln.child.data(),
                                  static_cast<tmsize_t>(ln.child.size())) < 0) {
            ln.error = "cannot read back tile " + std::to_string(cidx) + " of level " + std::to_string(k - 1) +
                       (ln.last_error.empty() ? "" : ": " + ln.last_error);
            return;
          }
          // Downsample by max: a region one pixel wide stays visible at every level.
          for (std::size_t y = 0; y < half; ++y) {
            const std::uint8_t* a = &ln.child[(2 * y) * t];
            const std::uint8_t* b = a + t;
            std::uint8_t* o = &ln.px[(static_cast<std::size_t>(dy) * half + y) * t + static_cast<std::size_t>(dx) * half];
            for (std::size_t x = 0; x < half; ++x)
              o[x] = std::max(std::max(a[2 * x], a[2 * x + 1]), std::max(b[2 * x], b[2 * x + 1]));
          }
        }
      std::uint8_t any = 0;
      if (any_child)
        for (std::uint8_t v : ln.px) any |= v;
      if (any == 0) continue;
      uLongf zlen = compressBound(static_cast<uLong>(ln.px.size()));
      if (compress2(ln.packed.data(), &zlen, ln.px.data(), static_cast<uLong>(ln.px.size()), kDeflateLevel) != Z_OK) {
        ln.error = "cannot compress tile " + std::to_string(r * l.cols + c) + " of level " + std::to_string(k);
        return;
      }
      // An exact-size copy: a band holds what the tiles compress to, not the bound per tile.
      z.assign(ln.packed.begin(), ln.packed.begin() + static_cast<std::ptrdiff_t>(zlen));
    }
  };

  for (std::int64_t r0 = 0; r0 < l.rows; r0 += threads) {
    const int n = static_cast<int>(std::min<std::int64_t>(threads, l.rows - r0));
    {
      std::vector<std::jthread> workers;
      for (int i = 1; i < n; ++i)
        workers.emplace_back([&, i] { make_row(lanes[static_cast<std::size_t>(i)], r0 + i, band[static_cast<std::size_t>(i)]); });
      make_row(lanes[0], r0, band[0]);
    }  // joined: the band's tiles and errors are visible
    for (int i = 0; i < n; ++i) {
      if (!lanes[static_cast<std::size_t>(i)].error.empty())
        return fail(Errc::system, "mask TIFF '" + path_ + "': " + lanes[static_cast<std::size_t>(i)].error);
      for (std::int64_t c = 0; c < l.cols; ++c) {
        const auto idx = static_cast<std::size_t>((r0 + i) * l.cols + c);
        const auto& z = band[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)];
        errno = 0;
        if (z.empty()) {
          if (auto s = write_zero_tile(static_cast<std::uint32_t>(idx)); !s) return s;
          continue;
        }
        if (TIFFWriteRawTile(as_tiff(tif_), static_cast<std::uint32_t>(idx), const_cast<std::uint8_t*>(z.data()),
                             static_cast<tmsize_t>(z.size())) < 0)
          return fail(tiff_error("cannot write tile " + std::to_string(idx) + " of level " + std::to_string(k)));
        l.nonzero[idx] = true;
      }
    }
  }
  return {};
}

Result<void> PyramidTiff::finish() {
  if (finished_ || !tif_) return fail(Errc::invalid_argument, "mask TIFF '" + path_ + "': finish called twice");
  finished_ = true;
  if (auto s = copy_level0_in_grid_order(); !s) return s;
  written0_ = {};
  errno = 0;
  if (!TIFFWriteDirectory(as_tiff(tif_))) return fail(tiff_error("cannot write the directory of level 0"));
  for (int k = 1; k < level_count(); ++k) {
    auto s = set_level_tags(k);
    if (s) s = build_level(k);
    if (!s) return s;
    errno = 0;
    if (!TIFFWriteDirectory(as_tiff(tif_)))
      return fail(tiff_error("cannot write the directory of level " + std::to_string(k)));
  }
  TIFFClose(as_tiff(tif_));
  tif_ = nullptr;
  return {};
}

Result<Raster> PyramidTiff::read_level(int k) const {
  if (!finished_ || tif_) return fail(Errc::invalid_argument, "mask TIFF '" + path_ + "': read_level before finish");
  // Its own error string: the GeoJSON and the preview read levels from two threads.
  std::string last_error;
  const auto error = [&](const std::string& what) {
    return Error{Errc::system,
                 "mask TIFF '" + path_ + "': " + what + (last_error.empty() ? "" : ": " + last_error)};
  };
  TiffPtr rd(open_tiff(path_, "r", &last_error));
  if (!rd || !TIFFSetDirectory(rd.get(), static_cast<tdir_t>(k)))
    return fail(error("cannot read back level " + std::to_string(k)));
  const Level& l = levels_[static_cast<std::size_t>(k)];
  Raster r;
  r.width = l.width;
  r.height = l.height;
  r.px.assign(static_cast<std::size_t>(l.width * l.height), 0);
  const auto t = static_cast<std::size_t>(tile_);
  std::vector<std::uint8_t> tile(t * t);
  for (std::int64_t tr = 0; tr < l.rows; ++tr)
    for (std::int64_t tc = 0; tc < l.cols; ++tc) {
      const auto idx = static_cast<std::size_t>(tr * l.cols + tc);
      if (!l.nonzero[idx]) continue;
      errno = 0;
      if (TIFFReadEncodedTile(rd.get(), static_cast<std::uint32_t>(idx), tile.data(),
                              static_cast<tmsize_t>(tile.size())) < 0)
        return fail(error("cannot read back tile " + std::to_string(idx) + " of level " + std::to_string(k)));
      const std::int64_t x0 = tc * tile_, y0 = tr * tile_;
      const auto n = static_cast<std::size_t>(std::min<std::int64_t>(tile_, l.width - x0));
      for (std::int64_t y = 0; y < tile_ && y0 + y < l.height; ++y)
        std::memcpy(&r.px[static_cast<std::size_t>((y0 + y) * l.width + x0)], &tile[static_cast<std::size_t>(y) * t],
                    n);
    }
  return r;
}

}  // namespace tessera::overlay::detail
