// Worker pool glue: the client's embedded broker starts workers through the
// Supervisor (scrubbed env, pdeathsig, pidfd, Appose init + readiness) and hands
// each one the arena memfd as fd 3. Deaths reach the client thread as events; the
// client recovers the worker's tiles and blocks first, then asks for a respawn,
// which runs on a separate thread so a slow init never stalls the data path.
#include <tessera/supervisor.hpp>

#include <csignal>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "client_impl.hpp"

namespace tessera {

// Owns the supervisor and the respawner thread for one client.
class PoolRuntime {
 public:
  PoolRuntime(Client::Impl& impl, std::unique_ptr<Supervisor> sup) : impl_(impl), sup_(std::move(sup)) {
    sup_->set_event_handler([this](const WorkerEvent& e) { on_event(e); });
    respawner_ = std::thread([this] { respawn_loop(); });
  }

  ~PoolRuntime() { shutdown(); }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (respawner_.joinable()) respawner_.join();
    sup_->shutdown();
  }

  Supervisor& supervisor() { return *sup_; }

  // Client index <-> supervisor id (equal when workers are added in order, kept explicit).
  void map(std::int32_t client_index, int sup_id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (to_client_.size() <= static_cast<std::size_t>(sup_id)) to_client_.resize(static_cast<std::size_t>(sup_id) + 1, -1);
    to_client_[static_cast<std::size_t>(sup_id)] = client_index;
    if (to_sup_.size() <= static_cast<std::size_t>(client_index)) to_sup_.resize(static_cast<std::size_t>(client_index) + 1, -1);
    to_sup_[static_cast<std::size_t>(client_index)] = sup_id;
  }
  int sup_id(std::int32_t client_index) {
    std::lock_guard<std::mutex> lk(mu_);
    return static_cast<std::size_t>(client_index) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(client_index)] : -1;
  }

  void request_respawn(std::int32_t client_index) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(client_index);
    }
    cv_.notify_all();
  }

 private:
  void on_event(const WorkerEvent& e) {  // supervisor thread: must not block
    std::int32_t idx = -1;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (e.worker >= 0 && static_cast<std::size_t>(e.worker) < to_client_.size()) idx = to_client_[static_cast<std::size_t>(e.worker)];
    }
    if (idx < 0) return;  // still inside add_worker: start_pool reports it
    switch (e.kind) {
      case WorkerEventKind::died:
        impl_.post_event({Client::Impl::Event::Kind::died, idx, 0, describe_exit(e)});
        break;
      case WorkerEventKind::gave_up:
        impl_.post_event({Client::Impl::Event::Kind::gave_up, idx, 0, e.message});
        break;
      case WorkerEventKind::ready:
      case WorkerEventKind::respawned:
        impl_.post_event({Client::Impl::Event::Kind::ready, idx, e.pid, {}});
        break;
    }
  }

  void respawn_loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      const std::int32_t idx = queue_.front();
      queue_.pop_front();
      const int sid = static_cast<std::size_t>(idx) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(idx)] : -1;
      lk.unlock();
      if (sid >= 0) {
        auto r = sup_->respawn(sid);
        if (r) {
          impl_.post_event({Client::Impl::Event::Kind::ready, idx, sup_->worker_pid(sid), {}});
        } else {
          impl_.post_event({Client::Impl::Event::Kind::gave_up, idx, 0, r.error().message});
        }
      }
      lk.lock();
    }
  }

  Client::Impl& impl_;
  std::unique_ptr<Supervisor> sup_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::int32_t> queue_;
  std::vector<std::int32_t> to_client_;
  std::vector<int> to_sup_;
  bool stopping_ = false;
  std::thread respawner_;
};

void Client::Impl::PoolDeleter::operator()(PoolRuntime* p) const noexcept { delete p; }

Result<void> Client::start_pool(const PoolSpec& spec) {
  auto& I = *impl_;
  if (spec.argv.empty()) return fail(Errc::invalid_argument, "start_pool: empty worker command");
  if (spec.devices.empty() && spec.count <= 0) return fail(Errc::invalid_argument, "start_pool: count must be > 0");
  for (const auto& d : spec.devices)
    if (d.empty() || d.find_first_of(" =\n") != std::string::npos) return fail(Errc::invalid_argument, "start_pool: bad device name '" + d + "'");
  if (!I.pool) {
    SupervisorOptions so;
    so.auto_respawn = false;  // the client recovers rings and blocks first, then respawns
    auto sup = Supervisor::create(so);
    if (!sup) return fail(std::move(sup).error());
    I.pool.reset(new PoolRuntime(I, std::move(*sup)));
    PoolRuntime* pool = I.pool.get();
    I.kill_hook = [pool](std::int32_t idx) {
      const int sid = pool->sup_id(idx);
      if (sid >= 0) (void)pool->supervisor().kill_worker(sid, SIGKILL);
    };
    I.shutdown_hook = [pool] { pool->shutdown(); };
  }
  PoolRuntime* pool = I.pool.get();
  I.max_retries = spec.max_retries;
  I.cancel_grace = spec.cancel_grace;
  if (spec.restart) I.respawn_hook = [pool](std::int32_t idx) { pool->request_respawn(idx); };
  const int count = spec.devices.empty() ? spec.count : static_cast<int>(spec.devices.size());
  for (int i = 0; i < count; ++i) {
    auto idx = I.new_worker_slot(spec.argv[0], -1);
    if (!idx) return fail(std::move(idx).error());
    const std::uint32_t wslot = I.workers[static_cast<std::size_t>(*idx)].slot;
    const std::uint32_t wchannel = I.workers[static_cast<std::size_t>(*idx)].channel;
    WorkerSpec ws;
    ws.argv = spec.argv;
    ws.env = spec.env;
    ws.env["TESSERA_ARENA_FD"] = "3";
    ws.env["TESSERA_SLOT"] = std::to_string(wslot);
    if (!spec.devices.empty()) ws.env["CUDA_VISIBLE_DEVICES"] = spec.devices[static_cast<std::size_t>(i)];
    ws.pass_fds = {I.arena.fd()};
    ws.init_scripts = spec.init_scripts;
    ws.init_scripts.push_back("tessera.ready");  // readiness: the arena is attached and the tile loop runs
    ws.ready_timeout = spec.ready_timeout;
    ws.max_task_retries = 0;
    ws.cancel_grace = spec.cancel_grace;
    ws.name = "worker-" + std::to_string(*idx);
    auto sid = pool->supervisor().add_worker(std::move(ws));
    if (!sid) {
      // The slot stays registered but unused; release it so nothing leaks.
      I.arena.close_channel(wchannel);
      I.arena.release_channel(wchannel);
      (void)Slab::reclaim(I.arena, wslot);
      I.arena.release_participant(wslot);
      I.workers[static_cast<std::size_t>(*idx)].slot = kNoSlot;
      return fail(sid.error().code, "start_pool: worker " + std::to_string(*idx) + " failed to start: " + sid.error().message);
    }
    pool->map(*idx, *sid);
    I.on_worker_ready(*idx, pool->supervisor().worker_pid(*sid));
  }
  return {};
}

}  // namespace tessera
