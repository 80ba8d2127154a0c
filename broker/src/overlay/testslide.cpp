// A JPEG-tiled pyramidal TIFF with procedural stained tissue, written with libtiff's JPEG
// codec (abbreviated tile streams with shared JPEGTables, like vips and Aperio): the slide the
// tests, the WSI benchmark and `tessera make-slide` use. Nothing is downloaded.
#include <tessera/overlay.hpp>

#include <tiffio.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

namespace tessera::overlay {
namespace {

struct Blob {
  double cx, cy, rx, ry, ca, sa;
};

class Texture {
 public:
  explicit Texture(const TestSlideSpec& s) : s_(s) {
    std::mt19937_64 rng(s.seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const int n = 5 + static_cast<int>(u(rng) * 5);
    for (int i = 0; i < n; ++i) {
      const double a = u(rng) * 3.14159;
      blobs_.push_back({0.15 + 0.7 * u(rng), 0.15 + 0.7 * u(rng), 0.06 + 0.14 * u(rng), 0.05 + 0.12 * u(rng), std::cos(a), std::sin(a)});
    }
    box_ = s.tissue[2] > s.tissue[0] && s.tissue[3] > s.tissue[1];
  }

  // The tissue field at level-0 pixel (x, y): > 0 is tissue.
  double field(double x, double y) const {
    if (box_) {
      if (x < static_cast<double>(s_.tissue[0]) || x >= static_cast<double>(s_.tissue[2]) ||
          y < static_cast<double>(s_.tissue[1]) || y >= static_cast<double>(s_.tissue[3]))
        return -1;
      return 1;
    }
    const double u = x / static_cast<double>(s_.width), v = y / static_cast<double>(s_.height);
    double f = -1e9;
    for (const auto& b : blobs_) {
      const double dx = u - b.cx, dy = v - b.cy;
      const double px = (dx * b.ca + dy * b.sa) / b.rx, py = (-dx * b.sa + dy * b.ca) / b.ry;
      f = std::max(f, 1.0 - (px * px + py * py));
    }
    return f + 0.15 * std::sin(u * 37.0 + std::cos(v * 23.0)) * std::cos(v * 29.0);
  }

  // Renders a tw x th tile of the level with downsample ds at level pixel (x0, y0).
  void render(std::int64_t x0, std::int64_t y0, int tw, int th, double ds, std::int64_t lw, std::int64_t lh,
              std::vector<std::uint8_t>& out) const {
    out.assign(static_cast<std::size_t>(tw) * static_cast<std::size_t>(th) * 3, 255);
    constexpr int kStep = 8;  // the smooth field on a coarse lattice; pixels interpolate
    const int gw = tw / kStep + 2, gh = th / kStep + 2;
    std::vector<float> g(static_cast<std::size_t>(gw * gh));
    for (int gy = 0; gy < gh; ++gy)
      for (int gx = 0; gx < gw; ++gx)
        g[static_cast<std::size_t>(gy * gw + gx)] =
            static_cast<float>(field(static_cast<double>(x0 + gx * kStep) * ds, static_cast<double>(y0 + gy * kStep) * ds));
    for (int r = 0; r < th; ++r) {
      const std::int64_t y = y0 + r;
      if (y >= lh) break;
      for (int c = 0; c < tw; ++c) {
        const std::int64_t x = x0 + c;
        if (x >= lw) break;
        std::uint8_t* p = &out[(static_cast<std::size_t>(r) * static_cast<std::size_t>(tw) + static_cast<std::size_t>(c)) * 3];
        // Grain and nuclei hashed from the level-0 position: the same at every tile edge.
        std::uint64_t h = static_cast<std::uint64_t>(x) * 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(y) * 0xC2B2AE3D27D4EB4FULL ^ s_.seed;
        h ^= h >> 31;
        h *= 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 29;
        const int grain = static_cast<int>(h & 15) - 8;
        float f;
        if (box_) {
          f = static_cast<float>(field(static_cast<double>(x) * ds, static_cast<double>(y) * ds));
        } else {
          const int gx = c / kStep, gy = r / kStep;
          const float tx = static_cast<float>(c % kStep) / kStep, ty = static_cast<float>(r % kStep) / kStep;
          const float* g0 = &g[static_cast<std::size_t>(gy * gw + gx)];
          f = (g0[0] * (1 - tx) + g0[1] * tx) * (1 - ty) + (g0[gw] * (1 - tx) + g0[gw + 1] * tx) * ty;
        }
        if (f > 0) {
          // Eosin-pink stroma with hematoxylin-purple nuclei (blobs of a few pixels).
          const double cellx = std::floor(static_cast<double>(x) * ds / 12.0), celly = std::floor(static_cast<double>(y) * ds / 12.0);
          std::uint64_t ch = static_cast<std::uint64_t>(cellx) * 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(celly) * 0x94D049BB133111EBULL;
          ch ^= ch >> 29;
          ch *= 0xBF58476D1CE4E5B9ULL;
          const double ncx = (cellx + 0.3 + 0.4 * static_cast<double>(ch & 255) / 255.0) * 12.0;
          const double ncy = (celly + 0.3 + 0.4 * static_cast<double>((ch >> 8) & 255) / 255.0) * 12.0;
          const double dx = static_cast<double>(x) * ds - ncx, dy = static_cast<double>(y) * ds - ncy;
          const bool nucleus = ((ch >> 16) % 3 == 0) && dx * dx + dy * dy < 9.0 + static_cast<double>((ch >> 24) & 7);
          const double st = 0.5 + 0.5 * std::sin(static_cast<double>(x) * ds * 0.013 + static_cast<double>(y) * ds * 0.007);
          if (nucleus) {
            p[0] = static_cast<std::uint8_t>(std::clamp(95 + grain, 0, 255));
            p[1] = static_cast<std::uint8_t>(std::clamp(55 + grain, 0, 255));
            p[2] = static_cast<std::uint8_t>(std::clamp(135 + grain, 0, 255));
          } else {
            p[0] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(205 + 25 * st) + grain, 0, 255));
            p[1] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(115 + 30 * st) + grain, 0, 255));
            p[2] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(170 + 20 * st) + grain, 0, 255));
          }
        } else {
          p[0] = p[1] = p[2] = static_cast<std::uint8_t>(std::clamp(243 + grain / 2, 0, 255));
        }
      }
    }
  }

  bool box() const { return box_; }

 private:
  const TestSlideSpec& s_;
  std::vector<Blob> blobs_;
  bool box_ = false;
};

}  // namespace

Result<void> write_test_slide(const std::string& path, const TestSlideSpec& s) {
  if (s.width < 16 || s.height < 16 || s.tile < 16 || s.tile % 16 != 0 || s.quality < 1 || s.quality > 100)
    return fail(Errc::invalid_argument, "make-slide: bad size, tile (a multiple of 16) or quality");
  const std::string tmp = path + ".tmp";
  TIFF* tif = TIFFOpen(tmp.c_str(), s.width * s.height * 3 > (1LL << 31) ? "w8" : "w");
  if (tif == nullptr) return fail(Errc::system, "make-slide: cannot create '" + tmp + "'");
  const Texture tex(s);
  std::vector<std::uint8_t> px;
  bool ok = true;
  double ds = 1;
  for (int level = 0; ok; ++level, ds *= 4) {
    const auto lw = static_cast<std::int64_t>(std::ceil(static_cast<double>(s.width) / ds));
    const auto lh = static_cast<std::int64_t>(std::ceil(static_cast<double>(s.height) / ds));
    if (level > 0 && std::max(lw, lh) < 2 * s.tile) break;
    TIFFSetField(tif, TIFFTAG_SUBFILETYPE, level == 0 ? 0 : FILETYPE_REDUCEDIMAGE);
    TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, static_cast<std::uint32_t>(lw));
    TIFFSetField(tif, TIFFTAG_IMAGELENGTH, static_cast<std::uint32_t>(lh));
    TIFFSetField(tif, TIFFTAG_TILEWIDTH, static_cast<std::uint32_t>(s.tile));
    TIFFSetField(tif, TIFFTAG_TILELENGTH, static_cast<std::uint32_t>(s.tile));
    TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(tif, TIFFTAG_COMPRESSION, COMPRESSION_JPEG);
    if (s.aperio) {
      TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
    } else {
      TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_YCBCR);
      TIFFSetField(tif, TIFFTAG_YCBCRSUBSAMPLING, s.subsample ? 2 : 1, s.subsample ? 2 : 1);
    }
    TIFFSetField(tif, TIFFTAG_JPEGQUALITY, s.quality);
    if (!s.aperio) TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
    if (level == 0) {
      char desc[512];
      if (s.aperio)
        std::snprintf(desc, sizeof desc,
                      "Aperio Image Library v12.0.15 \r\n%lldx%lld [0,0 %lldx%lld] (%dx%d) JPEG/RGB Q=%d|AppMag = 40|MPP = %.4f|"
                      "ScanScope ID = TESSERA|Filename = synthetic",
                      static_cast<long long>(s.width), static_cast<long long>(s.height), static_cast<long long>(s.width),
                      static_cast<long long>(s.height), s.tile, s.tile, s.quality, s.mpp);
      else
        std::snprintf(desc, sizeof desc, "tessera synthetic slide");
      TIFFSetField(tif, TIFFTAG_IMAGEDESCRIPTION, desc);
      if (!s.aperio) {
        TIFFSetField(tif, TIFFTAG_RESOLUTIONUNIT, RESUNIT_CENTIMETER);
        TIFFSetField(tif, TIFFTAG_XRESOLUTION, 1e4 / s.mpp);
        TIFFSetField(tif, TIFFTAG_YRESOLUTION, 1e4 / s.mpp);
      }
    }
    for (std::int64_t y = 0; y < lh && ok; y += s.tile)
      for (std::int64_t x = 0; x < lw && ok; x += s.tile) {
        // With a tissue box, glass tiles far from it are left out (a sparse TIFF: cheap on disk,
        // read back as white), so a huge mostly-background slide costs little to write.
        if (tex.box()) {
          const double m = 2 * s.tile * ds;
          if (static_cast<double>(x) * ds > static_cast<double>(s.tissue[2]) + m ||
              static_cast<double>(x + s.tile) * ds < static_cast<double>(s.tissue[0]) - m ||
              static_cast<double>(y) * ds > static_cast<double>(s.tissue[3]) + m ||
              static_cast<double>(y + s.tile) * ds < static_cast<double>(s.tissue[1]) - m)
            continue;
        }
        tex.render(x, y, s.tile, s.tile, ds, lw, lh, px);
        ok = TIFFWriteTile(tif, px.data(), static_cast<std::uint32_t>(x), static_cast<std::uint32_t>(y), 0, 0) >= 0;
      }
    if (ok) ok = TIFFWriteDirectory(tif) == 1;
    if (s.aperio && level == 0 && ok) {
      // The SVS thumbnail: a stripped image after level 0 (OpenSlide's aperio driver expects it).
      const std::int64_t thw = std::max<std::int64_t>(16, s.width / 64), thh = std::max<std::int64_t>(16, s.height / 64);
      TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, static_cast<std::uint32_t>(thw));
      TIFFSetField(tif, TIFFTAG_IMAGELENGTH, static_cast<std::uint32_t>(thh));
      TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, 8);
      TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 3);
      TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
      TIFFSetField(tif, TIFFTAG_COMPRESSION, COMPRESSION_NONE);
      TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, static_cast<std::uint32_t>(thh));
      TIFFSetField(tif, TIFFTAG_IMAGEDESCRIPTION, "Aperio Image Library v12.0.15 \r\nthumbnail");
      std::vector<std::uint8_t> row(static_cast<std::size_t>(thw) * 3), t;
      for (std::int64_t y = 0; y < thh && ok; ++y) {
        tex.render(0, y, static_cast<int>((thw + 15) / 16 * 16), 16, 64, thw, y + 1, t);
        std::copy_n(t.begin(), row.size(), row.begin());
        ok = TIFFWriteScanline(tif, row.data(), static_cast<std::uint32_t>(y), 0) == 1;
      }
      if (ok) ok = TIFFWriteDirectory(tif) == 1;
    }
  }
  TIFFClose(tif);
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    return fail(Errc::system, "make-slide: writing '" + tmp + "' failed");
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return fail(Errc::system, "make-slide: cannot rename to '" + path + "': " + ec.message());
  return {};
}

}  // namespace tessera::overlay
