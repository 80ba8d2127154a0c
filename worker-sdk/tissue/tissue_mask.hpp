// The tissue rule of the example workers: a pixel is tissue when the mean of its
// R, G, B is below a threshold (glass is bright). Shared with the overlay's
// reference computation so the pipeline's output can be checked byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::examples {

inline constexpr int kDefaultThreshold = 200;

// rgb: n pixels of 3 bytes; mask: n bytes (255 tissue, 0 glass).
inline void tissue_mask(const std::uint8_t* rgb, std::uint8_t* mask, std::size_t n, int threshold = kDefaultThreshold) noexcept {
  const int thr3 = threshold * 3;
  for (std::size_t i = 0; i < n; ++i) {
    const int sum = rgb[3 * i] + rgb[3 * i + 1] + rgb[3 * i + 2];
    mask[i] = sum < thr3 ? 255 : 0;
  }
}

}  // namespace tessera::examples
