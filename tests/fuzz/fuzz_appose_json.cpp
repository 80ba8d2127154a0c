// libFuzzer target: the Appose JSON-lines parser and emitter.
//   - any bytes, as a request, a response or a plain object line: a typed error or a
//     value, never a crash, a sanitizer report or an exception;
//   - round trip: whatever we emit parses back, and emitting that again gives the same
//     line byte for byte (emit(parse(e)) == e) with the same structure;
//   - the line framer gives the same lines whatever the read boundaries.
// The first input byte picks the read boundaries for the framer check.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <tessera/appose.hpp>

namespace ap = tessera::appose;

namespace {

[[noreturn]] void broken(const char* what) {
  (void)what;  // visible in the crash's stack
  std::abort();
}

bool same(const ap::Request& a, const ap::Request& b) {
  return a.task == b.task && a.type == b.type && a.script == b.script && a.inputs == b.inputs && a.queue == b.queue;
}
bool same(const ap::Response& a, const ap::Response& b) {
  return a.task == b.task && a.type == b.type && a.message == b.message && a.current == b.current &&
         a.maximum == b.maximum && a.info == b.info && a.outputs == b.outputs && a.error == b.error;
}

template <class T, class Parse>
void round_trip(const T& first, Parse parse) {
  const std::string e1 = ap::encode(first);
  if (e1.empty() || e1.back() != '\n' || e1.find('\n') != e1.size() - 1) broken("an emitted line is not exactly one line");
  for (const char c : e1) {
    if (static_cast<unsigned char>(c) >= 0x80) broken("emitted a non-ASCII byte");
  }
  auto p1 = parse(e1);
  if (!p1) broken("our own emitted line does not parse");
  const std::string e2 = ap::encode(p1.value());
  if (e2 != e1) broken("emit(parse(emit(x))) differs from emit(x)");
  auto p2 = parse(e2);
  if (!p2 || !same(p1.value(), p2.value())) broken("parse(emit(y)) differs from y");
}

void framer_check(std::string_view bytes, std::uint8_t seed) {
  std::vector<std::string> whole, split;
  ap::LineFramer a(256), b(256);
  std::size_t over_a = 0, over_b = 0;
  a.feed(bytes, [&](std::string_view l) { whole.emplace_back(l); }, [&](std::size_t) { ++over_a; });
  const std::size_t step = 1 + seed % 17;
  for (std::size_t off = 0; off < bytes.size(); off += step)
    b.feed(bytes.substr(off, step), [&](std::string_view l) { split.emplace_back(l); }, [&](std::size_t) { ++over_b; });
  if (whole != split || over_a != over_b) broken("the framer's lines depend on read boundaries");
  if (a.finish() != b.finish()) broken("the framer's trailing line depends on read boundaries");
  for (const auto& l : whole) {
    if (l.size() > 256 || l.find('\n') != std::string::npos) broken("a framed line is over the limit or holds a newline");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t seed = data[0];
  const std::string_view line(reinterpret_cast<const char*>(data + 1), size - 1);
  if (auto r = ap::parse_request(line)) round_trip(r.value(), [](std::string_view s) { return ap::parse_request(s); });
  if (auto r = ap::parse_response(line)) round_trip(r.value(), [](std::string_view s) { return ap::parse_response(s); });
  if (auto o = ap::parse_object(line)) {
    const std::string e1 = ap::to_ascii_json(o.value());
    auto o2 = ap::parse_object(e1);
    if (!o2) broken("an emitted object does not parse");
    if (ap::to_ascii_json(o2.value()) != e1) broken("object emit(parse(e)) != e");
  }
  framer_check(line, seed);
  return 0;
}
