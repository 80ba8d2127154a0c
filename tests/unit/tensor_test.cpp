// Shape x dtype -> bytes: the one checked conversion (tensor_nbytes) and the views built on it.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include <tessera/tensor.hpp>

using tessera::DType;
using tessera::Shape;
using tessera::tensor_nbytes;
using tessera::TensorView;

TEST(TensorBytes, FourDimsWhoseProductWrapsTo4096AreRejected) {
  // 4294967295 * 4294967295 * 12288 * 2863311531 is 4096 modulo 2^64.
  const Shape s{4294967295u, 4294967295u, 12288u, 2863311531u};
  EXPECT_FALSE(tensor_nbytes(DType::UInt8, s).has_value());
  EXPECT_EQ(s.elements(), std::numeric_limits<std::uint64_t>::max()) << "saturates, never wraps";
  alignas(64) std::byte block[8192];
  const TensorView v(block, sizeof block, DType::UInt8, s);
  EXPECT_FALSE(v.valid());
  EXPECT_TRUE(v.bytes().empty());
  EXPECT_TRUE(v.as<std::uint8_t>().empty());
}

TEST(TensorBytes, TheDtypeFactorOverflowsToo) {
  const Shape s{4294967295u, 4294967295u};
  ASSERT_TRUE(tensor_nbytes(DType::UInt8, s).has_value()) << "(2^32-1)^2 bytes is representable";
  EXPECT_EQ(*tensor_nbytes(DType::UInt8, s), 4294967295ull * 4294967295ull);
  EXPECT_FALSE(tensor_nbytes(DType::Float64, s).has_value()) << "x 8 is not";
}

TEST(TensorBytes, ExactForOrdinaryShapesAndEmptyForNonsense) {
  EXPECT_EQ(tensor_nbytes(DType::UInt8, Shape{512, 512, 3}), 786432u);
  EXPECT_EQ(tensor_nbytes(DType::Float32, Shape{2, 3}), 24u);
  EXPECT_EQ(tensor_nbytes(DType::UInt16, Shape{7, 0}), 0u) << "a zero dimension is 0 bytes (callers reject empty tiles)";
  EXPECT_FALSE(tensor_nbytes(DType::UInt8, Shape{}).has_value()) << "0-d";
  EXPECT_FALSE(tensor_nbytes(DType::Invalid, Shape{4}).has_value()) << "unknown dtype";
  Shape five;
  five.ndim = 5;
  EXPECT_FALSE(tensor_nbytes(DType::UInt8, five).has_value()) << "more than 4 dims";
  static_assert(tensor_nbytes(DType::Int32, Shape{}) == std::nullopt);
}
