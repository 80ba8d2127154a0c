// Private helpers shared by the worker and client C ABIs: error reporting, the
// exception firewall, and checked handle tables (so a stale, foreign or forged
// handle is a detected error, never undefined behaviour).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
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

// Live ABI objects (clients, workers) by handle. The pointer a caller holds
// (tessera_client_t*, tessera_worker_t*) is not the object's address: it is an
// encoded handle `generation:32 | index:16 | tag:8` (odd, so never an aligned
// address; the tag names the kind). Every call resolves it here first, so a
// destroyed, double-destroyed, foreign or forged object pointer is a detected
// error (EINVAL) and the freed object is never dereferenced.
//
// Lookup is lock-free (two atomic loads); register/retire take a mutex (control
// path). Retiring bumps the slot's generation, so a handle of a destroyed object
// stays stale even when its slot is reused. Not detected: destroying an object
// while another thread is inside a call on it (the caller's contract).
template <class T, std::uint8_t Tag>
class ObjectRegistry {
  static_assert((Tag & 1u) == 1u, "odd tags: a handle is never an aligned address");

 public:
  static constexpr std::uint32_t kSlots = 4096;
  constexpr ObjectRegistry() = default;

  // The handle of `obj`, or 0 when every slot is taken (the caller reports it).
  std::uint64_t insert(T* obj) noexcept {
    std::lock_guard<std::mutex> lk(mu_);
    for (std::uint32_t n = 0; n < kSlots; ++n) {
      const std::uint32_t i = (next_ + n) % kSlots;
      Slot& s = slots_[i];
      // relaxed: slot ownership changes only under mu_.
      const std::uint64_t st = s.state.load(std::memory_order_relaxed);
      if ((st & 1u) != 0) continue;
      next_ = i + 1;
      const std::uint64_t gen = (st >> 1) + 1;
      // relaxed: published by the release store of state below.
      s.obj.store(obj, std::memory_order_relaxed);
      // SYNC[registry.state] release: publishes obj -> acquired in resolve().
      s.state.store((gen << 1) | 1u, std::memory_order_release);
      return encode(i, static_cast<std::uint32_t>(gen));
    }
    return 0;
  }

  // The live object a handle names, or nullptr (stale, forged, other kind, null).
  T* resolve(const void* handle) const noexcept {
    std::uint32_t idx = 0, gen = 0;
    if (!decode(handle, idx, gen)) return nullptr;
    const Slot& s = slots_[idx];
    // SYNC[registry.state] acquire: sees obj as insert() stored it.
    if (s.state.load(std::memory_order_acquire) != ((std::uint64_t{gen} << 1) | 1u)) return nullptr;
    // relaxed: ordered after the acquire above; a later reuse changes state first.
    return s.obj.load(std::memory_order_relaxed);
  }

  // Marks the handle's object dead and returns it (the caller deletes it), or nullptr
  // when the handle is not live (double destroy, forged): nothing is touched then.
  T* retire(const void* handle) noexcept {
    std::uint32_t idx = 0, gen = 0;
    if (!decode(handle, idx, gen)) return nullptr;
    std::lock_guard<std::mutex> lk(mu_);
    Slot& s = slots_[idx];
    std::uint64_t live = (std::uint64_t{gen} << 1) | 1u;
    // acq_rel: retires exactly once; resolve() of this generation fails from here on.
    if (!s.state.compare_exchange_strong(live, std::uint64_t{gen} << 1, std::memory_order_acq_rel))
      return nullptr;
    return s.obj.exchange(nullptr, std::memory_order_relaxed);  // relaxed: state already says dead
  }

 private:
  struct Slot {
    std::atomic<std::uint64_t> state{0};  // generation << 1 | live
    std::atomic<T*> obj{nullptr};
  };
  static std::uint64_t encode(std::uint32_t idx, std::uint32_t gen) noexcept {
    return (std::uint64_t{gen} << 24) | (std::uint64_t{idx} << 8) | Tag;
  }
  static bool decode(const void* handle, std::uint32_t& idx, std::uint32_t& gen) noexcept {
    const auto h = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(handle));
    if ((h & 0xffu) != Tag) return false;
    idx = static_cast<std::uint32_t>((h >> 8) & 0xffffu);
    gen = static_cast<std::uint32_t>(h >> 24);
    return idx < kSlots && gen != 0;
  }

  std::array<Slot, kSlots> slots_{};
  std::mutex mu_;
  std::uint32_t next_ = 0;  // under mu_: round robin, so a freed slot is reused late
};

}  // namespace tessera::capi
