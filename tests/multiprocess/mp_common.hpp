// What the multi-process test and its helper executable agree on: payload patterns
// and descriptors carrying {producer, seq}.
#pragma once

#include <cstddef>
#include <cstdint>

#include <tessera/layout.hpp>

namespace tessera::mp {

inline std::uint8_t byte_at(std::uint64_t seq, std::uint64_t i) {
  return static_cast<std::uint8_t>((seq * 0x9e3779b1u) >> 7 ^ i * 13);
}

inline void fill(std::byte* p, std::uint64_t n, std::uint64_t seq) {
  for (std::uint64_t i = 0; i < n; ++i) p[i] = std::byte{byte_at(seq, i)};
}

inline bool check(const std::byte* p, std::uint64_t n, std::uint64_t seq) {
  for (std::uint64_t i = 0; i < n; ++i)
    if (p[i] != std::byte{byte_at(seq, i)}) return false;
  return true;
}

inline TileDesc desc(std::uint64_t seq, std::uint32_t producer, std::uint64_t block, std::uint32_t nbytes) {
  return TileDesc(seq, producer, 0, block, nbytes, fb::DType::UInt8, 1, 0, fb::Kind::Request, 0, 0, 0, 0, 0);
}

}  // namespace tessera::mp
