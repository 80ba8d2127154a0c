// The standalone broker: arena + worker pool (pool/arena_pool.hpp) + Unix-socket
// sessions. Everything runs on one event-loop thread; the pool's events are posted
// to it, so no state here needs a lock.
#include <tessera/broker_server.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <deque>
#include <future>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include <tessera/event_loop.hpp>
#include <tessera/handle.hpp>
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
  // Bytes not yet accepted by a client's socket (the hello carries the arena fd).
  struct Out {
    std::string bytes;
    std::size_t off = 0;
    int fd = -1;
  };
  struct ClientRec {
    int id = 0;
    int fd = -1;
    int pid = 0;
    bool said_hello = false;                 // a participant slot is taken only after the hello
    std::uint32_t slot = kNoSlot;
    std::map<int, std::uint32_t> channels;   // worker index -> channel
    std::string inbuf;                       // bytes of the last read
    wire::LineReader lines{kMaxClientLine};
    EventLoop::Id watch = 0;
    EventLoop::Id hello_timer = 0;
    std::deque<Out> out;                     // never sent with a blocking call; see send()
    std::size_t out_bytes = 0;
    bool out_watched = false;
    std::string doomed;                      // non-empty: disconnect at the next reap, for this reason
  };
  static constexpr std::size_t kMaxClientLine = 64 * 1024;  // control lines are tiny
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
  int out_ep = -1;           // epoll set of the clients with unsent bytes (readable when one is writable)
  bool socket_created = false;
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;
  bool reap_posted = false;
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
    if (auto r = listen_socket(); !r) return r;  // before any worker: a path in use fails fast
    for (int i = 0; i < opts.pool.count; ++i)
      if (auto r = add_worker(i); !r) return r;
    out_ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (out_ep < 0) return fail(Error::sys("broker: epoll_create1"));
    if (auto w = loop->watch_readable(out_ep, [this] { on_writable(); }); !w) return fail(std::move(w).error());
    if (auto w = loop->watch_readable(listen_fd, [this] { on_accept(); }); !w) return fail(std::move(w).error());
    if (auto t = loop->add_timer(opts.quota_interval, [this] { check_quotas(); }); !t) return fail(std::move(t).error());
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

  // Whether a broker answers on the socket at `path`. A connect() that is refused means
  // stale. A connect() that succeeds is not enough: after a SIGKILL the kernel may keep
  // the dead broker's listening socket (held by its io_uring until that is torn down,
  // asynchronously) for a few milliseconds, accepting into a backlog nobody reads. So a
  // line is sent (a live broker answers anything before a hello with an error line) and
  // the probe repeats for up to 3 s: an answer means live, a refused connect means
  // stale, and a socket that keeps accepting without answering is refused, not removed.
  static Result<bool> probe_existing(const sockaddr_un& addr, const std::string& path) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
      const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe < 0) return fail(Error::sys("broker: socket"));
      if (::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        const int err = errno;
        ::close(probe);
        if (err == ECONNREFUSED) return false;
        errno = err;
        return fail(Error::sys("broker: cannot probe the existing socket " + path));
      }
      static constexpr char kProbe[] = "{\"type\":\"probe\"}\n";
      (void)::send(probe, kProbe, sizeof kProbe - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      pollfd p{probe, POLLIN, 0};
      char byte = 0;
      const bool answered = ::poll(&p, 1, 500) > 0 && ::recv(probe, &byte, 1, MSG_DONTWAIT) > 0;
      ::close(probe);
      if (answered) return true;
      if (std::chrono::steady_clock::now() >= until)
        return fail(Errc::invalid_argument, "broker: " + path + " accepts connections but no broker answers on it; "
                                            "not replacing it (remove it if no broker runs)");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Never removes what this broker did not create: a stale socket (nobody accepts on
  // it: connect() is refused) is replaced, a live one is refused, and anything that
  // is not a socket is left alone and refused.
  Result<void> listen_socket() {
    const std::string& path = opts.socket_path;
    if (path.empty()) return fail(Errc::invalid_argument, "broker: no socket path");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) return fail(Errc::invalid_argument, "broker: socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    struct stat sb{};
    if (::lstat(path.c_str(), &sb) == 0) {
      if (!S_ISSOCK(sb.st_mode))
        return fail(Errc::invalid_argument, "broker: " + path + " exists and is not a socket; not replacing it");
      auto live = probe_existing(addr, path);
      if (!live) return fail(std::move(live).error());
      if (*live) return fail(Errc::invalid_argument, "broker: another broker is listening on " + path + "; not replacing it");
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) return fail(Error::sys("broker: cannot remove the stale socket " + path));
      spdlog::info("broker: replaced the stale socket {} (no broker accepted on it)", path);
    } else if (errno != ENOENT) {
      return fail(Error::sys("broker: " + path));
    }
    listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd < 0) return fail(Error::sys("broker: socket"));
    // Mode 0600 from the first instant: bind under umask 0177 (a socket is created
    // 0777 & ~umask); connecting needs write permission, so only the owner can.
    const mode_t old = ::umask(0177);
    const int rc = ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::umask(old);
    if (rc != 0) return fail(Error::sys("broker: bind " + path));
    if (::lstat(path.c_str(), &sb) == 0) {
      socket_created = true;
      socket_dev = sb.st_dev;
      socket_ino = sb.st_ino;
    }
    if (::listen(listen_fd, 64) != 0) return fail(Error::sys("broker: listen"));
    return {};
  }

  // Removes the socket only if the path still names the one this broker bound.
  void remove_socket() {
    if (!socket_created) return;
    socket_created = false;
    struct stat sb{};
    if (::lstat(opts.socket_path.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode) && sb.st_dev == socket_dev && sb.st_ino == socket_ino)
      ::unlink(opts.socket_path.c_str());
  }

  // ---------------- clients ----------------
  int max_clients() const noexcept {
    if (opts.max_clients > 0) return opts.max_clients;
    return static_cast<int>(kMaxParticipants) - 1 - static_cast<int>(workers.size());
  }
  int count_clients(bool said_hello) const noexcept {
    int n = 0;
    for (const auto& [id, c] : clients) n += c.said_hello == said_hello ? 1 : 0;
    return n;
  }

  // A refused connection gets one error line (if its socket takes it now) and is closed.
  static void refuse(int fd, const std::string& why) {
    const std::string line = wire::encode_line({{"type", "error"}, {"message", why}});
    (void)wire::send_some(fd, line.data(), line.size());
    ::close(fd);
  }

  // Too many connections without a hello: the oldest goes, so that silent
  // connections cannot keep a real client (which says hello at once) out.
  void evict_oldest_pending() {
    for (auto& [id, c] : clients) {  // std::map: ascending ids, the oldest first
      if (c.said_hello) continue;
      ++st.clients_refused;
      const int fd = c.fd;
      c.fd = -1;
      loop->cancel(c.watch);
      if (c.hello_timer != 0) loop->cancel(c.hello_timer);
      if (c.out_watched) (void)::epoll_ctl(out_ep, EPOLL_CTL_DEL, fd, nullptr);
      clients.erase(id);
      refuse(fd, "broker: " + std::to_string(opts.max_pending) + " connections were waiting for their hello; closed the oldest");
      return;
    }
  }

  void on_accept() {
    for (;;) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != ::geteuid()) {
        spdlog::warn("broker: refused a client of another user");
        ::close(fd);
        continue;
      }
      if (count_clients(false) >= opts.max_pending) evict_oldest_pending();
      ClientRec c;
      c.id = next_client++;
      c.fd = fd;
      c.pid = cred.pid;
      const int id = c.id;
      auto watch = loop->watch_readable(fd, [this, id] { on_client_readable(id); });
      if (!watch) {
        refuse(fd, "broker: " + watch.error().message);
        continue;
      }
      c.watch = *watch;
      auto timer = loop->add_timer(opts.hello_timeout, [this, id] {
        auto it = clients.find(id);
        if (it == clients.end() || it->second.said_hello) return;
        it->second.hello_timer = 0;
        ++st.hello_timeouts;
        send(it->second, {{"type", "error"}, {"message", "broker: no hello within " + std::to_string(opts.hello_timeout.count()) + " ms"}});
        doom(it->second, "sent no hello in time");
      });
      if (timer) c.hello_timer = *timer;
      clients.emplace(id, std::move(c));
    }
  }

  // The client's hello: take a participant slot, open a channel to every live worker
  // and answer with the broker's hello and the arena descriptor.
  void admit(ClientRec& c, const wire::ClientMessage& m) {
    if (c.hello_timer != 0) loop->cancel(c.hello_timer);
    c.hello_timer = 0;
    if (m.version != wire::kProtocolVersion) {
      send(c, {{"type", "error"}, {"message", "broker: protocol version " + std::to_string(m.version) + " is not supported (this broker speaks " +
                                                  std::to_string(wire::kProtocolVersion) + ")"}});
      doom(c, "spoke an unsupported protocol version");
      return;
    }
    if (count_clients(true) >= max_clients()) {
      ++st.clients_refused;
      send(c, {{"type", "error"}, {"message", "broker: full: " + std::to_string(max_clients()) + " clients are connected (--max-clients)"}});
      doom(c, "refused: the broker is full");
      return;
    }
    auto slot = arena.register_participant(Role::client, c.pid, "client-" + std::to_string(c.id));
    if (!slot) {
      ++st.clients_refused;
      send(c, {{"type", "error"}, {"message", "broker: " + slot.error().message}});
      doom(c, "refused: no participant slot");
      return;
    }
    c.slot = *slot;
    c.said_hello = true;
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
                              {"version", wire::kProtocolVersion},
                              {"client_slot", static_cast<std::int64_t>(c.slot)},
                              {"workers", std::move(ws)},
                              {"max_retries", opts.pool.max_retries},
                              {"cancel_grace_ms", static_cast<std::int64_t>(opts.pool.cancel_grace.count())},
                              {"max_blocks_percent", opts.max_blocks_percent}};
    ++st.clients_connected;
    spdlog::info("broker: client {} connected (pid {})", c.id, c.pid);
    send(c, hello, arena.fd());
  }

  void on_client_readable(int id) {
    auto it = clients.find(id);
    if (it == clients.end()) return;
    ClientRec& c = it->second;
    if (!c.doomed.empty()) return;
    const ssize_t n = wire::recv_some(c.fd, c.inbuf, nullptr);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      client_gone(id, "disconnected");
      return;
    }
    c.lines.feed(c.inbuf, [&](const boost::json::object& o) {
      if (!c.doomed.empty()) return;
      const wire::ClientMessage m = wire::parse_client(o);
      if (!c.said_hello) {
        if (m.kind == wire::ClientMessage::Kind::hello) {
          admit(c, m);
        } else {
          send(c, {{"type", "error"}, {"message", "broker: expected a hello, got '" + m.type + "'"}});
          doom(c, "spoke before its hello");
        }
        return;
      }
      switch (m.kind) {
        case wire::ClientMessage::Kind::recovered: on_recovered(id, m.index); break;
        case wire::ClientMessage::Kind::kill_worker: on_kill_request(c, m.index); break;
        case wire::ClientMessage::Kind::ping: send(c, {{"type", "pong"}, {"id", m.id}}); break;
        case wire::ClientMessage::Kind::bye: doom(c, "said bye"); break;
        case wire::ClientMessage::Kind::hello:
          send(c, {{"type", "error"}, {"message", "broker: a second hello"}});
          break;
        case wire::ClientMessage::Kind::unknown:
          send(c, {{"type", "error"}, {"message", "broker: unknown message type '" + m.type + "'"}});
          break;
      }
    });
    reap();
  }

  // kill_worker from a client of a shared pool: only if the operator granted it
  // (--allow-client-kill); the pool signals only the processes it spawned.
  void on_kill_request(ClientRec& c, std::int64_t index) {
    if (!opts.allow_client_kill) {
      ++st.kills_refused;
      send(c, {{"type", "error"},
               {"message", "kill_worker refused: this broker does not let clients kill shared workers (start it with --allow-client-kill)"}});
      return;
    }
    if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) {
      send(c, {{"type", "error"}, {"message", "kill_worker: no worker " + std::to_string(index)}});
      return;
    }
    (void)pool->kill(static_cast<int>(index));
  }

  // ---------------- output: never a blocking send on the loop ----------------
  // Queues a line for `c` and writes what the socket takes now. A client whose unsent
  // bytes exceed opts.client_backlog is disconnected (reaped after the current
  // callback), never waited for.
  void send(ClientRec& c, const boost::json::object& m, int fd = -1) {
    if (!c.doomed.empty()) return;
    std::string line = wire::encode_line(m);
    std::size_t off = 0;
    if (c.out.empty()) {
      const ssize_t n = wire::send_some(c.fd, line.data(), line.size(), fd);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        doom(c, "unreachable");
        return;
      }
      if (n > 0) {
        off = static_cast<std::size_t>(n);
        fd = -1;  // went with the first byte
      }
      if (off == line.size()) return;
    }
    c.out_bytes += line.size() - off;
    c.out.push_back({std::move(line), off, fd});
    if (c.out_bytes > opts.client_backlog) {
      ++st.clients_too_slow;
      doom(c, "too slow: " + std::to_string(c.out_bytes) + " bytes unsent (client_backlog " + std::to_string(opts.client_backlog) + ")");
      return;
    }
    if (!c.out_watched) {
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.u64 = static_cast<std::uint64_t>(c.id);
      if (::epoll_ctl(out_ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
        doom(c, "cannot watch its socket");
        return;
      }
      c.out_watched = true;
    }
  }

  void flush(ClientRec& c) {
    while (!c.out.empty() && c.doomed.empty()) {
      Out& o = c.out.front();
      const ssize_t n = wire::send_some(c.fd, o.bytes.data() + o.off, o.bytes.size() - o.off, o.fd);
      if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) doom(c, "unreachable");
        return;
      }
      o.fd = -1;
      o.off += static_cast<std::size_t>(n);
      c.out_bytes -= static_cast<std::size_t>(n);
      if (o.off == o.bytes.size()) c.out.pop_front();
    }
    if (c.out.empty() && c.out_watched) {
      (void)::epoll_ctl(out_ep, EPOLL_CTL_DEL, c.fd, nullptr);
      c.out_watched = false;
    }
  }

  void on_writable() {
    epoll_event ev[64];
    const int n = ::epoll_wait(out_ep, ev, 64, 0);
    for (int i = 0; i < n; ++i) {
      auto it = clients.find(static_cast<int>(ev[i].data.u64));
      if (it != clients.end()) flush(it->second);
    }
    reap();
  }

  void doom(ClientRec& c, const std::string& why) {
    if (!c.doomed.empty()) return;
    c.doomed = why;
    if (!reap_posted) {
      reap_posted = true;
      loop->post([this] { reap(); });
    }
  }

  // Disconnects the clients marked by doom() (outside any loop over `clients`).
  void reap() {
    reap_posted = false;
    std::vector<std::pair<int, std::string>> gone;
    for (auto& [id, c] : clients)
      if (!c.doomed.empty()) gone.emplace_back(id, c.doomed);
    for (auto& [id, why] : gone) client_gone(id, why.c_str());
  }

  // The client is gone (closed its socket, died, or was disconnected). Its input
  // blocks are reclaimed at once; results waiting in its rings are freed once each
  // worker let go of the channel.
  void client_gone(int id, const char* why) {
    auto it = clients.find(id);
    if (it == clients.end()) return;
    ClientRec c = std::move(it->second);
    clients.erase(it);
    loop->cancel(c.watch);
    if (c.hello_timer != 0) loop->cancel(c.hello_timer);
    if (c.out_watched) (void)::epoll_ctl(out_ep, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    if (!c.said_hello) return;  // held nothing
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

  // Per-client share of each block class (inputs and results not yet released). A
  // client over its share is told why and disconnected; its blocks come back.
  void check_quotas() {
    (void)loop->add_timer(opts.quota_interval, [this] { check_quotas(); });
    if (clients.empty() || opts.max_blocks_percent <= 0 || opts.max_blocks_percent >= 100) return;
    for (std::uint32_t cls = 0; cls < arena.n_classes(); ++cls) {
      const SizeClass& sc = arena.size_class(cls);
      std::array<std::uint32_t, kMaxParticipants> held{};
      const AtomicU64* metas = arena.block_meta(cls);
      for (std::uint32_t i = 0; i < sc.block_count; ++i) {
        const std::uint64_t w = metas[i].load(std::memory_order_relaxed);  // relaxed: a snapshot; no partner
        if (meta::state(w) == static_cast<std::uint16_t>(BlockState::held) && meta::owner(w) < kMaxParticipants) ++held[meta::owner(w)];
      }
      const std::uint64_t limit = std::max<std::uint64_t>(1, std::uint64_t{sc.block_count} * static_cast<std::uint64_t>(opts.max_blocks_percent) / 100);
      for (auto& [id, c] : clients) {
        if (!c.said_hello || !c.doomed.empty() || held[c.slot] <= limit) continue;
        ++st.clients_over_quota;
        const std::string why = "broker: quota: this client holds " + std::to_string(held[c.slot]) + " blocks of " +
                                std::to_string(sc.block_size) + " bytes; a client may hold " + std::to_string(limit) + " of " +
                                std::to_string(sc.block_count) + " (" + std::to_string(opts.max_blocks_percent) + "%, --max-blocks-percent)";
        spdlog::warn("client {}: {}", id, why);
        send(c, {{"type", "error"}, {"code", "quota"}, {"message", why}});
        doom(c, "over its block quota");
      }
    }
    reap();
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
  // A client that cannot take it is disconnected by the reap doom() posts, not
  // here: the caller may be in the middle of a worker's recovery.
  void broadcast(const boost::json::object& m) {
    for (auto& [id, c] : clients)
      if (c.said_hello) send(c, m);
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
      for (auto& [id, c] : clients)
        if (c.said_hello && c.doomed.empty()) w.waiting_acks.insert(id);
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

  void on_recovered(int client, std::int64_t index) {
    if (index < 0 || static_cast<std::size_t>(index) >= workers.size()) return;
    workers[static_cast<std::size_t>(index)].waiting_acks.erase(client);
    maybe_finish_recovery(static_cast<int>(index));
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
      if (!c.said_hello || !c.doomed.empty()) continue;
      auto ch = arena.open_channel(c.slot, w.slot, c.slot, w.slot);
      if (!ch) continue;
      c.channels[i] = *ch;
      send(c, {{"type", "worker_ready"}, {"index", i}, {"slot", static_cast<std::int64_t>(w.slot)},
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
      listen_fd = -1;
    }
    remove_socket();
    if (out_ep >= 0) {
      ::close(out_ep);
      out_ep = -1;
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
    s.clients = impl_->count_clients(true);
    for (const auto& w : impl_->workers) s.workers_alive += w.alive ? 1 : 0;
    p->set_value(s);
  });
  if (f.wait_for(std::chrono::seconds(5)) != std::future_status::ready) return impl_->st;
  return f.get();
}

void BrokerServer::stop() { impl_->stop(); }

}  // namespace tessera
