// The mask's regions as a GeoJSON FeatureCollection (the format QuPath imports as
// objects): the foreground (value > 0) of one small pyramid level is traced along
// pixel edges into polygons with holes, scaled to level-0 pixels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tessera/result.hpp>

#include "pyramid_tiff.hpp"

namespace tessera::overlay::detail {

struct FailedTile {
  std::int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // level-0 pixel rectangle
  std::string why;
};

struct GeoJsonSpec {
  double scale = 1.0;               // level-0 pixels per pixel of the traced raster
  double bound_w = 0, bound_h = 0;  // level-0 extent: every coordinate is clamped into it
  std::string class_name = "Tissue";
  // Corner budget (4 bytes each, plus a 24-byte record per ring of >= 4 corners):
  // past it, write_geojson fails with Errc::no_space and writes nothing useful.
  std::size_t max_corners = std::size_t{4} << 20;
};

// Writes the FeatureCollection to `path` (an existing temp file, overwritten).
// Errc::no_space: the regions need more corners than spec.max_corners at this level.
Result<void> write_geojson(const std::string& path, const Raster& r, const GeoJsonSpec& spec,
                           const std::vector<FailedTile>& failed);

}  // namespace tessera::overlay::detail
