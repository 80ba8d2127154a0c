// What a run of the main job starts on: the worker pool for a `--worker` choice and the
// arena sized for the pipeline. One home for `tessera overlay` and `tessera batch`.
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

ArenaConfig pipeline_arena(std::uint64_t in_bytes, std::uint64_t out_bytes, std::uint32_t in_flight, int readers) {
  auto page = [](std::uint64_t v) { return (v + kPageSize - 1) / kPageSize * kPageSize; };
  std::map<std::uint64_t, std::uint32_t> classes{{kPageSize, 256}};  // small blocks: error texts, tiny outputs
  // Input blocks: the tiles in flight plus the readers' queue (8 per reader).
  classes[page(in_bytes)] += in_flight + 32 + static_cast<std::uint32_t>(8 * readers);
  classes[page(out_bytes)] += in_flight + 32;
  ArenaConfig cfg;
  cfg.classes.clear();
  for (auto [size, count] : classes) cfg.classes.push_back({size, count});
  cfg.n_rings = 64;
  cfg.ring_capacity = 1024;
  return cfg;
}

}  // namespace tessera::overlay
