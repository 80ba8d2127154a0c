// libFuzzer target (optional, clang only): arbitrary bytes as an arena image.
// Build: configure with CXX=clang++ -DTESSERA_LIBFUZZER=ON, then run
//   bin/tessera_fuzz_arena_header -max_total_time=60
// Even first bytes: the input is the whole image. Odd: the input overwrites the start of a
// valid arena image (header + tables), so the fuzzer gets past the magic/version checks.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include <tessera/arena.hpp>

namespace {

struct Image {
  std::byte* data = nullptr;
  std::size_t size = 0;
};

const Image& valid_image() {
  static const Image img = [] {
    tessera::ArenaConfig cfg;
    cfg.classes = {{4096, 4}, {16384, 2}};
    cfg.n_rings = 2;
    cfg.ring_capacity = 4;
    cfg.n_doorbells = tessera::kMaxParticipants;
    cfg.prefault = false;
    auto a = tessera::Arena::create(cfg);
    if (!a) std::abort();
    Image i;
    i.size = a->size();
    i.data = static_cast<std::byte*>(::operator new(i.size, std::align_val_t{tessera::kPageSize}));
    std::memcpy(i.data, a->base(), i.size);
    return i;
  }();
  return img;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool overlay = (data[0] & 1) != 0;
  ++data;
  --size;
  const Image& img = valid_image();
  const std::size_t len = overlay ? img.size : size;
  // validate() expects a page-aligned mapping, as mmap gives.
  auto* buf = static_cast<std::byte*>(::operator new(len ? len : 1, std::align_val_t{tessera::kPageSize}));
  if (overlay) {
    std::memcpy(buf, img.data, len);
    std::memcpy(buf, data, size < len ? size : len);
  } else if (size != 0) {
    std::memcpy(buf, data, size);
  }
  (void)tessera::Arena::validate(buf, len);
  ::operator delete(buf, std::align_val_t{tessera::kPageSize});
  return 0;
}
