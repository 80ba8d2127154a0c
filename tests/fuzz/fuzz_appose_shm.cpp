// libFuzzer target: Appose named-segment handling, the part of the `--appose` broker
// that decides which /dev/shm names it may adopt and later unlink.
//   - is_shm_name on any bytes: accepted => "psm_" + 8..64 hex digits, so no '/', no
//     "..", no NUL, nothing outside /dev/shm;
//   - collect_shm_refs on any JSON value: every ref found carries an accepted name and
//     rsize > 0; an error names a path under the root; never a crash;
//   - int_field (the checked integer fields) on any JSON value: within its bounds or an
//     error naming the field, never an undefined conversion (UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <tessera/appose.hpp>

namespace ap = tessera::appose;

namespace {
bool hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

void check_name(std::string_view n) {
  if (!ap::is_shm_name(n)) return;
  if (!n.starts_with("psm_") || n.size() < 12 || n.size() > 68) std::abort();
  for (const char c : n.substr(4)) {
    if (!hex(c)) std::abort();
  }
  if (n.find('/') != std::string_view::npos || n.find("..") != std::string_view::npos ||
      n.find('\0') != std::string_view::npos)
    std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_name(text);
  auto o = ap::parse_object(text);
  if (!o) return 0;
  std::vector<ap::ShmRef> refs;
  const boost::json::value root(o.value());
  const auto err = ap::collect_shm_refs(root, "outputs", refs);
  if (err && !err->starts_with("outputs")) std::abort();
  for (const auto& r : refs) {
    if (!ap::is_shm_name(r.name) || r.rsize <= 0 || !r.path.starts_with("outputs")) std::abort();
    check_name(r.name);
  }
  for (const auto& kv : o.value()) {
    const std::string key(kv.key());
    const auto f = ap::int_field(o.value(), key, -5, 1000);
    if (f.value && (*f.value < -5 || *f.value > 1000)) std::abort();
    if (f.error && f.error->find(key) == std::string::npos) std::abort();
    if (f.value && f.error) std::abort();
    const auto g = ap::int_field(o.value(), key, INT64_MIN, INT64_MAX);
    (void)g;
  }
  return 0;
}
