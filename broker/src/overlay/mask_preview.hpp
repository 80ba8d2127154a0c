// The PNG preview: one small pyramid level of the mask, tinted over the slide read
// at its lowest level that is still at least as detailed as the preview.
#pragma once

#include <string>

#include <tessera/overlay.hpp>
#include <tessera/result.hpp>

#include "pyramid_tiff.hpp"

namespace tessera::overlay::detail {

// `m` is the preview-sized mask level; `scale` its level-0 pixels per pixel. `slide`
// may be null (the mask over white). Writes an RGB PNG to `path` (overwritten).
Result<void> write_mask_preview(const std::string& path, const Raster& m, double scale, const Slide* slide);

}  // namespace tessera::overlay::detail
