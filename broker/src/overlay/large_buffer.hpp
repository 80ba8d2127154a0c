// Large scratch buffers of the output step (pyramid levels read back, the preview's
// slide bands, the tracer's label image): an allocator that asks for transparent huge
// pages on allocations of 2 MiB and more. The kernel's default THP mode is often
// `madvise`, where only regions that ask get them; first-touch page faults of 4-KiB
// pages were then a third of the output step's CPU on a 16k slide
// (docs/design/overlay-outputs.md, "Throughput"). Smaller allocations, and kernels
// without THP, get ordinary memory.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <new>
#include <vector>

namespace tessera::overlay::detail {

template <class T>
struct LargeAllocator {
  using value_type = T;
  static constexpr std::size_t kHugeFrom = std::size_t{2} << 20;

  LargeAllocator() = default;
  template <class U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor): rebinding

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHugeFrom) return static_cast<T*>(::operator new(bytes));
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    (void)::madvise(p, bytes, MADV_HUGEPAGE);  // advisory: EINVAL without THP is fine
    return static_cast<T*>(p);
  }

  void deallocate(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHugeFrom)
      ::operator delete(p);
    else
      (void)::munmap(p, bytes);
  }

  template <class U>
  bool operator==(const LargeAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using LargeVector = std::vector<T, LargeAllocator<T>>;

}  // namespace tessera::overlay::detail
