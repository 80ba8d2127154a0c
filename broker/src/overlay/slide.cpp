// Slide sources: the built-in synthetic slide and (optionally) OpenSlide.
#include <tessera/overlay.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#ifdef TESSERA_HAVE_OPENSLIDE
#include <openslide.h>
#endif

namespace tessera::overlay {
namespace {

struct Blob {
  double cx, cy, rx, ry, angle;
};

// A 2D value-noise field on a coarse lattice, for ragged tissue borders and stain variation.
class Noise {
 public:
  Noise(std::uint64_t seed, int cells) : cells_(cells), v_(static_cast<std::size_t>((cells + 1) * (cells + 1))) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (auto& x : v_) x = u(rng);
  }
  // u, v in [0, 1].
  double at(double u, double v) const {
    const double fx = std::clamp(u, 0.0, 1.0) * cells_, fy = std::clamp(v, 0.0, 1.0) * cells_;
    const int x0 = std::min(static_cast<int>(fx), cells_ - 1), y0 = std::min(static_cast<int>(fy), cells_ - 1);
    const double tx = fx - x0, ty = fy - y0;
    auto g = [&](int x, int y) { return v_[static_cast<std::size_t>(y * (cells_ + 1) + x)]; };
    const double a = g(x0, y0) * (1 - tx) + g(x0 + 1, y0) * tx;
    const double b = g(x0, y0 + 1) * (1 - tx) + g(x0 + 1, y0 + 1) * tx;
    return a * (1 - ty) + b * ty;
  }

 private:
  int cells_;
  std::vector<double> v_;
};

class SyntheticSlide final : public Slide {
 public:
  SyntheticSlide(std::int64_t w, std::int64_t h, std::uint64_t seed) {
    levels_.push_back({w, h, 1.0});
    for (double ds : {4.0, 16.0}) {
      const auto lw = static_cast<std::int64_t>(std::ceil(static_cast<double>(w) / ds));
      const auto lh = static_cast<std::int64_t>(std::ceil(static_cast<double>(h) / ds));
      if (lw < 16 || lh < 16) break;
      levels_.push_back({lw, lh, ds});
    }
    render(seed);
  }

  std::string description() const override {
    return "built-in synthetic slide " + std::to_string(levels_[0].width) + "x" + std::to_string(levels_[0].height) +
           ", " + std::to_string(levels_.size()) + " levels";
  }
  int level_count() const override { return static_cast<int>(levels_.size()); }
  LevelSize level_size(int level) const override { return levels_.at(static_cast<std::size_t>(level)); }
  std::string reader() const override { return "synthetic"; }

  Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const override {
    if (level < 0 || level >= level_count()) return fail(Errc::invalid_argument, "slide: no level " + std::to_string(level));
    const LevelSize ls = levels_[static_cast<std::size_t>(level)];
    const auto& px = pixels_[static_cast<std::size_t>(level)];
    for (int r = 0; r < h; ++r) {
      std::uint8_t* dst = rgb + static_cast<std::size_t>(r) * w * 3;
      const std::int64_t sy = y + r;
      if (sy < 0 || sy >= ls.height) {
        std::memset(dst, 255, static_cast<std::size_t>(w) * 3);
        continue;
      }
      const std::int64_t x0 = std::max<std::int64_t>(x, 0), x1 = std::min<std::int64_t>(x + w, ls.width);
      if (x0 > x) std::memset(dst, 255, static_cast<std::size_t>(x0 - x) * 3);
      if (x1 > x0) std::memcpy(dst + (x0 - x) * 3, px.data() + (sy * ls.width + x0) * 3, static_cast<std::size_t>(x1 - x0) * 3);
      if (x + w > x1) std::memset(dst + (std::max(x1, x) - x) * 3, 255, static_cast<std::size_t>(x + w - std::max(x1, x)) * 3);
    }
    return {};
  }

 private:
  void render(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<Blob> blobs;
    const int n = 5 + static_cast<int>(u(rng) * 5);
    for (int i = 0; i < n; ++i)
      blobs.push_back({0.15 + 0.7 * u(rng), 0.15 + 0.7 * u(rng), 0.06 + 0.14 * u(rng), 0.05 + 0.12 * u(rng), u(rng) * 3.14159});
    const Noise border(seed * 7 + 1, 24), stain(seed * 13 + 5, 64);
    const LevelSize l0 = levels_[0];
    // The smooth fields (tissue shape, stain strength) on a coarse grid; pixels interpolate.
    constexpr int kStep = 8;
    const std::int64_t gw = l0.width / kStep + 2, gh = l0.height / kStep + 2;
    std::vector<float> gfield(static_cast<std::size_t>(gw * gh)), gstain(gfield.size());
    std::vector<double> ca(blobs.size()), sa(blobs.size());
    for (std::size_t i = 0; i < blobs.size(); ++i) {
      ca[i] = std::cos(blobs[i].angle);
      sa[i] = std::sin(blobs[i].angle);
    }
    for (std::int64_t gy = 0; gy < gh; ++gy)
      for (std::int64_t gx = 0; gx < gw; ++gx) {
        const double uu = static_cast<double>(gx * kStep) / static_cast<double>(l0.width);
        const double v = static_cast<double>(gy * kStep) / static_cast<double>(l0.height);
        double field = -1e9;
        for (std::size_t i = 0; i < blobs.size(); ++i) {
          const double dx = uu - blobs[i].cx, dy = v - blobs[i].cy;
          const double px = (dx * ca[i] + dy * sa[i]) / blobs[i].rx, py = (-dx * sa[i] + dy * ca[i]) / blobs[i].ry;
          field = std::max(field, 1.0 - (px * px + py * py));
        }
        gfield[static_cast<std::size_t>(gy * gw + gx)] = static_cast<float>(field + 0.25 * border.at(uu, v));
        gstain[static_cast<std::size_t>(gy * gw + gx)] = static_cast<float>(stain.at(uu, v));
      }
    std::vector<std::uint8_t> base(static_cast<std::size_t>(l0.width * l0.height * 3));
    std::uint64_t h = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (std::int64_t y = 0; y < l0.height; ++y) {
      const std::int64_t gy = y / kStep;
      const float ty = static_cast<float>(y % kStep) / kStep;
      for (std::int64_t x = 0; x < l0.width; ++x) {
        const std::int64_t gx = x / kStep;
        const float tx = static_cast<float>(x % kStep) / kStep;
        const std::size_t g00 = static_cast<std::size_t>(gy * gw + gx);
        auto lerp2 = [&](const std::vector<float>& g) {
          const float a0 = g[g00] * (1 - tx) + g[g00 + 1] * tx;
          const float a1 = g[g00 + static_cast<std::size_t>(gw)] * (1 - tx) + g[g00 + static_cast<std::size_t>(gw) + 1] * tx;
          return a0 * (1 - ty) + a1 * ty;
        };
        const float field = lerp2(gfield);
        std::uint8_t* p = &base[static_cast<std::size_t>((y * l0.width + x) * 3)];
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;  // xorshift: cheap per-pixel grain
        const int grain = static_cast<int>(h & 15) - 8;
        if (field > 0.0f) {
          // Eosin-pink stroma with hematoxylin-purple nuclei.
          const float st = lerp2(gstain);
          const bool nucleus = (h >> 8) % 97 < 4;
          if (nucleus) {
            p[0] = static_cast<std::uint8_t>(std::clamp(90 + grain, 0, 255));
            p[1] = static_cast<std::uint8_t>(std::clamp(50 + grain, 0, 255));
            p[2] = static_cast<std::uint8_t>(std::clamp(130 + grain, 0, 255));
          } else {
            p[0] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(215 + 20 * st) + grain, 0, 255));
            p[1] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(125 + 25 * st) + grain, 0, 255));
            p[2] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(180 + 15 * st) + grain, 0, 255));
          }
        } else {
          p[0] = p[1] = p[2] = static_cast<std::uint8_t>(std::clamp(244 + grain / 2, 0, 255));
        }
      }
    }
    pixels_.push_back(std::move(base));
    // Lower levels: box-filter downsampling of level 0.
    for (std::size_t li = 1; li < levels_.size(); ++li) {
      const LevelSize ls = levels_[li];
      const int f = static_cast<int>(ls.downsample);
      std::vector<std::uint8_t> out(static_cast<std::size_t>(ls.width * ls.height * 3));
      for (std::int64_t y = 0; y < ls.height; ++y)
        for (std::int64_t x = 0; x < ls.width; ++x)
          for (int c = 0; c < 3; ++c) {
            int sum = 0, cnt = 0;
            for (int dy = 0; dy < f; ++dy)
              for (int dx = 0; dx < f; ++dx) {
                const std::int64_t sx = x * f + dx, sy = y * f + dy;
                if (sx >= l0.width || sy >= l0.height) continue;
                sum += pixels_[0][static_cast<std::size_t>((sy * l0.width + sx) * 3 + c)];
                ++cnt;
              }
            out[static_cast<std::size_t>((y * ls.width + x) * 3 + c)] = static_cast<std::uint8_t>(cnt ? sum / cnt : 255);
          }
      pixels_.push_back(std::move(out));
    }
  }

  std::vector<LevelSize> levels_;
  std::vector<std::vector<std::uint8_t>> pixels_;
};

#ifdef TESSERA_HAVE_OPENSLIDE
class OpenSlideSlide final : public Slide {
 public:
  explicit OpenSlideSlide(openslide_t* os, std::string path) : os_(os), path_(std::move(path)) {
    auto prop = [&](const std::string& k) {
      const char* v = openslide_get_property_value(os_, k.c_str());
      return v != nullptr ? std::string(v) : std::string();
    };
    vendor_ = prop("openslide.vendor");
    if (auto v = prop("openslide.mpp-x"); !v.empty()) mpp_x_ = std::strtod(v.c_str(), nullptr);
    if (auto v = prop("openslide.mpp-y"); !v.empty()) mpp_y_ = std::strtod(v.c_str(), nullptr);
    // A generic TIFF has no openslide.mpp-*: its resolution tags say the same.
    const auto unit = prop("tiff.ResolutionUnit");
    const double um = unit == "centimeter" ? 1e4 : unit == "inch" ? 25400.0 : 0;
    if (mpp_x_ == 0 && um > 0)
      if (const double r = std::strtod(prop("tiff.XResolution").c_str(), nullptr); r > 0) mpp_x_ = um / r;
    if (mpp_y_ == 0 && um > 0)
      if (const double r = std::strtod(prop("tiff.YResolution").c_str(), nullptr); r > 0) mpp_y_ = um / r;
    for (int l = 0; l < openslide_get_level_count(os_); ++l) {
      const auto tw = prop("openslide.level[" + std::to_string(l) + "].tile-width");
      const auto th = prop("openslide.level[" + std::to_string(l) + "].tile-height");
      tiles_.push_back(!tw.empty() && tw == th ? std::atoi(tw.c_str()) : 0);
    }
  }
  ~OpenSlideSlide() override { openslide_close(os_); }
  std::string description() const override {
    return "OpenSlide " + path_ + (vendor_.empty() ? "" : " (" + vendor_ + ")");
  }
  std::string reader() const override { return "openslide"; }
  double mpp_x() const override { return mpp_x_; }
  double mpp_y() const override { return mpp_y_; }
  int native_tile(int level) const override {
    return level >= 0 && level < static_cast<int>(tiles_.size()) ? tiles_[static_cast<std::size_t>(level)] : 0;
  }
  int level_count() const override { return openslide_get_level_count(os_); }
  LevelSize level_size(int level) const override {
    std::int64_t w = 0, h = 0;
    openslide_get_level_dimensions(os_, level, &w, &h);
    return {w, h, openslide_get_level_downsample(os_, level)};
  }
  Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const override {
    if (level < 0 || level >= level_count())
      return fail(Errc::invalid_argument, "'" + path_ + "': no level " + std::to_string(level));
    // One buffer per reader thread, grown to the largest region it read (no allocation per tile).
    thread_local std::vector<std::uint32_t> argb;
    if (argb.size() < static_cast<std::size_t>(w) * static_cast<std::size_t>(h))
      argb.resize(static_cast<std::size_t>(w) * static_cast<std::size_t>(h));
    const double ds = openslide_get_level_downsample(os_, level);
    // OpenSlide takes level-0 coordinates for the top-left corner.
    openslide_read_region(os_, argb.data(), static_cast<std::int64_t>(static_cast<double>(x) * ds),
                          static_cast<std::int64_t>(static_cast<double>(y) * ds), level, w, h);
    if (const char* err = openslide_get_error(os_))
      return fail(Errc::system, "'" + path_ + "': openslide: " + err);
    const std::size_t n = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t p = argb[i];
      const std::uint32_t a = p >> 24;
      // Premultiplied ARGB over white.
      for (int c = 0; c < 3; ++c) {
        const std::uint32_t v = (p >> (16 - 8 * c)) & 0xff;
        rgb[i * 3 + static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(std::min<std::uint32_t>(255, v + (255 - a)));
      }
    }
    return {};
  }

 private:
  openslide_t* os_;
  std::string path_, vendor_;
  double mpp_x_ = 0, mpp_y_ = 0;
  std::vector<int> tiles_;
};
#endif

}  // namespace

std::unique_ptr<Slide> synthetic_slide(std::int64_t width, std::int64_t height, std::uint64_t seed) {
  return std::make_unique<SyntheticSlide>(width, height, seed);
}

bool openslide_available() noexcept {
#ifdef TESSERA_HAVE_OPENSLIDE
  return true;
#else
  return false;
#endif
}

namespace {

Result<std::unique_ptr<Slide>> open_with_openslide(const std::string& path) {
#ifdef TESSERA_HAVE_OPENSLIDE
  openslide_t* os = openslide_open(path.c_str());
  if (os == nullptr) return fail(Errc::invalid_argument, "'" + path + "': not a slide OpenSlide can read (unknown or unsupported format)");
  if (const char* err = openslide_get_error(os)) {
    std::string e = err;
    openslide_close(os);
    return fail(Errc::invalid_argument, "'" + path + "': OpenSlide cannot read it: " + e);
  }
  if (openslide_get_level_count(os) < 1) {
    openslide_close(os);
    return fail(Errc::invalid_argument, "'" + path + "': OpenSlide finds no levels in it");
  }
  return std::unique_ptr<Slide>(std::make_unique<OpenSlideSlide>(os, path));
#else
  return fail(Errc::unavailable, "'" + path + "': this build has no OpenSlide support (install libopenslide-dev and rebuild)");
#endif
}

}  // namespace

Result<std::unique_ptr<Slide>> open_slide(const std::string& path, ReaderKind kind) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return fail(Errc::not_found, "'" + path + "': no such file");
  if (!std::filesystem::is_regular_file(st)) return fail(Errc::invalid_argument, "'" + path + "': not a regular file");
  if (kind == ReaderKind::openslide) return open_with_openslide(path);
  auto fast = open_fast_tiff(path);
  if (fast || kind == ReaderKind::fast) return fast;
  // auto: the fast reader declined (not a JPEG-tiled TIFF); OpenSlide reads every other format.
  auto os = open_with_openslide(path);
  if (os) return os;
  return fail(os.error().code, os.error().message + "; fast reader: " + fast.error().message);
}

}  // namespace tessera::overlay
