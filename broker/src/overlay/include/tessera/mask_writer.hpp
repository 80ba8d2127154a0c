#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <tessera/result.hpp>
namespace tessera::overlay {
class Slide;
struct MaskOutputs {
  std::string tiff;     // pyramidal tiled TIFF of the mask ("" = don't write)
  std::string geojson;  // GeoJSON FeatureCollection of mask regions ("" = don't write)
  std::string png;      // PNG preview blended over the slide ("" = don't write)
};
struct MaskGeometry {
  std::int64_t width = 0, height = 0;  // mask size in pixels at the analysed level
  int tile = 256;                      // grid tile edge at that level
  double downsample = 1.0;             // analysed level's downsample to level 0 (GeoJSON/TIFF coords are level 0)
  double mpp_x = 0, mpp_y = 0;         // microns per pixel at level 0 (0 = unknown)
  std::string class_name = "Tissue";   // GeoJSON classification name
};
// Where finish() spent its time (seconds; zero for outputs not written).
struct WriteTimes {
  double pyramid_s = 0;  // level 0 in grid order and the lower levels
  double geojson_s = 0;  // tracing and writing the GeoJSON
  double png_s = 0;      // the preview (runs beside the GeoJSON)
  double commit_s = 0;   // fsync and rename of every output
};
// Streams per-tile masks (uint8, 0 = background, >0 = class/probability) into the outputs
// with memory bounded independently of the slide size. Tiles may arrive in any order; a tile
// never put is background. Nothing appears under the final names before finish() succeeds.
class MaskWriter {
 public:
  static Result<std::unique_ptr<MaskWriter>> create(const MaskOutputs& out, const MaskGeometry& g);
  virtual ~MaskWriter() = default;   // without finish(): removes every temp file
  // A tile's mask at grid position (col,row): `rows` rows of `cols` bytes (clipped at the
  // right/bottom edge), row stride `stride` bytes.
  virtual Result<void> put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows, std::size_t stride) = 0;
  // A tile whose input could not be read or processed: marked in the outputs (TIFF value 255 in a
  // separate 'failed' sense is not used; instead it is listed in the GeoJSON as a "Failed" feature).
  virtual Result<void> mark_failed(std::int64_t col, std::int64_t row, const std::string& why) = 0;
  // Writes the pyramid's lower levels, the GeoJSON and the PNG preview (blended over `slide`'s
  // lowest level that is large enough; `slide` may be null: mask only), then renames every
  // output into place atomically.
  virtual Result<void> finish(const Slide* slide) = 0;
  // After finish(): where its time went.
  virtual WriteTimes times() const { return {}; }
};
}  // namespace tessera::overlay
