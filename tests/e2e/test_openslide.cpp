// A real slide file through OpenSlide: the test writes the synthetic slide as a
// generic tiled TIFF (uncompressed RGB, 256x256 tiles), opens it with open_slide and
// runs the whole pipeline on it; the stitched mask must equal the reference computed
// from the same file without the broker.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <tessera/overlay.hpp>

#include "mask_collect.hpp"

using namespace std::chrono_literals;

namespace {

const std::string& kWorker = tessera::test::kExampleWorker;

// Minimal little-endian tiled TIFF writer (baseline tags only).
bool write_tiled_tiff(const std::string& path, const tessera::overlay::Slide& s, int tile) {
  const auto ls = s.level_size(0);
  const auto w = static_cast<std::uint32_t>(ls.width), h = static_cast<std::uint32_t>(ls.height);
  const std::uint32_t tx = (w + tile - 1) / tile, ty = (h + tile - 1) / tile, nt = tx * ty;
  const std::uint32_t tile_bytes = static_cast<std::uint32_t>(tile) * tile * 3;
  std::ofstream f(path, std::ios::binary);
  auto u16 = [&](std::uint16_t v) { f.write(reinterpret_cast<const char*>(&v), 2); };
  auto u32 = [&](std::uint32_t v) { f.write(reinterpret_cast<const char*>(&v), 4); };
  constexpr std::uint16_t kTags = 11;
  const std::uint32_t ifd = 8, ifd_size = 2 + kTags * 12 + 4;
  const std::uint32_t bps_off = ifd + ifd_size, offs_off = bps_off + 6, counts_off = offs_off + 4 * nt;
  const std::uint32_t data_off = counts_off + 4 * nt;
  f.write("II", 2);
  u16(42);
  u32(ifd);
  u16(kTags);
  auto tag = [&](std::uint16_t id, std::uint16_t type, std::uint32_t count, std::uint32_t value) {
    u16(id);
    u16(type);
    u32(count);
    if (type == 3 && count == 1) {
      u16(static_cast<std::uint16_t>(value));
      u16(0);
    } else {
      u32(value);
    }
  };
  tag(256, 4, 1, w);                 // ImageWidth
  tag(257, 4, 1, h);                 // ImageLength
  tag(258, 3, 3, bps_off);           // BitsPerSample 8,8,8
  tag(259, 3, 1, 1);                 // Compression: none
  tag(262, 3, 1, 2);                 // Photometric: RGB
  tag(277, 3, 1, 3);                 // SamplesPerPixel
  tag(284, 3, 1, 1);                 // PlanarConfiguration: chunky
  tag(322, 3, 1, static_cast<std::uint32_t>(tile));  // TileWidth
  tag(323, 3, 1, static_cast<std::uint32_t>(tile));  // TileLength
  tag(324, 4, nt, offs_off);         // TileOffsets
  tag(325, 4, nt, counts_off);       // TileByteCounts
  u32(0);                            // no next IFD
  u16(8);
  u16(8);
  u16(8);
  for (std::uint32_t i = 0; i < nt; ++i) u32(data_off + i * tile_bytes);
  for (std::uint32_t i = 0; i < nt; ++i) u32(tile_bytes);
  std::vector<std::uint8_t> buf(tile_bytes);
  for (std::uint32_t r = 0; r < ty; ++r)
    for (std::uint32_t c = 0; c < tx; ++c) {
      if (!s.read_region(0, c * tile, r * tile, tile, tile, buf.data())) return false;
      f.write(reinterpret_cast<const char*>(buf.data()), tile_bytes);
    }
  return static_cast<bool>(f);
}

}  // namespace

TEST(OpenSlide, RealSlideFileRunsThroughThePipelineExactly) {
  if (!tessera::overlay::openslide_available()) GTEST_SKIP() << "built without OpenSlide";
  std::random_device rd;
  const auto dir = std::filesystem::temp_directory_path() / ("tessera-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "slide.tiff").string();
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};

  auto synthetic = tessera::overlay::synthetic_slide(1024, 768, 5);
  ASSERT_TRUE(write_tiled_tiff(path, *synthetic, 256));
  auto slide = tessera::overlay::open_slide(path);
  ASSERT_TRUE(slide.has_value()) << slide.error().message;
  EXPECT_EQ((*slide)->level_size(0).width, 1024);
  EXPECT_EQ((*slide)->level_size(0).height, 768);
  // OpenSlide returns the same pixels we wrote.
  std::vector<std::uint8_t> a(64 * 64 * 3), b(64 * 64 * 3);
  ASSERT_TRUE((*slide)->read_region(0, 300, 200, 64, 64, a.data()).has_value());
  ASSERT_TRUE(synthetic->read_region(0, 300, 200, 64, 64, b.data()).has_value());
  EXPECT_EQ(a, b);

  tessera::ClientOptions o;
  o.arena.classes = {{4096, 64}, {256 * 1024, 64}};
  o.arena.n_rings = 8;
  o.arena.ring_capacity = 64;
  o.arena.prefault = false;
  auto c = tessera::Client::embedded(o).value();
  tessera::PoolSpec ps;
  ps.argv = {kWorker};
  ps.count = 2;
  ASSERT_TRUE(c->start_pool(ps).has_value());
  tessera::overlay::PipelineOptions po;
  po.grid.tile = 128;
  po.grid.overlap = 8;
  po.max_in_flight = 32;
  po.all_tiles = true;
  tessera::test::CollectingWriter out;
  auto rep = tessera::overlay::run_pipeline(*c, **slide, po, out);
  ASSERT_TRUE(rep.has_value()) << rep.error().message;
  EXPECT_EQ(rep->completed, rep->tiles);
  EXPECT_EQ(static_cast<std::int64_t>(out.tiles.size()), rep->tiles);
  std::size_t tissue = 0, pixels = 0;
  for (const auto& [pos, t] : out.tiles) {
    std::vector<std::uint8_t> ref;
    int cols = 0, rows = 0;
    ASSERT_TRUE(tessera::overlay::reference_tile_mask(**slide, po.grid, pos.first, pos.second, ref, cols, rows).has_value());
    EXPECT_EQ(cols, t.cols);
    EXPECT_EQ(rows, t.rows);
    EXPECT_TRUE(ref == t.px) << "tile " << pos.first << "," << pos.second << " differs from the reference";
    for (auto v : t.px) tissue += v != 0;
    pixels += t.px.size();
  }
  EXPECT_EQ(pixels, 1024u * 768u);
  EXPECT_GT(tissue, 0u);
  EXPECT_LT(tissue, pixels);
}

TEST(OpenSlide, AFileThatIsNotASlideIsAClearError) {
  const auto p = std::filesystem::temp_directory_path() / ("tessera-test-" + std::to_string(getpid()) + "-notaslide.txt");
  { std::ofstream(p) << "hello"; }
  auto s = tessera::overlay::open_slide(p.string());
  std::filesystem::remove(p);
  ASSERT_FALSE(s.has_value());
  EXPECT_FALSE(s.error().message.empty());
}
