// The standalone broker: one arena and one worker pool shared by any number of
// client processes that connect over a Unix socket (Client::connect). Descriptors
// still go straight between each client and each worker through channels the
// broker opened; the broker supervises, orders recovery and reclaims.
//
// Socket protocol (JSON lines, control only; docs/design/broker-server.md):
//   broker -> client  hello{client_slot, workers[{index,slot,channel,pid,alive}], max_retries, cancel_grace_ms}
//                     + the arena memfd (SCM_RIGHTS) on the same message
//                     worker_died{index, reason} / worker_ready{index, slot, channel, pid} / worker_gave_up{index, reason}
//   client -> broker  recovered{index} / kill_worker{index} / bye{}
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <tessera/arena.hpp>
#include <tessera/client.hpp>
#include <tessera/result.hpp>

namespace tessera {

struct BrokerServerOptions {
  ArenaConfig arena{};
  PoolSpec pool{};
  std::string socket_path;                                // created with mode 0600; must not exist
  std::chrono::milliseconds recover_timeout{5'000};       // wait this long for clients' "recovered"
  std::chrono::milliseconds detach_timeout{10'000};       // wait this long for a worker to leave a dead client's channel
};

struct BrokerServerStats {
  std::uint64_t clients_connected = 0, clients_gone = 0, worker_deaths = 0, respawns = 0;
  std::uint64_t reclaimed_blocks = 0, drained_results = 0;
  int clients = 0, workers_alive = 0;
};

class BrokerServer {
 public:
  // Creates the arena, starts the pool (returns once every worker is ready) and listens.
  static Result<std::unique_ptr<BrokerServer>> start(BrokerServerOptions opts);
  ~BrokerServer();
  BrokerServer(const BrokerServer&) = delete;
  BrokerServer& operator=(const BrokerServer&) = delete;

  const std::string& socket_path() const noexcept;
  const Arena& arena() const noexcept;
  BrokerServerStats stats() const;
  // Stops accepting, closes every client channel, stops the workers, removes the socket.
  void stop();

  class Impl;

 private:
  explicit BrokerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
