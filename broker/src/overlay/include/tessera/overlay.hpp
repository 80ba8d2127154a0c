// The main job: overlay inference on a whole-slide image. Reads a slide (the
// built-in synthetic one, a JPEG-tiled TIFF/SVS through the fast reader, or any
// format through OpenSlide), finds the tissue tiles on a low-resolution level,
// decodes them with several reader threads straight into arena blocks, runs them
// through the client/broker/worker pipeline and streams the masks to a MaskWriter
// (no whole-slide buffer anywhere).
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

class MaskWriter;  // mask_writer.hpp: the streaming outputs (pyramidal TIFF, GeoJSON, PNG preview)

// A pyramid of RGB levels. read_region fills w*h*3 bytes; pixels outside the level are white.
// read_region may be called from several threads at once (the pipeline's readers).
class Slide {
 public:
  virtual ~Slide() = default;
  virtual std::string description() const = 0;
  virtual int level_count() const = 0;
  virtual LevelSize level_size(int level) const = 0;
  virtual Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const = 0;
  // Microns per pixel at level 0 (0 = unknown).
  virtual double mpp_x() const { return 0; }
  virtual double mpp_y() const { return 0; }
  // Edge of the level's native tile grid (0 = none or unknown). Reads aligned to it decode
  // every source tile once.
  virtual int native_tile(int /*level*/) const { return 0; }
  // Which reader serves the slide: "synthetic", "fast" (libtiff + libjpeg-turbo) or "openslide".
  virtual std::string reader() const = 0;
};

// Procedural "tissue": blobs with stained texture and nuclei on bright glass, several
// levels (downsample 1, 4, 16), deterministic for a seed. Rendered once into memory.
std::unique_ptr<Slide> synthetic_slide(std::int64_t width, std::int64_t height, std::uint64_t seed = 1);
enum class ReaderKind : std::uint8_t {
  automatic = 0,  // fast when every level is a JPEG-compressed tiled TIFF directory, else OpenSlide
  fast = 1,       // libtiff (tile offsets) + pread + libjpeg-turbo, decoding straight into the caller's buffer
  openslide = 2,  // OpenSlide: every vendor format, JPEG 2000
};
// A real slide. Errors name the file and what failed (missing, not a slide, truncated, ...).
Result<std::unique_ptr<Slide>> open_slide(const std::string& path, ReaderKind kind = ReaderKind::automatic);
// The fast reader alone: JPEG-compressed tiled TIFF (generic pyramidal TIFF, Aperio SVS).
Result<std::unique_ptr<Slide>> open_fast_tiff(const std::string& path);
bool openslide_available() noexcept;

// Writes a JPEG-tiled pyramidal TIFF with procedural stained-tissue texture (used by the
// tests, the WSI benchmark and the hidden `tessera make-slide`). Tissue lies inside
// `tissue` (level-0 pixels, x0,y0,x1,y1; empty = blobs over the whole slide); the rest is glass.
struct TestSlideSpec {
  std::int64_t width = 4096, height = 4096;
  int tile = 240;                  // native tile edge
  int quality = 85;                // JPEG quality
  bool aperio = false;             // Aperio SVS: "Aperio Image Library" description with MPP, RGB photometric
  bool subsample = true;           // YCbCr 4:2:0 (vips' default); false: 4:4:4
  double mpp = 0.25;
  std::uint64_t seed = 1;
  std::int64_t tissue[4] = {0, 0, 0, 0};
};
Result<void> write_test_slide(const std::string& path, const TestSlideSpec& spec);

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

// Tissue detection on a low-resolution level (see docs/overlay.md): a thumbnail pixel is
// tissue when it is darker than `max_brightness` (mean of R, G, B) or more saturated than
// `min_saturation` (max - min channel); a tile is kept when a thumbnail pixel within its
// footprint, grown by `margin` thumbnail pixels, is tissue.
struct TissueOptions {
  int max_brightness = 225;
  int min_saturation = 25;
  int margin = 1;
};
struct TissueMap {
  std::vector<std::uint8_t> keep;  // one byte per grid tile, row-major (1 = read it)
  int thumb_level = -1;            // level the map was computed on (-1: none; every tile kept)
  std::int64_t kept = 0;
  double seconds = 0;
};
Result<TissueMap> detect_tissue(const Slide& slide, const TileGrid& grid, const TissueOptions& opts = {});

// Read jobs queued per reader, each with its arena block. The client thread hands out jobs
// and submits the decoded tiles; with readers, workers and the client thread sharing the
// cores it is off the CPU for a scheduler slice now and then (milliseconds), and the queue
// must hold the readers' work for that long: 8 per reader left them idle ~30 % of the
// tile phase on 2 cores, 32 per reader ~2 % (docs/overlay.md).
inline constexpr int kReadAheadPerReader = 32;

struct PipelineOptions {
  TileGrid grid{};
  std::uint32_t op = 0;                 // worker op (0 = tissue mask for the example workers)
  std::uint32_t max_in_flight = 256;
  bool ordered = false;                 // deliver masks in submission order (the writer takes any order)
  int readers = 0;                      // decoding threads (0: default_readers())
  bool all_tiles = false;               // skip tissue detection: read every tile
  TissueOptions tissue{};
  std::function<void(std::int64_t done, std::int64_t total)> progress;  // called from the client thread
};

// Readers by default: one per online core. Decoding is the job's bottleneck; the example
// workers' op costs a few percent of a decode and they sleep when idle (see docs/overlay.md).
int default_readers() noexcept;

struct FailedTile {
  std::int64_t col = 0, row = 0;
  std::string why;
};

struct PipelineReport {
  std::int64_t tiles = 0;               // tiles in the grid
  std::int64_t skipped = 0;             // background tiles never read (tissue detection)
  std::int64_t completed = 0, failed = 0, canceled = 0;
  int readers = 0, thumb_level = -1;
  double seconds = 0, tiles_per_s = 0, p50_us = 0, p99_us = 0;  // tiles_per_s: processed tiles / seconds
  double tissue_s = 0;                  // tissue detection
  double read_s = 0;                    // reader threads' time reading + decoding, summed
  double worker_s = 0;                  // workers' busy time, summed
  double stitch_s = 0;                  // client thread's time handing masks to the writer
  double host_cpu_s = 0;                // CPU seconds of this process (readers, client thread) during the run
  double workers_cpu_s = 0;             // CPU seconds of the workers during the run
  long workers_peak_rss_kb = 0;         // sum of the workers' peak RSS
  std::vector<double> worker_utilisation;  // busy fraction per worker
  std::vector<FailedTile> failures;        // every failed tile (input unreadable or worker failure)
};

// Runs the tissue tiles of the grid (every tile with all_tiles) through `client` (whose pool
// is started), decoding them with opts.readers threads straight into arena blocks, and hands
// each tile's mask to `out` as it arrives. Does not call out.finish().
Result<PipelineReport> run_pipeline(Client& client, const Slide& slide, const PipelineOptions& opts, MaskWriter& out);

// The oracle: one tile's mask computed in-process, without the broker (`cols` x `rows`
// bytes, clipped at the level edge, row stride `cols`).
Result<void> reference_tile_mask(const Slide& slide, const TileGrid& grid, std::int64_t col, std::int64_t row,
                                 std::vector<std::uint8_t>& mask, int& cols, int& rows, int threshold = 200);
// The whole level's reference mask (width*height bytes): for tests on small slides only.
void reference_mask(const Slide& slide, const TileGrid& grid, std::vector<std::uint8_t>& mask, int threshold = 200);

Result<void> write_png(const std::string& path, const std::uint8_t* data, int width, int height, int channels);


// The worker pool the main job runs on (`tessera overlay --worker`, `tessera batch`):
// "cpp" (the C++ example worker), "numpy" or "torch" (the Python examples; torch with
// batch > 0 runs batched forward passes), or any command line, split on spaces.
// bin_dir holds tessera's executables (the Python package is in bin_dir/../python).
struct WorkerChoice {
  std::string worker = "cpp";
  int count = 2;
  int batch = 0;                      // torch only: tiles per forward pass (0: per tile)
  std::vector<std::string> devices;   // one worker per device (CUDA_VISIBLE_DEVICES)
};
Result<PoolSpec> example_pool(const WorkerChoice& choice, const std::string& bin_dir);
// The client of a pipeline run (`tessera overlay`, `tessera batch`): an arena with blocks for
// the tiles in flight, the readers' queues and the masks (`edge`-px RGB tiles in, `edge`-px
// masks out), room for full batches of `batch` tiles, and a short spin before sleeping.
// Tiles in flight when the user gives no --in-flight: 64 keep per-tile workers busy (the
// readers are the bottleneck); batched workers need whole batches queued, 4 x batch each.
// More costs start-up: the arena is zeroed and mapped before the first tile (~2 us per 4 KiB).
std::uint32_t default_in_flight(int workers, int batch) noexcept;
ClientOptions pipeline_client_options(std::uint64_t edge, std::uint32_t in_flight, int readers, int batch = 0);

}  // namespace tessera::overlay
