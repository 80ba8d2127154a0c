// Control-path results: a small expected-like type with std::expected's member
// names, so that moving to std::expected later is a one-line alias. The one result
// type of the project: the error type defaults to Error; the Appose parser uses it
// with its own typed ParseError (appose.hpp: Parsed<T> = Result<T, ParseError>).
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace tessera {

enum class Errc : int {
  ok = 0,
  invalid_argument = 1,   // caller passed something unusable
  bad_magic = 2,          // arena header: not a Tessera arena
  bad_version = 3,        // arena header: other layout version
  bad_size = 4,           // arena header: sizes disagree with the mapping
  not_ready = 5,          // arena header: creator has not finished initialising
  permission = 6,         // owned by another user, or wrong mode
  system = 7,             // a system call failed (message has errno text)
  stale_handle = 8,       // block handle: generation mismatch or already freed
  bad_handle = 9,         // block handle: out of range / forged
  not_owner = 10,         // block handle: held by another participant
  no_space = 11,          // arena exhausted (normal outcome on hot paths)
  corrupt = 12,           // a shared structure failed validation
  closed = 13,            // stream/ring/channel closed
  timeout = 14,
  protocol = 15,          // malformed or out-of-order control message
  worker_failed = 16,     // worker died or reported an error
  canceled = 17,
  not_found = 18,
  unavailable = 19,       // broker or worker absent
};

const char* errc_name(Errc e) noexcept;

struct Error {
  Errc code = Errc::ok;
  std::string message;

  static Error sys(const std::string& what, int err = errno) {
    return Error{Errc::system, what + ": " + std::strerror(err)};
  }
};

template <class E>
class Unexpected {
 public:
  explicit Unexpected(E e) : e_(std::move(e)) {}
  E& error() & { return e_; }
  E&& error() && { return std::move(e_); }

 private:
  E e_;
};

template <class E>
Unexpected<E> unexpected(E e) {
  return Unexpected<E>(std::move(e));
}

inline Unexpected<Error> fail(Errc code, std::string message) {
  return Unexpected<Error>(Error{code, std::move(message)});
}
inline Unexpected<Error> fail(Error e) { return Unexpected<Error>(std::move(e)); }

template <class T, class E = Error>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::in_place_index<0>, std::move(v)) {}  // NOLINT(google-explicit-constructor)
  Result(Unexpected<E> e) : v_(std::in_place_index<1>, std::move(e).error()) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { check(); return std::get<0>(v_); }
  T&& value() && { check(); return std::get<0>(std::move(v_)); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const E& error() const& { return std::get<1>(v_); }
  E&& error() && { return std::get<1>(std::move(v_)); }

 private:
  void check() const {
    if (!has_value()) {
      // Contract violation: value() on an error. Never reached by correct callers.
      std::fprintf(stderr, "tessera: Result::value() on error: %s\n", std::get<1>(v_).message.c_str());
      std::abort();
    }
  }
  std::variant<T, E> v_;
};

template <class E>
class [[nodiscard]] Result<void, E> {
 public:
  Result() = default;
  Result(Unexpected<E> e) : err_(std::move(e).error()), ok_(false) {}  // NOLINT
  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const E& error() const& { return err_; }
  E&& error() && { return std::move(err_); }

 private:
  E err_;
  bool ok_ = true;
};

}  // namespace tessera
