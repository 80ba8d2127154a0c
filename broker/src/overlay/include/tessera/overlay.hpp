// The main job: overlay inference on a whole-slide image. Reads a slide (the
// built-in synthetic one, or a real one through OpenSlide), tiles it, runs every
// tile through the client/broker/worker pipeline, stitches the per-tile masks in
// order and writes the overlay as a PNG.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <tessera/client.hpp>
#include <tessera/result.hpp>

namespace tessera::overlay {

struct LevelSize {
  std::int64_t width = 0, height = 0;
  double downsample = 1.0;
};

// A pyramid of RGB levels. read_region fills w*h*3 bytes; pixels outside the level are white.
class Slide {
 public:
  virtual ~Slide() = default;
  virtual std::string description() const = 0;
  virtual int level_count() const = 0;
  virtual LevelSize level_size(int level) const = 0;
  virtual Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const = 0;
};

// Procedural "tissue": blobs with stained texture and nuclei on bright glass, several
// levels (downsample 1, 4, 16), deterministic for a seed. Rendered once into memory.
std::unique_ptr<Slide> synthetic_slide(std::int64_t width, std::int64_t height, std::uint64_t seed = 1);
// A real slide through OpenSlide (if built with it); a clear error otherwise.
Result<std::unique_ptr<Slide>> open_slide(const std::string& path);
bool openslide_available() noexcept;

struct TileGrid {
  int tile = 256;       // output tile edge (pixels at the chosen level)
  int overlap = 0;      // context added on each side of the input tile (cropped when stitching)
  int level = 0;
  std::int64_t width = 0, height = 0;  // level size
  std::int64_t cols() const { return (width + tile - 1) / tile; }
  std::int64_t rows() const { return (height + tile - 1) / tile; }
  std::int64_t count() const { return cols() * rows(); }
  int input_edge() const { return tile + 2 * overlap; }
};

struct PipelineOptions {
  TileGrid grid{};
  std::uint32_t op = 0;                 // worker op (0 = tissue mask for the example workers)
  std::uint32_t max_in_flight = 256;
  bool ordered = true;                  // collect masks in submission order
  std::function<void(std::int64_t done, std::int64_t total)> progress;  // called from the client thread
};

struct PipelineReport {
  std::int64_t tiles = 0, completed = 0, failed = 0, canceled = 0;
  double seconds = 0, tiles_per_s = 0, p50_us = 0, p99_us = 0;
  std::vector<double> worker_utilisation;  // busy fraction per worker
  std::vector<std::string> errors;         // first few failure reasons
};

// Runs every tile of the grid through `client` (whose pool is started) and stitches
// the masks into `mask` (width*height bytes at the grid's level).
Result<PipelineReport> run_pipeline(Client& client, const Slide& slide, const PipelineOptions& opts,
                                    std::vector<std::uint8_t>& mask);

// The same masks computed in-process, without the broker (the test oracle).
void reference_mask(const Slide& slide, const TileGrid& grid, std::vector<std::uint8_t>& mask, int threshold = 200);

// Blends the mask over the slide level (tissue tinted) and writes an RGB PNG, scaled
// down so that its longest side is at most max_side pixels.
Result<void> write_overlay_png(const std::string& path, const Slide& slide, int level,
                               const std::vector<std::uint8_t>& mask, int max_side = 2048);
Result<void> write_png(const std::string& path, const std::uint8_t* data, int width, int height, int channels);

}  // namespace tessera::overlay
