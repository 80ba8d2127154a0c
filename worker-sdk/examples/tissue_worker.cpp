// Example C++ worker: per-tile tissue mask.
//   op 0 (mask):    uint8 RGB (H, W, 3) -> uint8 mask (H, W): 255 where the pixel is
//                   darker than --threshold (tissue), 0 elsewhere (glass).
//   op 1 (mean):    any uint8 tile -> float32 (1,) mean of every byte.
//   op 2 (trivial): touches nothing, answers a 1-byte tile (overhead benchmarks).
//   op 3 (fail):    always fails (error-path tests).
//   op 4 (slow):    sleeps 50 ms while honouring cancellation, then answers like op 2.
//   op 6 (slow mask): sleeps 50 ms while honouring cancellation, then answers like op 0
//                   (slides that take long enough to kill or stop a run mid-way).
//   op 7 (crash):   the process exits at once (_exit(42)): a poison tile.
//   op 8 (hang):    never returns and never heartbeats (a handler in an endless loop).
// Run by the broker: `tessera-tissue-worker [--threshold N]`.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <span>
#include <string>
#include <thread>

#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <tessera/runtime.hpp>

#include "tissue_mask.hpp"

namespace {
int g_threshold = tessera::examples::kDefaultThreshold;

void mask(tessera::Worker& w, tessera::Tile& t) {
  const auto& in = t.input();
  const auto& sh = in.shape();
  if (in.dtype() != tessera::DType::UInt8 || sh.ndim != 3 || sh.dims[2] != 3) {
    w.fail(t, tessera::TileStatus::BadInput, "mask needs uint8 (H, W, 3), got " + std::string(tessera::dtype_name(in.dtype())) + " " + sh.str());
    return;
  }
  tessera::OutputBlock out;
  if (w.alloc_output(tessera::DType::UInt8, {sh.dims[0], sh.dims[1]}, out) != tessera::AllocStatus::ok) {
    w.fail(t, tessera::TileStatus::NoSpace, "no output block free");
    return;
  }
  auto m = out.as<std::uint8_t>();
  tessera::examples::tissue_mask(in.as<const std::uint8_t>().data(), m.data(), m.size(), g_threshold);
  (void)w.publish(t, out);
}

// Sum of all bytes. On x86-64 with PSADBW (SSE2, always present there): one instruction
// sums 16 bytes into two 64-bit lanes, four independent accumulators keep the loads in
// flight, so reading a 192-KiB tile costs what a plain 64-bit read loop does (~5 us here,
// against ~9-16 us for the SWAR loop below): the benchmarks compare this worker's
// "read every byte" with the bare ring's, so it must not do more work per byte.
std::uint64_t byte_sum(std::span<const std::byte> bytes) noexcept {
  std::size_t done = 0;
  std::uint64_t total = 0;
#if defined(__SSE2__)
  const std::size_t blocks = bytes.size() / 64;
  const __m128i zero = _mm_setzero_si128();
  __m128i a = zero, b = zero, c = zero, d = zero;
  const std::byte* p = bytes.data();
  for (std::size_t i = 0; i < blocks; ++i, p += 64) {
    a = _mm_add_epi64(a, _mm_sad_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), zero));
    b = _mm_add_epi64(b, _mm_sad_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)), zero));
    c = _mm_add_epi64(c, _mm_sad_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32)), zero));
    d = _mm_add_epi64(d, _mm_sad_epu8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 48)), zero));
  }
  std::uint64_t lanes[2];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lanes), _mm_add_epi64(_mm_add_epi64(a, b), _mm_add_epi64(c, d)));
  total = lanes[0] + lanes[1];
  done = blocks * 64;
#endif
  // SWAR for the rest (or everything without SSE2): 8 bytes at a time, two bytes per
  // 16-bit lane, flushed before a lane can overflow (128 words x 2 bytes x 255 = 65,280
  // per lane); the flush adds the four lanes one by one.
  constexpr std::uint64_t kLo = 0x00FF00FF00FF00FFULL;
  const std::size_t words = (bytes.size() - done) / 8;
  for (std::size_t i = 0; i < words;) {
    std::uint64_t lanes16 = 0;
    for (const std::size_t end = std::min(words, i + 128); i < end; ++i) {
      std::uint64_t x;
      std::memcpy(&x, bytes.data() + done + i * 8, 8);
      lanes16 += (x & kLo) + ((x >> 8) & kLo);
    }
    total += (lanes16 & 0xFFFF) + ((lanes16 >> 16) & 0xFFFF) + ((lanes16 >> 32) & 0xFFFF) + (lanes16 >> 48);
  }
  for (std::size_t i = done + words * 8; i < bytes.size(); ++i) total += static_cast<std::uint8_t>(bytes[i]);
  return total;
}

void mean(tessera::Worker& w, tessera::Tile& t) {
  const auto bytes = t.input().bytes();
  const std::uint64_t sum = byte_sum(bytes);
  tessera::OutputBlock out;
  if (w.alloc_output(tessera::DType::Float32, {1}, out) != tessera::AllocStatus::ok) {
    w.fail(t, tessera::TileStatus::NoSpace, "no output block free");
    return;
  }
  const auto v = out.as<float>();
  if (!v.empty()) v[0] = bytes.empty() ? 0.0f : static_cast<float>(static_cast<double>(sum) / static_cast<double>(bytes.size()));
  (void)w.publish(t, out);
}

void trivial(tessera::Worker& w, tessera::Tile& t) {
  tessera::OutputBlock out;
  if (w.alloc_output(tessera::DType::UInt8, {1}, out) != tessera::AllocStatus::ok) {
    w.fail(t, tessera::TileStatus::NoSpace, "no output block free");
    return;
  }
  const auto v = out.as<std::uint8_t>();
  if (!v.empty()) v[0] = 1;
  (void)w.publish(t, out);
}
}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--threshold") == 0) g_threshold = std::atoi(argv[i + 1]);
  return tessera::serve([](tessera::Worker& w, tessera::Tile& t) {
    switch (t.op()) {
      case 0: mask(w, t); break;
      case 1: mean(w, t); break;
      case 2: trivial(w, t); break;
      case 3: throw std::runtime_error("op 3 always fails (tile " + std::to_string(t.seq()) + ")");
      case 4:
      case 6: {
        for (int i = 0; i < 50 && !t.cancel_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (t.cancel_requested()) { w.cancel(t); return; }
        if (t.op() == 4) trivial(w, t);
        else mask(w, t);
        break;
      }
      case 7: ::_exit(42);
      case 8:
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
      default: w.fail(t, tessera::TileStatus::Unsupported, "unknown op " + std::to_string(t.op()));
    }
  });
}
