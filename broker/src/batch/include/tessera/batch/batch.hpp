// `tessera batch`: submit a slide archive as work items to a NATS JetStream work
// queue, run node agents that process them, and report the batch's status.
// See docs/design/batch.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <tessera/batch/nats.hpp>
#include <tessera/batch/work_item.hpp>
#include <tessera/result.hpp>

namespace tessera::batch {

// ---- submit ----
struct SubmitOptions {
  ConnectOptions connect;
  BatchNames names;
  std::vector<std::string> slides;     // paths, globs, "@listfile", or synthetic:SIZE:SEED
  SlideJob spec;                       // everything but slide/stem/id/submitted_ms
  std::chrono::milliseconds ack_wait{60'000};  // used when the consumer is created
  std::chrono::seconds dedup_window{7200};     // used when the stream is created
  bool force = false;                  // publish even items whose status says done
};
struct SubmitReport {
  std::int64_t published = 0;          // new work items
  std::int64_t duplicates = 0;         // the stream had the message id already
  std::int64_t skipped_done = 0, skipped_queued = 0;  // by the status bucket
  std::vector<std::string> ids;        // every item of the batch, in slide order
};
// Expands the slide arguments (globs sorted, list files one path a line, '#' comments).
Result<std::vector<std::string>> expand_slides(const std::vector<std::string>& args);
Result<SubmitReport> submit(const SubmitOptions& opts);

// ---- node ----
struct NodeOptions {
  ConnectOptions connect;
  BatchNames names;
  std::string node_name;               // shown in status (default host:pid)
  std::string bin_dir;                 // where the worker binaries are
  int max_attempts = 3;                // deliveries of one item before it is terminated
  std::chrono::milliseconds drain_timeout{20'000};  // on SIGTERM: finish within this, else release
  std::chrono::milliseconds exit_when_idle{0};      // 0: run until signalled
  std::chrono::milliseconds ack_wait{60'000};       // only if the node has to create the consumer
  std::int64_t max_items = 0;          // 0: unlimited
};
struct NodeReport {
  std::int64_t done = 0, failed = 0, retried = 0, released = 0, skipped = 0;
};
// Runs until `stop` is set (then drains), the queue stays idle for exit_when_idle, or
// max_items were processed. `stop` is typically set by a SIGTERM/SIGINT handler.
Result<NodeReport> run_node(const NodeOptions& opts, const std::atomic<bool>& stop);

// ---- status ----
struct StatusEntry {
  std::string id;
  ItemStatus status;
};
struct BatchStatus {
  std::vector<StatusEntry> items;      // sorted by stem
  std::int64_t pending = 0, running = 0, retry = 0, done = 0, failed = 0;
  std::uint64_t in_stream = 0;         // messages not yet acked or terminated
  std::int64_t total() const { return pending + running + retry + done + failed; }
  bool finished() const { return pending + running + retry == 0 && in_stream == 0; }
};
Result<BatchStatus> read_status(Session& session, const BatchNames& names);

}  // namespace tessera::batch
