// Block handles that cross processes: generation:32 | class:8 | index:24.
// A handle is only a claim; Slab::resolve() validates it against the block's
// metadata word before any byte is touched.
#pragma once

#include <cstdint>

namespace tessera {

struct BlockHandle {
  std::uint64_t raw = 0;  // 0 is "no block"

  static constexpr BlockHandle make(std::uint32_t generation, std::uint32_t cls, std::uint32_t index) noexcept {
    return BlockHandle{(std::uint64_t{generation} << 32) | (std::uint64_t{cls & 0xffu} << 24) | (index & 0xffffffu)};
  }
  constexpr std::uint32_t generation() const noexcept { return static_cast<std::uint32_t>(raw >> 32); }
  constexpr std::uint32_t cls() const noexcept { return static_cast<std::uint32_t>(raw >> 24) & 0xffu; }
  constexpr std::uint32_t index() const noexcept { return static_cast<std::uint32_t>(raw) & 0xffffffu; }
  constexpr bool null() const noexcept { return raw == 0; }
  friend constexpr bool operator==(BlockHandle, BlockHandle) = default;
};

// BlockMeta word helpers (see layout.hpp).
namespace meta {
constexpr std::uint64_t pack(std::uint32_t gen, std::uint16_t owner, std::uint16_t state) noexcept {
  return (std::uint64_t{gen} << 32) | (std::uint64_t{owner} << 16) | state;
}
constexpr std::uint32_t gen(std::uint64_t w) noexcept { return static_cast<std::uint32_t>(w >> 32); }
constexpr std::uint16_t owner(std::uint64_t w) noexcept { return static_cast<std::uint16_t>(w >> 16); }
constexpr std::uint16_t state(std::uint64_t w) noexcept { return static_cast<std::uint16_t>(w); }
constexpr std::uint32_t next_gen(std::uint32_t g) noexcept { return g + 1 == 0 ? 1 : g + 1; }  // 0 never used
}  // namespace meta

}  // namespace tessera
