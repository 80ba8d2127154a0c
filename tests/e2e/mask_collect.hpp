// A MaskWriter for tests: keeps every tile it is given (small slides only) so that the
// test can compare each one with the per-tile oracle, reference_tile_mask.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <tessera/mask_writer.hpp>

namespace tessera::test {

class CollectingWriter final : public overlay::MaskWriter {
 public:
  struct Tile {
    int cols = 0, rows = 0;
    std::vector<std::uint8_t> px;
  };
  Result<void> put_tile(std::int64_t col, std::int64_t row, const std::uint8_t* mask, int cols, int rows, std::size_t stride) override {
    Tile& t = tiles[{col, row}];
    ++puts;
    t.cols = cols;
    t.rows = rows;
    t.px.resize(static_cast<std::size_t>(cols) * static_cast<std::size_t>(rows));
    for (int r = 0; r < rows; ++r)
      std::copy_n(mask + static_cast<std::size_t>(r) * stride, cols, t.px.begin() + static_cast<std::ptrdiff_t>(r) * cols);
    return {};
  }
  Result<void> mark_failed(std::int64_t col, std::int64_t row, const std::string& why) override {
    failed[{col, row}] = why;
    return {};
  }
  Result<void> finish(const overlay::Slide*) override {
    finished = true;
    return {};
  }
  std::map<std::pair<std::int64_t, std::int64_t>, Tile> tiles;
  std::map<std::pair<std::int64_t, std::int64_t>, std::string> failed;
  std::int64_t puts = 0;
  bool finished = false;
};

}  // namespace tessera::test
