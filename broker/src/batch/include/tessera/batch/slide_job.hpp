// The one seam between the batch machinery and the overlay pipeline: a node keeps
// one warm Client (arena + worker pool) and calls run_slide_job() for every slide.
// Everything NATS-related stays outside this file; everything pipeline-related stays
// inside it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <tessera/batch/work_item.hpp>
#include <tessera/client.hpp>
#include <tessera/result.hpp>

namespace tessera::batch {

struct SlideJobReport {
  std::int64_t tiles = 0;
  double seconds = 0;
  std::vector<std::string> outputs;  // absolute paths, renamed into place and fsynced
};

// Called from the pipeline's thread with (tiles done, tiles total); must not block.
using JobProgress = std::function<void(std::int64_t done, std::int64_t total)>;

// The part of a job that shapes the warm client: a node reuses its client for every
// job with the same key and restarts it (arena + pool) when the key changes.
std::string warm_key(const SlideJob& job);

// Creates the embedded client (arena sized for the job's tiles) and starts its pool.
// `bin_dir` is where tessera-tissue-worker lives (the `tessera` binary's directory).
Result<std::unique_ptr<Client>> start_warm_client(const SlideJob& job, const std::string& bin_dir);

// Opens the slide, runs every tile through `warm_client`, and writes the outputs
// (output_names(job)) atomically: each file is written under <out_dir>/.partial/,
// fsynced, renamed into place, and the directory fsynced. Outputs depend only on the
// slide and the job spec, so two runs of the same item write the same bytes.
Result<SlideJobReport> run_slide_job(Client& warm_client, const SlideJob& job, const JobProgress& progress = {});


}  // namespace tessera::batch
