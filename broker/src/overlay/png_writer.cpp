// write_png: an 8-bit grey or RGB PNG, written by hand around libdeflate.
//
// Why not libpng: libpng compresses through zlib, and the PNG preview of a run is on the
// output step's critical path. On a 2048 x 2048 preview of textured tissue (12.6 MB of
// pixels) zlib took 100 ms at level 1 and 165 ms at level 3 (libpng's "fast" flag), and
// libdeflate's level 1 42 ms at 7 % more bytes than zlib level 3
// (docs/design/overlay-outputs.md, "PNG preview"). libpng cannot use another deflate, and
// the container around the stream is small: signature, IHDR, one IDAT, IEND, each with a
// CRC-32 (libdeflate's). Tests read every file back with libpng.
#include "png_writer.hpp"

#include <tessera/overlay.hpp>

#include <fcntl.h>
#include <libdeflate.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>


namespace tessera::overlay {
namespace {

// libdeflate level 1: long runs of the mask and the slide's texture alike compress at
// ~300 MB/s here; higher levels gain a few percent of size for 2-4x the time.
constexpr int kLevel = 1;
constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void put_be32(std::uint8_t* p, std::uint32_t v) noexcept {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

struct CompressorFree {
  void operator()(libdeflate_compressor* c) const noexcept { libdeflate_free_compressor(c); }
};

// Writes all of [p, p + n) or says why not.
bool write_all(int fd, const std::uint8_t* p, std::size_t n) noexcept {
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// One chunk: length, type, data, CRC-32 over type and data.
bool write_chunk(int fd, const char type[4], const std::uint8_t* data, std::size_t n) noexcept {
  std::uint8_t head[8];
  put_be32(head, static_cast<std::uint32_t>(n));
  std::memcpy(head + 4, type, 4);
  std::uint32_t crc = libdeflate_crc32(0, head + 4, 4);
  if (n > 0) crc = libdeflate_crc32(crc, data, n);  // a null buffer would restart the CRC
  std::uint8_t tail[4];
  put_be32(tail, crc);
  return write_all(fd, head, sizeof head) && write_all(fd, data, n) && write_all(fd, tail, sizeof tail);
}

std::string cannot_write(const std::string& path) { return "png: cannot write '" + path + "'"; }

// One IDAT chunk holds the whole stream; its length field is 32-bit (the bound keeps room
// for the compressed stream, which can be slightly larger than its input).
Result<void> fits_one_idat(const std::string& path, int width, int height, int channels) {
  const std::size_t raw_n = (static_cast<std::size_t>(width) * static_cast<std::size_t>(channels) + 1) * static_cast<std::size_t>(height);
  if (raw_n > 0xffffffffULL / 2)
    return fail(Errc::invalid_argument, cannot_write(path) + ": " + std::to_string(width) + "x" + std::to_string(height) +
                                            " is too large for one IDAT chunk");
  return {};
}

}  // namespace

namespace detail {

PngRaster::PngRaster(int width, int height, int channels)
    : w_(width),
      h_(height),
      c_(channels),
      stride_(static_cast<std::size_t>(width) * static_cast<std::size_t>(channels) + 1),
      bytes_(stride_ * static_cast<std::size_t>(height), 0) {}

Result<void> write_png(const std::string& path, const PngRaster& img) {
  if (auto ok = fits_one_idat(path, img.width(), img.height(), img.channels()); !ok) return ok;
  const std::string what = cannot_write(path);
  const std::size_t raw_n = img.bytes().size();
  std::unique_ptr<libdeflate_compressor, CompressorFree> c(libdeflate_alloc_compressor(kLevel));
  if (!c) return fail(Errc::system, what + ": cannot allocate a compressor");
  // Not value-initialised: only the pages the compressed stream reaches are touched (a
  // 2048-px preview compresses to ~30 % of the bound).
  const std::size_t bound = libdeflate_zlib_compress_bound(c.get(), raw_n);
  std::unique_ptr<std::uint8_t[]> z(new std::uint8_t[bound]);
  const std::size_t zn = libdeflate_zlib_compress(c.get(), img.bytes().data(), raw_n, z.get(), bound);
  if (zn == 0) return fail(Errc::system, what + ": compression failed");

  std::uint8_t ihdr[13];
  put_be32(ihdr, static_cast<std::uint32_t>(img.width()));
  put_be32(ihdr + 4, static_cast<std::uint32_t>(img.height()));
  ihdr[8] = 8;                              // bit depth
  ihdr[9] = img.channels() == 1 ? 0 : 2;    // colour type: grey or RGB
  ihdr[10] = ihdr[11] = ihdr[12] = 0;       // deflate, adaptive filtering, no interlace
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail(Errc::system, what + ": " + std::strerror(errno));
  const bool ok = write_all(fd, kSignature, sizeof kSignature) && write_chunk(fd, "IHDR", ihdr, sizeof ihdr) &&
                  write_chunk(fd, "IDAT", z.get(), zn) && write_chunk(fd, "IEND", nullptr, 0);
  const int err = errno;
  if (::close(fd) != 0 && ok) return fail(Errc::system, what + ": " + std::strerror(errno));
  if (!ok) return fail(Errc::system, what + ": " + std::strerror(err));
  return {};
}

}  // namespace detail

Result<void> write_png(const std::string& path, const std::uint8_t* data, int width, int height, int channels) {
  if (!data || width < 1 || height < 1 || (channels != 1 && channels != 3))
    return fail(Errc::invalid_argument, cannot_write(path) + ": needs pixels, a positive size and 1 or 3 channels (got " +
                                            std::to_string(width) + "x" + std::to_string(height) + "x" +
                                            std::to_string(channels) + ")");
  if (auto ok = fits_one_idat(path, width, height, channels); !ok) return ok;  // before allocating the rows
  detail::PngRaster img(width, height, channels);
  const std::size_t row = static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
  for (int y = 0; y < height; ++y) std::memcpy(img.row(y), data + static_cast<std::size_t>(y) * row, row);
  return detail::write_png(path, img);
}

}  // namespace tessera::overlay
