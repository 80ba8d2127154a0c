// tessera-broker internals shared by its modes.
#pragma once

#include <cstddef>

#include <tessera/event_loop.hpp>

namespace tessera::daemon {

struct Options {
  LoopChoice loop = LoopChoice::automatic;
  std::size_t max_line = 16u << 20;
};

int run_appose(const Options& opts);              // --appose
int run_trivial_worker();                         // --trivial-worker (bench peer)
int run_bench_control(const Options& opts, int n);  // --bench-control N

}  // namespace tessera::daemon
