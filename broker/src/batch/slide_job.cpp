// One slide through the current overlay library API (run_pipeline + PNG outputs).
#include <tessera/batch/slide_job.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/core.h>

#include <tessera/overlay.hpp>

#include <tessera/mask_writer.hpp>  // the streaming outputs of the overlay pipeline

namespace tessera::batch {
namespace fs = std::filesystem;

namespace {

// "synthetic:SIZE:SEED" -> the built-in procedural slide (tests, demos, benchmarks).
Result<std::unique_ptr<overlay::Slide>> open_job_slide(const std::string& slide) {
  if (slide.rfind("synthetic:", 0) == 0) {
    long long size = 0;
    unsigned long long seed = 0;
    if (std::sscanf(slide.c_str() + 10, "%lld:%llu", &size, &seed) != 2 || size < 256 || size > 65536)
      return fail(Errc::invalid_argument, "slide '" + slide + "': expected synthetic:SIZE:SEED with SIZE in [256, 65536]");
    return overlay::synthetic_slide(size, size, seed);
  }
  return overlay::open_slide(slide);
}

}  // namespace

std::string warm_key(const SlideJob& j) {
  return fmt::format("{}|{}|{}|{}|{}", j.worker, j.workers, j.tile, j.overlap, j.in_flight);
}

Result<std::unique_ptr<Client>> start_warm_client(const SlideJob& job, const std::string& bin_dir) {
  const std::uint64_t edge = static_cast<std::uint64_t>(job.tile + 2 * job.overlap);
  auto client = Client::embedded(overlay::pipeline_client_options(edge, job.in_flight, overlay::default_readers()));
  if (!client) return fail(Errc::system, "cannot create the arena: " + client.error().message);
  auto pool = overlay::example_pool({.worker = job.worker, .count = job.workers, .batch = 0, .devices = {}}, bin_dir);
  if (!pool) return fail(Errc::invalid_argument, "job: " + pool.error().message);
  const PoolSpec& p = *pool;
  if (auto r = (*client)->start_pool(p); !r) return fail(Errc::worker_failed, "the worker pool did not start: " + r.error().message);
  return std::move(*client);
}

// The streaming pipeline: tissue detection, parallel readers, and a MaskWriter that writes
// the pyramidal mask TIFF, the GeoJSON and the PNG preview and renames each into place
// (fsync + rename + directory fsync) in finish().
Result<SlideJobReport> run_slide_job(Client& warm_client, const SlideJob& job, const JobProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  auto slide = open_job_slide(job.slide);
  if (!slide) return fail(slide.error());
  if (job.level >= (*slide)->level_count())
    return fail(Errc::invalid_argument, fmt::format("slide '{}' has no level {} (it has {})", job.slide, job.level,
                                                    (*slide)->level_count()));
  const auto ls = (*slide)->level_size(job.level);
  overlay::PipelineOptions po;
  po.grid.tile = job.tile;
  po.grid.overlap = job.overlap;
  po.grid.level = job.level;
  po.grid.width = ls.width;
  po.grid.height = ls.height;
  po.op = job.op;
  po.max_in_flight = job.in_flight;
  po.readers = overlay::default_readers();
  // Masks reach the writer in grid order: the mask TIFF's tile layout follows arrival order,
  // and a redelivered item must write the same bytes again.
  po.ordered = true;
  po.progress = progress;
  std::error_code ec;
  fs::create_directories(job.out_dir, ec);
  if (ec) return fail(Errc::system, "cannot create '" + job.out_dir + "': " + ec.message());
  const auto names = output_names(job);  // <stem>.overlay.png, .overlay.tiff, .overlay.geojson
  overlay::MaskOutputs outs;
  outs.png = (fs::path(job.out_dir) / names[0]).string();
  outs.tiff = (fs::path(job.out_dir) / names[1]).string();
  outs.geojson = (fs::path(job.out_dir) / names[2]).string();
  overlay::MaskGeometry geo;
  geo.width = ls.width;
  geo.height = ls.height;
  geo.tile = job.tile;
  geo.downsample = ls.downsample;
  geo.mpp_x = (*slide)->mpp_x();
  geo.mpp_y = (*slide)->mpp_y();
  auto writer = overlay::MaskWriter::create(outs, geo);
  if (!writer) return fail(writer.error());
  auto rep = overlay::run_pipeline(warm_client, **slide, po, **writer);
  if (!rep) return fail(rep.error());
  if (rep->failed > 0 || rep->canceled > 0) {
    // A slide with unreadable or failed tiles is a failed attempt (retried, then reported),
    // not a silently incomplete result. The writer removes its temp files.
    const std::string why = rep->failures.empty() ? std::string("no reason given") : rep->failures.front().why;
    return fail(Errc::worker_failed, fmt::format("{} of {} tiles failed, {} canceled; first: {}", rep->failed,
                                                 rep->tiles - rep->skipped, rep->canceled, why));
  }
  if (auto f = (*writer)->finish(slide->get()); !f) return fail(f.error());
  SlideJobReport out;
  out.tiles = rep->tiles;
  out.outputs = {outs.png, outs.tiff, outs.geojson};
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace tessera::batch
