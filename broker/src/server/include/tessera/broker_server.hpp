// The standalone broker: one arena and one worker pool shared by any number of
// client processes that connect over a Unix socket (Client::connect). Descriptors
// still go straight between each client and each worker through channels the
// broker opened; the broker supervises, orders recovery and reclaims.
//
// Socket protocol (JSON lines, control only; docs/design/broker-server.md):
//   client -> broker  hello{version} first (a participant slot is taken only then)
//   broker -> client  hello{version, client_slot, workers[{index,slot,channel,pid,alive}], max_retries,
//                     cancel_grace_ms, max_blocks_percent} + the arena memfd (SCM_RIGHTS) on the same message
//                     worker_died{index, reason} / worker_ready{index, slot, channel, pid} / worker_gave_up{index, reason}
//                     pong{id} / error{message[, code]}
//   client -> broker  recovered{index} / kill_worker{index} / ping{id} / bye{}
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
  std::string socket_path;   // created with mode 0600; a stale socket there is replaced, anything else refused
  std::chrono::milliseconds recover_timeout{5'000};       // wait this long for clients' "recovered"
  std::chrono::milliseconds detach_timeout{10'000};       // wait this long for a worker to leave a dead client's channel

  // Limits on a shared broker (docs/design/broker-server.md, "Limits").
  bool allow_client_kill = false;                         // honour clients' kill_worker (off: refused with an error)
  int max_clients = 0;                                    // clients past their hello; 0: every participant slot the workers leave
  int max_pending = 16;                                   // connections that have not said hello yet; more are refused
  std::chrono::milliseconds hello_timeout{5'000};         // a connection without a hello this long is closed
  std::size_t client_backlog = 1u << 20;                  // unsent bytes for one client before it is disconnected
  int max_blocks_percent = 50;                            // share of each block class one client may hold (0 or 100: no limit)
  std::chrono::milliseconds quota_interval{200};          // how often the blocks each client holds are counted
};

struct BrokerServerStats {
  std::uint64_t clients_connected = 0, clients_gone = 0, worker_deaths = 0, respawns = 0;
  std::uint64_t reclaimed_blocks = 0, drained_results = 0;
  std::uint64_t clients_refused = 0, clients_too_slow = 0, clients_over_quota = 0, hello_timeouts = 0, kills_refused = 0;
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
