// The work item of a batch (one slide and the job spec that applies to it) and the
// status entry a node keeps for it in the KV bucket. Both travel as JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tessera/result.hpp>

namespace tessera::batch {

// Everything a node needs to process one slide, independent of where it runs.
struct SlideJob {
  std::string slide;            // absolute path on shared storage, or "synthetic:SIZE:SEED"
  std::string stem;             // output base name inside out_dir
  std::string out_dir;          // shared output directory (absolute)
  int level = 0;
  int tile = 256;
  int overlap = 0;
  std::uint32_t op = 0;         // worker op (0 = tissue mask for the example workers)
  std::string worker = "cpp";   // cpp | numpy | torch | a command line (as `tessera overlay --worker`)
  int workers = 2;              // worker processes per node
  std::uint32_t in_flight = 256;

  // Set by `submit`, not part of the identity:
  std::string id;               // item_id(): hash of slide + spec
  std::int64_t submitted_ms = 0;  // wall clock at submit (Unix ms)
};

// Deterministic identity of a job: a name-based (SHA-1) UUID of the canonical JSON of
// every field except id and submitted_ms, as 32 hex digits. Same slide + same spec ->
// same id, which is the JetStream message id (de-duplication) and the status key.
std::string item_id(const SlideJob& job);

std::string to_json(const SlideJob& job);
Result<SlideJob> job_from_json(const std::string& text);

// Output files of a job, in out_dir.
std::vector<std::string> output_names(const SlideJob& job);

enum class ItemState { pending, running, retry, done, failed };
const char* state_name(ItemState s) noexcept;

// The status entry of one item (KV key = item id).
struct ItemStatus {
  ItemState state = ItemState::pending;
  std::string slide, stem;
  std::string node;              // node that runs / ran it
  std::int64_t attempt = 0;      // JetStream delivery count of the last run
  std::int64_t tiles_done = 0, tiles_total = 0;
  std::string error;             // last failure reason
  std::int64_t submitted_ms = 0, started_ms = 0, updated_ms = 0;
  double seconds = 0;            // run time of the successful attempt
};

std::string to_json(const ItemStatus& s);
Result<ItemStatus> status_from_json(const std::string& text);

// Unix wall clock in milliseconds.
std::int64_t unix_ms() noexcept;

}  // namespace tessera::batch
