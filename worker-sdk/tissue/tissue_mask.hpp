// The tissue rule of the example workers: a pixel is tissue when the mean of its
// R, G, B is below a threshold (glass is bright). Shared with the overlay's
// reference computation so the pipeline's output can be checked byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::examples {

inline constexpr int kDefaultThreshold = 200;

// rgb: n pixels of 3 bytes; mask: n bytes (255 tissue, 0 glass).
// On x86-64 the compiler also builds an AVX2 copy of the loop and the loader picks it where
// the CPU has AVX2 (an ifunc): the stride-3 loads vectorize there (32 -> 15 us per 240-px
// tile), not with the SSE2 baseline. Integer arithmetic, so both copies give the same bytes.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("avx2", "default")))
#endif
inline void tissue_mask(const std::uint8_t* rgb, std::uint8_t* mask, std::size_t n, int threshold = kDefaultThreshold) noexcept {
  const int thr3 = threshold * 3;
  for (std::size_t i = 0; i < n; ++i) {
    const int sum = rgb[3 * i] + rgb[3 * i + 1] + rgb[3 * i + 2];
    mask[i] = sum < thr3 ? 255 : 0;
  }
}

}  // namespace tessera::examples
