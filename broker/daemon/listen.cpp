// tessera-broker --listen PATH: the standalone broker for client processes
// (Client::connect). Runs until SIGTERM/SIGINT, then closes every session,
// stops the workers and removes the socket.
#include <signal.h>
#include <unistd.h>

#include <filesystem>

#include <spdlog/spdlog.h>

#include <tessera/broker_server.hpp>

#include "daemon.hpp"

namespace tessera::daemon {

int run_listen(const ListenOptions& lo) {
  BrokerServerOptions o;
  o.socket_path = lo.socket_path;
  o.pool.count = lo.workers;
  o.allow_client_kill = lo.allow_client_kill;
  o.max_clients = lo.max_clients;
  o.max_blocks_percent = lo.max_blocks_percent;
  o.client_backlog = lo.client_backlog_kib * 1024;
  if (lo.stall_timeout_ms >= 0) o.pool.stall_timeout = std::chrono::milliseconds(lo.stall_timeout_ms);
  if (lo.worker_cmd.empty()) {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    o.pool.argv = {(self.parent_path() / "tessera-tissue-worker").string()};
  } else {
    o.pool.argv = lo.worker_cmd;
  }
  o.arena.classes.clear();
  for (auto [size, count] : lo.classes) o.arena.classes.push_back({size, count});
  if (o.arena.classes.empty()) {
    // A default that serves small masks as well as 3 MiB float tiles (about 180 MiB).
    o.arena.classes = {{4096, 1024}, {64 * 1024, 256}, {256 * 1024, 128}, {1024 * 1024, 64}, {4 * 1024 * 1024, 16}};
  }
  // Block the stop signals before any thread starts, then wait for one.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto srv = BrokerServer::start(o);
  if (!srv) {
    spdlog::error("cannot start: {}", srv.error().message);
    return 1;
  }
  spdlog::info("listening on {} with {} worker(s): {}", lo.socket_path, lo.workers, o.pool.argv.front());
  std::printf("listening on %s\n", lo.socket_path.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*srv)->stop();
  return 0;
}

}  // namespace tessera::daemon
