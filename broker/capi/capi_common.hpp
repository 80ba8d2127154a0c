// Private helpers shared by the worker and client C ABIs: error reporting, the
// exception firewall, and checked handle tables (so a stale, foreign or forged
// handle is a detected error, never undefined behaviour).
#pragma once

#include <cstdint>
#include <deque>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include <tessera/result.hpp>

extern "C" {
int tessera_set_last_error(int code, const char* message);
}

namespace tessera::capi {

inline constexpr int kEInternal = 20;  // TESSERA_EINTERNAL (no Errc counterpart)

// Records the error for this thread and returns the negative code.
inline int set_error(Errc code, const std::string& message) noexcept {
  return tessera_set_last_error(static_cast<int>(code), message.c_str());
}
// For normal outcomes on the data path: a literal message, so that (once the
// thread's buffer has grown) recording it does not allocate.
inline int set_error(Errc code, const char* message) noexcept {
  return tessera_set_last_error(static_cast<int>(code), message);
}
inline int set_error(const Error& e) noexcept { return set_error(e.code, e.message); }
inline int invalid(const char* message) noexcept { return set_error(Errc::invalid_argument, message); }
inline void clear_error() noexcept { (void)tessera_set_last_error(0, ""); }

// Runs `f` (returning int) and converts any escaping exception into an error code:
// nothing throws across the C ABI.
template <class F>
int guarded(const char* fn, F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return tessera_set_last_error(kEInternal, (std::string(fn) + ": out of memory").c_str());
  } catch (const std::exception& e) {
    try {
      return tessera_set_last_error(kEInternal, (std::string(fn) + ": " + e.what()).c_str());
    } catch (...) {
      return -kEInternal;
    }
  } catch (...) {
    return tessera_set_last_error(kEInternal, "unexpected non-standard exception");
  }
}

// A fresh id per ABI object (worker, client), so handles name their owner.
std::uint32_t next_owner_id() noexcept;

// Handle layout (u64): kind:4 | owner:20 | generation:16 | index:24. Never 0
// (owner ids start at 1). The generation bumps every time an entry is erased, so
// a used-up handle is detected as stale.
enum class HandleKind : std::uint32_t { tile = 1, output = 2, block = 3, result = 4 };

template <class T>
class HandleTable {
 public:
  HandleTable(HandleKind kind, std::uint32_t owner) noexcept : kind_(kind), owner_(owner & 0xfffffu) {}

  // May allocate only when more entries are live than ever before.
  std::uint64_t insert(T&& value) {
    std::uint32_t idx;
    if (!free_.empty()) {
      idx = free_.back();
      free_.pop_back();
    } else {
      idx = static_cast<std::uint32_t>(entries_.size());
      if (idx >= (1u << 24)) throw std::bad_alloc();
      entries_.emplace_back();
      free_.reserve(entries_.size());
    }
    Entry& e = entries_[idx];
    e.value = std::move(value);
    e.used = true;
    ++live_;
    return make(idx, e.gen);
  }

  // The live entry a handle names, or nullptr with the error recorded.
  T* find(std::uint64_t h, const char* what) noexcept {
    if (h == 0) return report(Errc::invalid_argument, what, "null handle");
    const auto kind = static_cast<std::uint32_t>(h >> 60);
    const auto owner = static_cast<std::uint32_t>(h >> 40) & 0xfffffu;
    const auto gen = static_cast<std::uint16_t>(h >> 24);
    const auto idx = static_cast<std::uint32_t>(h & 0xffffffu);
    if (kind != static_cast<std::uint32_t>(kind_)) return report(Errc::bad_handle, what, "handle of another kind");
    if (owner != owner_)
      return report(Errc::bad_handle, what,
                    kind_ == HandleKind::tile || kind_ == HandleKind::output ? "handle of another worker"
                                                                              : "handle of another client");
    if (idx >= entries_.size()) return report(Errc::bad_handle, what, "handle out of range (forged?)");
    Entry& e = entries_[idx];
    if (!e.used || e.gen != gen) return report(Errc::stale_handle, what, used_up());
    return &e.value;
  }

  // Like find(), without recording an error.
  T* peek(std::uint64_t h) noexcept {
    const auto idx = static_cast<std::uint32_t>(h & 0xffffffu);
    if (h == 0 || static_cast<std::uint32_t>(h >> 60) != static_cast<std::uint32_t>(kind_) ||
        (static_cast<std::uint32_t>(h >> 40) & 0xfffffu) != owner_ || idx >= entries_.size())
      return nullptr;
    Entry& e = entries_[idx];
    return e.used && e.gen == static_cast<std::uint16_t>(h >> 24) ? &e.value : nullptr;
  }

  // Drops the entry a valid handle names (its value is reset to T{}).
  void erase(std::uint64_t h) noexcept {
    const auto idx = static_cast<std::uint32_t>(h & 0xffffffu);
    Entry& e = entries_[idx];
    e.value = T{};
    e.used = false;
    e.gen = static_cast<std::uint16_t>(e.gen + 1);
    --live_;
    free_.push_back(idx);  // capacity reserved at insert: no allocation
  }

  // Erases every live entry (values reset in place).
  void clear() noexcept {
    if (live_ == 0) return;
    for (std::uint32_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].used) erase(make(i, entries_[i].gen));
  }
  std::size_t live() const noexcept { return live_; }

 private:
  struct Entry {
    T value{};
    std::uint16_t gen = 1;
    bool used = false;
  };
  std::uint64_t make(std::uint32_t idx, std::uint16_t gen) const noexcept {
    return (std::uint64_t{static_cast<std::uint32_t>(kind_)} << 60) | (std::uint64_t{owner_} << 40) |
           (std::uint64_t{gen} << 24) | idx;
  }
  T* report(Errc code, const char* what, const char* detail) const noexcept {
    try {
      set_error(code, std::string(what) + ": " + kind_name() + ": " + detail);
    } catch (...) {
      set_error(code, detail);
    }
    return nullptr;
  }
  const char* kind_name() const noexcept {
    switch (kind_) {
      case HandleKind::tile: return "tile";
      case HandleKind::output: return "output";
      case HandleKind::block: return "block";
      case HandleKind::result: return "result";
    }
    return "?";
  }
  const char* used_up() const noexcept {
    switch (kind_) {
      case HandleKind::tile: return "handle already used up (the tile was answered)";
      case HandleKind::output: return "handle already used up (the block was published or freed)";
      case HandleKind::block: return "handle already used up (the block was submitted or freed)";
      case HandleKind::result: return "handle already used up (the result was released)";
    }
    return "?";
  }

  HandleKind kind_;
  std::uint32_t owner_;
  std::deque<Entry> entries_;       // deque: entries never move (results hand out pointers into them)
  std::vector<std::uint32_t> free_;
  std::size_t live_ = 0;
};

}  // namespace tessera::capi
