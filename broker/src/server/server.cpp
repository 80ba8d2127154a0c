// The standalone broker: arena + worker pool (pool/arena_pool.hpp) + Unix-socket
// sessions. Everything runs on one event-loop thread; the pool's events are posted
// to it, so no state here needs a lock.
#include <tessera/broker_server.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <future>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include <tessera/event_loop.hpp>
#include <tessera/ring.hpp>
#include <tessera/slab.hpp>

#include "arena_pool.hpp"
#include "wire.hpp"

namespace tessera {


class BrokerServer::Impl {
 public:
  struct WorkerRec {
    std::uint32_t slot = kNoSlot;
    int pid = 0;
    bool alive = false;
    std::set<int> waiting_acks;        // clients that still drain this dead worker
    EventLoop::Id ack_timer = 0;
  };
  struct ClientRec {
    int id = 0;
    int fd = -1;
    int pid = 0;
    std::uint32_t slot = kNoSlot;
    std::map<int, std::uint32_t> channels;   // worker index -> channel
    std::string inbuf;                       // bytes of the last read
    wire::LineReader lines;
    EventLoop::Id watch = 0;
  };
  // A dead client's channel whose worker has not let go of it yet.
  struct Leftover {
    std::uint32_t channel;
    int worker;
    Clock::time_point deadline;
  };

  BrokerServerOptions opts;
  Arena arena;
  std::uint32_t my_slot = kNoSlot;
  std::unique_ptr<EventLoop> loop;
  std::unique_ptr<pool::ArenaPool> pool;
  std::vector<WorkerRec> workers;
  std::map<int, ClientRec> clients;
  std::vector<Leftover> leftovers;
  int listen_fd = -1;
  int next_client = 1;
  BrokerServerStats st{};
  std::thread thread;
  bool stopped = false;

  ~Impl() { stop(); }

  // ---------------- start ----------------
  Result<void> start() {
    auto a = Arena::create(opts.arena);
    if (!a) return fail(std::move(a).error());
    arena = std::move(*a);
    auto me = arena.register_participant(Role::broker, getpid(), "broker");
    if (!me) return fail(std::move(me).error());
    my_slot = *me;
    auto l = EventLoop::create();
    if (!l) return fail(std::move(l).error());
    loop = std::move(*l);
    auto p = pool::ArenaPool::create(arena, [this](pool::Event e) { loop->post([this, e] { on_pool_event(e); }); });
    if (!p) return fail(std::move(p).error());
    pool = std::move(*p);
    for (int i = 0; i < opts.pool.count; ++i)
      if (auto r = add_worker(i); !r) return r;
    if (auto r = listen_socket(); !r) return r;
    if (auto w = loop->watch_readable(listen_fd, [this] { on_accept(); }); !w) return fail(std::move(w).error());
    thread = std::thread([this] { (void)loop->run(); });
    return {};
  }

  Result<void> add_worker(int index) {
    auto slot = arena.register_participant(Role::worker, 0, "worker-" + std::to_string(index));
    if (!slot) return fail(std::move(slot).error());
    auto pid = pool->start(index, *slot, opts.pool);
    if (!pid) {
      arena.release_participant(*slot);
      return fail(pid.error().code, "broker: " + pid.error().message);
    }
    WorkerRec w;
    w.slot = *slot;
    w.pid = *pid;
    w.alive = true;
    workers.push_back(w);
    return {};
  }

  Result<void> listen_socket() {
    if (opts.socket_path.empty()) return fail(Errc::invalid_argument, "broker: no socket path");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (opts.socket_path.size() >= sizeof addr.sun_path) return fail(Errc::invalid_argument, "broker: socket path too long");
    std::memcpy(addr.sun_path, opts.socket_path.c_str(), opts.socket_path.size() + 1);
    listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd < 0) return fail(Error::sys("broker: socket"));
    // Owner-only from the first instant: bind under a restrictive umask, then check.
    const mode_t old = ::umask(077);
    const int rc = ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::umask(old);
    if (rc != 0) return fail(Error::sys("broker: bind " + opts.socket_path));
    if (::listen(listen_fd, 64) != 0) return fail(Error::sys("broker: listen"));
    return {};
  }

  // ---------------- clients ----------------
  void on_accept() {
    for (;;) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != ::geteuid()) {
        spdlog::warn("broker: refused a client of another user");
        ::close(fd);
        continue;
      }
      ClientRec c;
      c.id = next_client++;
      c.fd = fd;
      c.pid = cred.pid;
      auto slot = arena.register_participant(Role::client, cred.pid, "client-" + std::to_string(c.id));
      if (!slot) {
        boost::json::object err{{"type", "error"}, {"message", slot.error().message}};
        (void)wire::send_line(fd, err);
        ::close(fd);
        continue;
      }
      c.slot = *slot;
      boost::json::array ws;
      for (std::size_t i = 0; i < workers.size(); ++i) {
        const WorkerRec& w = workers[i];
        boost::json::object o{{"index", static_cast<std::int64_t>(i)}, {"slot", static_cast<std::int64_t>(w.slot)},
                              {"pid", w.pid}, {"alive", w.alive}};
        if (w.alive) {
          auto ch = arena.open_channel(c.slot, w.slot, c.slot, w.slot);
          if (ch) {
            c.channels[static_cast<int>(i)] = *ch;
            o["channel"] = static_cast<std::int64_t>(*ch);
          }
        }
        ws.push_back(std::move(o));
      }
      boost::json::object hello{{"type", "hello"},
                                {"client_slot", static_cast<std::int64_t>(c.slot)},
                                {"workers", std::move(ws)},
                                {"max_retries", opts.pool.max_retries},
                                {"cancel_grace_ms", static_cast<std::int64_t>(opts.pool.cancel_grace.count())}};
      if (!wire::send_line(fd, hello, arena.fd())) {
        drop_client_state(c);
        ::close(fd);
        continue;
      }
      const int id = c.id;
      auto watch = loop->watch_readable(fd, [this, id] { on_client_readable(id); });
      if (watch) c.watch = *watch;
      clients.emplace(id, std::move(c));
      ++st.clients_connected;
      spdlog::info("broker: client {} connected (pid {})", id, cred.pid);
    }
  }

  void on_client_readable(int id) {
    auto it = clients.find(id);
    if (it == clients.end()) return;
    ClientRec& c = it->second;
    const ssize_t n = wire::recv_some(c.fd, c.inbuf, nullptr);
    if (n <= 0) {
      client_gone(id, "disconnected");
      return;
    }
    bool bye = false;
    c.lines.feed(c.inbuf, [&](const boost::json::object& m) {
      const std::string type = wire::get_str(m, "type");
      const std::int64_t index = wire::get_int(m, "index");
      if (type == "recovered") {
        on_recovered(id, static_cast<int>(index));
      } else if (type == "kill_worker") {
        if (index >= 0 && static_cast<std::size_t>(index) < workers.size()) (void)pool->kill(static_cast<int>(index));
      } else if (type == "bye") {
        bye = true;
      } else {
        spdlog::warn("broker: client {} sent an unknown message '{}'", id, type);
      }
    });
    if (bye) client_gone(id, "said bye");
  }

  // The client is gone (closed its socket or died). Its input blocks are reclaimed at
  // once; results waiting in its rings are freed once each worker let go of the channel.
  void client_gone(int id, const char* why) {
    auto it = clients.find(id);
    if (it == clients.end()) return;
    ClientRec c = std::move(it->second);
    clients.erase(it);
    loop->cancel(c.watch);
    ::close(c.fd);
    ++st.clients_gone;
    spdlog::info("broker: client {} {}", id, why);
    for (auto& [w, ch] : c.channels) {
      arena.close_channel(ch);
      leftovers.push_back({ch, w, Clock::now() + opts.detach_timeout});
    }
    for (auto& w : workers) w.waiting_acks.erase(id);
    drop_client_state(c);
    for (std::size_t i = 0; i < workers.size(); ++i) maybe_finish_recovery(static_cast<int>(i));
    sweep_leftovers();
  }

  void drop_client_state(ClientRec& c) {
    if (c.slot == kNoSlot) return;
    st.reclaimed_blocks += Slab::reclaim(arena, c.slot);
    arena.mark_dead(c.slot);
    arena.release_participant(c.slot);
    c.slot = kNoSlot;
  }

  // Frees the results left in dead clients' channels once their workers detached.
  void sweep_leftovers() {
    const auto now = Clock::now();
    for (auto it = leftovers.begin(); it != leftovers.end();) {
      const WorkerRec& w = workers[static_cast<std::size_t>(it->worker)];
      const bool detached = arena.worker_detached(it->channel) || !w.alive;
      if (!detached && now < it->deadline) {
        ++it;
        continue;
      }
      if (!detached) spdlog::warn("broker: worker {} did not leave channel {} in time; draining anyway", it->worker, it->channel);
      drain_channel(it->channel, w.slot);
      arena.release_channel(it->channel);
      it = leftovers.erase(it);
    }
    if (!leftovers.empty()) (void)loop->add_timer(std::chrono::milliseconds(20), [this] { sweep_leftovers(); });
  }

  void drain_channel(std::uint32_t ch, std::uint32_t worker_slot) {
    RingConsumer results(arena, arena.channel(ch).response_ring);
    Slab slab(arena, my_slot);
    TileDesc d[64];
    for (;;) {
      const std::size_t n = results.try_pop_batch({d, 64});
      if (n == 0) break;
      for (std::size_t i = 0; i < n; ++i) {
        ++st.drained_results;
        if (d[i].block() == 0) continue;
        if (slab.adopt(BlockHandle{d[i].block()}, worker_slot) == Errc::ok) {
          (void)slab.free(BlockHandle{d[i].block()});
          ++st.reclaimed_blocks;
        }
      }
    }
  }

  // ---------------- workers ----------------
  void broadcast(const boost::json::object& m) {
    std::vector<int> broken;
    for (auto& [id, c] : clients)
      if (!wire::send_line(c.fd, m)) broken.push_back(id);
    for (int id : broken) client_gone(id, "unreachable");
  }

  void on_pool_event(const pool::Event& e) {
    if (e.index < 0 || static_cast<std::size_t>(e.index) >= workers.size()) return;
    switch (e.kind) {
      case pool::Event::Kind::died: on_worker_died(e.index, e.text); break;
      case pool::Event::Kind::ready: on_respawned(e.index, e.pid, {}); break;
      case pool::Event::Kind::gave_up: on_respawned(e.index, -1, e.text); break;
    }
  }

  void on_worker_died(int i, const std::string& reason) {
    WorkerRec& w = workers[static_cast<std::size_t>(i)];
    if (w.alive) {
      w.alive = false;
      ++st.worker_deaths;
      spdlog::warn("broker: worker {} died: {}", i, reason);
      // Recovery steps 1-2: every client drains what the worker published and re-dispatches what it held.
      for (auto& [id, c] : clients) w.waiting_acks.insert(id);
      broadcast({{"type", "worker_died"}, {"index", i}, {"reason", reason}});
      auto timer = loop->add_timer(opts.recover_timeout, [this, i] {
        WorkerRec& ww = workers[static_cast<std::size_t>(i)];
        if (!ww.waiting_acks.empty()) spdlog::warn("broker: {} client(s) did not confirm recovery of worker {}", ww.waiting_acks.size(), i);
        ww.waiting_acks.clear();
        ww.ack_timer = 0;
        maybe_finish_recovery(i);
      });
      w.ack_timer = timer ? *timer : 0;
      maybe_finish_recovery(i);
    }
  }

  void on_recovered(int client, int index) {
    if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) return;
    workers[static_cast<std::size_t>(index)].waiting_acks.erase(client);
    maybe_finish_recovery(index);
  }

  // Once every client drained the dead worker, recovery steps 3-5 (the pool closes
  // the channels, reclaims its blocks and respawns it off the loop thread); step 6,
  // one fresh channel per client, follows its ready event (on_respawned).
  void maybe_finish_recovery(int i) {
    WorkerRec& w = workers[static_cast<std::size_t>(i)];
    if (w.alive || !w.waiting_acks.empty() || w.ack_timer == ~0ULL) return;
    if (w.ack_timer != 0) loop->cancel(w.ack_timer);
    w.ack_timer = ~0ULL;  // recovery done; respawn pending
    std::vector<std::uint32_t> channels;
    for (auto& [id, c] : clients) {
      auto ch = c.channels.find(i);
      if (ch == c.channels.end()) continue;
      channels.push_back(ch->second);
      c.channels.erase(ch);
    }
    st.reclaimed_blocks += pool->recover(i, w.slot, channels);
  }

  void on_respawned(int i, int pid, const std::string& err) {
    WorkerRec& w = workers[static_cast<std::size_t>(i)];
    w.ack_timer = 0;
    if (pid <= 0) {
      spdlog::error("broker: gave up on worker {}: {}", i, err);
      broadcast({{"type", "worker_gave_up"}, {"index", i}, {"reason", err}});
      return;
    }
    ++st.respawns;
    w.pid = pid;
    w.alive = true;
    arena.set_participant_pid(w.slot, pid);
    for (auto& [id, c] : clients) {
      auto ch = arena.open_channel(c.slot, w.slot, c.slot, w.slot);
      if (!ch) continue;
      c.channels[i] = *ch;
      (void)wire::send_line(c.fd, {{"type", "worker_ready"}, {"index", i}, {"slot", static_cast<std::int64_t>(w.slot)},
                                   {"channel", static_cast<std::int64_t>(*ch)}, {"pid", pid}});
    }
  }

  // ---------------- stop ----------------
  void stop() {
    if (stopped) return;
    stopped = true;
    if (arena.valid()) arena.header().shutting_down.store(1, std::memory_order_relaxed);  // relaxed: a hint for `tessera inspect`
    if (loop) {
      loop->post([this] {
        std::vector<int> ids;
        for (auto& [id, c] : clients) ids.push_back(id);
        for (int id : ids) client_gone(id, "closed by broker shutdown");
        loop->stop();
      });
    }
    if (thread.joinable()) thread.join();
    if (pool) pool->shutdown();
    if (listen_fd >= 0) {
      ::close(listen_fd);
      ::unlink(opts.socket_path.c_str());
      listen_fd = -1;
    }
  }
};

BrokerServer::BrokerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BrokerServer::~BrokerServer() { stop(); }

Result<std::unique_ptr<BrokerServer>> BrokerServer::start(BrokerServerOptions opts) {
  auto impl = std::make_unique<Impl>();
  impl->opts = std::move(opts);
  if (impl->opts.pool.argv.empty() || impl->opts.pool.count <= 0)
    return fail(Errc::invalid_argument, "broker: the pool needs a worker command and a count > 0");
  if (auto r = impl->start(); !r) {
    impl->stop();
    return fail(std::move(r).error());
  }
  return std::unique_ptr<BrokerServer>(new BrokerServer(std::move(impl)));
}

const std::string& BrokerServer::socket_path() const noexcept { return impl_->opts.socket_path; }
const Arena& BrokerServer::arena() const noexcept { return impl_->arena; }

BrokerServerStats BrokerServer::stats() const {
  if (impl_->stopped) return impl_->st;
  // Read on the loop thread for a consistent snapshot.
  auto p = std::make_shared<std::promise<BrokerServerStats>>();
  auto f = p->get_future();
  impl_->loop->post([this, p] {
    BrokerServerStats s = impl_->st;
    s.clients = static_cast<int>(impl_->clients.size());
    for (const auto& w : impl_->workers) s.workers_alive += w.alive ? 1 : 0;
    p->set_value(s);
  });
  if (f.wait_for(std::chrono::seconds(5)) != std::future_status::ready) return impl_->st;
  return f.get();
}

void BrokerServer::stop() { impl_->stop(); }

}  // namespace tessera
