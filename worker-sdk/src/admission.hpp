// The worker's admission of a request's tensor: the checks a descriptor from the
// client's ring must pass before any handler sees its block. Private to the SDK; the
// descriptor-admission fuzz target calls it too (one home for the rule).
#pragma once

#include <cstdint>
#include <optional>

#include <tessera/layout.hpp>
#include <tessera/tensor.hpp>

namespace tessera::detail {

// True when the descriptor's tensor is admissible in a block of `capacity` bytes:
// 1 to 4 dimensions, a known dtype, shape x dtype representable (checked
// multiplication), non-empty, equal to the stated nbytes and no larger than the block.
// Property (fuzzed): admitted => tensor_nbytes(dtype, shape) == nbytes <= capacity.
inline bool admissible_tensor(const TileDesc& d, std::uint64_t capacity) noexcept {
  if (d.ndim() == 0 || d.ndim() > 4) return false;
  const std::optional<std::uint64_t> need = tensor_nbytes(d.dtype(), desc_shape(d));
  return need && *need != 0 && *need == d.nbytes() && *need <= capacity;
}

}  // namespace tessera::detail
