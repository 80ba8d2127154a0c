// The broker <-> client socket: JSON lines over a Unix stream socket, plus one
// descriptor (the arena memfd) passed with SCM_RIGHTS on the hello line.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <boost/json.hpp>

#include <tessera/appose.hpp>  // LineFramer: the project's one JSON-lines framer

namespace tessera::wire {

// Sends one line (a '\n' is appended), with `fd` attached if >= 0. Returns false on error.
inline bool send_line(int sock, const boost::json::object& msg, int fd = -1) noexcept {
  std::string line = boost::json::serialize(msg);
  line += '\n';
  iovec iov{line.data(), line.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    std::memset(ctl, 0, sizeof ctl);
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
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

// Reads what is available into `buf`; returns bytes read (0 = EOF, <0 = error). A
// descriptor received with the data is stored in *fd (close-on-exec).
inline ssize_t recv_some(int sock, std::string& buf, int* fd) noexcept {
  char data[4096];
  iovec iov{data, sizeof data};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int got = -1;
      std::memcpy(&got, CMSG_DATA(c), sizeof(int));
      if (fd != nullptr && *fd < 0) *fd = got;
      else ::close(got);
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

}  // namespace tessera::wire
