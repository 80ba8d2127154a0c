// Real slide files written by the test (nothing downloaded): an Aperio SVS and a generic
// JPEG-tiled pyramidal TIFF, read through the fast reader and through OpenSlide, run
// through the real broker and worker processes; tissue detection, a corrupt tile, bad
// input, peak memory on a huge mostly-background slide and kill -9 mid-run.
#include <gtest/gtest.h>

#include "e2e_support.hpp"
#include "mask_collect.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <tiffio.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <tessera/overlay.hpp>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace ov = tessera::overlay;

namespace {

const std::string kTessera = std::string(TESSERA_BIN_DIR) + "/tessera";

struct TempDir {
  fs::path d;
  TempDir() {
    std::random_device rd;
    d = fs::temp_directory_path() / ("tessera-slides-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(d);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(d, ec);
  }
  std::string operator/(const std::string& n) const { return (d / n).string(); }
};

std::unique_ptr<tessera::Client> make_client(int workers) {
  tessera::ClientOptions o;
  o.arena.classes = {{4096, 64}, {256 * 1024, 256}};
  o.arena.n_rings = 8;
  o.arena.ring_capacity = 256;
  o.arena.prefault = false;
  auto c = tessera::Client::embedded(o);
  if (!c) return nullptr;
  tessera::PoolSpec ps;
  ps.argv = {tessera::test::kExampleWorker};
  ps.count = workers;
  if (!(*c)->start_pool(ps)) return nullptr;
  return std::move(*c);
}

// Runs the pipeline and checks every tile against the per-tile oracle on the same slide;
// tiles not read (background) must be background in the oracle too.
void run_and_check(const ov::Slide& slide, bool all_tiles, tessera::test::CollectingWriter& out, ov::PipelineReport& rep) {
  auto c = make_client(2);
  ASSERT_NE(c, nullptr);
  ov::PipelineOptions po;
  po.grid.tile = slide.native_tile(0);
  ASSERT_GT(po.grid.tile, 0);
  po.readers = 2;
  po.max_in_flight = 64;
  po.all_tiles = all_tiles;
  auto r = ov::run_pipeline(*c, slide, po, out);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  rep = *r;
  EXPECT_EQ(rep.failed, 0);
  EXPECT_EQ(rep.completed + rep.skipped, rep.tiles);
  ov::TileGrid g = po.grid;
  g.width = slide.level_size(0).width;
  g.height = slide.level_size(0).height;
  std::int64_t tissue = 0;
  for (std::int64_t row = 0; row < g.rows(); ++row)
    for (std::int64_t col = 0; col < g.cols(); ++col) {
      std::vector<std::uint8_t> ref;
      int cols = 0, rows = 0;
      ASSERT_TRUE(ov::reference_tile_mask(slide, g, col, row, ref, cols, rows).has_value());
      auto it = out.tiles.find({col, row});
      if (it == out.tiles.end()) {
        EXPECT_TRUE(std::all_of(ref.begin(), ref.end(), [](auto v) { return v == 0; }))
            << "tile " << col << "," << row << " has tissue but was skipped";
        continue;
      }
      EXPECT_EQ(it->second.cols, cols);
      EXPECT_EQ(it->second.rows, rows);
      EXPECT_TRUE(it->second.px == ref) << "tile " << col << "," << row << " differs from the reference";
      for (auto v : ref) tissue += v != 0;
    }
  EXPECT_GT(tissue, 0);
}

struct Proc {
  int rc = -1;
  long maxrss_kb = 0;
  std::string err;
};

// Runs `tessera args...` with stdout to /dev/null and stderr captured; killed after `limit`.
Proc run_tessera(const std::vector<std::string>& args, std::chrono::seconds limit = 120s, int kill_after_ms = -1) {
  Proc p;
  const std::string errf = fs::temp_directory_path() / ("tessera-slides-err-" + std::to_string(getpid()) + "-" +
                                                       std::to_string(std::random_device{}()));
  const pid_t pid = fork();
  if (pid == 0) {
    const int e = ::open(errf.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int n = ::open("/dev/null", O_WRONLY);
    ::dup2(n, 1);
    ::dup2(e, 2);
    std::vector<char*> av{const_cast<char*>(kTessera.c_str())};
    for (const auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    ::execv(kTessera.c_str(), av.data());
    _exit(127);
  }
  const auto t0 = std::chrono::steady_clock::now();
  int st = 0;
  rusage ru{};
  for (;;) {
    const pid_t w = ::wait4(pid, &st, WNOHANG, &ru);
    if (w == pid) break;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    if ((kill_after_ms >= 0 && ms >= kill_after_ms) || ms > std::chrono::duration_cast<std::chrono::milliseconds>(limit).count()) {
      ::kill(pid, SIGKILL);
      ::wait4(pid, &st, 0, &ru);
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  p.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  p.maxrss_kb = ru.ru_maxrss;
  std::ifstream f(errf);
  p.err.assign(std::istreambuf_iterator<char>(f), {});
  fs::remove(errf);
  return p;
}

ov::TestSlideSpec spec(bool aperio, std::int64_t w, std::int64_t h) {
  ov::TestSlideSpec s;
  s.width = w;
  s.height = h;
  s.aperio = aperio;
  s.seed = aperio ? 11 : 7;
  return s;
}

}  // namespace

class Formats : public ::testing::TestWithParam<bool> {};

TEST_P(Formats, FastAndOpenSlideReadersGiveTheReferenceMasks) {
  const bool aperio = GetParam();
  TempDir dir;
  const std::string path = dir / (aperio ? "slide.svs" : "slide.tif");
  ASSERT_TRUE(ov::write_test_slide(path, spec(aperio, 2000, 1500)).has_value());
  auto fast = ov::open_slide(path, ov::ReaderKind::fast);
  ASSERT_TRUE(fast.has_value()) << fast.error().message;
  EXPECT_EQ((*fast)->reader(), "fast");
  auto chosen = ov::open_slide(path);  // auto picks the fast reader for JPEG tiles
  ASSERT_TRUE(chosen.has_value());
  EXPECT_EQ((*chosen)->reader(), "fast");
  EXPECT_EQ((*fast)->native_tile(0), 240);
  EXPECT_NEAR((*fast)->mpp_x(), 0.25, 1e-3);
  EXPECT_NEAR((*fast)->mpp_y(), 0.25, 1e-3);
  {
    tessera::test::CollectingWriter out;
    ov::PipelineReport rep;
    run_and_check(**fast, true, out, rep);
    EXPECT_EQ(rep.completed, rep.tiles);
  }
  if (!ov::openslide_available()) GTEST_SKIP() << "built without OpenSlide";
  auto os = ov::open_slide(path, ov::ReaderKind::openslide);
  ASSERT_TRUE(os.has_value()) << os.error().message;
  EXPECT_EQ((*os)->reader(), "openslide");
  if (aperio) {
    EXPECT_NE((*os)->description().find("(aperio)"), std::string::npos) << (*os)->description();
  }
  EXPECT_NEAR((*os)->mpp_x(), 0.25, 1e-3);
  ASSERT_EQ((*os)->level_count(), (*fast)->level_count());
  for (int l = 0; l < (*os)->level_count(); ++l) {
    EXPECT_EQ((*os)->level_size(l).width, (*fast)->level_size(l).width);
    EXPECT_EQ((*os)->level_size(l).height, (*fast)->level_size(l).height);
    EXPECT_NEAR((*os)->level_size(l).downsample, (*fast)->level_size(l).downsample, 1e-6);
  }
  // Both readers decode the same JPEG data: pixels agree to a few levels (libjpeg-turbo
  // through libtiff's codec vs through TurboJPEG), and aligned or not.
  std::vector<std::uint8_t> a(300 * 200 * 3), b(a.size());
  for (auto [x, y] : {std::pair<int, int>{0, 0}, {480, 240}, {517, 333}, {1900, 1400}}) {
    ASSERT_TRUE((*fast)->read_region(0, x, y, 300, 200, a.data()).has_value());
    ASSERT_TRUE((*os)->read_region(0, x, y, 300, 200, b.data()).has_value());
    int worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    EXPECT_LE(worst, 2) << "at " << x << "," << y;
  }
  tessera::test::CollectingWriter out;
  ov::PipelineReport rep;
  run_and_check(**os, true, out, rep);
  EXPECT_EQ(rep.completed, rep.tiles);
}

INSTANTIATE_TEST_SUITE_P(Slides, Formats, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? std::string("AperioSvs") : std::string("GenericTiff"); });

TEST(Slides, TissueDetectionSkipsExactlyTheBackgroundTiles) {
  TempDir dir;
  const std::string path = dir / "box.tif";
  ov::TestSlideSpec s = spec(false, 2400, 1920);  // 10 x 8 tiles of 240
  const std::int64_t box[4] = {3 * 240, 2 * 240, 7 * 240, 5 * 240};
  std::copy(box, box + 4, s.tissue);
  ASSERT_TRUE(ov::write_test_slide(path, s).has_value());
  auto slide = ov::open_slide(path, ov::ReaderKind::fast);
  ASSERT_TRUE(slide.has_value()) << slide.error().message;
  ASSERT_GE((*slide)->level_count(), 2);
  tessera::test::CollectingWriter out;
  ov::PipelineReport rep;
  run_and_check(**slide, false, out, rep);
  ASSERT_GE(rep.thumb_level, 1);
  // The rule: a tile is read when the tissue box, grown by the margin (one thumbnail pixel),
  // overlaps it. Glass everywhere else.
  const double grow = ov::TissueOptions{}.margin * (*slide)->level_size(rep.thumb_level).downsample;
  std::int64_t expected = 0;
  for (std::int64_t row = 0; row < 8; ++row)
    for (std::int64_t col = 0; col < 10; ++col) {
      const bool keep = col * 240 < box[2] + grow && (col + 1) * 240 > box[0] - grow && row * 240 < box[3] + grow &&
                        (row + 1) * 240 > box[1] - grow;
      expected += keep;
      EXPECT_EQ(out.tiles.count({col, row}) == 1, keep) << "tile " << col << "," << row;
    }
  EXPECT_EQ(rep.skipped, 80 - expected);
  EXPECT_EQ(rep.completed, expected);
  EXPECT_EQ(expected, 6 * 5);  // the 4 x 3 box tiles and a ring of one tile
}

// The pipeline's defaults: 64 tiles in flight for per-tile workers, whole batches queued
// for batched ones (4 per worker), capped; the arena holds that many tiles plus the readers'
// queues, and the client spins only briefly before it sleeps.
TEST(JobSetup, InFlightAndArenaFollowTheWorkersAndTheirBatches) {
  EXPECT_EQ(ov::default_in_flight(2, 0), 64u);
  EXPECT_EQ(ov::default_in_flight(2, 4), 64u);
  EXPECT_EQ(ov::default_in_flight(2, 32), 256u);
  EXPECT_EQ(ov::default_in_flight(4, 128), 2048u);
  EXPECT_EQ(ov::default_in_flight(64, 1024), 4096u);
  EXPECT_EQ(ov::default_in_flight(0, 0), 64u);
  const tessera::ClientOptions co = ov::pipeline_client_options(240, 64, 2, 32);
  std::uint32_t in_blocks = 0, out_blocks = 0;
  for (const auto& c : co.arena.classes) {
    if (c.block_size >= 240u * 240 * 3) in_blocks += c.block_count;
    else if (c.block_size >= 240u * 240) out_blocks += c.block_count;
  }
  EXPECT_GE(in_blocks, 64u + 2 * ov::kReadAheadPerReader);  // in flight + the readers' queues
  EXPECT_GE(out_blocks, 64u);
  EXPECT_EQ(co.max_in_flight, 128u);
  EXPECT_GE(co.worker_window, 64u);  // two batches of 32
  EXPECT_LT(co.wait.spin_ns, tessera::WaitPolicy{}.spin_ns);
}

// A slide whose every read takes `delay` (a slow disk or codec): the readers are then the
// bottleneck and the client thread has nothing to do but wait.
class SlowSlide final : public ov::Slide {
 public:
  SlowSlide(std::unique_ptr<ov::Slide> inner, std::chrono::microseconds delay) : inner_(std::move(inner)), delay_(delay) {}
  std::string description() const override { return "slow " + inner_->description(); }
  int level_count() const override { return inner_->level_count(); }
  ov::LevelSize level_size(int level) const override { return inner_->level_size(level); }
  tessera::Result<void> read_region(int level, std::int64_t x, std::int64_t y, int w, int h, std::uint8_t* rgb) const override {
    std::this_thread::sleep_for(delay_);
    return inner_->read_region(level, x, y, w, h, rgb);
  }
  int native_tile(int level) const override { return inner_->native_tile(level); }
  std::string reader() const override { return inner_->reader(); }

 private:
  std::unique_ptr<ov::Slide> inner_;
  std::chrono::microseconds delay_;
};

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// While every tile in flight is answered and the readers are still decoding, the client
// thread sleeps until a reader finishes (it used to loop on poll(), which returns at once
// when nothing is in flight, and took a whole core from the decoders).
TEST(Slides, TheClientThreadSleepsWhileTheReadersDecode) {
  SlowSlide slide(ov::synthetic_slide(2048, 2048, 5), 3ms);
  tessera::test::CollectingWriter out;
  auto c = make_client(2);
  ASSERT_NE(c, nullptr);
  ov::PipelineOptions po;
  po.grid.tile = 256;
  po.readers = 2;
  po.max_in_flight = 64;
  po.all_tiles = true;
  const double cpu0 = thread_cpu_s();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = ov::run_pipeline(*c, slide, po, out);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = thread_cpu_s() - cpu0;
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->completed, 64);
  EXPECT_EQ(out.tiles.size(), 64u);
  // 64 reads of 3 ms on 2 readers: at least ~96 ms of waiting. A spinning client thread
  // spends all of it on the CPU; a sleeping one a few percent (submits, stitch, wake-ups).
  EXPECT_GE(wall, 0.09);
  EXPECT_LT(cpu, 0.3 * wall) << "client thread CPU " << cpu << " s over " << wall << " s of wall time";
}

TEST(Slides, ACorruptTileFailsOnlyItself) {
  TempDir dir;
  const std::string path = dir / "corrupt.tif";
  ASSERT_TRUE(ov::write_test_slide(path, spec(false, 1920, 1440)).has_value());
  // Overwrite the start of one level-0 tile that has tissue (the middle of the slide).
  const std::int64_t col = 4, row = 3;
  std::uint64_t off = 0;
  {
    TIFF* t = TIFFOpen(path.c_str(), "r");
    ASSERT_NE(t, nullptr);
    std::uint64_t* offs = nullptr;
    ASSERT_EQ(TIFFGetField(t, TIFFTAG_TILEOFFSETS, &offs), 1);
    off = offs[row * 8 + col];
    TIFFClose(t);
  }
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(off));
    const std::string junk(64, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto slide = ov::open_slide(path, ov::ReaderKind::fast);
  ASSERT_TRUE(slide.has_value()) << slide.error().message;
  auto c = make_client(2);
  ASSERT_NE(c, nullptr);
  ov::PipelineOptions po;
  po.grid.tile = 240;
  po.all_tiles = true;
  tessera::test::CollectingWriter out;
  auto rep = ov::run_pipeline(*c, **slide, po, out);
  ASSERT_TRUE(rep.has_value()) << rep.error().message;
  ASSERT_EQ(rep->failed, 1);
  ASSERT_EQ(rep->failures.size(), 1u);
  EXPECT_EQ(rep->failures[0].col, col);
  EXPECT_EQ(rep->failures[0].row, row);
  EXPECT_NE(rep->failures[0].why.find("tile (4,3)"), std::string::npos) << rep->failures[0].why;
  EXPECT_EQ(rep->completed, rep->tiles - 1);
  EXPECT_EQ(out.failed.size(), 1u);
  EXPECT_EQ(out.failed.count({col, row}), 1u);
  EXPECT_EQ(out.tiles.count({col, row}), 0u);
  // Through the CLI: the run completes, lists the tile and exits non-zero (3: partial).
  const auto p = run_tessera({"overlay", path, "--all-tiles", "--no-outputs", "--no-progress"});
  EXPECT_EQ(p.rc, 3) << p.err;
}

TEST(Slides, BadInputIsAClearErrorWithoutOutputs) {
  TempDir dir;
  const std::string good = dir / "good.tif";
  ASSERT_TRUE(ov::write_test_slide(good, spec(false, 1200, 960)).has_value());
  const std::string text = dir / "notes.txt";
  { std::ofstream(text) << "not a slide\n"; }
  const std::string trunc = dir / "truncated.tif";
  {
    fs::copy_file(good, trunc);
    fs::resize_file(trunc, fs::file_size(good) / 2);
  }
  const std::string out = dir / "out.png";
  struct Case {
    std::vector<std::string> args;
    std::string file, what;
  };
  const std::vector<Case> cases = {
      {{"overlay", dir / "missing.svs", "--out", out}, dir / "missing.svs", "no such file"},
      {{"overlay", text, "--out", out}, text, "not a slide"},
      {{"overlay", trunc, "--out", out, "--reader", "fast"}, trunc, "truncated"},
      {{"overlay", good, "--out", out, "--level", "7"}, good, "level 7"},
      {{"overlay", good, "--out", out, "--reader", "fast", "--level", "-1"}, good, "level -1"},
  };
  for (const auto& c : cases) {
    const auto p = run_tessera(c.args, 60s);
    EXPECT_NE(p.rc, 0) << c.what;
    EXPECT_NE(p.err.find(c.file), std::string::npos) << c.what << ": " << p.err;
    EXPECT_NE(p.err.find(c.what), std::string::npos) << c.what << ": " << p.err;
    for (const auto& e : fs::directory_iterator(dir.d))
      EXPECT_EQ(e.path().string().find("out."), std::string::npos) << "left behind: " << e.path();
  }
  // The library says the same.
  auto t = ov::open_slide(trunc, ov::ReaderKind::fast);
  ASSERT_FALSE(t.has_value());
  EXPECT_NE(t.error().message.find("truncated"), std::string::npos) << t.error().message;
}

// A 100k x 100k slide (174,000 native tiles; mostly glass, sparse on disk) keeps the job's
// peak RSS under 512 MiB: nothing holds width x height.
TEST(Slides, PeakMemoryDoesNotGrowWithTheSlide) {
  TempDir dir;
  const std::string path = dir / "huge.tif";
  ov::TestSlideSpec s = spec(false, 100'000, 100'000);
  const std::int64_t box[4] = {40'000, 40'000, 42'400, 41'920};
  std::copy(box, box + 4, s.tissue);
  ASSERT_TRUE(ov::write_test_slide(path, s).has_value());
  std::vector<std::string> args = {"overlay", path, "--no-progress", "--out", dir / "huge.png"};
  const auto p = run_tessera(args, 300s);
  ASSERT_EQ(p.rc, 0) << p.err;
  constexpr long kBudgetKb = 512 * 1024;
  EXPECT_LT(p.maxrss_kb, kBudgetKb) << "peak RSS " << p.maxrss_kb / 1024 << " MiB";
  std::printf("peak RSS of the 100k x 100k run: %ld MiB (budget %ld MiB)\n", p.maxrss_kb / 1024, kBudgetKb / 1024);
}

TEST(Slides, KillNineMidRunLeavesNoCompleteLookingOutput) {
  TempDir dir;
  const std::string path = dir / "slide.tif";
  ASSERT_TRUE(ov::write_test_slide(path, spec(false, 6000, 6000)).has_value());
  const auto p = run_tessera({"overlay", path, "--all-tiles", "--reader", "openslide", "--readers", "1", "--no-progress",
                              "--out", dir / "out.png"},
                             60s, 700);
  EXPECT_EQ(p.rc, 128 + SIGKILL) << "the run ended before the kill; make the slide bigger";
  for (const auto& name : {"out.png", "out.tiff", "out.geojson"}) EXPECT_FALSE(fs::exists(dir.d / name)) << name;
}
