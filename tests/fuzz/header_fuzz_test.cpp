// Random bytes and bit-flipped valid headers presented to Arena::validate must yield an
// error, never a crash or an out-of-bounds read (run under ASan to check the latter).
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <random>

#include <tessera/arena.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

struct AlignedBuffer {
  explicit AlignedBuffer(std::size_t n) : size(n), data(static_cast<std::byte*>(::operator new(n ? n : 1, std::align_val_t{kPageSize}))) {}
  ~AlignedBuffer() { ::operator delete(data, std::align_val_t{kPageSize}); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::size_t size;
  std::byte* data;
};

void fill_random(std::mt19937_64& rng, std::byte* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>(rng());
}

TEST(HeaderFuzz, RandomBytesAreRejected) {
  std::mt19937_64 rng(test::test_seed(0xbadc0de));
  for (int round = 0; round < 3000; ++round) {
    const std::size_t len = rng() % (3 * kPageSize);
    AlignedBuffer buf(len);
    fill_random(rng, buf.data, len);
    if (len >= sizeof(ArenaHeader) && round % 2 == 0) {
      // Get past the first checks so the deeper ones are exercised too.
      auto* h = reinterpret_cast<ArenaHeader*>(buf.data);
      h->magic = kArenaMagic;
      h->layout_version = kLayoutVersion;
      h->header_size = sizeof(ArenaHeader);
      h->ready.store(kReadyValue);
      h->creator_uid = static_cast<std::uint32_t>(geteuid());
      if (round % 4 == 0) h->total_size = len;
      if (round % 8 == 0) h->n_participants = kMaxParticipants;
      if (round % 16 == 0) h->n_classes = 1 + static_cast<std::uint32_t>(rng() % kMaxClasses);
    }
    auto r = Arena::validate(buf.data, len);
    EXPECT_FALSE(r) << "random bytes accepted, round " << round;
    if (!r) {
      EXPECT_FALSE(r.error().message.empty());
    }
  }
  EXPECT_FALSE(Arena::validate(nullptr, 0));
  EXPECT_FALSE(Arena::validate(nullptr, 1 << 20));
}

class HeaderFlip : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = Arena::create(test::small_config());
    ASSERT_TRUE(a) << a.error().message;
    arena_ = std::move(*a);
    image_ = std::make_unique<AlignedBuffer>(arena_.size());
    reset();
    ASSERT_TRUE(Arena::validate(image_->data, image_->size));
  }
  void reset() { std::memcpy(image_->data, arena_.base(), arena_.size()); }
  ArenaHeader& hdr() { return *reinterpret_cast<ArenaHeader*>(image_->data); }
  Arena arena_;
  std::unique_ptr<AlignedBuffer> image_;
};

// Bytes of the header that validation must check: flipping any bit there is an error.
bool checked_header_byte(std::size_t off) {
  auto in = [&](std::size_t field, std::size_t size) { return off >= field && off < field + size; };
  return in(offsetof(ArenaHeader, magic), 8) || in(offsetof(ArenaHeader, layout_version), 4) ||
         in(offsetof(ArenaHeader, header_size), 4) || in(offsetof(ArenaHeader, total_size), 8) ||
         in(offsetof(ArenaHeader, creator_uid), 4) || in(offsetof(ArenaHeader, n_participants), 4) ||
         in(offsetof(ArenaHeader, n_classes), 4) || in(offsetof(ArenaHeader, ring_capacity), 4) ||
         in(offsetof(ArenaHeader, participants_offset), 8) || in(offsetof(ArenaHeader, classes_offset), 8) ||
         in(offsetof(ArenaHeader, doorbells_offset), 8) || in(offsetof(ArenaHeader, rings_offset), 8) ||
         in(offsetof(ArenaHeader, ring_stride), 8) || in(offsetof(ArenaHeader, meta_offset), 8) ||
         in(offsetof(ArenaHeader, data_offset), 8) || in(offsetof(ArenaHeader, ready), 4);
}

TEST_F(HeaderFlip, EverySingleBitFlipOfACheckedFieldIsAnError) {
  std::size_t checked = 0, rejected = 0;
  for (std::size_t byte = 0; byte < sizeof(ArenaHeader); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      reset();
      image_->data[byte] ^= static_cast<std::byte>(1u << bit);
      const auto r = Arena::validate(image_->data, image_->size);
      rejected += !r;
      if (checked_header_byte(byte)) {
        ++checked;
        EXPECT_FALSE(r) << "flip of byte " << byte << " bit " << bit << " accepted";
      }
    }
  }
  EXPECT_GE(rejected, checked);
}

TEST_F(HeaderFlip, EverySingleBitFlipOfASizeClassDescriptionIsAnError) {
  for (std::uint32_t c = 0; c < arena_.n_classes(); ++c) {
    const std::size_t base = hdr().classes_offset + c * sizeof(SizeClass);
    for (std::size_t byte = 0; byte < offsetof(SizeClass, pad0); ++byte) {
      if (byte >= offsetof(SizeClass, reserved) && byte < offsetof(SizeClass, reserved) + 4) continue;
      for (int bit = 0; bit < 8; ++bit) {
        reset();
        image_->data[base + byte] ^= static_cast<std::byte>(1u << bit);
        EXPECT_FALSE(Arena::validate(image_->data, image_->size)) << "class " << c << " byte " << byte << " bit " << bit;
      }
    }
  }
}

TEST_F(HeaderFlip, RandomMultiBitCorruptionNeverCrashes) {
  std::mt19937_64 rng(test::test_seed(0xf1195));
  const std::size_t span = hdr().classes_offset + arena_.n_classes() * sizeof(SizeClass);
  std::size_t accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    reset();
    const int nflips = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < nflips; ++k) {
      // Mostly the header line, sometimes the class table.
      const std::size_t byte = rng() % 4 != 0 ? rng() % sizeof(ArenaHeader) : rng() % span;
      image_->data[byte] ^= static_cast<std::byte>(1u << (rng() % 8));
    }
    const auto r = Arena::validate(image_->data, image_->size);
    if (r) {
      ++accepted;
      // Whatever is accepted must still describe a layout that fits the mapping.
      EXPECT_EQ(hdr().total_size, image_->size);
      EXPECT_EQ(hdr().magic, kArenaMagic);
    }
  }
  EXPECT_LT(accepted, 20000u);
}

TEST_F(HeaderFlip, ImageShorterThanItsHeaderSaysIsRejected) {
  for (std::size_t len : {std::size_t{0}, std::size_t{1}, kPageSize - 1, kPageSize, image_->size - kPageSize,
                          image_->size - 1}) {
    EXPECT_FALSE(Arena::validate(image_->data, len)) << len;
  }
}

}  // namespace
}  // namespace tessera
