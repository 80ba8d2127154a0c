// Classic IPC peers moving the same tiles as Tessera: pipes (default and enlarged
// with F_SETPIPE_SZ), Unix-domain stream sockets, Boost.Interprocess message_queue
// and ZeroMQ ipc:// (PAIR). Every one copies the tile into the kernel or a queue and
// out again; the worker reads every byte from its own buffer and answers 8 bytes.
// All of them block in the kernel (mode "sleep").
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <boost/date_time/posix_time/posix_time_types.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>

#if TESSERA_BENCH_HAVE_ZMQ
#include <zmq.h>
#endif

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {


bool write_all(int fd, const void* p, std::size_t n) {
  const auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = write(fd, b, n);
    if (w < 0) {
      if (errno == EINTR && !watchdog_fired()) continue;
      return false;
    }
    b += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = read(fd, b, n);
    if (r == 0) return false;  // peer closed
    if (r < 0) {
      if (errno == EINTR && !watchdog_fired()) continue;
      return false;
    }
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

struct Buffer {
  explicit Buffer(std::size_t n) : p(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::byte* p;
};

// ---------------------------------------------------------------------------------
// Byte streams: pipes and Unix sockets.

struct FdHost {
  int tx, rx;
  bool send(std::uint64_t seq, std::size_t n) { return write_all(tx, tile_source(seq, n), n); }
  bool recv(std::uint64_t& seq) { return read_all(rx, &seq, sizeof seq); }
};

int fd_worker(int rx, int tx, std::uint64_t total, std::size_t n) {
  Buffer buf(n);
  for (std::uint64_t k = 0; k < total; ++k) {
    if (!read_all(rx, buf.p, n)) return kExitTimeout;
    if (read_tile(buf.p, n) != k) return kExitCorrupt;
    if (!write_all(tx, &k, sizeof k)) return kExitTimeout;
  }
  return 0;
}

enum class Stream { pipe, pipe_big, uds };

int pipe_max_size() {
  std::ifstream f("/proc/sys/fs/pipe-max-size");
  int v = 1 << 20;
  f >> v;
  return v;
}

Record run_stream(Context& ctx, const TileRun& run, Stream kind) {
  Record fail = base_record(run);
  int req[2] = {-1, -1}, rep[2] = {-1, -1};  // [0] read end, [1] write end (for sockets: host, worker)
  if (kind == Stream::uds) {
    int a[2], b[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) != 0) return fail.failed = "socketpair", fail;
    // One bidirectional socket: host writes tiles to a[0] and reads replies from it.
    req[1] = a[0];  // host end
    req[0] = a[1];  // worker end
    b[0] = a[1];
    b[1] = a[0];
    rep[0] = b[1];
    rep[1] = b[0];
  } else {
    if (pipe2(req, O_CLOEXEC) != 0 || pipe2(rep, O_CLOEXEC) != 0) return fail.failed = "pipe2", fail;
    if (kind == Stream::pipe_big) {
      const int want = std::min(1 << 20, pipe_max_size());
      if (fcntl(req[1], F_SETPIPE_SZ, want) < 0) return fail.failed = "F_SETPIPE_SZ refused", fail;
    }
  }
  const CpuSpan span;
  const std::uint64_t total = run.warmup + run.count;
  Record r;
  {
    Watchdog wd(ctx.opt.child_timeout_s);
    Child child = Child::fork_run([&] { return fd_worker(req[0], rep[1], total, run.bytes); });
    FdHost host{req[1], rep[0]};
    r = drive_tiles(host, run);
    finish_child(r, child, span, 10);
  }
  if (kind == Stream::uds) {
    close(req[0]);
    close(req[1]);
  } else {
    for (int fd : {req[0], req[1], rep[0], rep[1]}) close(fd);
  }
  return r;
}

// ---------------------------------------------------------------------------------
// Boost.Interprocess message_queue: a named shared-memory queue with a process-shared
// mutex + condition variable; each message is copied in and out.

namespace bip = boost::interprocess;

boost::posix_time::ptime bip_deadline(double s) {
  return boost::posix_time::microsec_clock::universal_time() +
         boost::posix_time::microseconds(static_cast<long>(s * 1e6));
}

struct MqHost {
  bip::message_queue& req;
  bip::message_queue& rep;
  double timeout_s;
  bool send(std::uint64_t seq, std::size_t n) {
    return req.timed_send(tile_source(seq, n), n, 0, bip_deadline(timeout_s));
  }
  bool recv(std::uint64_t& seq) {
    bip::message_queue::size_type got = 0;
    unsigned prio = 0;
    return rep.timed_receive(&seq, sizeof seq, got, prio, bip_deadline(timeout_s)) && got == sizeof seq;
  }
};

Record run_mq(Context& ctx, const TileRun& run) {
  Record r = base_record(run);
  const std::string tok = unique_token();
  const std::string qreq = "tessera-bench-mq-" + tok + "-req", qrep = "tessera-bench-mq-" + tok + "-rep";
  try {
    bip::message_queue req(bip::create_only, qreq.c_str(), run.inflight + 1, run.bytes, bip::permissions(0600));
    bip::message_queue rep(bip::create_only, qrep.c_str(), run.inflight + 1, sizeof(std::uint64_t),
                           bip::permissions(0600));
    const CpuSpan span;
    const std::uint64_t total = run.warmup + run.count;
    const double to = ctx.opt.child_timeout_s;
    Child child = Child::fork_run([&]() -> int {
      try {
        bip::message_queue in(bip::open_only, qreq.c_str());
        bip::message_queue out(bip::open_only, qrep.c_str());
        Buffer buf(run.bytes);
        for (std::uint64_t k = 0; k < total; ++k) {
          bip::message_queue::size_type got = 0;
          unsigned prio = 0;
          if (!in.timed_receive(buf.p, run.bytes, got, prio, bip_deadline(to))) return kExitTimeout;
          if (got != run.bytes || read_tile(buf.p, got) != k) return kExitCorrupt;
          if (!out.timed_send(&k, sizeof k, 0, bip_deadline(to))) return kExitTimeout;
        }
        return 0;
      } catch (const std::exception&) {
        return kExitSetup;
      }
    });
    MqHost host{req, rep, to};
    r = drive_tiles(host, run);
    finish_child(r, child, span, 10);
  } catch (const std::exception& e) {
    r.failed = std::string("message_queue: ") + e.what();
  }
  bip::message_queue::remove(qreq.c_str());
  bip::message_queue::remove(qrep.c_str());
  return r;
}

// ---------------------------------------------------------------------------------
#if TESSERA_BENCH_HAVE_ZMQ
// ZeroMQ PAIR sockets over ipc:// (a Unix socket underneath, plus ZeroMQ's I/O thread).
struct ZmqHost {
  void* sock;
  bool send(std::uint64_t seq, std::size_t n) {
    return zmq_send(sock, tile_source(seq, n), n, 0) == static_cast<int>(n);
  }
  bool recv(std::uint64_t& seq) { return zmq_recv(sock, &seq, sizeof seq, 0) == static_cast<int>(sizeof seq); }
};

void* zmq_pair(void* zctx, const std::string& ep, bool bind, int timeout_ms) {
  void* s = zmq_socket(zctx, ZMQ_PAIR);
  if (s == nullptr) return nullptr;
  const int zero = 0;
  zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
  zmq_setsockopt(s, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
  if ((bind ? zmq_bind(s, ep.c_str()) : zmq_connect(s, ep.c_str())) != 0) {
    zmq_close(s);
    return nullptr;
  }
  return s;
}

Record run_zmq(Context& ctx, const TileRun& run) {
  Record r = base_record(run);
  const std::string path = "/tmp/tessera-bench-zmq-" + unique_token() + ".ipc";
  const std::string ep = "ipc://" + path;
  const int to_ms = static_cast<int>(ctx.opt.child_timeout_s * 1000);
  const std::uint64_t total = run.warmup + run.count;
  const CpuSpan span;
  // Fork before any ZeroMQ context exists: each process owns its context and I/O thread.
  Child child = Child::fork_run([&]() -> int {
    void* zctx = zmq_ctx_new();
    void* s = zmq_pair(zctx, ep, false, to_ms);
    if (s == nullptr) return kExitSetup;
    Buffer buf(run.bytes);
    int rc = 0;
    for (std::uint64_t k = 0; k < total && rc == 0; ++k) {
      const int got = zmq_recv(s, buf.p, run.bytes, 0);
      if (got < 0) rc = kExitTimeout;
      else if (static_cast<std::size_t>(got) != run.bytes || read_tile(buf.p, run.bytes) != k) rc = kExitCorrupt;
      else if (zmq_send(s, &k, sizeof k, 0) != static_cast<int>(sizeof k)) rc = kExitTimeout;
    }
    zmq_close(s);
    zmq_ctx_term(zctx);
    return rc;
  });
  void* zctx = zmq_ctx_new();
  void* s = zmq_pair(zctx, ep, true, to_ms);
  if (s == nullptr) {
    r.failed = std::string("zmq bind: ") + zmq_strerror(zmq_errno());
  } else {
    ZmqHost host{s};
    r = drive_tiles(host, run);
    zmq_close(s);
  }
  finish_child(r, child, span, 10);
  zmq_ctx_term(zctx);
  unlink(path.c_str());
  return r;
}
#endif

// ---------------------------------------------------------------------------------
template <class Fn>
void sizes_and_workloads(Context& ctx, const char* peer, bool stream, Fn&& fn) {
  const std::string bench = fmt::format("tile/{}/{}", peer, stream ? "stream" : "pingpong");
  std::vector<std::uint64_t> sizes{kDescBytes};
  sizes.insert(sizes.end(), std::begin(kTileSizes), std::end(kTileSizes));
  for (const std::uint64_t bytes : sizes) {
    ctx.progress(fmt::format("{} {}", bench, human_bytes(bytes)));
    ctx.emit(fn(ctx, make_run(ctx, bench, peer, "sleep", bytes, stream, 2.0)));
  }
}

#define TESSERA_BENCH_BOTH(peer, about, fn)                                                                 \
  TESSERA_BENCH_CASE("tile/" peer "/pingpong", about ": round trip",                                        \
                     [](Context& case_ctx) { sizes_and_workloads(case_ctx, peer, false, fn); });                          \
  TESSERA_BENCH_CASE("tile/" peer "/stream", about ": streaming, 8 in flight",                              \
                     [](Context& case_ctx) { sizes_and_workloads(case_ctx, peer, true, fn); })

TESSERA_BENCH_BOTH("pipe", "two pipes, default 64 KiB buffer",
                   [](Context& c, const TileRun& r) { return run_stream(c, r, Stream::pipe); });
TESSERA_BENCH_BOTH("pipe-1m", "two pipes, tile pipe enlarged to 1 MiB (F_SETPIPE_SZ)",
                   [](Context& c, const TileRun& r) { return run_stream(c, r, Stream::pipe_big); });
TESSERA_BENCH_BOTH("uds", "Unix-domain stream socket pair",
                   [](Context& c, const TileRun& r) { return run_stream(c, r, Stream::uds); });
TESSERA_BENCH_BOTH("bip-mq", "Boost.Interprocess message_queue",
                   [](Context& c, const TileRun& r) { return run_mq(c, r); });
#if TESSERA_BENCH_HAVE_ZMQ
TESSERA_BENCH_BOTH("zmq", "ZeroMQ PAIR over ipc://", [](Context& c, const TileRun& r) { return run_zmq(c, r); });
#else
TESSERA_BENCH_CASE("tile/zmq/pingpong", "ZeroMQ (not built)",
                   [](Context& c) { c.skip("tile/zmq", "zmq", "libzmq3-dev not installed at configure time"); });
#endif
#if !TESSERA_BENCH_HAVE_ICEORYX
TESSERA_BENCH_CASE("tile/iceoryx", "Eclipse iceoryx 2.0 (not built)", [](Context& c) {
  c.skip("tile/iceoryx", "iceoryx", "iceoryx_posh not found at configure time (apt install iceoryx libiceoryx-posh-dev)");
});
#endif

}  // namespace
}  // namespace tessera::bench
