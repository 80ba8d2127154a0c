// The tile pipeline of the main job: tissue detection -> N readers decode into arena
// blocks -> submit -> poll -> the mask writer. The client is used from the calling thread
// only (alloc, submit, poll); readers get already-allocated blocks through a ring of slots.
#include <tessera/overlay.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <memory>
#include <thread>

#include <tessera/mask_writer.hpp>
#include "tissue_mask.hpp"

namespace tessera::overlay {
namespace {

// A read job: the client thread owns the block and fills tile/data before publishing the
// job; the reader that claims it writes ok/why, then `done`.
struct Slot {
  std::atomic<std::uint32_t> done{0};
  InputBlock block;              // client thread only
  std::uint8_t* data = nullptr;  // the block's bytes (the reader writes the tile here)
  std::int64_t tile = 0;         // grid index
  bool ok = true;
  std::string why;
};

struct ReadQueue {
  explicit ReadQueue(std::size_t k) : slots(std::make_unique<Slot[]>(k)), size(k) {}
  std::unique_ptr<Slot[]> slots;
  std::size_t size;
  std::atomic<std::uint64_t> published{0};  // jobs [0, published) may be claimed
  std::atomic<std::uint64_t> claimed{0};    // next job to claim
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> read_ns{0};
};

void reader_loop(ReadQueue& q, const Slide& slide, const TileGrid& g) {
  const int edge = g.input_edge();
  std::int64_t busy = 0;
  unsigned idle = 0;
  for (;;) {
    std::uint64_t c = q.claimed.load(std::memory_order_relaxed);
    // SYNC[read-publish]: acquire pairs with the client's release store of `published`; the
    // slot's tile/data written before it are visible here.
    const std::uint64_t p = q.published.load(std::memory_order_acquire);
    if (c < p) {
      // SYNC[read-claim]: relaxed; the CAS only hands each job to one reader, the data it
      // guards were published through `published` above.
      if (!q.claimed.compare_exchange_weak(c, c + 1, std::memory_order_relaxed)) continue;
      idle = 0;
      Slot& s = q.slots[c % q.size];
      const auto t0 = Clock::now();
      const std::int64_t col = s.tile % g.cols(), row = s.tile / g.cols();
      auto r = slide.read_region(g.level, col * g.tile - g.overlap, row * g.tile - g.overlap, edge, edge, s.data);
      busy += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
      s.ok = static_cast<bool>(r);
      if (!r) s.why = r.error().message;
      // SYNC[read-done]: release pairs with the client's acquire load of `done`; the pixels,
      // ok and why written above are visible to it.
      s.done.store(1, std::memory_order_release);
      s.done.notify_one();  // a syscall only when the client thread sleeps on it
      continue;
    }
    // SYNC[read-stop]: acquire pairs with the client's release store when it ends the run.
    if (q.stop.load(std::memory_order_acquire)) break;
    // Spin briefly, then sleep: an idle reader must not take a core from the workers.
    if (++idle < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  // SYNC[read-ns]: relaxed; summed after join(), which orders it.
  q.read_ns.fetch_add(busy, std::memory_order_relaxed);
}

// A /proc file's text (empty when the process is gone; iostreams throw on ESRCH).
std::string slurp(const std::string& path) {
  std::string s;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return s;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return s;
}

// CPU seconds and peak RSS (KiB) of a process from /proc (the workers are alive children,
// so RUSAGE_CHILDREN does not see them yet).
void proc_usage(int pid, double& cpu_s, long& hwm_kb) {
  cpu_s = 0;
  hwm_kb = 0;
  std::string line = slurp("/proc/" + std::to_string(pid) + "/stat");
  if (!line.empty()) {
    const auto rp = line.rfind(')');
    if (rp != std::string::npos) {
      std::istringstream is(line.substr(rp + 2));
      std::string f;
      unsigned long long ut = 0, st = 0;
      for (int i = 3; i <= 15 && is >> f; ++i) {
        if (i == 14) ut = std::stoull(f);
        if (i == 15) st = std::stoull(f);
      }
      cpu_s = static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  std::istringstream status(slurp("/proc/" + std::to_string(pid) + "/status"));
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) hwm_kb = std::atol(line.c_str() + 6);
}

double self_cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

}  // namespace

int default_readers() noexcept {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 2 : static_cast<int>(std::min(n, 64U));
}

Result<TissueMap> detect_tissue(const Slide& slide, const TileGrid& grid, const TissueOptions& opts) {
  const auto t0 = Clock::now();
  TileGrid g = grid;
  const LevelSize run = slide.level_size(g.level);
  g.width = run.width;
  g.height = run.height;
  TissueMap m;
  const auto ntiles = static_cast<std::size_t>(g.count());
  // The coarsest level where a tile still covers at least 4x4 thumbnail pixels.
  int best = -1;
  double best_rel = 1;
  for (int l = 0; l < slide.level_count(); ++l) {
    const LevelSize ls = slide.level_size(l);
    const double rel = ls.downsample / run.downsample;
    if (rel < 0.999 || static_cast<double>(g.tile) / rel < 4) continue;
    if (ls.width * ls.height > (std::int64_t{1} << 26)) continue;  // thumbnail too big to scan cheaply
    if (best < 0 || rel > best_rel) {
      best = l;
      best_rel = rel;
    }
  }
  if (best < 0) {  // no level small enough: every tile is read
    m.keep.assign(ntiles, 1);
    m.kept = static_cast<std::int64_t>(ntiles);
    m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return m;
  }
  m.keep.assign(ntiles, 0);
  m.thumb_level = best;
  const LevelSize ts = slide.level_size(best);
  // Bands of one native tile row (each thumbnail tile decoded once), else 64 rows.
  const int nt = slide.native_tile(best);
  const int band = nt >= 16 && nt <= 1024 ? nt : 64;
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(ts.width) * band * 3);
  const double mg = opts.margin;
  for (std::int64_t y0 = 0; y0 < ts.height; y0 += band) {
    const int h = static_cast<int>(std::min<std::int64_t>(band, ts.height - y0));
    if (auto r = slide.read_region(best, 0, y0, static_cast<int>(ts.width), h, rgb.data()); !r)
      return fail(r.error().code, "tissue detection on level " + std::to_string(best) + ": " + r.error().message);
    for (int yy = 0; yy < h; ++yy)
      for (std::int64_t x = 0; x < ts.width; ++x) {
        const std::uint8_t* p = &rgb[(static_cast<std::size_t>(yy) * static_cast<std::size_t>(ts.width) + static_cast<std::size_t>(x)) * 3];
        const int mx = std::max({p[0], p[1], p[2]}), mn = std::min({p[0], p[1], p[2]});
        const bool tissue = (p[0] + p[1] + p[2]) < 3 * opts.max_brightness || mx - mn > opts.min_saturation;
        if (!tissue) continue;
        const std::int64_t y = y0 + yy;
        // The thumbnail pixel's footprint at the run level, grown by the margin.
        const double fx0 = (static_cast<double>(x) - mg) * best_rel, fx1 = (static_cast<double>(x) + 1 + mg) * best_rel;
        const double fy0 = (static_cast<double>(y) - mg) * best_rel, fy1 = (static_cast<double>(y) + 1 + mg) * best_rel;
        const std::int64_t c0 = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(fx0 / g.tile)));
        const std::int64_t c1 = std::min<std::int64_t>(g.cols() - 1, static_cast<std::int64_t>(std::ceil(fx1 / g.tile)) - 1);
        const std::int64_t r0 = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(fy0 / g.tile)));
        const std::int64_t r1 = std::min<std::int64_t>(g.rows() - 1, static_cast<std::int64_t>(std::ceil(fy1 / g.tile)) - 1);
        for (std::int64_t r = r0; r <= r1; ++r)
          for (std::int64_t c = c0; c <= c1; ++c) m.keep[static_cast<std::size_t>(r * g.cols() + c)] = 1;
      }
  }
  for (auto k : m.keep) m.kept += k;
  m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return m;
}

Result<PipelineReport> run_pipeline(Client& client, const Slide& slide, const PipelineOptions& opts, MaskWriter& out) {
  TileGrid g = opts.grid;
  if (g.level < 0 || g.level >= slide.level_count())
    return fail(Errc::invalid_argument, "pipeline: the slide has no level " + std::to_string(g.level) + " (it has " +
                                            std::to_string(slide.level_count()) + ")");
  if (g.tile < 8 || g.overlap < 0 || g.overlap > g.tile) return fail(Errc::invalid_argument, "pipeline: bad tile size/overlap");
  const LevelSize ls = slide.level_size(g.level);
  g.width = ls.width;
  g.height = ls.height;
  if (g.width > std::numeric_limits<std::int32_t>::max() || g.height > std::numeric_limits<std::int32_t>::max())
    return fail(Errc::invalid_argument, "pipeline: level too large for 32-bit tile coordinates");

  PipelineReport rep;
  rep.tiles = g.count();
  const auto t0 = Clock::now();
  const double cpu0 = self_cpu_s();
  std::vector<std::int64_t> todo;
  if (opts.all_tiles) {
    todo.resize(static_cast<std::size_t>(rep.tiles));
    for (std::size_t i = 0; i < todo.size(); ++i) todo[i] = static_cast<std::int64_t>(i);
  } else {
    auto tm = detect_tissue(slide, g, opts.tissue);
    if (!tm) return fail(std::move(tm).error());
    rep.thumb_level = tm->thumb_level;
    rep.tissue_s = tm->seconds;
    todo.reserve(static_cast<std::size_t>(tm->kept));
    for (std::size_t i = 0; i < tm->keep.size(); ++i)
      if (tm->keep[i] != 0) todo.push_back(static_cast<std::int64_t>(i));
  }
  rep.skipped = rep.tiles - static_cast<std::int64_t>(todo.size());
  const auto total = static_cast<std::int64_t>(todo.size());

  StreamOptions so;
  so.ordering = opts.ordered ? Ordering::submission : Ordering::completion;
  so.max_in_flight = opts.max_in_flight;
  auto stream = client.open_stream(so);
  if (!stream) return fail(std::move(stream).error());

  const std::vector<WorkerInfo> w0 = client.workers();
  std::vector<double> wcpu0(w0.size());
  for (std::size_t i = 0; i < w0.size(); ++i) {
    long hwm = 0;
    proc_usage(w0[i].pid, wcpu0[i], hwm);
  }

  const int edge = g.input_edge();
  const std::uint64_t nbytes = static_cast<std::uint64_t>(edge) * static_cast<std::uint64_t>(edge) * 3;
  rep.readers = std::max(1, opts.readers > 0 ? opts.readers : default_readers());
  // Enough read jobs queued that no reader waits for the client thread.
  ReadQueue q(static_cast<std::size_t>(std::max(8, rep.readers * kReadAheadPerReader)));
  std::vector<std::thread> readers;
  struct Joiner {
    ReadQueue& q;
    std::vector<std::thread>& t;
    ~Joiner() {
      // SYNC[read-stop]: release pairs with the readers' acquire load.
      q.stop.store(true, std::memory_order_release);
      for (auto& th : t)
        if (th.joinable()) th.join();
    }
  } joiner{q, readers};
  for (int i = 0; i < rep.readers; ++i) readers.emplace_back(reader_loop, std::ref(q), std::cref(slide), std::cref(g));

  auto failed_tile = [&](std::int64_t col, std::int64_t row, const std::string& why) -> Result<void> {
    ++rep.failed;
    rep.failures.push_back({col, row, why});
    return out.mark_failed(col, row, why);
  };

  std::uint64_t head = 0, tail = 0;  // jobs published / handed on (submitted or failed)
  std::int64_t done = 0;
  std::vector<TileResult> results;
  results.reserve(256);
  double stitch_s = 0;
  std::int64_t reported = -1;  // `done` as last passed to opts.progress
  while (done < total) {
    bool progressed = false;
    // Hand new read jobs to the readers, each with its arena block.
    while (head < static_cast<std::uint64_t>(total) && head - tail < q.size) {
      Slot& s = q.slots[head % q.size];
      if (client.try_alloc(nbytes, s.block) != AllocStatus::ok) break;
      s.data = reinterpret_cast<std::uint8_t*>(s.block.bytes().data());
      s.tile = todo[head];
      s.ok = true;
      s.why.clear();
      // SYNC[read-done]: relaxed reset; only this thread reads `done` after the reader's release.
      s.done.store(0, std::memory_order_relaxed);
      ++head;
      // SYNC[read-publish]: release pairs with the readers' acquire load of `published`.
      q.published.store(head, std::memory_order_release);
      progressed = true;
    }
    // Submit the filled blocks in job order.
    while (tail < head) {
      Slot& s = q.slots[tail % q.size];
      // SYNC[read-done]: acquire pairs with the reader's release store.
      if (s.done.load(std::memory_order_acquire) == 0) break;
      const std::int64_t col = s.tile % g.cols(), row = s.tile / g.cols();
      if (!s.ok) {
        s.block = InputBlock{};
        if (auto r = failed_tile(col, row, s.why); !r) return fail(std::move(r).error());
        ++done;
        ++tail;
        progressed = true;
        continue;
      }
      TileMeta meta{};
      meta.dtype = DType::UInt8;
      meta.shape = {static_cast<std::uint32_t>(edge), static_cast<std::uint32_t>(edge), 3};
      meta.level = static_cast<std::uint8_t>(g.level);
      meta.x = static_cast<std::int32_t>(col * g.tile);
      meta.y = static_cast<std::int32_t>(row * g.tile);
      meta.op = opts.op;
      meta.tag = static_cast<std::uint64_t>(s.tile);
      auto r = client.submit(*stream, s.block, meta, SubmitMode::fail_fast);
      if (!r) {
        if (r.error().code == Errc::no_space) break;
        return fail(std::move(r).error());
      }
      ++tail;
      progressed = true;
    }
    client.poll(results, 256, progressed ? std::chrono::microseconds(0) : std::chrono::microseconds(200));
    if (results.empty() && !progressed && client.in_flight() == 0 && tail < head) {
      // Nothing in flight, so poll() returned at once: the next event is a reader finishing
      // job `tail`. Sleep on that (std::atomic::wait spins a few rounds, then futex); looping
      // here would take a core from the decoders, the stage that bounds the run.
      // SYNC[read-done]: acquire pairs with the reader's release store and notify.
      q.slots[tail % q.size].done.wait(0, std::memory_order_acquire);
    }
    // The stitch is timed only when there is one (no clock read on an empty round).
    const auto ts = results.empty() ? Clock::time_point{} : Clock::now();
    for (auto& r : results) {
      ++done;
      const auto tile = static_cast<std::int64_t>(r.meta.tag);
      const std::int64_t col = tile % g.cols(), row = tile / g.cols();
      if (r.outcome == Outcome::completed) {
        const auto m = r.output.view().as<const std::uint8_t>();
        if (m.size() != static_cast<std::size_t>(edge) * static_cast<std::size_t>(edge)) {
          if (auto f = failed_tile(col, row, "worker returned " + std::to_string(m.size()) + " bytes, expected " +
                                                 std::to_string(edge * edge));
              !f)
            return fail(std::move(f).error());
          continue;
        }
        ++rep.completed;
        const int cols = static_cast<int>(std::min<std::int64_t>(g.tile, g.width - col * g.tile));
        const int rows = static_cast<int>(std::min<std::int64_t>(g.tile, g.height - row * g.tile));
        const std::uint8_t* inner = m.data() + static_cast<std::size_t>(g.overlap) * static_cast<std::size_t>(edge) + static_cast<std::size_t>(g.overlap);
        if (auto p = out.put_tile(col, row, inner, cols, rows, static_cast<std::size_t>(edge)); !p) return fail(std::move(p).error());
      } else {
        if (r.outcome == Outcome::canceled) ++rep.canceled;
        if (auto f = failed_tile(col, row, r.error.empty() ? "canceled" : r.error); !f) return fail(std::move(f).error());
        if (r.outcome == Outcome::canceled) --rep.failed;
      }
    }
    if (!results.empty()) stitch_s += std::chrono::duration<double>(Clock::now() - ts).count();
    results.clear();
    if (opts.progress && done != reported) {
      reported = done;
      opts.progress(done, total);
    }
  }
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  rep.tiles_per_s = rep.seconds > 0 ? static_cast<double>(total) / rep.seconds : 0;
  rep.stitch_s = stitch_s;
  const StreamStats st = client.stats(*stream);
  rep.p50_us = st.p50_us;
  rep.p99_us = st.p99_us;
  const std::vector<WorkerInfo> w1 = client.workers();
  for (std::size_t i = 0; i < w1.size(); ++i) {
    const std::uint64_t b0 = i < w0.size() ? w0[i].busy_ns : 0;
    const double busy = static_cast<double>(w1[i].busy_ns - std::min(b0, w1[i].busy_ns)) / 1e9;
    rep.worker_s += busy;
    rep.worker_utilisation.push_back(rep.seconds > 0 ? busy / rep.seconds : 0);
    double c = 0;
    long hwm = 0;
    proc_usage(w1[i].pid, c, hwm);
    rep.workers_cpu_s += std::max(0.0, c - (i < wcpu0.size() && w0[i].pid == w1[i].pid ? wcpu0[i] : 0.0));
    rep.workers_peak_rss_kb += hwm;
  }
  (void)client.close_stream(*stream);
  // SYNC[read-stop]: release pairs with the readers' acquire load; join() orders read_ns.
  q.stop.store(true, std::memory_order_release);
  for (auto& th : readers) th.join();
  rep.read_s = static_cast<double>(q.read_ns.load(std::memory_order_relaxed)) / 1e9;
  rep.host_cpu_s = self_cpu_s() - cpu0;
  return rep;
}

Result<void> reference_tile_mask(const Slide& slide, const TileGrid& grid, std::int64_t col, std::int64_t row,
                                 std::vector<std::uint8_t>& mask, int& cols, int& rows, int threshold) {
  const LevelSize ls = slide.level_size(grid.level);
  const int edge = grid.input_edge();
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(edge) * static_cast<std::size_t>(edge) * 3);
  std::vector<std::uint8_t> full(static_cast<std::size_t>(edge) * static_cast<std::size_t>(edge));
  if (auto r = slide.read_region(grid.level, col * grid.tile - grid.overlap, row * grid.tile - grid.overlap, edge, edge, rgb.data()); !r)
    return r;
  examples::tissue_mask(rgb.data(), full.data(), full.size(), threshold);
  cols = static_cast<int>(std::min<std::int64_t>(grid.tile, ls.width - col * grid.tile));
  rows = static_cast<int>(std::min<std::int64_t>(grid.tile, ls.height - row * grid.tile));
  mask.resize(static_cast<std::size_t>(cols) * static_cast<std::size_t>(rows));
  for (int r = 0; r < rows; ++r)
    std::memcpy(&mask[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols)],
                &full[static_cast<std::size_t>(r + grid.overlap) * static_cast<std::size_t>(edge) + static_cast<std::size_t>(grid.overlap)],
                static_cast<std::size_t>(cols));
  return {};
}

void reference_mask(const Slide& slide, const TileGrid& grid, std::vector<std::uint8_t>& mask, int threshold) {
  const LevelSize ls = slide.level_size(grid.level);
  mask.assign(static_cast<std::size_t>(ls.width * ls.height), 0);
  TileGrid g = grid;
  g.width = ls.width;
  g.height = ls.height;
  std::vector<std::uint8_t> t;
  for (std::int64_t row = 0; row < g.rows(); ++row)
    for (std::int64_t col = 0; col < g.cols(); ++col) {
      int cols = 0, rows = 0;
      if (!reference_tile_mask(slide, g, col, row, t, cols, rows, threshold)) continue;
      for (int r = 0; r < rows; ++r)
        std::memcpy(&mask[static_cast<std::size_t>((row * g.tile + r) * ls.width + col * g.tile)],
                    &t[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols)], static_cast<std::size_t>(cols));
    }
}

}  // namespace tessera::overlay
