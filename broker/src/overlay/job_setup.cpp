// What a run of the main job starts on: the worker pool for a `--worker` choice and the
// arena sized for the pipeline. One home for `tessera overlay` and `tessera batch`.
#include <algorithm>
#include <filesystem>
#include <map>

#include <tessera/overlay.hpp>

namespace tessera::overlay {

Result<PoolSpec> example_pool(const WorkerChoice& c, const std::string& bin_dir) {
  PoolSpec p;
  p.count = c.count;
  // Tiles arrive as fast as the readers decode them (a few hundred microseconds apart per
  // core): a worker that spins longer than a few microseconds between them takes a core
  // from the decoders. Spin briefly, then sleep on the doorbell.
  p.env["TESSERA_SPIN_NS"] = "5000";
  const std::filesystem::path bin(bin_dir);
  const auto py = bin.parent_path() / "python";
  if (c.worker == "cpp") {
    p.argv = {(bin / "tessera-tissue-worker").string()};
  } else if (c.worker == "numpy") {
    p.argv = {"/usr/bin/python3", "-m", "tessera.worker", "tessera_examples.numpy_worker:handler"};
    p.env["PYTHONPATH"] = py.string();
  } else if (c.worker == "torch") {
    p.argv = {"/usr/bin/python3", "-m", "tessera.worker",
              c.batch > 0 ? "tessera_examples.torch_worker:handle_batch" : "tessera_examples.torch_worker:handler",
              "--init", "tessera_examples.torch_worker:init"};
    if (c.batch > 0) {
      p.argv.push_back("--batch");
      p.argv.push_back(std::to_string(c.batch));
    }
    p.env["PYTHONPATH"] = py.string();
    p.ready_timeout = std::chrono::milliseconds(120'000);  // importing torch takes seconds
  } else {
    // A command line, split on spaces.
    std::string cur;
    for (char ch : c.worker) {
      if (ch == ' ') {
        if (!cur.empty()) p.argv.push_back(cur);
        cur.clear();
      } else {
        cur += ch;
      }
    }
    if (!cur.empty()) p.argv.push_back(cur);
    p.env["PYTHONPATH"] = py.string();
  }
  if (p.argv.empty()) return fail(Errc::invalid_argument, "worker: empty command");
  p.devices = c.devices;
  return p;
}

std::uint32_t default_in_flight(int workers, int batch) noexcept {
  const std::int64_t batched = 4 * static_cast<std::int64_t>(std::max(workers, 1)) * std::max(batch, 0);
  return static_cast<std::uint32_t>(std::clamp<std::int64_t>(batched, 64, 4096));
}

ClientOptions pipeline_client_options(std::uint64_t edge, std::uint32_t in_flight, int readers, int batch) {
  auto page = [](std::uint64_t v) { return (v + kPageSize - 1) / kPageSize * kPageSize; };
  std::map<std::uint64_t, std::uint32_t> classes{{kPageSize, 256}};  // small blocks: error texts, tiny outputs
  // Input blocks: the tiles in flight plus the readers' queue.
  classes[page(edge * edge * 3)] += in_flight + 32 + static_cast<std::uint32_t>(kReadAheadPerReader * readers);
  classes[page(edge * edge)] += in_flight + 32;
  ClientOptions co;
  co.arena.classes.clear();
  for (auto [size, count] : classes) co.arena.classes.push_back({size, count});
  co.arena.n_rings = 64;
  co.arena.ring_capacity = 1024;
  co.max_in_flight = in_flight * 2;
  co.worker_window = std::max<std::uint32_t>(co.worker_window, 2 * static_cast<std::uint32_t>(std::max(batch, 0)));  // room for full batches
  // The client thread waits for answers while the readers decode on every core: a spin
  // longer than a few microseconds takes CPU from them (as for the workers above).
  co.wait.spin_ns = 5'000;
  return co;
}

}  // namespace tessera::overlay
