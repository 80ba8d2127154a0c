// Client::connect: a client of a standalone `tessera-broker`. The data path is the
// same as in embedded mode (client <-> worker rings); the broker's messages arrive
// on a reader thread and are handed to the client thread as events.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "client_impl.hpp"
#include "wire.hpp"

namespace tessera {
namespace {

struct Connection {
  int sock = -1;
  std::thread reader;
  std::atomic<bool> stop{false};
  ~Connection() {
    if (sock >= 0) ::close(sock);
  }
};

// The broker owns the workers: it finishes a dead worker's recovery once every
// client acknowledged steps 1-2, and decides when one is given up.
class RemoteBroker final : public detail::WorkerControl {
 public:
  explicit RemoteBroker(std::shared_ptr<Connection> conn) : conn_(std::move(conn)) {}
  ~RemoteBroker() override { shutdown(); }

  void recovered(detail::WorkerState& w) override {
    (void)wire::send_line(conn_->sock, {{"type", "recovered"}, {"index", w.index}});
  }
  Result<void> kill(std::int32_t index) override {
    if (!wire::send_line(conn_->sock, {{"type", "kill_worker"}, {"index", index}}))
      return fail(Errc::unavailable, "kill_worker: the broker connection is closed");
    return {};
  }
  bool restarts(std::int32_t) const override { return true; }  // until the broker says it gave up
  void shutdown() noexcept override {
    if (conn_->stop.exchange(true, std::memory_order_relaxed)) return;  // relaxed: a flag; the reader polls it
    (void)wire::send_line(conn_->sock, {{"type", "bye"}});
    ::shutdown(conn_->sock, SHUT_RDWR);
    if (conn_->reader.joinable()) conn_->reader.join();
  }

 private:
  std::shared_ptr<Connection> conn_;
};

}  // namespace

Result<std::unique_ptr<Client>> Client::connect(const std::string& socket_path, ClientOptions opts,
                                                std::chrono::milliseconds timeout) {
  if (auto ok = detail::check_client_options(opts); !ok) return fail(std::move(ok).error());
  auto conn = std::make_shared<Connection>();
  conn->sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (conn->sock < 0) return fail(Error::sys("connect: socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) return fail(Errc::invalid_argument, "connect: socket path too long");
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (::connect(conn->sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return fail(Errc::unavailable, "connect: no broker at '" + socket_path + "': " + std::strerror(errno));
  // The client speaks first (the broker takes a participant slot only after this line).
  if (!wire::send_line(conn->sock, {{"type", "hello"}, {"version", wire::kProtocolVersion}}))
    return fail(Errc::unavailable, "connect: the broker at '" + socket_path + "' closed the connection");

  // Hello: our participant slot, the workers and their channels, and the arena memfd.
  std::string buf;
  wire::LineReader lines;
  std::vector<boost::json::object> after_hello;  // lines that came in the same read as the hello
  int arena_fd = -1;
  boost::json::object hello;
  // Saturated: a timeout of milliseconds::max() ("forever") never wraps.
  const auto deadline = timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::nanoseconds::max())
                            ? Clock::time_point::max()
                            : detail::deadline_after(Clock::now(), timeout);
  while (hello.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return fail(Errc::timeout, "connect: the broker did not say hello");
    pollfd p{conn->sock, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left, 1000))) <= 0) continue;
    if (wire::recv_some(conn->sock, buf, &arena_fd) <= 0) return fail(Errc::unavailable, "connect: the broker closed the connection");
    lines.feed(buf, [&](const boost::json::object& m) {
      if (hello.empty()) {
        hello = m;
      } else {
        after_hello.push_back(m);
      }
    });
  }
  if (wire::get_str(hello, "type") != "hello") {
    if (arena_fd >= 0) ::close(arena_fd);
    return fail(Errc::protocol, "connect: broker refused: " + wire::get_str(hello, "message"));
  }
  if (arena_fd < 0) return fail(Errc::protocol, "connect: the broker sent no arena descriptor");
  auto arena = Arena::attach_fd(arena_fd, true);
  if (!arena) return fail(std::move(arena).error());
  const auto slot = wire::get_int(hello, "client_slot");
  if (slot < 0 || slot >= static_cast<std::int64_t>(kMaxParticipants)) return fail(Errc::protocol, "connect: bad client slot");

  auto impl = std::make_unique<Impl>(std::move(*arena), static_cast<std::uint32_t>(slot), std::move(opts));
  impl->max_retries = static_cast<int>(wire::get_int(hello, "max_retries", 1));
  impl->cancel_grace = std::chrono::milliseconds(wire::get_int(hello, "cancel_grace_ms", 2000));
  impl->control = std::make_unique<RemoteBroker>(conn);  // before any worker: the broker owns their slots
  if (auto it = hello.find("workers"); it != hello.end() && it->value().is_array()) {
    for (const auto& v : it->value().as_array()) {
      if (!v.is_object()) continue;
      const auto& w = v.as_object();
      const auto index = static_cast<std::int32_t>(wire::get_int(w, "index"));
      const auto channel = wire::get_int(w, "channel");
      const auto wslot = wire::get_int(w, "slot");
      if (index < 0 || channel < 0 || wslot < 0) continue;
      impl->bind_worker_channel(index, static_cast<std::uint32_t>(channel), static_cast<std::uint32_t>(wslot));
      impl->on_worker_ready(index, static_cast<int>(wire::get_int(w, "pid", 0)));
    }
  }
  Impl* ip = impl.get();
  conn->reader = std::thread([conn, ip, lines = std::move(lines), early = std::move(after_hello)]() mutable {
    std::string in;
    auto dispatch = [&](const boost::json::object& m) {
      const std::string type = wire::get_str(m, "type");
      const auto idx = static_cast<std::int32_t>(wire::get_int(m, "index"));
      if (type == "worker_died") {
        ip->post_event({Impl::Event::Kind::died, idx, 0, "broker: " + wire::get_str(m, "reason")});
      } else if (type == "worker_ready") {
        Impl::Event e{Impl::Event::Kind::ready, idx, static_cast<int>(wire::get_int(m, "pid", 0)), {}};
        e.channel = wire::get_int(m, "channel");
        e.slot = static_cast<std::uint32_t>(wire::get_int(m, "slot", kNoSlot));
        ip->post_event(std::move(e));
      } else if (type == "worker_gave_up") {
        ip->post_event({Impl::Event::Kind::gave_up, idx, 0, wire::get_str(m, "reason")});
      }
    };
    for (const auto& m : early) dispatch(m);
    while (!conn->stop.load(std::memory_order_relaxed)) {  // relaxed: a flag
      pollfd p{conn->sock, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      if (wire::recv_some(conn->sock, in, nullptr) <= 0) {
        if (conn->stop.load(std::memory_order_relaxed)) return;  // relaxed: a flag
        // The broker is gone (its workers die with it): every worker is lost.
        for (std::int32_t i = 0; i < static_cast<std::int32_t>(kMaxParticipants); ++i) {
          ip->post_event({Impl::Event::Kind::died, i, 0, "broker connection lost"});
          ip->post_event({Impl::Event::Kind::gave_up, i, 0, "broker connection lost"});
        }
        return;
      }
      lines.feed(in, dispatch);
    }
  });
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

}  // namespace tessera
