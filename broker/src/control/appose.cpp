// Appose JSON-lines protocol: lenient parsing, strict emitting, task state machine.
#include <tessera/appose.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>

#include <boost/json/basic_parser_impl.hpp>

namespace tessera::appose {

namespace json = boost::json;

const char* to_string(RequestType t) noexcept {
  switch (t) {
    case RequestType::execute: return "EXECUTE";
    case RequestType::cancel: return "CANCEL";
  }
  return "?";
}

const char* to_string(ResponseType t) noexcept {
  switch (t) {
    case ResponseType::launch: return "LAUNCH";
    case ResponseType::update: return "UPDATE";
    case ResponseType::completion: return "COMPLETION";
    case ResponseType::cancelation: return "CANCELATION";
    case ResponseType::failure: return "FAILURE";
  }
  return "?";
}

const char* to_string(ParseErrc e) noexcept {
  switch (e) {
    case ParseErrc::blank: return "blank";
    case ParseErrc::malformed: return "malformed";
    case ParseErrc::not_object: return "not_object";
    case ParseErrc::missing_field: return "missing_field";
    case ParseErrc::wrong_type: return "wrong_type";
    case ParseErrc::unknown_type: return "unknown_type";
  }
  return "?";
}

const char* to_string(Verdict v) noexcept {
  switch (v) {
    case Verdict::forward: return "forward";
    case Verdict::forward_after_launch: return "forward_after_launch";
    case Verdict::drop_duplicate_launch: return "drop_duplicate_launch";
    case Verdict::drop_after_terminal: return "drop_after_terminal";
  }
  return "?";
}

// ---------------------------------------------------------------------------------
// Non-finite tokens

namespace {
bool is_ident(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '+' || c == '-';
}
}  // namespace

std::string replace_nonfinite_tokens(std::string_view in, std::size_t* replaced) {
  std::string out;
  out.reserve(in.size());
  std::size_t count = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < in.size();) {
    const char c = in[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < in.size()) {
        out.push_back(in[i + 1]);
        i += 2;
        continue;
      }
      if (c == '"') in_string = false;
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out.push_back(c);
      ++i;
      continue;
    }
    const bool boundary_before = (i == 0) || !is_ident(in[i - 1]);
    if (boundary_before) {
      std::size_t len = 0;
      for (std::string_view tok : {std::string_view("-Infinity"), std::string_view("Infinity"),
                                   std::string_view("NaN")}) {
        if (in.substr(i, tok.size()) == tok &&
            (i + tok.size() == in.size() || !is_ident(in[i + tok.size()]))) {
          len = tok.size();
          break;
        }
      }
      if (len != 0) {
        out.append("null");
        ++count;
        i += len;
        continue;
      }
    }
    out.push_back(c);
    ++i;
  }
  if (replaced != nullptr) *replaced = count;
  return out;
}

// ---------------------------------------------------------------------------------
// Parsing

namespace {

Unexpected<ParseError> perr(ParseErrc c, std::string msg) { return unexpected(ParseError{c, std::move(msg)}); }

bool is_blank(std::string_view s) noexcept {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

const char* kind_name(const json::value& v) noexcept {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "bool";
    case json::kind::int64:
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::string: return "string";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
  }
  return "?";
}

unsigned decode_utf8(std::string_view s, std::size_t& i);  // below, with the emitter

// Object keys must be valid UTF-8: the emitter replaces bad bytes by U+FFFD, so two keys
// differing only in bad bytes would become one key and the line would not round-trip
// (found by tessera_fuzz_appose_json). Values stay lenient.
bool keys_valid_utf8(const json::value& v, int depth = 0) {
  if (depth > 64) return true;  // the parser's depth limit is lower anyway
  if (const auto* o = v.if_object()) {
    for (const auto& kv : *o) {
      const std::string_view k = kv.key();
      for (std::size_t i = 0; i < k.size();) {
        if (static_cast<unsigned char>(k[i]) < 0x80) {
          ++i;
          continue;
        }
        const std::size_t at = i;
        if (decode_utf8(k, i) == 0xfffd && !(i == at + 3 && k.substr(at, 3) == "\xef\xbf\xbd")) return false;
      }
      if (!keys_valid_utf8(kv.value(), depth + 1)) return false;
    }
  } else if (const auto* a = v.if_array()) {
    for (const auto& e : *a) {
      if (!keys_valid_utf8(e, depth + 1)) return false;
    }
  }
  return true;
}

// `size` is the pre-2025 name of `rsize` inside shm objects: normalise in place.
void normalise_shm(json::value& v) {
  if (auto* o = v.if_object()) {
    if (auto* t = o->if_contains("appose_type"); t != nullptr && t->is_string() && t->get_string() == "shm") {
      if (!o->contains("rsize")) {
        if (auto* s = o->if_contains("size")) {
          json::value copy = *s;
          o->erase("size");
          o->emplace("rsize", std::move(copy));
        }
      }
    }
    for (auto& kv : *o) normalise_shm(kv.value());
  } else if (auto* a = v.if_array()) {
    for (auto& e : *a) normalise_shm(e);
  }
}

std::optional<std::int64_t> as_int(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(INT64_MAX)) {
    return static_cast<std::int64_t>(v.get_uint64());
  }
  if (v.is_double()) {
    const double d = v.get_double();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

Parsed<std::string> get_id(const json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (v == nullptr) return perr(ParseErrc::missing_field, std::string("missing '") + key + "'");
  if (!v->is_string()) {
    return perr(ParseErrc::wrong_type, std::string("'") + key + "' is " + kind_name(*v) + ", expected string");
  }
  return std::string(v->get_string());
}

// Boost.JSON 1.81's parser rounds some doubles 1 ulp off (it has no precise mode) and
// turns integers beyond 64 bits into doubles. This handler builds the same values as
// json::parse, except that every double is re-read from its text with std::from_chars
// (correctly rounded, so it round-trips bit for bit through the ryu-based serializer),
// and an integer too large for 64 bits is kept as its digits (see kBigIntPrefix).
struct PreciseHandler {
  static constexpr std::size_t max_object_size = json::object::max_size();
  static constexpr std::size_t max_array_size = json::array::max_size();
  static constexpr std::size_t max_key_size = json::string::max_size();
  static constexpr std::size_t max_string_size = json::string::max_size();

  json::value_stack st;
  std::string number;  // the text of a number split across on_number_part calls

  bool on_document_begin(std::error_code&) { return true; }
  bool on_document_end(std::error_code&) { return true; }
  bool on_object_begin(std::error_code&) { return true; }
  bool on_object_end(std::size_t n, std::error_code&) { st.push_object(n); return true; }
  bool on_array_begin(std::error_code&) { return true; }
  bool on_array_end(std::size_t n, std::error_code&) { st.push_array(n); return true; }
  bool on_key_part(json::string_view s, std::size_t, std::error_code&) { st.push_chars(s); return true; }
  bool on_key(json::string_view s, std::size_t, std::error_code&) { st.push_key(s); return true; }
  bool on_string_part(json::string_view s, std::size_t, std::error_code&) { st.push_chars(s); return true; }
  bool on_string(json::string_view s, std::size_t, std::error_code&) { st.push_string(s); return true; }
  bool on_number_part(json::string_view s, std::error_code&) { number.append(s.data(), s.size()); return true; }
  bool on_int64(std::int64_t i, json::string_view, std::error_code&) { number.clear(); st.push_int64(i); return true; }
  bool on_uint64(std::uint64_t u, json::string_view, std::error_code&) { number.clear(); st.push_uint64(u); return true; }
  bool on_double(double d, json::string_view s, std::error_code&) {
    number.append(s.data(), s.size());
    if (number.find_first_of(".eE") == std::string::npos) {
      st.push_string(std::string(kBigIntPrefix) + number);  // an integer beyond 64 bits
    } else {
      double exact = d;
      const auto r = std::from_chars(number.data(), number.data() + number.size(), exact);
      st.push_double(r.ec == std::errc() ? exact : d);  // out of range: keep Boost's (inf -> null)
    }
    number.clear();
    return true;
  }
  bool on_bool(bool b, std::error_code&) { st.push_bool(b); return true; }
  bool on_null(std::error_code&) { st.push_null(); return true; }
  bool on_comment_part(json::string_view, std::error_code&) { return true; }
  bool on_comment(json::string_view, std::error_code&) { return true; }
};

json::value parse_precise(std::string_view text, const json::parse_options& opt, std::error_code& ec) {
  json::basic_parser<PreciseHandler> p(opt);
  p.handler().st.reset();
  const std::size_t n = p.write_some(false, text.data(), text.size(), ec);
  if (!ec && n < text.size()) ec = json::error::extra_data;
  if (ec || !p.done()) {
    if (!ec) ec = json::error::incomplete;
    return nullptr;
  }
  return p.handler().st.release();
}

bool is_bigint_text(std::string_view s) noexcept {
  if (!s.empty() && s.front() == '-') s.remove_prefix(1);
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

Parsed<json::object> parse_object(std::string_view line) {
  if (is_blank(line)) return perr(ParseErrc::blank, "blank line");
  std::size_t nonfinite = 0;
  const std::string text = replace_nonfinite_tokens(line, &nonfinite);
  json::parse_options opt;
  opt.allow_invalid_utf8 = true;  // lenient: the emitter replaces bad bytes by U+FFFD
  std::error_code ec;
  json::value v = parse_precise(text, opt, ec);
  if (ec) {
    std::string shown(line.substr(0, 120));
    return perr(ParseErrc::malformed, "not JSON (" + ec.message() + "): " + shown);
  }
  if (!v.is_object()) return perr(ParseErrc::not_object, std::string("JSON ") + kind_name(v) + ", expected object");
  if (!keys_valid_utf8(v)) return perr(ParseErrc::malformed, "an object key is not valid UTF-8");
  normalise_shm(v);
  return std::move(v.get_object());
}

Parsed<Request> parse_request(std::string_view line) {
  auto obj = parse_object(line);
  if (!obj) return unexpected(obj.error());
  const json::object& o = obj.value();
  auto task = get_id(o, "task");
  if (!task) return unexpected(task.error());
  auto type = get_id(o, "requestType");
  if (!type) return unexpected(type.error());
  Request r;
  r.task = std::move(task.value());
  if (type.value() == "EXECUTE") {
    r.type = RequestType::execute;
    const auto* s = o.if_contains("script");
    if (s == nullptr) return perr(ParseErrc::missing_field, "EXECUTE without 'script'");
    if (!s->is_string()) return perr(ParseErrc::wrong_type, std::string("'script' is ") + kind_name(*s));
    r.script = std::string(s->get_string());
    if (const auto* in = o.if_contains("inputs"); in != nullptr && !in->is_null()) {
      if (!in->is_object()) return perr(ParseErrc::wrong_type, std::string("'inputs' is ") + kind_name(*in));
      r.inputs = in->get_object();
    }
    if (const auto* q = o.if_contains("queue"); q != nullptr && !q->is_null()) {
      if (!q->is_string()) return perr(ParseErrc::wrong_type, std::string("'queue' is ") + kind_name(*q));
      r.queue = std::string(q->get_string());
    }
  } else if (type.value() == "CANCEL") {
    r.type = RequestType::cancel;
  } else {
    return perr(ParseErrc::unknown_type, "unknown requestType '" + type.value() + "'");
  }
  return r;
}

Parsed<Response> parse_response(std::string_view line) {
  auto obj = parse_object(line);
  if (!obj) return unexpected(obj.error());
  json::object& o = obj.value();
  auto task = get_id(o, "task");
  if (!task) return unexpected(task.error());
  auto type = get_id(o, "responseType");
  if (!type) return unexpected(type.error());
  Response r;
  r.task = std::move(task.value());
  const std::string& t = type.value();
  if (t == "LAUNCH") {
    r.type = ResponseType::launch;
  } else if (t == "UPDATE") {
    r.type = ResponseType::update;
    if (const auto* m = o.if_contains("message"); m != nullptr && !m->is_null()) {
      if (!m->is_string()) return perr(ParseErrc::wrong_type, std::string("UPDATE 'message' is ") + kind_name(*m));
      r.message = std::string(m->get_string());
    }
    for (const char* key : {"current", "maximum"}) {
      if (const auto* n = o.if_contains(key); n != nullptr && !n->is_null()) {
        auto iv = as_int(*n);
        if (!iv) return perr(ParseErrc::wrong_type, std::string("UPDATE '") + key + "' is " + kind_name(*n));
        (key[0] == 'c' ? r.current : r.maximum) = *iv;
      }
    }
    if (const auto* i = o.if_contains("info"); i != nullptr && !i->is_null()) {
      if (!i->is_object()) return perr(ParseErrc::wrong_type, std::string("UPDATE 'info' is ") + kind_name(*i));
      r.info = i->get_object();
    }
  } else if (t == "COMPLETION") {
    r.type = ResponseType::completion;
    if (auto* out = o.if_contains("outputs"); out != nullptr && !out->is_null()) {
      if (!out->is_object()) {
        // A terminal line must never be lost (the task would hang): turn it into a FAILURE.
        r.type = ResponseType::failure;
        r.error = std::string("worker sent COMPLETION whose 'outputs' is ") + kind_name(*out) + ", expected object";
      } else {
        r.outputs = std::move(out->get_object());
      }
    }
  } else if (t == "CANCELATION") {
    r.type = ResponseType::cancelation;
  } else if (t == "FAILURE") {
    r.type = ResponseType::failure;
    if (const auto* e = o.if_contains("error"); e != nullptr && !e->is_null()) {
      r.error = e->is_string() ? std::string(e->get_string()) : json::serialize(*e);
    }
  } else {
    return perr(ParseErrc::unknown_type, "unknown responseType '" + t + "'");
  }
  return r;
}

// ---------------------------------------------------------------------------------
// Emitting

namespace {

void append_u16(std::string& out, unsigned cp) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\u%04x", cp & 0xffffu);
  out.append(buf);
}

// Decodes one UTF-8 sequence at s[i]; returns the code point (U+FFFD on error) and advances i.
unsigned decode_utf8(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int len = 0;
  unsigned cp = 0;
  if (b0 >= 0xc2 && b0 <= 0xdf) { len = 2; cp = b0 & 0x1fu; }
  else if (b0 >= 0xe0 && b0 <= 0xef) { len = 3; cp = b0 & 0x0fu; }
  else if (b0 >= 0xf0 && b0 <= 0xf4) { len = 4; cp = b0 & 0x07u; }
  else { ++i; return 0xfffd; }
  if (i + static_cast<std::size_t>(len) > s.size()) { ++i; return 0xfffd; }
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if ((b & 0xc0u) != 0x80u) { ++i; return 0xfffd; }
    cp = (cp << 6) | (b & 0x3fu);
  }
  const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
  if (overlong || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) { ++i; return 0xfffd; }
  i += static_cast<std::size_t>(len);
  return cp;
}

void append_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        case '\b': out.append("\\b"); break;
        case '\f': out.append("\\f"); break;
        default:
          if (c < 0x20 || c == 0x7f) append_u16(out, c);
          else out.push_back(static_cast<char>(c));
      }
      ++i;
      continue;
    }
    const unsigned cp = decode_utf8(s, i);
    if (cp >= 0x10000) {
      const unsigned v = cp - 0x10000;
      append_u16(out, 0xd800u + (v >> 10));
      append_u16(out, 0xdc00u + (v & 0x3ffu));
    } else {
      append_u16(out, cp);
    }
  }
  out.push_back('"');
}

void append_value(std::string& out, const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: out.append("null"); break;
    case json::kind::bool_: out.append(v.get_bool() ? "true" : "false"); break;
    case json::kind::int64: out.append(std::to_string(v.get_int64())); break;
    case json::kind::uint64: out.append(std::to_string(v.get_uint64())); break;
    case json::kind::double_:
      if (!std::isfinite(v.get_double())) out.append("null");  // never NaN/Infinity on the wire
      else out.append(json::serialize(v));
      break;
    case json::kind::string: {
      const std::string_view s(v.get_string());
      if (s.starts_with(kBigIntPrefix) && is_bigint_text(s.substr(kBigIntPrefix.size()))) {
        out.append(s.substr(kBigIntPrefix.size()));  // an integer beyond 64 bits, as it came
      } else {
        append_string(out, s);
      }
      break;
    }
    case json::kind::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v.get_array()) {
        if (!first) out.push_back(',');
        first = false;
        append_value(out, e);
      }
      out.push_back(']');
      break;
    }
    case json::kind::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& kv : v.get_object()) {
        if (!first) out.push_back(',');
        first = false;
        append_string(out, kv.key());
        out.push_back(':');
        append_value(out, kv.value());
      }
      out.push_back('}');
      break;
    }
  }
}

}  // namespace

std::string to_ascii_json(const json::value& v) {
  std::string out;
  append_value(out, v);
  return out;
}

std::string encode(const Request& r) {
  json::object o;
  o["task"] = r.task;
  o["requestType"] = to_string(r.type);
  if (r.type == RequestType::execute) {
    o["script"] = r.script;
    o["inputs"] = r.inputs;
    if (r.queue) o["queue"] = *r.queue;
    else o["queue"] = nullptr;
  }
  std::string line = to_ascii_json(o);
  line.push_back('\n');
  return line;
}

std::string encode(const Response& r) {
  json::object o;
  o["task"] = r.task;
  o["responseType"] = to_string(r.type);
  switch (r.type) {
    case ResponseType::update:
      if (r.message) o["message"] = *r.message;
      if (r.current) o["current"] = *r.current;
      if (r.maximum) o["maximum"] = *r.maximum;
      if (r.info) o["info"] = *r.info;
      else o["info"] = nullptr;
      break;
    case ResponseType::completion:
      if (r.outputs) o["outputs"] = *r.outputs;
      else o["outputs"] = json::object();
      break;
    case ResponseType::failure:
      if (r.error) o["error"] = *r.error;
      break;
    case ResponseType::launch:
    case ResponseType::cancelation: break;
  }
  std::string line = to_ascii_json(o);
  line.push_back('\n');
  return line;
}

// ---------------------------------------------------------------------------------
// Task state machine

// ---------------------------------------------------------------------------------
// Checked request fields

IntField int_field(const json::object& o, std::string_view key, std::int64_t min, std::int64_t max) {
  IntField f;
  const json::value* v = o.if_contains(key);
  if (v == nullptr || v->is_null()) return f;
  // Built by appending: g++ 12 warns falsely (-Wrestrict) on "'" + std::string(...).
  std::string quoted(1, '\'');
  quoted.append(key).push_back('\'');
  const auto range = [&](const std::string& got) {
    f.error = quoted;
    f.error->append(" must be an integer in ").append(std::to_string(min)).append("..").append(std::to_string(max));
    f.error->append(", got ").append(got);
    return f;
  };
  if (v->is_int64()) {
    const std::int64_t i = v->get_int64();
    if (i < min || i > max) return range(std::to_string(i));
    f.value = i;
    return f;
  }
  if (v->is_uint64()) {
    const std::uint64_t u = v->get_uint64();
    if (max < 0 || u > static_cast<std::uint64_t>(max)) return range(std::to_string(u));
    f.value = static_cast<std::int64_t>(u);
    return f;
  }
  if (v->is_double()) {
    const double d = v->get_double();
    // Range first (compared as doubles), then integrality: no out-of-range cast.
    // |d| < 9.2e18 keeps the cast defined where (double)INT64_MAX rounds up to 2^63.
    if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max) && std::fabs(d) < 9.2e18) || std::trunc(d) != d)
      return range(to_ascii_json(*v));
    f.value = static_cast<std::int64_t>(d);
    return f;
  }
  if (v->is_string() && v->get_string().starts_with(kBigIntPrefix)) {
    return range(std::string(v->get_string().subview(kBigIntPrefix.size())));
  }
  f.error = quoted;
  f.error->append(" must be an integer, got ").append(kind_name(*v));
  return f;
}

std::optional<std::string> check_c_string(std::string_view value, std::string_view field) {
  if (value.find('\0') == std::string_view::npos) return std::nullopt;
  std::string msg(1, '\'');
  msg.append(field).append("' contains a NUL character (\\u0000), which cannot be passed to a process");
  return msg;
}

// ---------------------------------------------------------------------------------
// Named shared-memory segments

bool is_shm_name(std::string_view n) noexcept {
  constexpr std::string_view kPrefix = "psm_";
  if (!n.starts_with(kPrefix) || n.size() < kPrefix.size() + 8 || n.size() > kPrefix.size() + 64) return false;
  for (const char c : n.substr(kPrefix.size())) {
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex) return false;
  }
  return true;
}

namespace {
std::optional<std::string> collect_shm(const json::value& v, const std::string& path, std::vector<ShmRef>& out, int depth) {
  if (depth > 64) return path + " nests deeper than 64 levels";
  if (const auto* o = v.if_object()) {
    const auto* t = o->if_contains("appose_type");
    if (t != nullptr && t->is_string() && t->get_string() == "shm") {
      const auto* name = o->if_contains("name");
      if (name == nullptr || !name->is_string()) return path + ".name is missing or not a string";
      const std::string_view n = name->get_string();
      if (!is_shm_name(n))
        return path + ".name " + to_ascii_json(*name) +
               " is not an Appose segment name ('psm_' and 8 to 64 hex digits): not adopted, left untouched";
      const IntField rsize = int_field(*o, "rsize", 1, INT64_MAX);
      if (rsize.error || !rsize.value) return path + ".rsize " + rsize.error.value_or("is missing");
      out.push_back(ShmRef{path, std::string(n), *rsize.value});
      return std::nullopt;
    }
    for (const auto& kv : *o) {
      if (auto e = collect_shm(kv.value(), path + "." + std::string(kv.key()), out, depth + 1)) return e;
    }
  } else if (const auto* a = v.if_array()) {
    for (std::size_t i = 0; i < a->size(); ++i) {
      if (auto e = collect_shm((*a)[i], path + "[" + std::to_string(i) + "]", out, depth + 1)) return e;
    }
  }
  return std::nullopt;
}
}  // namespace

std::optional<std::string> collect_shm_refs(const json::value& v, const std::string& path, std::vector<ShmRef>& out) {
  return collect_shm(v, path, out, 0);
}

Verdict TaskStateMachine::on_response(ResponseType t) noexcept {
  switch (phase_) {
    case TaskPhase::done:
      return Verdict::drop_after_terminal;
    case TaskPhase::queued:
      if (t == ResponseType::launch) {
        phase_ = TaskPhase::launched;
        return Verdict::forward;
      }
      if (is_terminal(t)) {
        phase_ = TaskPhase::done;
        terminal_ = t;
      } else {
        phase_ = TaskPhase::launched;
      }
      return Verdict::forward_after_launch;
    case TaskPhase::launched:
      if (t == ResponseType::launch) return Verdict::drop_duplicate_launch;
      if (is_terminal(t)) {
        phase_ = TaskPhase::done;
        terminal_ = t;
      }
      return Verdict::forward;
  }
  return Verdict::drop_after_terminal;
}

}  // namespace tessera::appose
