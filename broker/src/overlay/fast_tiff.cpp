// The fast reader: JPEG-compressed tiled TIFF (a generic pyramidal TIFF as vips writes it,
// Aperio SVS). libtiff parses the directories once at open (tile offsets, byte counts,
// JPEGTables, photometric); a read is one pread of the tile's bytes and one tjDecompress2
// straight into the caller's buffer (an arena block), so any number of reader threads share
// one file descriptor without a lock. libtiff's TIFFReadRawTile would do the same read but
// seeks a shared handle, which would need a lock or one handle per thread.
#include <tessera/overlay.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <turbojpeg.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace tessera::overlay {
namespace {

struct Level {
  int dir = 0;
  std::int64_t width = 0, height = 0;
  int tw = 0, th = 0;
  std::int64_t cols = 0, rows = 0;
  std::vector<std::uint64_t> offsets, counts;
  std::vector<std::uint8_t> tables;  // JPEGTables: SOI, DQT/DHT..., EOI (abbreviated tile streams)
  bool rgb = false;                  // photometric RGB: the JPEG data are RGB, not YCbCr
  double downsample = 1.0;
};

thread_local std::string tiff_error;

void on_tiff_error(const char* module, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  tiff_error = (module != nullptr ? std::string(module) + ": " : std::string()) + buf;
}

void install_tiff_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    TIFFSetErrorHandler(on_tiff_error);
    TIFFSetWarningHandler(nullptr);  // vendor tags (Aperio's, vips') are reported as warnings
  });
}

// Adobe APP14 with transform 0: tells libjpeg the three components are R, G, B (no colour
// conversion), which is what photometric RGB means in a JPEG-compressed TIFF (Aperio).
constexpr std::array<std::uint8_t, 16> kAdobeRgb = {0xFF, 0xEE, 0x00, 0x0E, 'A', 'd', 'o', 'b', 'e',
                                                     0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00};

std::atomic<std::uint64_t> next_slide_id{1};

// Per reader thread: a TurboJPEG handle, the spliced stream, and a few decoded native tiles
// for reads that are not aligned to the native grid.
struct Decoder {
  struct Entry {
    std::uint64_t slide = 0, key = 0, used = 0;
    std::vector<std::uint8_t> px;
  };
  tjhandle tj = nullptr;
  std::vector<std::uint8_t> stream;
  std::array<Entry, 8> cache{};
  std::uint64_t clock = 0;
  Decoder() : tj(tjInitDecompress()) {}
  ~Decoder() {
    if (tj != nullptr) tjDestroy(tj);
  }
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
};

Decoder& decoder() {
  thread_local Decoder d;
  return d;
}

class FastTiffSlide final : public Slide {
 public:
  FastTiffSlide(std::string path, int fd, std::vector<Level> levels, bool aperio, double mpp_x, double mpp_y)
      : path_(std::move(path)), fd_(fd), levels_(std::move(levels)), aperio_(aperio), mpp_x_(mpp_x), mpp_y_(mpp_y),
        id_(next_slide_id.fetch_add(1, std::memory_order_relaxed)) {}  // SYNC[none]: a unique number, no data published
  ~FastTiffSlide() override { ::close(fd_); }
  FastTiffSlide(const FastTiffSlide&) = delete;
  FastTiffSlide& operator=(const FastTiffSlide&) = delete;

  std::string description() const override {
    return "fast reader " + path_ + " (" + (aperio_ ? "aperio" : "generic-tiff") + ", " + std::to_string(levels_.size()) +
           " levels, " + std::to_string(levels_[0].tw) + "-px JPEG tiles)";
  }
  int level_count() const override { return static_cast<int>(levels_.size()); }
  LevelSize level_size(int level) const override {
    const Level& l = levels_.at(static_cast<std::size_t>(level));
    return {l.width, l.height, l.downsample};
  }
  double mpp_x() const override { return mpp_x_; }
  double mpp_y() const override { return mpp_y_; }
  int native_tile(int level) const override {
    if (level < 0 || level >= level_count()) return 0;
    const Level& l = levels_[static_cast<std::size_t>(level)];
    return l.tw == l.th ? l.tw : 0;
  }
  std::string reader() const override { return "fast"; }

  Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const override {
    if (level < 0 || level >= level_count())
      return fail(Errc::invalid_argument, "'" + path_ + "': no level " + std::to_string(level));
    const Level& l = levels_[static_cast<std::size_t>(level)];
    const std::size_t pitch = static_cast<std::size_t>(w) * 3;
    // Aligned to the native grid and inside the level: decode straight into the destination.
    if (w == l.tw && h == l.th && x >= 0 && y >= 0 && x % l.tw == 0 && y % l.th == 0 && x + w <= l.width &&
        y + h <= l.height)
      return decode(l, level, (y / l.th) * l.cols + x / l.tw, rgb, static_cast<int>(pitch));
    // Otherwise: whole native tiles through the per-thread cache, cut into place; white outside.
    for (int r = 0; r < h; ++r) std::memset(rgb + static_cast<std::size_t>(r) * pitch, 255, pitch);
    const std::int64_t x0 = std::max<std::int64_t>(x, 0), y0 = std::max<std::int64_t>(y, 0);
    const std::int64_t x1 = std::min<std::int64_t>(x + w, l.width), y1 = std::min<std::int64_t>(y + h, l.height);
    if (x1 <= x0 || y1 <= y0) return {};
    for (std::int64_t tr = y0 / l.th; tr <= (y1 - 1) / l.th; ++tr)
      for (std::int64_t tc = x0 / l.tw; tc <= (x1 - 1) / l.tw; ++tc) {
        auto px = cached(l, level, tr * l.cols + tc);
        if (!px) return fail(std::move(px).error());
        const std::int64_t sx0 = std::max(x0, tc * l.tw), sx1 = std::min(x1, (tc + 1) * l.tw);
        const std::int64_t sy0 = std::max(y0, tr * l.th), sy1 = std::min(y1, (tr + 1) * l.th);
        for (std::int64_t sy = sy0; sy < sy1; ++sy)
          std::memcpy(rgb + static_cast<std::size_t>(sy - y) * pitch + static_cast<std::size_t>(sx0 - x) * 3,
                      *px + (static_cast<std::size_t>(sy - tr * l.th) * static_cast<std::size_t>(l.tw) +
                             static_cast<std::size_t>(sx0 - tc * l.tw)) * 3,
                      static_cast<std::size_t>(sx1 - sx0) * 3);
      }
    return {};
  }

 private:
  Result<const std::uint8_t*> cached(const Level& l, int level, std::int64_t idx) const {
    Decoder& d = decoder();
    const std::uint64_t key = (static_cast<std::uint64_t>(level) << 48) | static_cast<std::uint64_t>(idx);
    Decoder::Entry* victim = &d.cache[0];
    for (auto& e : d.cache) {
      if (e.slide == id_ && e.key == key) {
        e.used = ++d.clock;
        return static_cast<const std::uint8_t*>(e.px.data());
      }
      if (e.used < victim->used) victim = &e;
    }
    victim->px.resize(static_cast<std::size_t>(l.tw) * static_cast<std::size_t>(l.th) * 3);
    victim->slide = 0;
    if (auto r = decode(l, level, idx, victim->px.data(), l.tw * 3); !r) return fail(std::move(r).error());
    victim->slide = id_;
    victim->key = key;
    victim->used = ++d.clock;
    return static_cast<const std::uint8_t*>(victim->px.data());
  }

  // Decodes native tile `idx` of level `l` (tw x th pixels) into dst with row pitch `pitch`.
  Result<void> decode(const Level& l, int level, std::int64_t idx, std::uint8_t* dst, int pitch) const {
    const auto where = [&] {
      return "'" + path_ + "': level " + std::to_string(level) + " tile (" + std::to_string(idx % l.cols) + "," +
             std::to_string(idx / l.cols) + ")";
    };
    const std::uint64_t off = l.offsets[static_cast<std::size_t>(idx)], n = l.counts[static_cast<std::size_t>(idx)];
    if (n == 0) {  // a sparse TIFF's missing tile: nothing was scanned there
      for (int r = 0; r < l.th; ++r) std::memset(dst + static_cast<std::size_t>(r) * static_cast<std::size_t>(pitch), 255, static_cast<std::size_t>(l.tw) * 3);
      return {};
    }
    Decoder& d = decoder();
    if (d.tj == nullptr) return fail(Errc::system, where() + ": cannot create a TurboJPEG decompressor");
    // The stream: SOI, [Adobe RGB marker], the shared tables, then the tile's own stream after its SOI.
    const std::size_t tables = l.tables.size() >= 4 ? l.tables.size() - 4 : 0;  // without SOI and EOI
    const std::size_t head = 2 + (l.rgb ? kAdobeRgb.size() : 0) + tables;
    const std::size_t total = head + static_cast<std::size_t>(n) - 2;
    if (d.stream.size() < total + 2) d.stream.resize(total + 2);
    std::uint8_t* s = d.stream.data();
    s[0] = 0xFF;
    s[1] = 0xD8;
    std::size_t pos = 2;
    if (l.rgb) {
      std::memcpy(s + pos, kAdobeRgb.data(), kAdobeRgb.size());
      pos += kAdobeRgb.size();
    }
    if (tables > 0) std::memcpy(s + pos, l.tables.data() + 2, tables);
    // Read the tile including its SOI over the last two header bytes, then restore them.
    std::uint8_t keep[2] = {s[head - 2], s[head - 1]};
    const ssize_t got = ::pread(fd_, s + head - 2, static_cast<std::size_t>(n), static_cast<off_t>(off));
    if (got != static_cast<ssize_t>(n)) return fail(Errc::system, where() + ": short read at byte " + std::to_string(off));
    if (s[head - 2] != 0xFF || s[head - 1] != 0xD8) return fail(Errc::invalid_argument, where() + ": not a JPEG stream (corrupt tile)");
    s[head - 2] = keep[0];
    s[head - 1] = keep[1];
    if (head == 2) s[0] = 0xFF, s[1] = 0xD8;
    int jw = 0, jh = 0, sub = 0, cs = 0;
    if (tjDecompressHeader3(d.tj, s, static_cast<unsigned long>(total), &jw, &jh, &sub, &cs) != 0)
      return fail(Errc::invalid_argument, where() + ": corrupt JPEG header: " + tjGetErrorStr2(d.tj));
    if (jw != l.tw || jh != l.th)
      return fail(Errc::invalid_argument, where() + ": JPEG is " + std::to_string(jw) + "x" + std::to_string(jh) +
                                              ", the tile grid is " + std::to_string(l.tw) + "x" + std::to_string(l.th));
    if (tjDecompress2(d.tj, s, static_cast<unsigned long>(total), dst, l.tw, pitch, l.th, TJPF_RGB, 0) != 0 &&
        tjGetErrorCode(d.tj) != TJERR_WARNING)
      return fail(Errc::invalid_argument, where() + ": corrupt JPEG data: " + tjGetErrorStr2(d.tj));
    return {};
  }

  std::string path_;
  int fd_;
  std::vector<Level> levels_;
  bool aperio_;
  double mpp_x_, mpp_y_;
  std::uint64_t id_;
};

double aperio_field(const std::string& desc, const std::string& key) {
  const auto p = desc.find("|" + key + " = ");
  if (p == std::string::npos) return 0;
  return std::strtod(desc.c_str() + p + key.size() + 4, nullptr);
}

}  // namespace

Result<std::unique_ptr<Slide>> open_fast_tiff(const std::string& path) {
  install_tiff_handlers();
  tiff_error.clear();
  TIFF* tif = TIFFOpen(path.c_str(), "rm");  // m: no memory-mapping (the tile reads are preads)
  if (tif == nullptr)
    return fail(Errc::invalid_argument, "'" + path + "': not a TIFF file" + (tiff_error.empty() ? "" : " (" + tiff_error + ")"));
  struct Closer {
    TIFF* t;
    ~Closer() { TIFFClose(t); }
  } closer{tif};
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail(Error::sys("'" + path + "'"));
  const auto file_size = static_cast<std::uint64_t>(st.st_size);

  std::string desc0;
  if (char* d = nullptr; TIFFGetField(tif, TIFFTAG_IMAGEDESCRIPTION, &d) == 1 && d != nullptr) desc0 = d;
  const bool aperio = desc0.rfind("Aperio", 0) == 0;
  double mpp_x = 0, mpp_y = 0;
  if (aperio) {
    mpp_x = mpp_y = aperio_field(desc0, "MPP");
  } else {
    float xr = 0, yr = 0;
    std::uint16_t unit = 0;
    if (TIFFGetField(tif, TIFFTAG_XRESOLUTION, &xr) == 1 && TIFFGetField(tif, TIFFTAG_YRESOLUTION, &yr) == 1 &&
        TIFFGetField(tif, TIFFTAG_RESOLUTIONUNIT, &unit) == 1 && xr > 0 && yr > 0 && (unit == RESUNIT_CENTIMETER || unit == RESUNIT_INCH)) {
      const double um = unit == RESUNIT_CENTIMETER ? 1e4 : 25400.0;
      mpp_x = um / static_cast<double>(xr);
      mpp_y = um / static_cast<double>(yr);
    }
  }

  std::vector<Level> levels;
  int dir = 0;
  do {
    if (TIFFIsTiled(tif) == 0) continue;  // SVS thumbnail, label and macro images are stripped
    std::uint32_t subfile = 0;
    TIFFGetField(tif, TIFFTAG_SUBFILETYPE, &subfile);
    if ((subfile & FILETYPE_MASK) != 0) continue;
    const auto where = "'" + path + "': directory " + std::to_string(dir);
    std::uint16_t comp = 0, spp = 0, bps = 0, planar = PLANARCONFIG_CONTIG, photo = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &comp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
    TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photo);
    if (comp != COMPRESSION_JPEG)
      return fail(Errc::invalid_argument, where + " has compression " + std::to_string(comp) + ", not JPEG (the fast reader reads JPEG tiles only)");
    if (spp != 3 || bps != 8 || planar != PLANARCONFIG_CONTIG || (photo != PHOTOMETRIC_RGB && photo != PHOTOMETRIC_YCBCR))
      return fail(Errc::invalid_argument, where + " is not 8-bit 3-channel RGB/YCbCr interleaved");
    Level l;
    l.dir = dir;
    std::uint32_t w = 0, h = 0, tw = 0, th = 0;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
    if (w == 0 || h == 0 || tw == 0 || th == 0 || tw > 8192 || th > 8192) return fail(Errc::invalid_argument, where + ": bad image or tile size");
    l.width = w;
    l.height = h;
    l.tw = static_cast<int>(tw);
    l.th = static_cast<int>(th);
    l.cols = (l.width + tw - 1) / tw;
    l.rows = (l.height + th - 1) / th;
    l.rgb = photo == PHOTOMETRIC_RGB;
    const auto ntiles = static_cast<std::size_t>(TIFFNumberOfTiles(tif));
    if (ntiles != static_cast<std::size_t>(l.cols * l.rows)) return fail(Errc::invalid_argument, where + ": tile count disagrees with the image size");
    std::uint64_t* offs = nullptr;
    std::uint64_t* cnts = nullptr;
    if (TIFFGetField(tif, TIFFTAG_TILEOFFSETS, &offs) != 1 || TIFFGetField(tif, TIFFTAG_TILEBYTECOUNTS, &cnts) != 1 ||
        offs == nullptr || cnts == nullptr)
      return fail(Errc::invalid_argument, where + ": no tile offsets" + (tiff_error.empty() ? "" : " (" + tiff_error + ")"));
    l.offsets.assign(offs, offs + ntiles);
    l.counts.assign(cnts, cnts + ntiles);
    for (std::size_t i = 0; i < ntiles; ++i)
      if (l.counts[i] != 0 && (l.counts[i] < 4 || l.offsets[i] + l.counts[i] > file_size))
        return fail(Errc::invalid_argument, "'" + path + "': truncated: tile " + std::to_string(i) + " of directory " +
                                                std::to_string(dir) + " ends at byte " + std::to_string(l.offsets[i] + l.counts[i]) +
                                                ", the file has " + std::to_string(file_size));
    std::uint32_t tlen = 0;
    void* tdata = nullptr;
    if (TIFFGetField(tif, TIFFTAG_JPEGTABLES, &tlen, &tdata) == 1 && tdata != nullptr && tlen >= 4) {
      const auto* t = static_cast<const std::uint8_t*>(tdata);
      l.tables.assign(t, t + tlen);
    }
    levels.push_back(std::move(l));
  } while (++dir, TIFFReadDirectory(tif) == 1);
  if (levels.empty()) return fail(Errc::invalid_argument, "'" + path + "': a TIFF without tiled images (the fast reader reads tiled pyramids)");
  std::stable_sort(levels.begin(), levels.end(), [](const Level& a, const Level& b) { return a.width > b.width; });
  for (std::size_t i = 1; i < levels.size(); ++i)
    if (levels[i].width == levels[i - 1].width) return fail(Errc::invalid_argument, "'" + path + "': two tiled images of the same width (not a pyramid)");
  for (auto& l : levels)  // OpenSlide's rule: the mean of the two axes' ratios
    l.downsample = (static_cast<double>(levels[0].width) / static_cast<double>(l.width) +
                    static_cast<double>(levels[0].height) / static_cast<double>(l.height)) / 2;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(Error::sys("'" + path + "'"));
  return std::unique_ptr<Slide>(std::make_unique<FastTiffSlide>(path, fd, std::move(levels), aperio, mpp_x, mpp_y));
}

}  // namespace tessera::overlay
