// The broker <-> client socket: JSON lines over a Unix stream socket, plus one
// descriptor (the arena memfd) passed with SCM_RIGHTS on the hello line.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include <boost/json.hpp>

#include <tessera/appose.hpp>  // LineFramer: the project's one JSON-lines framer

namespace tessera::wire {

// A message header for one iovec, carrying `fd` (SCM_RIGHTS) when fd >= 0.
struct FdControl {
  alignas(cmsghdr) char buf[CMSG_SPACE(sizeof(int))];
};
inline void prepare_msg(msghdr& mh, iovec& iov, FdControl& ctl, int fd) noexcept {
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (fd < 0) return;
  std::memset(ctl.buf, 0, sizeof ctl.buf);
  mh.msg_control = ctl.buf;
  mh.msg_controllen = sizeof ctl.buf;
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
}

// Sends one line (a '\n' is appended), with `fd` attached if >= 0. Returns false on error.
inline bool send_line(int sock, const boost::json::object& msg, int fd = -1) noexcept {
  std::string line = boost::json::serialize(msg);
  line += '\n';
  iovec iov{line.data(), line.size()};
  msghdr mh{};
  FdControl ctl;
  prepare_msg(mh, iov, ctl, fd);
  std::size_t off = 0;
  while (off < line.size()) {
    iov.iov_base = line.data() + off;
    iov.iov_len = line.size() - off;
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
    mh.msg_control = nullptr;  // the descriptor goes with the first byte only
    mh.msg_controllen = 0;
  }
  return true;
}

// One line as it goes on the wire (the JSON text and a '\n').
inline std::string encode_line(const boost::json::object& msg) {
  std::string line = boost::json::serialize(msg);
  line += '\n';
  return line;
}

// One non-blocking sendmsg of `len` bytes, with `fd` attached if >= 0 (it goes with
// the first byte). Returns the bytes sent, or -1 with errno (EAGAIN: the socket
// buffer is full; wait until it is writable).
inline ssize_t send_some(int sock, const char* data, std::size_t len, int fd = -1) noexcept {
  iovec iov{const_cast<char*>(data), len};
  msghdr mh{};
  FdControl ctl;
  prepare_msg(mh, iov, ctl, fd);
  ssize_t n;
  do {
    n = ::sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n;
}

// Reads what is available into `buf`; returns bytes read (0 = EOF, <0 = error,
// errno set; EAGAIN on a non-blocking socket with nothing to read). If `fd` is not
// null and *fd < 0, the first descriptor received is stored there (close-on-exec);
// every other descriptor the message carried is closed: every SCM_RIGHTS message
// and every descriptor in it, so a peer cannot leak descriptors into this process.
// Descriptors that did not fit the control buffer (MSG_CTRUNC) were never installed
// by the kernel.
inline ssize_t recv_some(int sock, std::string& buf, int* fd) noexcept {
  char data[4096];
  iovec iov{data, sizeof data};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(16 * sizeof(int))];
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int got = -1;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (got < 0) continue;
      if (fd != nullptr && *fd < 0) {
        *fd = got;
      } else {
        ::close(got);
      }
    }
  }
  buf.append(data, static_cast<std::size_t>(n));
  return n;
}

// Splits the bytes recv_some read into lines with appose::LineFramer (each byte is
// scanned once; a line longer than `max_line` is dropped, never buffered) and parses
// each line as a JSON object (malformed lines are skipped).
class LineReader {
 public:
  explicit LineReader(std::size_t max_line = 16u << 20) : framer_(max_line) {}

  // Consumes `bytes` (cleared) and calls fn(object) for each complete line.
  template <class Fn>
  void feed(std::string& bytes, Fn&& fn) {
    framer_.feed(
        bytes,
        [&](std::string_view line) {
          boost::system::error_code ec;
          auto v = boost::json::parse(line, ec);
          if (!ec && v.is_object()) fn(v.as_object());
        },
        [](std::size_t) {});
    bytes.clear();
  }

 private:
  appose::LineFramer framer_;
};

inline std::int64_t get_int(const boost::json::object& o, const char* k, std::int64_t dflt = -1) {
  auto it = o.find(k);
  if (it == o.end() || !it->value().is_int64()) return dflt;
  return it->value().as_int64();
}
inline std::string get_str(const boost::json::object& o, const char* k) {
  auto it = o.find(k);
  if (it == o.end() || !it->value().is_string()) return {};
  return std::string(it->value().as_string());
}

// What a client may send to the broker (docs/design/broker-server.md). Parsing never
// fails: a line that is not one of these is `unknown`, and the broker answers it
// with an error (or, before the hello, closes the connection).
struct ClientMessage {
  enum class Kind : std::uint8_t { unknown, hello, recovered, kill_worker, ping, bye };
  Kind kind = Kind::unknown;
  std::int64_t index = -1;   // recovered, kill_worker: the worker index (-1 if absent or not an integer)
  std::int64_t id = 0;       // ping: echoed in the pong
  std::int64_t version = 0;  // hello: the protocol version the client speaks
  std::string type;          // the "type" as received, at most 64 bytes (for error texts)
};

inline constexpr std::int64_t kProtocolVersion = 1;

inline ClientMessage parse_client(const boost::json::object& o) {
  ClientMessage m;
  m.type = get_str(o, "type");
  if (m.type.size() > 64) m.type.resize(64);
  if (m.type == "hello") {
    m.kind = ClientMessage::Kind::hello;
    m.version = get_int(o, "version", 0);
  } else if (m.type == "recovered") {
    m.kind = ClientMessage::Kind::recovered;
    m.index = get_int(o, "index");
  } else if (m.type == "kill_worker") {
    m.kind = ClientMessage::Kind::kill_worker;
    m.index = get_int(o, "index");
  } else if (m.type == "ping") {
    m.kind = ClientMessage::Kind::ping;
    m.id = get_int(o, "id", 0);
  } else if (m.type == "bye") {
    m.kind = ClientMessage::Kind::bye;
  }
  return m;
}

// The line a client sends for `m` (parse_client(to_json(m)) gives back kind and fields).
inline boost::json::object to_json(const ClientMessage& m) {
  switch (m.kind) {
    case ClientMessage::Kind::hello: return {{"type", "hello"}, {"version", m.version}};
    case ClientMessage::Kind::recovered: return {{"type", "recovered"}, {"index", m.index}};
    case ClientMessage::Kind::kill_worker: return {{"type", "kill_worker"}, {"index", m.index}};
    case ClientMessage::Kind::ping: return {{"type", "ping"}, {"id", m.id}};
    case ClientMessage::Kind::bye: return {{"type", "bye"}};
    case ClientMessage::Kind::unknown: break;
  }
  return {{"type", m.type}};
}

}  // namespace tessera::wire
