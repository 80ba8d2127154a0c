// Contour tracing ("crack following"): every pixel edge between a foreground and a
// background pixel is one directed boundary edge, oriented with the foreground on
// its right (image coordinates, y down). Following them, and turning right where
// four pixels meet diagonally, gives closed rings that keep 4-connected foreground
// components apart: one ring of positive shoelace area per component (its outline)
// and one of negative area per hole. Only the corners are kept, so a ring is exact
// for the traced raster (no further simplification, hence no self-intersection).
#include "mask_geojson.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include <boost/json.hpp>

namespace tessera::overlay::detail {
namespace {

namespace json = boost::json;

// All rings' corners live in one pool (x, y as uint16: the traced raster is at most
// 65535 px a side), so a mask of many tiny regions costs 4 bytes a corner plus one
// Ring record, not one heap block per ring.
struct Ring {
  std::size_t first = 0;    // index of its first corner in the pool
  std::uint32_t count = 0;  // corners (the ring is closed implicitly)
  std::uint32_t label = 0;  // provisional component label of a foreground pixel it hugs
  std::int64_t area2 = 0;   // twice the signed shoelace area: > 0 outline, < 0 hole
};

struct Corner {
  std::uint16_t x, y;
};

class Tracer {
 public:
  explicit Tracer(const Raster& r)
      : r_(r),
        w_(r.width),
        h_(r.height),
        hvis_(static_cast<std::size_t>(w_ * (h_ + 1)), false),
        vvis_(static_cast<std::size_t>((w_ + 1) * h_), false) {}

  // 4-connected component labels, union-find, one row at a time: labelling row y needs
  // only row y - 1, and the trace below reads labels of the two rows around the edges it
  // is at, so two rows are kept, not a label image (a 4096^2 level's was 64 MiB, and
  // first touches of fresh memory are what the write step paid most for on a VM).
  void label_row(std::int64_t y) {
    std::swap(lab_up_, lab_row_);
    const std::uint32_t* up_row = y > 0 ? lab_up_.data() : nullptr;
    std::uint32_t* out = lab_row_.data();
    std::fill(lab_row_.begin(), lab_row_.end(), 0);
    static constexpr std::uint8_t kZeros[8] = {};
    const std::uint8_t* row = &r_.px[idx(0, y)];
    for (std::int64_t x = 0; x < w_; ++x) {
      while (x + 8 <= w_ && std::memcmp(row + x, kZeros, 8) == 0) x += 8;  // background: label 0 stays
      if (x >= w_ || row[x] == 0) continue;
      const std::uint32_t up = up_row != nullptr ? up_row[x] : 0, left = x > 0 ? out[x - 1] : 0;
      std::uint32_t l;
      if (up == 0 && left == 0) {
        l = static_cast<std::uint32_t>(parent_.size());
        parent_.push_back(l);
      } else if (up != 0 && left != 0) {
        const std::uint32_t a = find(up), b = find(left);
        l = std::min(a, b);
        parent_[std::max(a, b)] = l;
      } else {
        l = up | left;
      }
      out[x] = l;
    }
  }

  std::uint32_t find(std::uint32_t l) {
    while (parent_[l] != l) {
      parent_[l] = parent_[parent_[l]];
      l = parent_[l];
    }
    return l;
  }
  std::size_t label_count() const { return parent_.size(); }

  // Every ring, in the raster order of its first horizontal edge; false when the
  // corners exceed `max_corners` (the caller then traces a smaller level).
  bool trace(std::vector<Ring>& rings, std::vector<Corner>& pool, std::size_t max_corners) {
    lab_up_.assign(static_cast<std::size_t>(w_), 0);
    lab_row_.assign(static_cast<std::size_t>(w_), 0);
    parent_.assign(1, 0);
    for (std::int64_t y = 0; y <= h_; ++y) {
      // Edges between rows y - 1 and y: labels of row y - 1 in lab_up_, of row y in lab_row_.
      if (y < h_) label_row(y);
      else std::swap(lab_up_, lab_row_);
      // Stretches where the rows above and below hold the same bytes have no horizontal
      // boundary edge: skip them 8 pixels at a time (most of a mask is such stretches).
      const std::uint8_t* above_row = y > 0 ? &r_.px[idx(0, y - 1)] : nullptr;
      const std::uint8_t* below_row = y < h_ ? &r_.px[idx(0, y)] : nullptr;
      for (std::int64_t x = 0; x < w_; ++x) {
        if (above_row != nullptr && below_row != nullptr)
          while (x + 8 <= w_ && std::memcmp(above_row + x, below_row + x, 8) == 0) x += 8;
        if (x >= w_) break;
        const bool above = fg(x, y - 1), below = fg(x, y);
        if (above == below || hvis_[static_cast<std::size_t>(y * w_ + x)]) continue;
        Ring ring;
        ring.first = pool.size();
        if (below)
          walk(x, y, kEast, pool);
        else
          walk(x + 1, y, kWest, pool);
        ring.count = static_cast<std::uint32_t>(pool.size() - ring.first);
        ring.label = below ? lab_row_[static_cast<std::size_t>(x)] : lab_up_[static_cast<std::size_t>(x)];
        for (std::uint32_t i = 0; i < ring.count; ++i) {
          const Corner& a = pool[ring.first + i];
          const Corner& b = pool[ring.first + (i + 1) % ring.count];
          ring.area2 += std::int64_t{a.x} * b.y - std::int64_t{b.x} * a.y;
        }
        rings.push_back(ring);
        if (pool.size() > max_corners) return false;
      }
    }
    return true;
  }

 private:
  enum Dir { kEast = 0, kSouth = 1, kWest = 2, kNorth = 3 };
  std::size_t idx(std::int64_t x, std::int64_t y) const { return static_cast<std::size_t>(y * w_ + x); }
  bool fg(std::int64_t x, std::int64_t y) const {
    return x >= 0 && y >= 0 && x < w_ && y < h_ && r_.px[idx(x, y)] != 0;
  }

  void walk(std::int64_t sx, std::int64_t sy, int sd, std::vector<Corner>& pool) {
    std::int64_t x = sx, y = sy;
    int d = sd;
    do {
      switch (d) {  // mark the edge leaving (x,y) in direction d, then step
        case kEast:
          hvis_[static_cast<std::size_t>(y * w_ + x)] = true;
          ++x;
          break;
        case kSouth:
          vvis_[static_cast<std::size_t>(y * (w_ + 1) + x)] = true;
          ++y;
          break;
        case kWest:
          hvis_[static_cast<std::size_t>(y * w_ + x - 1)] = true;
          --x;
          break;
        default:
          vvis_[static_cast<std::size_t>((y - 1) * (w_ + 1) + x)] = true;
          --y;
          break;
      }
      // The two pixels ahead of vertex (x,y): ahead-right and ahead-left of heading d.
      bool ar, al;
      switch (d) {
        case kEast:
          ar = fg(x, y);
          al = fg(x, y - 1);
          break;
        case kSouth:
          ar = fg(x - 1, y);
          al = fg(x, y);
          break;
        case kWest:
          ar = fg(x - 1, y - 1);
          al = fg(x - 1, y);
          break;
        default:
          ar = fg(x, y - 1);
          al = fg(x - 1, y - 1);
          break;
      }
      const int nd = !ar ? (d + 1) % 4 : (!al ? d : (d + 3) % 4);
      if (nd != d) pool.push_back(Corner{static_cast<std::uint16_t>(x), static_cast<std::uint16_t>(y)});
      d = nd;
    } while (!(x == sx && y == sy && d == sd));
  }

  const Raster& r_;
  std::int64_t w_, h_;
  LargeVector<bool> hvis_, vvis_;  // visited horizontal / vertical boundary edges
  std::vector<std::uint32_t> lab_up_, lab_row_;  // labels of rows y - 1 and y
  std::vector<std::uint32_t> parent_;
};

// Coordinates are written straight to the file, so a feature of millions of corners
// costs no JSON tree; integral values print as integers, others in the shortest
// round-trip form (std::to_chars). The properties (names, reasons) go through Boost.JSON,
// which escapes them.
class FeatureOut {
 public:
  explicit FeatureOut(std::FILE* f) : f_(f) {}
  bool ok() const { return ok_; }

  void begin_feature() {
    put(first_feature_ ? "\n" : ",\n");
    first_feature_ = false;
    put(R"({"type":"Feature","geometry":{"type":"Polygon","coordinates":[)");
    first_ring_ = true;
  }
  void begin_ring() {
    put(first_ring_ ? "[" : ",[");
    first_ring_ = false;
    first_point_ = true;
  }
  void point(double x, double y) {
    char b[64];
    char* p = b;
    *p++ = first_point_ ? '[' : ',';
    if (!first_point_) *p++ = '[';
    first_point_ = false;
    p = number(p, b + sizeof b, x);
    *p++ = ',';
    p = number(p, b + sizeof b, y);
    *p++ = ']';
    ok_ = ok_ && std::fwrite(b, 1, static_cast<std::size_t>(p - b), f_) == static_cast<std::size_t>(p - b);
  }
  void end_ring() { put("]"); }
  void end_feature(const json::object& properties) {
    put(R"(]},"properties":)");
    put(json::serialize(properties));
    put("}");
  }
  void put(const std::string& s) { ok_ = ok_ && std::fwrite(s.data(), 1, s.size(), f_) == s.size(); }

 private:
  static char* number(char* p, char* end, double v) {
    if (v == std::floor(v) && std::fabs(v) < 9.0e15) return std::to_chars(p, end, static_cast<std::int64_t>(v)).ptr;
    return std::to_chars(p, end, v).ptr;
  }
  std::FILE* f_;
  bool ok_ = true, first_feature_ = true, first_ring_ = true, first_point_ = true;
};

void write_ring(FeatureOut& out, const Ring& ring, const std::vector<Corner>& pool, const GeoJsonSpec& s) {
  out.begin_ring();
  const std::size_t n = ring.count;
  double px = -1, py = -1;
  for (std::size_t i = 0; i <= n; ++i) {
    const Corner& c = pool[ring.first + i % n];
    const double x = std::min(static_cast<double>(c.x) * s.scale, s.bound_w);
    const double y = std::min(static_cast<double>(c.y) * s.scale, s.bound_h);
    if (i > 0 && i < n && x == px && y == py) continue;  // clamping at the border can repeat a corner
    out.point(x, y);
    px = x;
    py = y;
  }
  out.end_ring();
}

json::object properties(const std::string& name, std::initializer_list<int> color) {
  json::array rgb;
  for (int c : color) rgb.push_back(c);
  return json::object{{"objectType", "annotation"},
                      {"classification", json::object{{"name", name}, {"color", std::move(rgb)}}}};
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

Result<void> write_geojson(const std::string& path, const Raster& r, const GeoJsonSpec& spec,
                           const std::vector<FailedTile>& failed) {
  // Group rings per component: the outline first, then its holes.
  if (r.width > 65535 || r.height > 65535)
    return fail(Errc::invalid_argument, "GeoJSON '" + path + "': traced level too large");
  std::vector<Ring> rings;
  std::vector<Corner> pool;
  Tracer tr(r);
  if (!tr.trace(rings, pool, spec.max_corners))
    return fail(Errc::no_space, "GeoJSON '" + path + "': more than " + std::to_string(spec.max_corners) +
                                    " polygon corners at this level");
  std::vector<std::int32_t> feature_of(tr.label_count(), -1);
  std::vector<std::vector<std::size_t>> polys;  // ring indices: [outline, holes...]
  for (std::size_t i = 0; i < rings.size(); ++i)
    if (rings[i].area2 > 0) {
      feature_of[tr.find(rings[i].label)] = static_cast<std::int32_t>(polys.size());
      polys.push_back({i});
    }
  for (std::size_t i = 0; i < rings.size(); ++i)
    if (rings[i].area2 < 0) {
      const std::int32_t f = feature_of[tr.find(rings[i].label)];
      if (f >= 0) polys[static_cast<std::size_t>(f)].push_back(i);
    }

  std::unique_ptr<std::FILE, FileCloser> out(std::fopen(path.c_str(), "wb"));
  if (!out) return fail(Error::sys("GeoJSON '" + path + "': cannot open for writing"));
  FeatureOut fo(out.get());
  fo.put(R"({"type":"FeatureCollection","features":[)");
  const json::object tissue = properties(spec.class_name, {20, 210, 90});
  for (const auto& p : polys) {
    if (!fo.ok()) break;
    fo.begin_feature();
    for (std::size_t i : p) write_ring(fo, rings[i], pool, spec);
    fo.end_feature(tissue);
  }
  for (const auto& f : failed) {
    if (!fo.ok()) break;
    const double x0 = static_cast<double>(f.x0), y0 = static_cast<double>(f.y0);
    const double x1 = static_cast<double>(f.x1), y1 = static_cast<double>(f.y1);
    fo.begin_feature();
    fo.begin_ring();
    fo.point(x0, y0);
    fo.point(x1, y0);
    fo.point(x1, y1);
    fo.point(x0, y1);
    fo.point(x0, y0);
    fo.end_ring();
    json::object props = properties("Failed", {230, 40, 40});
    props["reason"] = f.why;
    fo.end_feature(props);
  }
  bool ok = fo.ok();
  ok = ok && std::fputs("\n]}\n", out.get()) >= 0 && std::fflush(out.get()) == 0;
  const int err = errno;
  if (!ok || std::ferror(out.get())) return fail(Error::sys("GeoJSON '" + path + "': write failed", err));
  if (std::fclose(out.release()) != 0) return fail(Error::sys("GeoJSON '" + path + "': close failed"));
  return {};
}

}  // namespace tessera::overlay::detail
