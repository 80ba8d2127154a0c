// Typed, bounds-checked views of tile payloads (dtype, shape, C-order strides).
// Shared by the client API and the worker SDK.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <tessera/layout.hpp>

namespace tessera {

using DType = fb::DType;

constexpr std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::UInt8: case DType::Int8: case DType::Bool: return 1;
    case DType::UInt16: case DType::Int16: case DType::Float16: return 2;
    case DType::UInt32: case DType::Int32: case DType::Float32: return 4;
    case DType::UInt64: case DType::Int64: case DType::Float64: return 8;
    default: return 0;
  }
}
// NumPy/Appose dtype names ("uint8", "float32", ...). Invalid for unknown names.
std::string_view dtype_name(DType t) noexcept;
DType dtype_from_name(std::string_view name) noexcept;

template <class T> constexpr DType dtype_of() noexcept;
template <> constexpr DType dtype_of<std::uint8_t>() noexcept { return DType::UInt8; }
template <> constexpr DType dtype_of<std::int8_t>() noexcept { return DType::Int8; }
template <> constexpr DType dtype_of<std::uint16_t>() noexcept { return DType::UInt16; }
template <> constexpr DType dtype_of<std::int16_t>() noexcept { return DType::Int16; }
template <> constexpr DType dtype_of<std::uint32_t>() noexcept { return DType::UInt32; }
template <> constexpr DType dtype_of<std::int32_t>() noexcept { return DType::Int32; }
template <> constexpr DType dtype_of<std::uint64_t>() noexcept { return DType::UInt64; }
template <> constexpr DType dtype_of<std::int64_t>() noexcept { return DType::Int64; }
template <> constexpr DType dtype_of<float>() noexcept { return DType::Float32; }
template <> constexpr DType dtype_of<double>() noexcept { return DType::Float64; }

struct Shape {
  std::array<std::uint32_t, 4> dims{};
  std::uint8_t ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<std::uint32_t> d) noexcept {
    for (auto v : d) if (ndim < 4) dims[ndim++] = v;
  }
  // Element count; saturates at UINT64_MAX instead of wrapping (four u32 dims can
  // exceed 64 bits). For a byte size use tensor_nbytes(), which reports overflow.
  std::uint64_t elements() const noexcept {
    std::uint64_t n = ndim == 0 ? 0 : 1;
    for (std::uint8_t i = 0; i < ndim && i < 4; ++i)
      if (__builtin_mul_overflow(n, std::uint64_t{dims[i]}, &n)) return std::numeric_limits<std::uint64_t>::max();
    return n;
  }
  friend bool operator==(const Shape&, const Shape&) = default;
  std::string str() const;
};

// The one place a shape becomes a size: shape x dtype size in bytes, with checked
// multiplication. nullopt when the dtype is unknown, ndim is not 1..4, or the product
// overflows 64 bits. Callers then compare against the block's capacity (and the
// descriptor's u32 nbytes field).
constexpr std::optional<std::uint64_t> tensor_nbytes(DType dtype, const Shape& shape) noexcept {
  const std::uint64_t elem = dtype_size(dtype);
  if (elem == 0 || shape.ndim == 0 || shape.ndim > 4) return std::nullopt;
  std::uint64_t n = elem;
  for (std::uint8_t i = 0; i < shape.ndim; ++i)
    if (__builtin_mul_overflow(n, std::uint64_t{shape.dims[i]}, &n)) return std::nullopt;
  return n;
}

// A view over payload bytes. Never owns memory.
class TensorView {
 public:
  TensorView() = default;
  TensorView(std::byte* data, std::uint64_t capacity, DType dtype, Shape shape) noexcept
      : data_(data), capacity_(capacity), dtype_(dtype), shape_(shape) {}

  // True when dtype is known and shape fits inside the block.
  bool valid() const noexcept { return data_ != nullptr && dtype_size(dtype_) != 0 && nbytes() <= capacity_; }
  std::byte* data() const noexcept { return data_; }
  std::uint64_t capacity() const noexcept { return capacity_; }
  DType dtype() const noexcept { return dtype_; }
  const Shape& shape() const noexcept { return shape_; }
  // 0 for an empty (0-d) view; saturates at UINT64_MAX for an unrepresentable shape, so
  // valid() is false for it.
  std::uint64_t nbytes() const noexcept {
    if (shape_.ndim == 0) return 0;
    return tensor_nbytes(dtype_, shape_).value_or(std::numeric_limits<std::uint64_t>::max());
  }
  // C-order byte strides.
  std::array<std::int64_t, 4> strides() const noexcept {
    std::array<std::int64_t, 4> s{};
    std::int64_t acc = static_cast<std::int64_t>(dtype_size(dtype_));
    for (int i = shape_.ndim - 1; i >= 0; --i) { s[i] = acc; acc *= shape_.dims[i]; }
    return s;
  }
  // Typed span; empty if T does not match the dtype or the view is invalid.
  template <class T>
  std::span<T> as() const noexcept {
    if (!valid() || dtype_of<std::remove_const_t<T>>() != dtype_) return {};
    return {reinterpret_cast<T*>(data_), static_cast<std::size_t>(shape_.elements())};
  }
  std::span<std::byte> bytes() const noexcept { return {data_, static_cast<std::size_t>(nbytes() <= capacity_ ? nbytes() : 0)}; }

 private:
  std::byte* data_ = nullptr;
  std::uint64_t capacity_ = 0;
  DType dtype_ = DType::Invalid;
  Shape shape_{};
};

// Fills the shape/dtype fields of a descriptor; reads them back with validation.
void set_desc_tensor(TileDesc& d, DType dtype, const Shape& shape, std::uint64_t nbytes) noexcept;
Shape desc_shape(const TileDesc& d) noexcept;

}  // namespace tessera
