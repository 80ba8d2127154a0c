// libFuzzer target (clang, TESSERA_LIBFUZZER=ON): the `tessera-broker --listen`
// wire protocol as the broker reads it from a client.
//   bin/tessera_fuzz_listen_wire -max_total_time=60 tests/fuzz/corpus/tessera_fuzz_listen_wire
// The first byte chooses how the rest is cut into reads (as a socket would), and a
// short maximum line length, so framing across reads and overlong lines are hit.
// Properties checked on every input:
//   - framing: wire::LineReader delivers exactly the complete lines of at most
//     max_line bytes that parse as JSON objects, in order, whatever the cut;
//   - every message type: wire::parse_client never fails, and for every known
//     message, parse_client(to_json(m)) gives back the same message;
//   - the fields a client reads from the broker's messages (get_int/get_str on any
//     object, including nested worker records) never fail.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "wire.hpp"

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "listen wire property failed: %s\n", what);
    std::abort();
  }
}

bool same(const tessera::wire::ClientMessage& a, const tessera::wire::ClientMessage& b) {
  using K = tessera::wire::ClientMessage::Kind;
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case K::hello: return a.version == b.version;
    case K::recovered:
    case K::kill_worker: return a.index == b.index;
    case K::ping: return a.id == b.id;
    case K::bye: return true;
    case K::unknown: return a.type == b.type;
  }
  return false;
}

void read_like_a_client(const boost::json::object& o) {
  // What connect.cpp reads from each broker message; must never throw or crash.
  (void)tessera::wire::get_str(o, "type");
  (void)tessera::wire::get_str(o, "reason");
  (void)tessera::wire::get_str(o, "message");
  for (const char* k : {"index", "slot", "channel", "pid", "client_slot", "max_retries", "cancel_grace_ms", "version", "id"})
    (void)tessera::wire::get_int(o, k);
  if (auto it = o.find("workers"); it != o.end() && it->value().is_array())
    for (const auto& v : it->value().as_array())
      if (v.is_object()) read_like_a_client(v.as_object());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned cut = data[0];
  const std::size_t max_line = (cut & 0x80u) != 0 ? 64 : 4096;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);

  // Reference framing: complete lines, in order, those within max_line.
  std::vector<std::string_view> expected;
  {
    std::string_view rest = bytes;
    for (std::size_t nl; (nl = rest.find('\n')) != std::string_view::npos; rest.remove_prefix(nl + 1)) {
      const std::string_view line = rest.substr(0, nl);
      if (line.size() > max_line) continue;
      boost::system::error_code ec;
      const auto v = boost::json::parse(line, ec);
      if (!ec && v.is_object()) expected.push_back(line);
    }
  }

  tessera::wire::LineReader reader(max_line);
  std::size_t got = 0;
  std::string chunk;
  std::size_t off = 0, step = 0;
  while (off < bytes.size()) {
    // Read sizes 1..32 cycling through the low bits of the first byte, or one read.
    const std::size_t len = (cut & 0x40u) != 0 ? bytes.size() : 1 + ((cut + step * 7) & 31u);
    ++step;
    chunk.assign(bytes.substr(off, len));
    off += chunk.size();
    reader.feed(chunk, [&](const boost::json::object& o) {
      check(got < expected.size(), "more lines delivered than the input holds");
      boost::system::error_code ec;
      const auto ref = boost::json::parse(expected[got], ec);
      check(!ec && ref.is_object() && ref.as_object() == o, "a delivered line differs from the input's line");
      ++got;
      const tessera::wire::ClientMessage m = tessera::wire::parse_client(o);
      check(m.type.size() <= 64, "the type kept for error texts is bounded");
      if (m.kind != tessera::wire::ClientMessage::Kind::unknown) {
        const std::string line = tessera::wire::encode_line(tessera::wire::to_json(m));
        check(!line.empty() && line.back() == '\n' && line.find('\n') == line.size() - 1, "an encoded message is one line");
        const auto back = boost::json::parse(std::string_view(line).substr(0, line.size() - 1), ec);
        check(!ec && back.is_object(), "an encoded message parses");
        check(same(m, tessera::wire::parse_client(back.as_object())), "parse(encode(m)) != m");
      }
      read_like_a_client(o);
    });
    check(chunk.empty(), "feed consumes its input");
  }
  check(got == expected.size(), "fewer lines delivered than the input holds");
  return 0;
}
