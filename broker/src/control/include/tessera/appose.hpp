// Appose JSON-lines control protocol: request/response types, lenient parsing,
// strict ASCII emitting, a line framer for pipe reads, and the per-task state
// machine that guarantees LAUNCH -> UPDATE* -> exactly one terminal response.
// See docs/protocol.md for the wire contract.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <boost/json.hpp>

#include <tessera/result.hpp>

namespace tessera::appose {

// ---------------------------------------------------------------------------------
// Messages

enum class RequestType : std::uint8_t { execute, cancel };
enum class ResponseType : std::uint8_t { launch, update, completion, cancelation, failure };

const char* to_string(RequestType t) noexcept;
const char* to_string(ResponseType t) noexcept;
inline bool is_terminal(ResponseType t) noexcept {
  return t == ResponseType::completion || t == ResponseType::cancelation || t == ResponseType::failure;
}

struct Request {
  std::string task;                  // opaque id, never validated as a UUID
  RequestType type = RequestType::execute;
  std::string script;                // EXECUTE only
  boost::json::object inputs;        // EXECUTE only; {} when absent
  std::optional<std::string> queue;  // EXECUTE only; nullopt for null/absent
};

struct Response {
  std::string task;
  ResponseType type = ResponseType::launch;
  std::optional<std::string> message;          // UPDATE
  std::optional<std::int64_t> current;         // UPDATE
  std::optional<std::int64_t> maximum;         // UPDATE
  std::optional<boost::json::object> info;     // UPDATE (nullopt -> emitted as null)
  std::optional<boost::json::object> outputs;  // COMPLETION
  std::optional<std::string> error;            // FAILURE
};

// ---------------------------------------------------------------------------------
// Parsing: lenient. Every problem is a typed error the caller logs and counts.

enum class ParseErrc : std::uint8_t {
  blank,          // empty or whitespace-only line (skip silently, but count)
  malformed,      // not JSON
  not_object,     // JSON, but not an object
  missing_field,  // `task` or the type field absent
  wrong_type,     // a field has a type the contract does not allow
  unknown_type,   // requestType / responseType not known (e.g. CRASH)
};
const char* to_string(ParseErrc e) noexcept;

struct ParseError {
  ParseErrc code = ParseErrc::malformed;
  std::string message;
};

// Parse results: the project's Result with the typed parse error.
template <class T>
using Parsed = Result<T, ParseError>;

// Replaces the bare tokens NaN, Infinity and -Infinity found outside strings by
// `null` (Python's json.dumps emits them; Boost.JSON 1.81 rejects them). Returns
// the number of tokens replaced through `replaced` if non-null.
std::string replace_nonfinite_tokens(std::string_view line, std::size_t* replaced = nullptr);

// Numbers are parsed exactly: every double is correctly rounded from its text (so it
// is emitted again bit for bit), and an integer that does not fit 64 bits is kept as
// a string value holding kBigIntPrefix + its digits, which the emitter writes back
// as the bare integer. (Boost.JSON has no arbitrary-precision number kind.)
inline constexpr std::string_view kBigIntPrefix{"\x01tessera:bigint:"};

// Parses one line (with or without its trailing '\n').
Parsed<boost::json::object> parse_object(std::string_view line);
Parsed<Request> parse_request(std::string_view line);
Parsed<Response> parse_response(std::string_view line);

// ---------------------------------------------------------------------------------
// Emitting: strict. ASCII-only (\uXXXX escapes), non-finite doubles become null,
// exactly one '\n'-terminated line, only the documented fields and types.

std::string to_ascii_json(const boost::json::value& v);
std::string encode(const Request& r);   // includes the trailing '\n'
std::string encode(const Response& r);  // includes the trailing '\n'

// ---------------------------------------------------------------------------------
// Checked request fields: a wrong value is an error naming the field, never a silent
// conversion (a double such as 1e300 cast to int is undefined behaviour).

// The integer `key` of `o` in [min, max]: nullopt (the Result) when absent or null;
// an error message naming the field when it is not an integer (1.5, "2", true) or out
// of range. Integral doubles (2.0) are accepted, as JSON does not tell them apart.
struct IntField {
  std::optional<std::int64_t> value;  // absent or null: nullopt
  std::optional<std::string> error;   // set when the field is present and unusable
};
IntField int_field(const boost::json::object& o, std::string_view key, std::int64_t min, std::int64_t max);

// A string field that becomes a C string (argv, environment): an error when it holds
// a NUL byte, which execve would silently cut the string at.
std::optional<std::string> check_c_string(std::string_view value, std::string_view field);

// ---------------------------------------------------------------------------------
// Named shared-memory segments ({"appose_type":"shm","name":..,"rsize":..}).

// Appose's segment names: `psm_` and 8 to 64 hex digits (Python's token_hex, Java's
// Shms). No '/', no '..', nothing that names a path: the only names the `--appose`
// broker adopts and later unlinks.
bool is_shm_name(std::string_view name) noexcept;

struct ShmRef {
  std::string path;   // where it was found, e.g. "outputs.image.shm"
  std::string name;   // a valid is_shm_name()
  std::int64_t rsize; // > 0
};

// Every shm object inside `v` (depth first), validated: a name that is not an Appose
// name, a missing or non-positive rsize, or nesting deeper than 64 levels gives an
// error naming the first bad field; `out` then holds the refs found before it.
std::optional<std::string> collect_shm_refs(const boost::json::value& v, const std::string& path, std::vector<ShmRef>& out);

// ---------------------------------------------------------------------------------
// Line framer for pipe reads. Feed raw bytes; complete lines are handed to the
// sink without their '\n'. A line longer than max_line is discarded up to its
// newline and reported once through the overflow sink.

class LineFramer {
 public:
  explicit LineFramer(std::size_t max_line = 16u << 20) : max_line_(max_line) {}

  template <class LineSink, class OverflowSink>
  void feed(std::string_view bytes, LineSink&& on_line, OverflowSink&& on_overflow) {
    while (!bytes.empty()) {
      const auto nl = bytes.find('\n');
      const std::string_view chunk = bytes.substr(0, nl);
      if (!discarding_) {
        if (buf_.size() + chunk.size() > max_line_) {
          discarding_ = true;
          discarded_ = buf_.size();
          buf_.clear();
        } else {
          buf_.append(chunk);
        }
      }
      if (discarding_) discarded_ += chunk.size();
      if (nl == std::string_view::npos) return;
      if (discarding_) {
        on_overflow(discarded_);
        discarding_ = false;
        discarded_ = 0;
      } else {
        on_line(std::string_view(buf_));
        buf_.clear();
      }
      bytes.remove_prefix(nl + 1);
    }
  }

  // At EOF: a trailing unterminated line (if any) is returned and the framer reset.
  std::optional<std::string> finish() {
    const bool had = !buf_.empty() && !discarding_;
    std::optional<std::string> out;
    if (had) out = std::move(buf_);
    buf_.clear();
    discarding_ = false;
    discarded_ = 0;
    return out;
  }
  std::size_t max_line() const noexcept { return max_line_; }
  std::size_t buffered() const noexcept { return buf_.size(); }

 private:
  std::size_t max_line_;
  std::string buf_;
  bool discarding_ = false;
  std::size_t discarded_ = 0;
};

// ---------------------------------------------------------------------------------
// Per-task state machine. The broker feeds every response a worker sends for a
// task; the verdict says what to forward. Exactly one terminal is ever forwarded.

enum class TaskPhase : std::uint8_t { queued, launched, done };

enum class Verdict : std::uint8_t {
  forward,              // forward as is
  forward_after_launch, // forward a synthesized LAUNCH first (UPDATE/terminal before LAUNCH)
  drop_duplicate_launch,
  drop_after_terminal,  // late or contradictory message after the terminal one
};
const char* to_string(Verdict v) noexcept;
inline bool is_drop(Verdict v) noexcept {
  return v == Verdict::drop_duplicate_launch || v == Verdict::drop_after_terminal;
}

class TaskStateMachine {
 public:
  Verdict on_response(ResponseType t) noexcept;
  TaskPhase phase() const noexcept { return phase_; }
  bool done() const noexcept { return phase_ == TaskPhase::done; }
  std::optional<ResponseType> terminal() const noexcept { return terminal_; }

 private:
  TaskPhase phase_ = TaskPhase::queued;
  std::optional<ResponseType> terminal_;
};

}  // namespace tessera::appose
