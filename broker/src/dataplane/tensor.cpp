#include <tessera/tensor.hpp>

namespace tessera {

std::string_view dtype_name(DType t) noexcept {
  switch (t) {
    case DType::UInt8: return "uint8";
    case DType::Int8: return "int8";
    case DType::UInt16: return "uint16";
    case DType::Int16: return "int16";
    case DType::UInt32: return "uint32";
    case DType::Int32: return "int32";
    case DType::UInt64: return "uint64";
    case DType::Int64: return "int64";
    case DType::Float16: return "float16";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Bool: return "bool";
    default: return "invalid";
  }
}

DType dtype_from_name(std::string_view n) noexcept {
  for (int i = 1; i <= static_cast<int>(DType::Bool); ++i) {
    const auto t = static_cast<DType>(i);
    if (dtype_name(t) == n) return t;
  }
  return DType::Invalid;
}

std::string Shape::str() const {
  std::string s = "(";
  for (std::uint8_t i = 0; i < ndim; ++i) {
    if (i != 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + ")";
}

void set_desc_tensor(TileDesc& d, DType dtype, const Shape& shape, std::uint64_t nbytes) noexcept {
  d.mutate_dtype(dtype);
  d.mutate_ndim(shape.ndim);
  for (int i = 0; i < 4; ++i) d.mutable_dims()->Mutate(i, i < shape.ndim ? shape.dims[i] : 0);
  d.mutate_nbytes(static_cast<std::uint32_t>(nbytes));
}

Shape desc_shape(const TileDesc& d) noexcept {
  Shape s;
  s.ndim = d.ndim() <= 4 ? d.ndim() : 0;
  for (std::uint8_t i = 0; i < s.ndim; ++i) s.dims[i] = d.dims()->Get(i);
  return s;
}

}  // namespace tessera
