// The `tessera` command-line tool: each subcommand lives in its own source file and
// registers itself through one function listed in main.cpp.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace tessera::cli {

// Runs a parsed subcommand; returns the process exit code.
using RunFn = std::function<int()>;

struct Subcommand {
  CLI::App* app = nullptr;  // the parsed subcommand (owned by the parent App)
  RunFn run;
};

// Adds `tessera inspect` (inspect.cpp).
Subcommand add_inspect(CLI::App& parent);
// Adds `tessera overlay` (overlay.cpp): the main job.
Subcommand add_overlay(CLI::App& parent);
// Adds `tessera bench` (bench.cpp): runs tessera-bench.
Subcommand add_bench(CLI::App& parent);
// Adds the hidden `tessera make-slide` (overlay.cpp): writes a JPEG-tiled test slide.
Subcommand add_make_slide(CLI::App& parent);
// Adds `tessera batch` (batch.cpp): slide archives on NATS JetStream (built with libnats).
Subcommand add_batch(CLI::App& parent);

}  // namespace tessera::cli
