// tessera-broker internals shared by its modes.
#pragma once

#include <cstddef>

#include <tessera/event_loop.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tessera::daemon {

struct Options {
  LoopChoice loop = LoopChoice::automatic;
  std::size_t max_line = 16u << 20;
};

int run_appose(const Options& opts);              // --appose

struct ListenOptions {
  std::string socket_path;
  int workers = 2;
  std::vector<std::string> worker_cmd;                               // default: tessera-tissue-worker
  std::vector<std::pair<std::uint64_t, std::uint32_t>> classes;      // block size, count (default arena if empty)
  bool allow_client_kill = false;                                     // --allow-client-kill
  int max_clients = 0;                                                // --max-clients (0: every slot left)
  int max_blocks_percent = 50;                                        // --max-blocks-percent
  std::size_t client_backlog_kib = 1024;                              // --client-backlog-kib
  std::int64_t stall_timeout_ms = -1;                                // -1: the pool's default; 0: off
};
int run_listen(const ListenOptions& lo);             // --listen PATH

}  // namespace tessera::daemon
