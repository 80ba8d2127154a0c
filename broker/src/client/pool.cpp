// Client::start_pool: the embedded broker's workers, spawned and recovered by the
// arena pool (pool/arena_pool.hpp). Its events reach the client thread through
// Impl::post_event; recovery steps 1-2 run there (Impl::on_worker_died), then
// EmbeddedPool::recovered hands the rest to the pool and reopens this client's channel.
#include "arena_pool.hpp"
#include "client_impl.hpp"

namespace tessera {
namespace {

class EmbeddedPool final : public detail::WorkerControl {
 public:
  EmbeddedPool(Client::Impl& impl, std::unique_ptr<pool::ArenaPool> p) : impl_(impl), pool_(std::move(p)) {}

  void recovered(detail::WorkerState& w) override {
    impl_.reclaimed_blocks += pool_->recover(w.index, w.slot, {&w.channel, 1});
    if (!pool_->restarts(w.index)) {
      w.slot = kNoSlot;
      return;
    }
    // Same slot, fresh channel: the respawned process finds it when it attaches, and
    // the worker is dispatched to once its ready event arrives.
    if (!impl_.open_worker_channel(w)) w.slot = kNoSlot;
  }
  Result<void> kill(std::int32_t index) override { return pool_->kill(index); }
  bool restarts(std::int32_t index) const override { return pool_->restarts(index); }
  void shutdown() noexcept override { pool_->shutdown(); }

  pool::ArenaPool& arena_pool() { return *pool_; }

 private:
  Client::Impl& impl_;
  std::unique_ptr<pool::ArenaPool> pool_;
};

Client::Impl::Event to_client_event(pool::Event e) {
  using K = Client::Impl::Event::Kind;
  const K k = e.kind == pool::Event::Kind::ready ? K::ready : e.kind == pool::Event::Kind::died ? K::died : K::gave_up;
  return {k, e.index, e.pid, std::move(e.text)};
}

}  // namespace

Result<void> Client::start_pool(const PoolSpec& spec) {
  auto& I = *impl_;
  if (spec.argv.empty()) return fail(Errc::invalid_argument, "start_pool: empty worker command");
  if (spec.devices.empty() && spec.count <= 0) return fail(Errc::invalid_argument, "start_pool: count must be > 0");
  for (const auto& d : spec.devices)
    if (d.empty() || d.find_first_of(" =\n") != std::string::npos)
      return fail(Errc::invalid_argument, "start_pool: bad device name '" + d + "'");
  if (!I.control) {
    Impl* ip = &I;
    auto p = pool::ArenaPool::create(I.arena, [ip](pool::Event e) { ip->post_event(to_client_event(std::move(e))); });
    if (!p) return fail(std::move(p).error());
    I.control = std::make_unique<EmbeddedPool>(I, std::move(*p));
  }
  auto* embedded = dynamic_cast<EmbeddedPool*>(I.control.get());
  if (embedded == nullptr) return fail(Errc::invalid_argument, "start_pool: this client's workers belong to a broker");
  I.max_retries = spec.max_retries;
  I.cancel_grace = spec.cancel_grace;
  // With a device list: one worker per device, each seeing only its own GPU.
  const int count = spec.devices.empty() ? spec.count : static_cast<int>(spec.devices.size());
  for (int i = 0; i < count; ++i) {
    auto idx = I.new_worker_slot(spec.argv[0], -1);
    if (!idx) return fail(std::move(idx).error());
    detail::WorkerState& w = I.workers[static_cast<std::size_t>(*idx)];
    PoolSpec one = spec;
    if (!spec.devices.empty()) one.env["CUDA_VISIBLE_DEVICES"] = spec.devices[static_cast<std::size_t>(i)];
    auto pid = embedded->arena_pool().start(*idx, w.slot, one);
    if (!pid) {
      // The slot stays registered but unused; release it so nothing leaks.
      I.reclaimed_blocks += pool::reclaim_dead_worker(I.arena, w.slot, {&w.channel, 1}, false);
      w.slot = kNoSlot;
      I.last_pool_error = pid.error().message;
      I.update_usable();
      return fail(pid.error().code, "start_pool: " + pid.error().message);
    }
    I.on_worker_ready(*idx, *pid);
  }
  return {};
}

}  // namespace tessera
