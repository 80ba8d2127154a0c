// MaskWriter: the three outputs of a run, written by the writer and read back by the
// readers users have: libtiff and OpenSlide for the pyramid, Boost.JSON for the
// GeoJSON, libpng for the preview. Also atomicity (destroyed / killed writers leave
// no final file), the memory bound on a 131072 x 131072 mask, and the error cases.
#include <png.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <tuple>

#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <tessera/overlay.hpp>

#include <tessera/mask_writer.hpp>
#include "test_support.hpp"
#include <tiffio.h>

#ifdef TESSERA_HAVE_OPENSLIDE
#include <openslide.h>
#endif

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using tessera::overlay::MaskGeometry;
using tessera::overlay::MaskOutputs;
using tessera::overlay::MaskWriter;

struct TempDir {
  fs::path path = fs::temp_directory_path() / tessera::test::unique_name("tessera-maskw");
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(path)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
};

// A mask with discs of values 1..255 (classes/probabilities), a ring (a region with
// a hole) and single-pixel specks, deterministic for a seed.
std::vector<std::uint8_t> make_mask(std::int64_t w, std::int64_t h, std::uint64_t seed) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(w * h), 0);
  std::mt19937_64 rng(seed);
  auto disc = [&](double cx, double cy, double r, std::uint8_t v, double hole) {
    for (std::int64_t y = std::max<std::int64_t>(0, static_cast<std::int64_t>(cy - r));
         y < std::min<std::int64_t>(h, static_cast<std::int64_t>(cy + r) + 1); ++y)
      for (std::int64_t x = std::max<std::int64_t>(0, static_cast<std::int64_t>(cx - r));
           x < std::min<std::int64_t>(w, static_cast<std::int64_t>(cx + r) + 1); ++x) {
        const double d = std::hypot(static_cast<double>(x) - cx, static_cast<double>(y) - cy);
        if (d <= r && d >= hole) m[static_cast<std::size_t>(y * w + x)] = v;
      }
  };
  std::uniform_real_distribution<double> ux(0, static_cast<double>(w)), uy(0, static_cast<double>(h)), ur(10, 120);
  std::uniform_int_distribution<int> uv(1, 255);
  for (int i = 0; i < 12; ++i) disc(ux(rng), uy(rng), ur(rng), static_cast<std::uint8_t>(uv(rng)), 0);
  disc(static_cast<double>(w) / 2, static_cast<double>(h) / 2, 150, 200, 60);  // a ring: one polygon with a hole
  for (int i = 0; i < 40; ++i)
    m[static_cast<std::size_t>(static_cast<std::int64_t>(uy(rng)) * w + static_cast<std::int64_t>(ux(rng)))] = 255;
  return m;
}

// The writer's downsample: 2x2 max, zero beyond the edge.
std::vector<std::uint8_t> downsample_max(const std::vector<std::uint8_t>& m, std::int64_t w, std::int64_t h,
                                         std::int64_t& ow, std::int64_t& oh) {
  ow = (w + 1) / 2;
  oh = (h + 1) / 2;
  std::vector<std::uint8_t> o(static_cast<std::size_t>(ow * oh), 0);
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x) {
      auto& d = o[static_cast<std::size_t>((y / 2) * ow + x / 2)];
      d = std::max(d, m[static_cast<std::size_t>(y * w + x)]);
    }
  return o;
}

// Puts every tile of `m` (except those in `skip`, which must then be zero) in a shuffled order.
void put_all(MaskWriter& w, const std::vector<std::uint8_t>& m, const MaskGeometry& g, std::uint64_t seed) {
  const std::int64_t cols = (g.width + g.tile - 1) / g.tile, rows = (g.height + g.tile - 1) / g.tile;
  std::vector<std::int64_t> order(static_cast<std::size_t>(cols * rows));
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>(i);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  for (std::int64_t i : order) {
    const std::int64_t c = i % cols, r = i / cols;
    const int tw = static_cast<int>(std::min<std::int64_t>(g.tile, g.width - c * g.tile));
    const int th = static_cast<int>(std::min<std::int64_t>(g.tile, g.height - r * g.tile));
    bool any = false;
    for (int y = 0; y < th && !any; ++y)
      for (int x = 0; x < tw && !any; ++x)
        any = m[static_cast<std::size_t>((r * g.tile + y) * g.width + c * g.tile + x)] != 0;
    if (!any && (c + r) % 2 == 0) continue;  // half of the background tiles are never put
    auto s = w.put_tile(c, r, &m[static_cast<std::size_t>(r * g.tile * g.width + c * g.tile)], tw, th,
                        static_cast<std::size_t>(g.width));
    ASSERT_TRUE(s.has_value()) << s.error().message;
  }
}

struct TiffCloser {
  void operator()(TIFF* t) const { TIFFClose(t); }
};

// Reads directory `dir` of a tiled uint8 TIFF into a raster.
std::vector<std::uint8_t> read_tiff_level(const std::string& path, int dir, std::int64_t& w, std::int64_t& h) {
  std::unique_ptr<TIFF, TiffCloser> t(TIFFOpen(path.c_str(), "r"));
  EXPECT_TRUE(t);
  if (!t || !TIFFSetDirectory(t.get(), static_cast<tdir_t>(dir))) return {};
  std::uint32_t iw = 0, ih = 0, tw = 0, th = 0;
  TIFFGetField(t.get(), TIFFTAG_IMAGEWIDTH, &iw);
  TIFFGetField(t.get(), TIFFTAG_IMAGELENGTH, &ih);
  TIFFGetField(t.get(), TIFFTAG_TILEWIDTH, &tw);
  TIFFGetField(t.get(), TIFFTAG_TILELENGTH, &th);
  w = iw;
  h = ih;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(w * h)), tile(static_cast<std::size_t>(tw) * th);
  for (std::uint32_t y0 = 0; y0 < ih; y0 += th)
    for (std::uint32_t x0 = 0; x0 < iw; x0 += tw) {
      EXPECT_GE(TIFFReadTile(t.get(), tile.data(), x0, y0, 0, 0), 0);
      for (std::uint32_t y = 0; y < th && y0 + y < ih; ++y)
        for (std::uint32_t x = 0; x < tw && x0 + x < iw; ++x)
          out[static_cast<std::size_t>(y0 + y) * iw + x0 + x] = tile[static_cast<std::size_t>(y) * tw + x];
    }
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double ring_area2(const json::array& ring) {
  double a = 0;
  for (std::size_t i = 0; i + 1 < ring.size(); ++i) {
    const auto& p = ring[i].as_array();
    const auto& q = ring[i + 1].as_array();
    a += p[0].to_number<double>() * q[1].to_number<double>() - q[0].to_number<double>() * p[1].to_number<double>();
  }
  return a;
}

// Foreground area of all Tissue polygons (outline minus holes), checking bounds on the way.
double polygon_area(const json::value& fc, double bw, double bh, int* holes, int* features) {
  double area = 0;
  for (const auto& f : fc.at("features").as_array()) {
    if (f.at("properties").at("classification").at("name").as_string() != "Tissue") continue;
    ++*features;
    EXPECT_EQ(f.at("properties").at("objectType").as_string(), "annotation");
    EXPECT_EQ(f.at("geometry").at("type").as_string(), "Polygon");
    const auto& rings = f.at("geometry").at("coordinates").as_array();
    *holes += static_cast<int>(rings.size()) - 1;
    for (std::size_t i = 0; i < rings.size(); ++i) {
      const auto& ring = rings[i].as_array();
      EXPECT_GE(ring.size(), 5u);
      EXPECT_EQ(json::serialize(ring.front()), json::serialize(ring.back())) << "ring not closed";
      for (const auto& p : ring) {
        const double x = p.as_array()[0].to_number<double>(), y = p.as_array()[1].to_number<double>();
        EXPECT_TRUE(x >= 0 && x <= bw && y >= 0 && y <= bh) << x << "," << y;
      }
      const double a2 = ring_area2(ring);
      if (i == 0) {
        EXPECT_GT(a2, 0) << "outline must have positive area";
      } else {
        EXPECT_LT(a2, 0) << "hole must have negative area";
      }
      area += a2 / 2;
    }
  }
  return area;
}

std::int64_t count_nonzero(const std::vector<std::uint8_t>& m) {
  return std::count_if(m.begin(), m.end(), [](std::uint8_t v) { return v != 0; });
}

// Runs `body` in a forked child; returns its wait status. The child never returns.
template <class F>
int in_child(F&& body, int timeout_s = 60) {
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(static_cast<unsigned>(timeout_s));
    _exit(body());
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return st;
}

// A PNG read back with libpng's simplified API as `format` (PNG_FORMAT_RGB or
// PNG_FORMAT_GRAY); empty, with a test failure, when libpng cannot read it.
std::vector<std::uint8_t> read_png(const std::string& path, std::uint32_t format, unsigned& w, unsigned& h) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  if (png_image_begin_read_from_file(&img, path.c_str()) == 0) {
    ADD_FAILURE() << path << ": " << img.message;
    return {};
  }
  w = img.width;
  h = img.height;
  img.format = format;
  std::vector<std::uint8_t> px(PNG_IMAGE_SIZE(img));
  if (png_image_finish_read(&img, nullptr, px.data(), 0, nullptr) == 0) {
    ADD_FAILURE() << path << ": " << img.message;
    return {};
  }
  return px;
}

MaskGeometry geometry(std::int64_t w, std::int64_t h, int tile, double ds, double mpp) {
  MaskGeometry g;
  g.width = w;
  g.height = h;
  g.tile = tile;
  g.downsample = ds;
  g.mpp_x = mpp;
  g.mpp_y = mpp;
  return g;
}

}  // namespace

TEST(MaskWriter, TiffPyramidReadsBackExactlyWithLibtiff) {
  TempDir d;
  const auto g = geometry(3000, 2200, 256, 2.0, 0.25);
  const auto m = make_mask(g.width, g.height, tessera::test::test_seed(11));
  MaskOutputs out;
  out.tiff = d.file("mask.tif");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 7);
  auto s = (*w)->finish(nullptr);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  EXPECT_EQ(d.entries(), std::vector<std::string>{"mask.tif"});

  std::unique_ptr<TIFF, TiffCloser> t(TIFFOpen(out.tiff.c_str(), "r"));
  ASSERT_TRUE(t);
  EXPECT_EQ(TIFFNumberOfDirectories(t.get()), 3);  // 3000 -> 1500 -> 750 (<= 1024)
  float xres = 0, yres = 0;
  std::uint16_t unit = 0, spp = 0, bps = 0;
  std::uint32_t tw = 0;
  ASSERT_TRUE(TIFFGetField(t.get(), TIFFTAG_XRESOLUTION, &xres));
  ASSERT_TRUE(TIFFGetField(t.get(), TIFFTAG_YRESOLUTION, &yres));
  ASSERT_TRUE(TIFFGetField(t.get(), TIFFTAG_RESOLUTIONUNIT, &unit));
  TIFFGetField(t.get(), TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetField(t.get(), TIFFTAG_BITSPERSAMPLE, &bps);
  TIFFGetField(t.get(), TIFFTAG_TILEWIDTH, &tw);
  EXPECT_EQ(unit, RESUNIT_CENTIMETER);
  EXPECT_NEAR(xres, 1e4 / (0.25 * 2.0), 1e-2);  // 0.5 um per mask pixel: the slide's physical size
  EXPECT_NEAR(yres, 1e4 / (0.25 * 2.0), 1e-2);
  EXPECT_EQ(spp, 1);
  EXPECT_EQ(bps, 8);
  EXPECT_EQ(tw, 256u);
  t.reset();

  std::int64_t w0 = 0, h0 = 0, w1 = 0, h1 = 0, w2 = 0, h2 = 0, ew1 = 0, eh1 = 0, ew2 = 0, eh2 = 0;
  EXPECT_EQ(read_tiff_level(out.tiff, 0, w0, h0), m);
  EXPECT_EQ(w0, g.width);
  EXPECT_EQ(h0, g.height);
  const auto m1 = downsample_max(m, g.width, g.height, ew1, eh1);
  const auto m2 = downsample_max(m1, ew1, eh1, ew2, eh2);
  EXPECT_EQ(read_tiff_level(out.tiff, 1, w1, h1), m1);
  EXPECT_EQ(w1, ew1);
  EXPECT_EQ(h1, eh1);
  EXPECT_EQ(read_tiff_level(out.tiff, 2, w2, h2), m2);
  EXPECT_EQ(w2, ew2);
  EXPECT_EQ(h2, eh2);
}

// A slide without any tissue: no tile is ever put (every mask is background), and the
// outputs are still complete: an all-zero pyramid, an empty FeatureCollection, a preview.
TEST(MaskWriter, AMaskWithNoTissueAtAllGivesCompleteOutputs) {
  TempDir d;
  const auto g = geometry(1500, 1100, 256, 1.0, 0.5);
  MaskOutputs out{d.file("e.tif"), d.file("e.geojson"), d.file("e.png")};
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  // A background tile put (and skipped by the writer) changes nothing.
  const std::vector<std::uint8_t> zero(256 * 256, 0);
  ASSERT_TRUE((*w)->put_tile(1, 1, zero.data(), 256, 256, 256).has_value());
  auto s = (*w)->finish(nullptr);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  EXPECT_EQ(d.entries(), (std::vector<std::string>{"e.geojson", "e.png", "e.tif"}));
  std::int64_t w0 = 0, h0 = 0, w1 = 0, h1 = 0;
  EXPECT_EQ(read_tiff_level(out.tiff, 0, w0, h0), std::vector<std::uint8_t>(1500 * 1100, 0));
  EXPECT_EQ(w0, 1500);
  EXPECT_EQ(h0, 1100);
  EXPECT_EQ(read_tiff_level(out.tiff, 1, w1, h1), std::vector<std::uint8_t>(750 * 550, 0));
  std::ifstream f(out.geojson);
  std::stringstream text;
  text << f.rdbuf();
  const auto j = json::parse(text.str()).as_object();
  EXPECT_EQ(j.at("type").as_string(), "FeatureCollection");
  EXPECT_TRUE(j.at("features").as_array().empty());
}

#ifdef TESSERA_HAVE_OPENSLIDE
TEST(MaskWriter, TiffPyramidOpensInOpenSlideAsPyramidWithTheSamePixels) {
  TempDir d;
  const auto g = geometry(2600, 1800, 240, 4.0, 0.2425);
  const auto m = make_mask(g.width, g.height, tessera::test::test_seed(12));
  MaskOutputs out;
  out.tiff = d.file("mask.tiff");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 8);
  ASSERT_TRUE((*w)->finish(nullptr).has_value());

  openslide_t* os = openslide_open(out.tiff.c_str());
  ASSERT_NE(os, nullptr);
  struct Close {
    openslide_t* o;
    ~Close() { openslide_close(o); }
  } close{os};
  ASSERT_EQ(openslide_get_error(os), nullptr) << openslide_get_error(os);
  EXPECT_STREQ(openslide_get_property_value(os, OPENSLIDE_PROPERTY_NAME_VENDOR), "generic-tiff");
  ASSERT_EQ(openslide_get_level_count(os), 3);  // 2600 -> 1300 -> 650
  std::int64_t ew1 = 0, eh1 = 0;
  const auto m1 = downsample_max(m, g.width, g.height, ew1, eh1);
  for (int level = 0; level < 2; ++level) {
    std::int64_t lw = 0, lh = 0;
    openslide_get_level_dimensions(os, level, &lw, &lh);
    EXPECT_EQ(lw, level == 0 ? g.width : ew1);
    EXPECT_EQ(lh, level == 0 ? g.height : eh1);
    EXPECT_NEAR(openslide_get_level_downsample(os, level), level == 0 ? 1.0 : 2.0, 1e-3);
    std::vector<std::uint32_t> argb(static_cast<std::size_t>(lw * lh));
    openslide_read_region(os, argb.data(), 0, 0, level, lw, lh);
    ASSERT_EQ(openslide_get_error(os), nullptr) << openslide_get_error(os);
    const auto& want = level == 0 ? m : m1;
    std::int64_t bad = 0;
    for (std::size_t i = 0; i < argb.size(); ++i) {
      const std::uint32_t v = want[i];
      bad += argb[i] != (0xff000000u | v << 16 | v << 8 | v);
    }
    EXPECT_EQ(bad, 0) << "level " << level;
  }
  // The resolution tags (pixels per cm of the mask level) are visible to OpenSlide users.
  const char* unit = openslide_get_property_value(os, "tiff.ResolutionUnit");
  const char* xres = openslide_get_property_value(os, "tiff.XResolution");
  ASSERT_NE(unit, nullptr);
  ASSERT_NE(xres, nullptr);
  EXPECT_STREQ(unit, "centimeter");
  EXPECT_NEAR(std::atof(xres), 1e4 / (0.2425 * 4.0), 0.01);
}
#endif

TEST(MaskWriter, GeoJsonPolygonsLieInsideAndCoverTheMaskExactlyAtTheTracedLevel) {
  TempDir d;
  // Traced at level 0 (<= 4096 px): the polygons are exact for the mask.
  const auto g = geometry(3000, 2200, 256, 2.0, 0.25);
  const auto m = make_mask(g.width, g.height, tessera::test::test_seed(13));
  MaskOutputs out;
  out.geojson = d.file("mask.geojson");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 9);
  ASSERT_TRUE((*w)->mark_failed(3, 2, "corrupt JPEG tile").has_value());
  ASSERT_TRUE((*w)->mark_failed(11, 8, "read error").has_value());  // the clipped corner tile
  ASSERT_TRUE((*w)->finish(nullptr).has_value());
  EXPECT_EQ(d.entries(), std::vector<std::string>{"mask.geojson"});  // the scratch pyramid is gone

  json::value fc = json::parse(slurp(out.geojson));
  EXPECT_EQ(fc.at("type").as_string(), "FeatureCollection");
  int holes = 0, features = 0;
  const double area = polygon_area(fc, 6000, 4400, &holes, &features);
  EXPECT_GE(holes, 1);  // the ring
  EXPECT_GE(features, 13);
  EXPECT_DOUBLE_EQ(area, static_cast<double>(count_nonzero(m)) * 4.0);
  int failed = 0;
  for (const auto& f : fc.at("features").as_array()) {
    const auto& p = f.at("properties");
    if (p.at("classification").at("name").as_string() != "Failed") continue;
    ++failed;
    const auto& ring = f.at("geometry").at("coordinates").as_array()[0].as_array();
    if (p.at("reason").as_string() == "corrupt JPEG tile") {
      EXPECT_EQ(json::serialize(ring[0]), "[1536,1024]");  // tile (3,2) * 256 px * downsample 2
      EXPECT_EQ(json::serialize(ring[2]), "[2048,1536]");
    } else {
      EXPECT_EQ(p.at("reason").as_string(), "read error");
      EXPECT_EQ(json::serialize(ring[2]), "[6000,4400]");  // clipped at the mask's edge
    }
  }
  EXPECT_EQ(failed, 2);
}

TEST(MaskWriter, GeoJsonTracedOnALowerLevelStaysWithinTheStatedTolerance) {
  TempDir d;
  // 9000 px wide: traced on level 2 (2250 px), each traced pixel 4 mask pixels wide.
  const auto g = geometry(9000, 1200, 512, 1.0, 0);
  const auto m = make_mask(g.width, g.height, tessera::test::test_seed(14));
  MaskOutputs out;
  out.geojson = d.file("mask.geojson");
  out.tiff = d.file("mask.tif");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 10);
  ASSERT_TRUE((*w)->finish(nullptr).has_value());
  std::int64_t w1 = 0, h1 = 0, w2 = 0, h2 = 0;
  const auto m1 = downsample_max(m, g.width, g.height, w1, h1);
  const auto m2 = downsample_max(m1, w1, h1, w2, h2);
  int holes = 0, features = 0;
  const double area = polygon_area(json::parse(slurp(out.geojson)), 9000, 1200, &holes, &features);
  // Exact for the traced level; never smaller than the mask (max-downsampling grows
  // regions), and larger by at most the boundary pixels of the traced level.
  EXPECT_DOUBLE_EQ(area, static_cast<double>(count_nonzero(m2)) * 16.0);
  EXPECT_GE(area, static_cast<double>(count_nonzero(m)));
  // No resolution given: no resolution tags.
  std::unique_ptr<TIFF, TiffCloser> t(TIFFOpen(out.tiff.c_str(), "r"));
  ASSERT_TRUE(t);
  float xres = 0;
  EXPECT_FALSE(TIFFGetField(t.get(), TIFFTAG_XRESOLUTION, &xres));
}

TEST(MaskWriter, PngPreviewIsTheSmallLevelBlendedOverTheSlide) {
  TempDir d;
  // A 4400 x 3000 slide analysed at downsample 1; preview from level 2 (1100 x 750).
  auto slide = tessera::overlay::synthetic_slide(4400, 3000, 3);
  const auto g = geometry(4400, 3000, 256, 1.0, 0.5);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(g.width * g.height), 0);
  for (std::int64_t y = 1000; y < 2600; ++y)
    for (std::int64_t x = 2000; x < 4000; ++x) m[static_cast<std::size_t>(y * g.width + x)] = 1;
  MaskOutputs out;
  out.png = d.file("overlay.png");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 11);
  ASSERT_TRUE((*w)->finish(slide.get()).has_value());
  EXPECT_EQ(d.entries(), std::vector<std::string>{"overlay.png"});

  unsigned pw = 0, ph = 0;
  const std::vector<std::uint8_t> px = read_png(out.png, PNG_FORMAT_RGB, pw, ph);
  ASSERT_FALSE(px.empty());
  EXPECT_EQ(pw, 1100u);
  EXPECT_EQ(ph, 750u);
  // Inside the region the tint raises green above red.
  std::int64_t tinted = 0, n = 0;
  for (int y = 260; y < 640; y += 37)
    for (int x = 510; x < 990; x += 41) {
      const std::uint8_t* p = &px[(static_cast<std::size_t>(y) * 1100 + static_cast<std::size_t>(x)) * 3];
      ++n;
      tinted += p[1] > p[0];
    }
  EXPECT_EQ(tinted, n);
  // Outside it, the preview is the slide itself (averaged to the preview's scale).
  const std::uint8_t* corner = &px[(10 * 1100 + 10) * 3];
  EXPECT_GT(corner[0] + corner[1] + corner[2], 3 * 150);  // glass, not tinted black or green
}

// A slide whose pixels are a hash of (level, x, y), with the level downsamples chosen by
// the test: the preview's slide part can then be checked pixel by pixel.
class HashSlide final : public tessera::overlay::Slide {
 public:
  HashSlide(std::int64_t w, std::int64_t h, std::vector<double> downsamples, int native_tile = 0)
      : w_(w), h_(h), ds_(std::move(downsamples)), native_(native_tile) {}
  int native_tile(int) const override { return native_; }
  std::string description() const override { return "hash slide"; }
  int level_count() const override { return static_cast<int>(ds_.size()); }
  tessera::overlay::LevelSize level_size(int l) const override {
    const double d = ds_[static_cast<std::size_t>(l)];
    return {static_cast<std::int64_t>(std::ceil(static_cast<double>(w_) / d)),
            static_cast<std::int64_t>(std::ceil(static_cast<double>(h_) / d)), d};
  }
  static std::uint8_t px(int l, std::int64_t x, std::int64_t y, int c) {
    std::uint64_t v = (static_cast<std::uint64_t>(x) * 0x9E3779B97F4A7C15ull) ^ (static_cast<std::uint64_t>(y) * 0xC2B2AE3D27D4EB4Full) ^
                      (static_cast<std::uint64_t>(l * 3 + c) << 56);
    v ^= v >> 29;
    v *= 0xBF58476D1CE4E5B9ull;
    return static_cast<std::uint8_t>(v >> 56);
  }
  tessera::Result<void> read_region(int l, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const override {
    for (int j = 0; j < h; ++j)
      for (int i = 0; i < w; ++i)
        for (int c = 0; c < 3; ++c) *rgb++ = px(l, x + i, y + j, c);
    return {};
  }
  std::string reader() const override { return "hash"; }

 private:
  std::int64_t w_, h_;
  std::vector<double> ds_;
  int native_;
};

// The preview of an empty mask is the slide itself, box-averaged from the slide level just
// above the preview's scale: exactly, for a whole ratio (2: the fixed 2 x 2 path) and a
// fractional one (4/3: spans of 1 or 2 pixels), over several bands read on several threads,
// with bands sized by the memory budget (no native grid) or by whole rows of native tiles.
TEST(MaskWriter, PngPreviewIsTheExactBoxAverageOfTheSlideLevel) {
  for (const auto& [ds, native] : {std::pair{2.0, 0}, std::pair{2.0, 240}, std::pair{3.0, 240}}) {
    SCOPED_TRACE("slide level downsample " + std::to_string(ds) + ", native tile " + std::to_string(native));
    TempDir d;
    HashSlide slide(8192, 8192, {1.0, ds}, native);
    const auto g = geometry(8192, 8192, 256, 1.0, 0.5);  // preview: mask level 2, 2048 px, scale 4
    MaskOutputs out;
    out.png = d.file("p.png");
    auto w = MaskWriter::create(out, g);
    ASSERT_TRUE(w.has_value()) << w.error().message;
    auto fin = (*w)->finish(&slide);
    ASSERT_TRUE(fin.has_value()) << fin.error().message;
    unsigned pw = 0, ph = 0;
    const std::vector<std::uint8_t> got = read_png(out.png, PNG_FORMAT_RGB, pw, ph);
    ASSERT_EQ(pw, 2048u);
    ASSERT_EQ(ph, 2048u);
    ASSERT_EQ(got.size(), std::size_t{2048} * 2048 * 3);
    const double r = 4.0 / ds;  // slide pixels per preview pixel
    const std::int64_t sw = static_cast<std::int64_t>(std::ceil(2048 * r));
    const auto lo = [&](int p) { return std::min<std::int64_t>(sw, static_cast<std::int64_t>(std::floor(p * r))); };
    std::int64_t wrong = 0;
    for (int py = 0; py < 2048; ++py)
      for (int px = 0; px < 2048; ++px) {
        const std::int64_t xa = lo(px), xb = std::min(sw, std::max(xa + 1, lo(px + 1)));
        const std::int64_t ya = lo(py), yb = std::min(sw, std::max(ya + 1, lo(py + 1)));
        for (int c = 0; c < 3; ++c) {
          std::uint32_t acc = 0;
          for (std::int64_t y = ya; y < yb; ++y)
            for (std::int64_t x = xa; x < xb; ++x) acc += HashSlide::px(1, x, y, c);
          const auto want = static_cast<std::uint8_t>(acc / static_cast<std::uint32_t>((xb - xa) * (yb - ya)));
          wrong += got[(static_cast<std::size_t>(py) * 2048 + static_cast<std::size_t>(px)) * 3 + static_cast<std::size_t>(c)] != want;
        }
      }
    EXPECT_EQ(wrong, 0);
  }
}

// write_png against libpng's reader: grey and RGB, sizes that are not multiples of anything.
TEST(PngWriter, GreyAndRgbReadBackExactlyWithLibpng) {
  TempDir d;
  std::mt19937_64 rng(7);
  for (const int channels : {1, 3})
    for (const auto& [w, h] : {std::pair{1, 1}, std::pair{3, 5}, std::pair{257, 3}, std::pair{640, 480}}) {
      std::vector<std::uint8_t> px(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * static_cast<std::size_t>(channels));
      for (std::size_t i = 0; i < px.size(); ++i) px[i] = i % 7 == 0 ? static_cast<std::uint8_t>(rng()) : static_cast<std::uint8_t>(i / 97);
      const std::string f = d.file(fmt::format("t{}-{}.png", channels, w));
      ASSERT_TRUE(tessera::overlay::write_png(f, px.data(), w, h, channels).has_value());
      unsigned bw = 0, bh = 0;
      const std::vector<std::uint8_t> back = read_png(f, channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB, bw, bh);
      EXPECT_EQ(bw, static_cast<unsigned>(w));
      EXPECT_EQ(bh, static_cast<unsigned>(h));
      EXPECT_EQ(back, px) << channels << " channels, " << w << "x" << h;
    }
}

TEST(PngWriter, BadArgumentsAndAnUnwritablePathAreErrorsNamingTheFile) {
  TempDir d;
  const std::uint8_t px[12] = {};
  const std::string f = d.file("bad.png");
  for (const auto& [w, h, c] : {std::tuple{0, 1, 1}, std::tuple{1, -1, 3}, std::tuple{2, 2, 2}, std::tuple{2, 2, 4}}) {
    auto r = tessera::overlay::write_png(f, px, w, h, c);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, tessera::Errc::invalid_argument);
    EXPECT_NE(r.error().message.find(f), std::string::npos) << r.error().message;
  }
  EXPECT_FALSE(tessera::overlay::write_png(f, nullptr, 2, 2, 1).has_value());
  EXPECT_FALSE(fs::exists(f));
  const std::string nodir = d.file("missing/dir/x.png");
  auto r = tessera::overlay::write_png(nodir, px, 2, 2, 3);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, tessera::Errc::system);
  EXPECT_NE(r.error().message.find(nodir), std::string::npos) << r.error().message;
}

TEST(MaskWriter, DestroyedWithoutFinishLeavesNothing) {
  TempDir d;
  const auto g = geometry(1000, 1000, 256, 1.0, 0);
  const auto m = make_mask(g.width, g.height, 15);
  MaskOutputs out{d.file("m.tif"), d.file("m.geojson"), d.file("m.png")};
  {
    auto w = MaskWriter::create(out, g);
    ASSERT_TRUE(w.has_value()) << w.error().message;
    put_all(**w, m, g, 12);
    EXPECT_EQ(d.entries().size(), 4u);  // three temp files and the TIFF's level-0 staging file, none under a final name
    for (const auto& e : d.entries()) EXPECT_NE(e.find(".tmp-"), std::string::npos) << e;
  }
  EXPECT_TRUE(d.entries().empty());
}

TEST(MaskWriter, KilledMidWriteLeavesNoFileUnderAFinalName) {
  TempDir d;
  MaskOutputs out{d.file("k.tif"), d.file("k.geojson"), d.file("k.png")};
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(60);
    const auto g = geometry(20000, 20000, 256, 1.0, 0.25);
    auto w = MaskWriter::create(out, g);
    if (!w) _exit(2);
    std::vector<std::uint8_t> tile(256 * 256);
    std::mt19937 rng(1);
    for (auto& v : tile) v = static_cast<std::uint8_t>(rng() & 1);
    for (std::int64_t i = 0;; i = (i + 1) % (78 * 78)) {  // the full tiles, round and round
      if (!(*w)->put_tile(i % 78, i / 78, tile.data(), 256, 256, 256)) _exit(3);
      if (i == 100) (void)!write(ready[1], "r", 1);  // mid-write: tiles are being encoded
    }
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st));
  for (const auto& e : d.entries()) EXPECT_NE(e.find(".tmp-"), std::string::npos) << e << " looks complete";
  EXPECT_FALSE(fs::exists(out.tiff));
  EXPECT_FALSE(fs::exists(out.geojson));
  EXPECT_FALSE(fs::exists(out.png));
}

// The bound: level 0 is encoded tile by tile (one tile buffer), lower levels are built
// one output tile at a time, the GeoJSON is traced on a level of at most 4096 px and
// the preview made from one of at most 2048 px; the bookkeeping is 2 bits per tile.
// A 131072 x 131072 mask (17 GB at one byte a pixel) must stay under 256 MiB.
// Sanitizer builds write a 32768 x 32768 mask (they run 10-20x slower) and skip the bound.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::int64_t kBigSide = 32768;
#else
constexpr std::int64_t kBigSide = 131072;
#endif
TEST(MaskWriter, PeakMemoryStaysBoundedOnA131072SquareMask) {
  TempDir d;
  MaskOutputs out{d.file("big.tif"), d.file("big.geojson"), d.file("big.png")};
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const int st = in_child(
      [&] {
        const auto g = geometry(kBigSide, kBigSide, 256, 1.0, 0.5);
        auto w = MaskWriter::create(out, g);
        if (!w) return 2;
        // Three tissue regions of 12 x 12 tiles (a disc each), everything else background.
        std::vector<std::uint8_t> tile(256 * 256);
        for (int region = 0; region < 3; ++region) {
          const std::int64_t c0 = 10 + region * 30, r0 = 20 + region * 25;
          for (std::int64_t r = r0; r < r0 + 12; ++r)
            for (std::int64_t c = c0; c < c0 + 12; ++c) {
              for (int y = 0; y < 256; ++y)
                for (int x = 0; x < 256; ++x) {
                  const double dx = static_cast<double>((c - c0) * 256 + x) - 1536,
                               dy = static_cast<double>((r - r0) * 256 + y) - 1536;
                  tile[static_cast<std::size_t>(y * 256 + x)] = dx * dx + dy * dy < 1500.0 * 1500.0 ? 1 : 0;
                }
              if (!(*w)->put_tile(c, r, tile.data(), 256, 256, 256)) return 3;
            }
        }
        if (!(*w)->finish(nullptr)) return 4;
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        const long kib = ru.ru_maxrss;
        return write(fds[1], &kib, sizeof kib) == sizeof kib ? 0 : 5;
      },
      150);
  close(fds[1]);
  long kib = 0;
  ASSERT_EQ(read(fds[0], &kib, sizeof kib), static_cast<ssize_t>(sizeof kib));
  close(fds[0]);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
  std::printf("peak RSS writing a %lld^2 mask: %.1f MiB\n", static_cast<long long>(kBigSide),
              static_cast<double>(kib) / 1024);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Shadow memory and the allocator's quarantine are not the writer's; the bound is
  // checked in the plain builds, the outputs below in every build.
#else
  EXPECT_LT(kib, 256 * 1024);
#endif
  EXPECT_TRUE(fs::exists(out.tiff));
  EXPECT_TRUE(fs::exists(out.geojson));
  EXPECT_TRUE(fs::exists(out.png));
  int holes = 0, features = 0;
  (void)polygon_area(json::parse(slurp(out.geojson)), kBigSide, kBigSide, &holes, &features);
  EXPECT_EQ(features, 3);
#ifdef TESSERA_HAVE_OPENSLIDE
  openslide_t* os = openslide_open(out.tiff.c_str());
  ASSERT_NE(os, nullptr);
  EXPECT_EQ(openslide_get_error(os), nullptr);
  EXPECT_EQ(openslide_get_level_count(os), kBigSide == 131072 ? 8 : 6);  // halving down to 1024
  std::int64_t lw = 0, lh = 0;
  openslide_get_level_dimensions(os, 0, &lw, &lh);
  EXPECT_EQ(lw, kBigSide);
  std::uint32_t px[4] = {};
  openslide_read_region(os, px, 10 * 256 + 1536, 20 * 256 + 1536, 0, 2, 2);  // a disc's centre
  EXPECT_EQ(px[0], 0xff010101u);
  openslide_read_region(os, px, 100, 100, 0, 2, 2);  // a tile never put
  EXPECT_EQ(px[0], 0xff000000u);
  openslide_close(os);
#endif
}

TEST(MaskWriter, DiskFullIsAnErrorNamingTheFileAndLeavesNothing) {
  TempDir d;
  MaskOutputs out{d.file("full.tif"), "", ""};
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const int st = in_child([&] {
    signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG instead of killing
    rlimit rl{256 * 1024, 256 * 1024};
    setrlimit(RLIMIT_FSIZE, &rl);
    const auto g = geometry(4096, 4096, 256, 1.0, 0);
    std::string msg = "no error";
    {
      auto w = MaskWriter::create(out, g);
      if (!w) return 2;
      std::vector<std::uint8_t> tile(256 * 256);
      std::mt19937 rng(5);
      for (auto& v : tile) v = static_cast<std::uint8_t>(rng());  // incompressible
      tessera::Result<void> s;
      for (int i = 0; i < 256 && s; ++i) s = (*w)->put_tile(i % 16, i / 16, tile.data(), 256, 256, 256);
      if (s) s = (*w)->finish(nullptr);
      if (!s) msg = s.error().message;
    }
    (void)!write(fds[1], msg.data(), msg.size());
    return 0;
  });
  close(fds[1]);
  char buf[1024] = {};
  const ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
  ASSERT_GT(n, 0);
  const std::string msg(buf, static_cast<std::size_t>(n));
  EXPECT_NE(msg.find(out.tiff), std::string::npos) << msg;
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_TRUE(d.entries().empty());
}

TEST(MaskWriter, UnwritableDirectoryIsAnErrorNamingTheFile) {
  TempDir d;
  const auto g = geometry(1000, 1000, 256, 1.0, 0);
  MaskOutputs out{d.file("missing-dir/m.tif"), "", ""};
  auto w = MaskWriter::create(out, g);
  ASSERT_FALSE(w.has_value());
  EXPECT_NE(w.error().message.find(out.tiff), std::string::npos) << w.error().message;
  EXPECT_NE(w.error().message.find("No such file"), std::string::npos) << w.error().message;
  if (geteuid() != 0) {  // root writes into read-only directories
    fs::create_directories(d.path / "ro");
    fs::permissions(d.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    MaskOutputs ro{"", "", d.file("ro/m.png")};
    auto w2 = MaskWriter::create(ro, g);
    ASSERT_FALSE(w2.has_value());
    EXPECT_NE(w2.error().message.find(ro.png), std::string::npos) << w2.error().message;
  }
  // A later output that cannot be created removes the earlier temp files.
  MaskOutputs mixed{d.file("ok.tif"), d.file("missing-dir/m.geojson"), ""};
  EXPECT_FALSE(MaskWriter::create(mixed, g).has_value());
  for (const auto& e : d.entries()) EXPECT_EQ(e.find("ok.tif"), std::string::npos) << e;
}

TEST(MaskWriter, BadGeometryAndBadTilesAreErrors) {
  TempDir d;
  MaskOutputs out{d.file("g.tif"), "", ""};
  for (auto g : {geometry(0, 100, 256, 1, 0), geometry(100, -1, 256, 1, 0), geometry(100, 100, 0, 1, 0),
                 geometry(100, 100, 250, 1, 0), geometry(100, 100, 1 << 20, 1, 0), geometry(100, 100, 256, 0, 0),
                 geometry(100, 100, 256, std::nan(""), 0), geometry(100, 100, 256, 1, -0.5),
                 geometry(std::int64_t{1} << 40, 100, 256, 1, 0)}) {
    auto w = MaskWriter::create(out, g);
    ASSERT_FALSE(w.has_value()) << g.width << "x" << g.height << " tile " << g.tile;
    EXPECT_NE(w.error().message.find(out.tiff), std::string::npos) << w.error().message;
  }
  EXPECT_FALSE(MaskWriter::create(MaskOutputs{}, geometry(100, 100, 256, 1, 0)).has_value());
  EXPECT_TRUE(d.entries().empty());

  auto w = MaskWriter::create(out, geometry(600, 300, 256, 1, 0));
  ASSERT_TRUE(w.has_value()) << w.error().message;
  std::vector<std::uint8_t> tile(256 * 256, 1);
  EXPECT_FALSE((*w)->put_tile(3, 0, tile.data(), 88, 256, 256).has_value());  // outside the 3 x 2 grid
  EXPECT_FALSE((*w)->put_tile(-1, 0, tile.data(), 256, 256, 256).has_value());
  EXPECT_FALSE((*w)->put_tile(2, 0, tile.data(), 256, 256, 256).has_value());  // the last column is 88 wide
  EXPECT_FALSE((*w)->put_tile(0, 0, tile.data(), 256, 256, 100).has_value());  // stride < cols
  EXPECT_FALSE((*w)->put_tile(0, 0, nullptr, 256, 256, 256).has_value());
  EXPECT_FALSE((*w)->mark_failed(0, 2, "x").has_value());
  EXPECT_TRUE((*w)->put_tile(2, 1, tile.data(), 88, 44, 256).has_value());
  EXPECT_TRUE((*w)->finish(nullptr).has_value());
  EXPECT_FALSE((*w)->finish(nullptr).has_value());
  EXPECT_FALSE((*w)->put_tile(0, 0, tile.data(), 256, 256, 256).has_value());
}

TEST(MaskWriter, ATilePutTwiceKeepsTheLastOne) {
  TempDir d;
  const auto g = geometry(512, 256, 256, 1, 0);
  MaskOutputs out{d.file("twice.tif"), "", ""};
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value());
  std::vector<std::uint8_t> ones(256 * 256, 1), zeros(256 * 256, 0), twos(256 * 256, 2);
  ASSERT_TRUE((*w)->put_tile(0, 0, ones.data(), 256, 256, 256).has_value());
  ASSERT_TRUE((*w)->put_tile(0, 0, zeros.data(), 256, 256, 256).has_value());
  ASSERT_TRUE((*w)->put_tile(1, 0, zeros.data(), 256, 256, 256).has_value());
  ASSERT_TRUE((*w)->put_tile(1, 0, twos.data(), 256, 256, 256).has_value());
  ASSERT_TRUE((*w)->finish(nullptr).has_value());
  std::int64_t w0 = 0, h0 = 0;
  const auto px = read_tiff_level(out.tiff, 0, w0, h0);
  ASSERT_EQ(px.size(), 512u * 256u);
  EXPECT_EQ(px[100 * 512 + 100], 0);
  EXPECT_EQ(px[100 * 512 + 400], 2);
}

TEST(MaskWriter, GeoJsonOfVeryManyTinyRegionsIsTracedOnASmallerLevel) {
  TempDir d;
  // 4096 px a side would be traced at level 0, but one isolated pixel in every 2 x 2
  // block there is 4 Mi rings (16 Mi corners, over the 4 Mi budget): the trace moves
  // to level 1, where the max-downsample makes them one solid square.
  const auto g = geometry(4096, 4096, 256, 1.0, 0);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(g.width * g.height), 0);
  for (std::int64_t y = 0; y < g.height; y += 2)
    for (std::int64_t x = 0; x < g.width; x += 2) m[static_cast<std::size_t>(y * g.width + x)] = 9;
  MaskOutputs out;
  out.geojson = d.file("noise.geojson");
  auto w = MaskWriter::create(out, g);
  ASSERT_TRUE(w.has_value()) << w.error().message;
  put_all(**w, m, g, 13);
  auto s = (*w)->finish(nullptr);
  ASSERT_TRUE(s.has_value()) << s.error().message;
  std::int64_t w1 = 0, h1 = 0;
  const auto m1 = downsample_max(m, g.width, g.height, w1, h1);
  int holes = 0, features = 0;
  const double area = polygon_area(json::parse(slurp(out.geojson)), 4096, 4096, &holes, &features);
  EXPECT_DOUBLE_EQ(area, static_cast<double>(count_nonzero(m1)) * 4.0);
  EXPECT_EQ(features, 1);
  EXPECT_EQ(holes, 0);
}
