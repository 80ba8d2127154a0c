// libFuzzer target: the worker's admission of a request descriptor (the rule in
// worker-sdk/src/admission.hpp that Worker::take applies before a handler runs).
// Input: a TileDesc image (whatever bytes a hostile client writes into the ring) and
// the capacity of the block it names. Property: admitted => shape x dtype, computed
// here with 128-bit arithmetic, is non-zero, equals the stated nbytes and fits the
// block; and then the view the handler gets covers exactly those bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <tessera/tensor.hpp>

#include "admission.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tessera::TileDesc d{};
  std::uint64_t capacity = 0;
  if (size < sizeof d) return 0;
  std::memcpy(&d, data, sizeof d);
  std::memcpy(&capacity, data + sizeof d, size - sizeof d < sizeof capacity ? size - sizeof d : sizeof capacity);
  const bool admitted = tessera::detail::admissible_tensor(d, capacity);

  // Independent oracle: 128-bit product, no shared code with tensor_nbytes.
  const std::size_t elem = tessera::dtype_size(d.dtype());
  bool ok = d.ndim() >= 1 && d.ndim() <= 4 && elem != 0;
  __extension__ using u128 = unsigned __int128;  // GNU extension (both g++ and clang)
  u128 bytes = elem;
  for (std::uint8_t i = 0; ok && i < d.ndim(); ++i) {
    bytes *= d.dims()->Get(i);
    if (bytes > UINT64_MAX) ok = false;  // at most 2^64 * 2^32: no 128-bit overflow first
  }
  ok = ok && bytes != 0 && bytes == d.nbytes() && bytes <= capacity;
  if (admitted != ok) std::abort();  // the rule and the oracle disagree
  if (admitted) {
    static std::byte block[64];
    const tessera::TensorView v(block, capacity, d.dtype(), tessera::desc_shape(d));
    if (!v.valid() || v.nbytes() != d.nbytes() || v.bytes().size() != d.nbytes()) std::abort();
  }
  return 0;
}
