// The mask as a pyramidal tiled TIFF, written streaming: level-0 tiles are encoded
// as they arrive (any order) into a staging file beside the output; finish() copies
// them, still compressed, into the output in grid order (so the same masks give the
// same bytes whatever order they arrived in) and builds the lower levels one output
// tile at a time from four tiles of the level above, read back from the output.
// Layout and the memory bound: docs/design/overlay-outputs.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <tessera/result.hpp>

#include <tessera/mask_writer.hpp>

#include "large_buffer.hpp"

namespace tessera::overlay::detail {

// A whole (small) pyramid level in memory, row-major, width*height bytes.
struct Raster {
  std::int64_t width = 0, height = 0;
  LargeVector<std::uint8_t> px;
};

class PyramidTiff {
 public:
  // Levels stop at the first one whose longest side is at most this.
  static constexpr std::int64_t kSmallestLevelSide = 1024;

  // `path` is an existing (empty) temp file; it is overwritten.
  static Result<std::unique_ptr<PyramidTiff>> create(const std::string& path, const MaskGeometry& g);
  ~PyramidTiff();
  PyramidTiff(const PyramidTiff&) = delete;
  PyramidTiff& operator=(const PyramidTiff&) = delete;

  // One tile of level 0; see MaskWriter::put_tile. The same tile put again replaces it.
  Result<void> put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows,
                        std::size_t stride);
  // Writes the tiles never put (one zero tile compressed once), the lower levels and
  // closes the file. After it, read_level() may be called.
  Result<void> finish();

  int level_count() const noexcept { return static_cast<int>(levels_.size()); }
  std::int64_t level_width(int k) const noexcept { return levels_[static_cast<std::size_t>(k)].width; }
  std::int64_t level_height(int k) const noexcept { return levels_[static_cast<std::size_t>(k)].height; }
  // The first level whose longest side is at most `side` (the last level if none).
  int level_at_most(std::int64_t side) const noexcept;
  // Reads a whole level (after finish); pick a small one. Safe from several threads.
  Result<Raster> read_level(int k) const;
  bool big_tiff() const noexcept { return big_; }

 private:
  struct Level {
    std::int64_t width = 0, height = 0, cols = 0, rows = 0;
    std::vector<bool> nonzero;  // tile holds a value > 0 (absent tiles are zero)
  };
  PyramidTiff() = default;
  Result<void> set_level_tags(int k);
  Result<void> write_zero_tile(std::uint32_t index);
  Result<void> copy_level0_in_grid_order();
  Result<void> build_level(int k);  // level k from level k-1, on threads_ threads
  Error tiff_error(const std::string& what) const;

  std::string path_;
  MaskGeometry g_;
  int tile_ = 256;
  bool big_ = false;
  std::string staging_path_;  // level 0 in arrival order, removed by finish() and the destructor
  void* staging_ = nullptr;   // TIFF* of the staging file
  void* tif_ = nullptr;                                                        // TIFF* of the writer
  std::unique_ptr<std::string> last_error_ = std::make_unique<std::string>();  // stable address for libtiff's handler
  std::vector<Level> levels_;
  std::vector<bool> written0_;      // level-0 tile has data in the file
  std::vector<std::uint8_t> buf_;   // one tile (tile*tile bytes)
  std::vector<std::uint8_t> zero_;  // the zero tile, deflate-compressed once
  bool finished_ = false;
  int threads_ = 1;  // lanes that build a lower level (one per core)
};

}  // namespace tessera::overlay::detail
