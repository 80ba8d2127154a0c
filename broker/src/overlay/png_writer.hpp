// PNG output (overlay::write_png is the public entry point): pixels laid out the way the
// PNG stream stores them, so a caller that builds an image here is compressed in place.
#pragma once

#include <cstdint>
#include <string>

#include <tessera/result.hpp>

#include "large_buffer.hpp"

namespace tessera::overlay::detail {

// An 8-bit grey (1 channel) or RGB (3) image as PNG's filtered rows: each row is a filter
// byte (0: none) followed by width x channels bytes. Row contents start zeroed.
class PngRaster {
 public:
  PngRaster(int width, int height, int channels);
  int width() const noexcept { return w_; }
  int height() const noexcept { return h_; }
  int channels() const noexcept { return c_; }
  std::uint8_t* row(int y) noexcept { return &bytes_[static_cast<std::size_t>(y) * stride_ + 1]; }
  const std::uint8_t* row(int y) const noexcept { return &bytes_[static_cast<std::size_t>(y) * stride_ + 1]; }
  const LargeVector<std::uint8_t>& bytes() const noexcept { return bytes_; }

 private:
  int w_, h_, c_;
  std::size_t stride_;
  LargeVector<std::uint8_t> bytes_;
};

// Writes `img` to `path` (created or truncated): signature, IHDR, one IDAT, IEND.
Result<void> write_png(const std::string& path, const PngRaster& img);

}  // namespace tessera::overlay::detail
