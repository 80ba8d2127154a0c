// Appose-style transport, re-implemented faithfully: per tile the host creates a new
// named POSIX segment (psm_xxxxxxxx), writes the tile, sends one JSON line over a pipe;
// the worker attaches by name, reads every byte, detaches and answers one JSON line;
// the host then unmaps and unlinks the segment. In C++ (this file) and in Python
// (bench/python/appose_bench.py, multiprocessing.shared_memory + NumPy).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include <boost/json.hpp>

#include "../common/harness.hpp"
#include "../common/tile_driver.hpp"

namespace tessera::bench {
namespace {

namespace json = boost::json;


bool write_line(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t w = write(fd, s.data() + off, s.size() - off);
    if (w < 0) {
      if (errno == EINTR && !watchdog_fired()) continue;
      return false;
    }
    off += static_cast<std::size_t>(w);
  }
  return true;
}

// Reads one '\n'-terminated line with a small buffer (like a BufferedReader).
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  bool next(std::string& line) {
    line.clear();
    for (;;) {
      const auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return true;
      }
      char tmp[4096];
      const ssize_t r = read(fd_, tmp, sizeof tmp);
      if (r == 0) return false;
      if (r < 0) {
        if (errno == EINTR && !watchdog_fired()) continue;
        return false;
      }
      buf_.append(tmp, static_cast<std::size_t>(r));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

struct Segment {
  std::string name;
  void* p = nullptr;
  std::size_t n = 0;
};

class ApposeHost {
 public:
  ApposeHost(int tx, int rx, unsigned inflight) : tx_(tx), rx_(rx), segs_(inflight) {}
  ~ApposeHost() {
    for (auto& s : segs_) release(s);
  }
  ApposeHost(const ApposeHost&) = delete;
  ApposeHost& operator=(const ApposeHost&) = delete;

  bool send(std::uint64_t seq, std::size_t n) {
    Segment& s = segs_[seq % segs_.size()];
    for (int attempt = 0; attempt < 8; ++attempt) {
      s.name = fmt::format("/psm_{:08x}", static_cast<std::uint32_t>(rng_()));
      const int fd = shm_open(s.name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
      if (fd < 0) {
        if (errno == EEXIST) continue;
        return false;
      }
      if (ftruncate(fd, static_cast<off_t>(n)) != 0) {
        close(fd);
        shm_unlink(s.name.c_str());
        return false;
      }
      s.p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (s.p == MAP_FAILED) {
        s.p = nullptr;
        shm_unlink(s.name.c_str());
        return false;
      }
      s.n = n;
      write_tile(s.p, n, seq);
      json::object o;
      o["task"] = "tile";
      o["seq"] = seq;
      o["shm"] = s.name.substr(1);
      o["size"] = n;
      o["dtype"] = "uint8";
      o["shape"] = json::array{n};
      return write_line(tx_, json::serialize(o) + "\n");
    }
    return false;
  }

  bool recv(std::uint64_t& seq) {
    std::string line;
    if (!rx_.next(line)) return false;
    boost::system::error_code ec;
    const json::value v = json::parse(line, ec);
    if (ec || !v.is_object()) return false;
    const auto* s = v.as_object().if_contains("seq");
    const auto* st = v.as_object().if_contains("status");
    if (s == nullptr || !s->is_int64() || st == nullptr || !st->is_string() || st->as_string() != "done") return false;
    seq = static_cast<std::uint64_t>(s->as_int64());
    release(segs_[seq % segs_.size()]);
    return true;
  }

 private:
  static void release(Segment& s) {
    if (s.p != nullptr) munmap(s.p, s.n);
    if (!s.name.empty()) shm_unlink(s.name.c_str());
    s = Segment{};
  }
  int tx_;
  LineReader rx_;
  std::vector<Segment> segs_;
  std::mt19937 rng_{std::random_device{}()};
};

int appose_worker(int rx, int tx, std::uint64_t total) {
  LineReader in(rx);
  std::string line;
  for (std::uint64_t k = 0; k < total; ++k) {
    if (!in.next(line)) return kExitTimeout;
    boost::system::error_code ec;
    const json::value v = json::parse(line, ec);
    if (ec || !v.is_object()) return kExitCorrupt;
    const auto& o = v.as_object();
    const auto* name = o.if_contains("shm");
    const auto* size = o.if_contains("size");
    const auto* seq = o.if_contains("seq");
    if (name == nullptr || !name->is_string() || size == nullptr || !size->is_int64() || seq == nullptr) return kExitCorrupt;
    std::string nm = "/";
    nm.append(name->as_string().data(), name->as_string().size());
    const auto n = static_cast<std::size_t>(size->as_int64());
    const int fd = shm_open(nm.c_str(), O_RDONLY, 0);
    if (fd < 0) return kExitCorrupt;
    struct stat st {};
    if (fstat(fd, &st) != 0 || static_cast<std::size_t>(st.st_size) < n) {
      close(fd);
      return kExitCorrupt;
    }
    void* p = mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return kExitCorrupt;
    const bool ok = read_tile(p, n) == k;
    munmap(p, n);
    if (!ok) return kExitCorrupt;
    json::object r;
    r["seq"] = k;
    r["status"] = "done";
    if (!write_line(tx, json::serialize(r) + "\n")) return kExitTimeout;
  }
  return 0;
}

Record run_cpp(Context& ctx, const TileRun& run) {
  Record r = base_record(run);
  int req[2], rep[2];
  if (pipe2(req, O_CLOEXEC) != 0 || pipe2(rep, O_CLOEXEC) != 0) {
    r.failed = "pipe2";
    return r;
  }
  {
    Watchdog wd(ctx.opt.child_timeout_s);
    const CpuSpan span;
    const std::uint64_t total = run.warmup + run.count;
    Child child = Child::fork_run([&] { return appose_worker(req[0], rep[1], total); });
    ApposeHost host(req[1], rep[0], run.inflight);
    r = drive_tiles(host, run);
    finish_child(r, child, span, 10);
  }
  for (int fd : {req[0], req[1], rep[0], rep[1]}) close(fd);
  r.note = "new named POSIX segment per tile + JSON lines over pipes";
  return r;
}

Record run_python(Context& ctx, const TileRun& run, const std::string& script) {
  Record r = base_record(run);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    r.failed = "pipe2";
    return r;
  }
  const CpuSpan span;
  Child child = Child::spawn({ctx.opt.python, script, "--size", std::to_string(run.bytes), "--count",
                              std::to_string(run.count), "--warmup", std::to_string(run.warmup), "--inflight",
                              std::to_string(run.inflight)},
                             out[1]);
  close(out[1]);
  std::string text;
  {
    Watchdog wd(ctx.opt.child_timeout_s);
    char buf[65536];
    for (;;) {
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n > 0) text.append(buf, static_cast<std::size_t>(n));
      else if (n < 0 && errno == EINTR && !watchdog_fired()) continue;
      else break;
    }
  }
  close(out[0]);
  const auto ex = child.wait(watchdog_fired() ? 0.1 : 30);
  boost::system::error_code ec;
  const json::value v = json::parse(text, ec);
  if (ec || !v.is_object() || !ex.ok) {
    r.failed = ex.timed_out || watchdog_fired() ? "python host timed out" : "python host failed: " + text.substr(0, 200);
    return r;
  }
  const auto& o = v.as_object();
  Samples s(run.count);
  for (const auto& x : o.at("lat_ns").as_array()) s.add(static_cast<std::uint64_t>(x.to_number<double>()));
  r.ops = run.count;
  r.wall_s = o.at("wall_s").to_number<double>();
  r.ops_per_s = static_cast<double>(run.count) / r.wall_s;
  r.gb_per_s = r.ops_per_s * static_cast<double>(run.bytes) * 1e-9;
  r.latency = s.summarize();
  r.cdf = s.cdf(101);
  r.cpu.push_back({"host", o.at("host_cpu_s").to_number<double>()});
  r.cpu.push_back({"worker", o.at("worker_cpu_s").to_number<double>()});
  r.cpu_wall_s = static_cast<double>(now_ns() - span.t0) * 1e-9;
  r.note = "Python: multiprocessing.shared_memory + NumPy, JSON lines over pipes (/usr/bin/python3 by default)";
  return r;
}

bool python_ready(Context& ctx, std::string& script, std::string& why) {
  script = ctx.opt.exe_dir + "/tessera-bench-appose.py";
  if (!std::filesystem::exists(script)) {
    why = "helper script tessera-bench-appose.py not found next to tessera-bench";
    return false;
  }
  const std::string cmd = ctx.opt.python + " -c 'import numpy, multiprocessing.shared_memory' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    why = ctx.opt.python + " with numpy not available (apt install python3-numpy)";
    return false;
  }
  return true;
}

void cases(Context& ctx, bool python, bool stream) {
  const char* peer = python ? "appose-py" : "appose-cpp";
  const std::string bench = fmt::format("tile/{}/{}", peer, stream ? "stream" : "pingpong");
  std::string script, why;
  if (python && !python_ready(ctx, script, why)) {
    ctx.skip(bench, peer, why);
    return;
  }
  for (const std::uint64_t bytes : kTileSizes) {
    ctx.progress(fmt::format("{} {}", bench, human_bytes(bytes)));
    const TileRun run = make_run(ctx, bench, peer, "sleep", bytes, stream, python ? 8.0 : 4.0);
    ctx.emit(python ? run_python(ctx, run, script) : run_cpp(ctx, run));
  }
}

TESSERA_BENCH_CASE("tile/appose-cpp/pingpong", "Appose-style (C++): new segment + JSON line per tile, round trip",
                   [](Context& c) { cases(c, false, false); });
TESSERA_BENCH_CASE("tile/appose-cpp/stream", "Appose-style (C++): streaming, 8 in flight",
                   [](Context& c) { cases(c, false, true); });
TESSERA_BENCH_CASE("tile/appose-py/pingpong", "Appose-style (Python + NumPy): round trip",
                   [](Context& c) { cases(c, true, false); });
TESSERA_BENCH_CASE("tile/appose-py/stream", "Appose-style (Python + NumPy): streaming, 8 in flight",
                   [](Context& c) { cases(c, true, true); });

}  // namespace
}  // namespace tessera::bench
