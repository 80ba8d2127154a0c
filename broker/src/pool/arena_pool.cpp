// ArenaPool: worker processes in an arena, on top of the ProcessSupervisor (scrubbed
// environment, parent-death signal, pidfd, Appose init + readiness, backoff and
// crash-loop detection). The supervisor never respawns on its own here: the owner
// first recovers the dead worker's tiles and blocks, then recover() respawns it on
// the respawner thread, so a slow init never stalls the owner's thread.
#include "arena_pool.hpp"

#include <csignal>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <tessera/slab.hpp>
#include <tessera/process_supervisor.hpp>

namespace tessera::pool {

std::uint64_t reclaim_dead_worker(Arena& arena, std::uint32_t slot, std::span<const std::uint32_t> channels,
                                  bool keep_slot) {
  for (const std::uint32_t ch : channels) {
    arena.close_channel(ch);
    arena.release_channel(ch);
  }
  const std::uint64_t reclaimed = Slab::reclaim(arena, slot);
  if (keep_slot) {
    arena.set_participant_pid(slot, 0);  // the respawned process is given the same slot
  } else {
    arena.mark_dead(slot);
    arena.release_participant(slot);
  }
  return reclaimed;
}

class ArenaPool::Impl {
 public:
  Impl(Arena& arena, EventHandler on_event, std::unique_ptr<ProcessSupervisor> sup)
      : arena_(arena), on_event_(std::move(on_event)), sup_(std::move(sup)) {
    sup_->set_event_handler([this](const WorkerEvent& e) { on_supervisor_event(e); });
    respawner_ = std::thread([this] { respawn_loop(); });
  }

  ~Impl() { shutdown(); }

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

  Result<int> start(int index, std::uint32_t slot, const PoolSpec& spec) {
    if (index < 0) return fail(Errc::invalid_argument, "pool: negative worker index");
    WorkerSpec ws;
    ws.argv = spec.argv;
    ws.env = spec.env;
    ws.env[kArenaFdEnv] = std::to_string(kArenaFd);
    ws.env[kSlotEnv] = std::to_string(slot);
    ws.pass_fds = {arena_.fd()};  // pass_fds start at kArenaFd
    ws.init_scripts = spec.init_scripts;
    ws.init_scripts.push_back(kReadyScript);
    ws.ready_timeout = spec.ready_timeout;
    ws.name = "worker-" + std::to_string(index);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (to_sup_.size() <= static_cast<std::size_t>(index)) to_sup_.resize(static_cast<std::size_t>(index) + 1);
      to_sup_[static_cast<std::size_t>(index)] = {-1, spec.restart};
    }
    auto sid = sup_->add_worker(std::move(ws));
    if (!sid) return fail(sid.error().code, "worker " + std::to_string(index) + " failed to start: " + sid.error().message);
    const int pid = sup_->worker_pid(*sid);
    std::lock_guard<std::mutex> lk(mu_);
    to_sup_[static_cast<std::size_t>(index)].sup_id = *sid;
    if (to_index_.size() <= static_cast<std::size_t>(*sid)) to_index_.resize(static_cast<std::size_t>(*sid) + 1, -1);
    to_index_[static_cast<std::size_t>(*sid)] = index;
    arena_.set_participant_pid(slot, pid);
    return pid;
  }

  std::uint64_t recover(int index, std::uint32_t slot, std::span<const std::uint32_t> channels) {
    const bool restart = restarts(index);
    const std::uint64_t reclaimed = reclaim_dead_worker(arena_, slot, channels, restart);
    if (restart) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        queue_.push_back({index, slot});
      }
      cv_.notify_all();
    }
    return reclaimed;
  }

  bool restarts(int index) const {
    std::lock_guard<std::mutex> lk(mu_);
    return index >= 0 && static_cast<std::size_t>(index) < to_sup_.size() && to_sup_[static_cast<std::size_t>(index)].restart;
  }

  Result<void> kill(int index) {
    const int sid = sup_id(index);
    if (sid < 0) return fail(Errc::invalid_argument, "pool: no worker " + std::to_string(index));
    return sup_->kill_worker(sid, SIGKILL);
  }

 private:
  struct Entry {
    int sup_id = -1;
    bool restart = false;
  };
  struct Respawn {
    int index;
    std::uint32_t slot;
  };

  int sup_id(int index) const {
    std::lock_guard<std::mutex> lk(mu_);
    return index >= 0 && static_cast<std::size_t>(index) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(index)].sup_id : -1;
  }

  void on_supervisor_event(const WorkerEvent& e) {  // supervisor thread: must not block
    int index = -1;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (e.worker >= 0 && static_cast<std::size_t>(e.worker) < to_index_.size()) index = to_index_[static_cast<std::size_t>(e.worker)];
    }
    if (index < 0) return;  // still inside start(): its result reports the outcome
    switch (e.kind) {
      case WorkerEventKind::died: on_event_({Event::Kind::died, index, 0, describe_exit(e)}); break;
      case WorkerEventKind::gave_up:  // only respawn() gives up here: respawn_loop reports it
      case WorkerEventKind::ready:
      case WorkerEventKind::respawned: break;  // respawn_loop reports readiness, the slot's pid set
    }
  }

  void respawn_loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      const Respawn job = queue_.front();
      queue_.pop_front();
      const int sid = static_cast<std::size_t>(job.index) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(job.index)].sup_id : -1;
      lk.unlock();
      if (sid >= 0) {
        auto r = sup_->respawn(sid);  // backoff and crash-loop detection live in the supervisor
        if (r) {
          const int pid = sup_->worker_pid(sid);
          arena_.set_participant_pid(job.slot, pid);
          on_event_({Event::Kind::ready, job.index, pid, {}});
        } else {
          on_event_({Event::Kind::gave_up, job.index, 0, r.error().message});
        }
      }
      lk.lock();
    }
  }

  Arena& arena_;
  EventHandler on_event_;
  std::unique_ptr<ProcessSupervisor> sup_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Respawn> queue_;
  std::vector<Entry> to_sup_;     // by owner index
  std::vector<int> to_index_;     // by supervisor id
  bool stopping_ = false;
  std::thread respawner_;
};

ArenaPool::ArenaPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ArenaPool::~ArenaPool() = default;

Result<std::unique_ptr<ArenaPool>> ArenaPool::create(Arena& arena, EventHandler on_event) {
  ProcessOptions so;
  so.auto_respawn = false;  // recover() respawns, after the owner reclaimed rings and blocks
  auto sup = ProcessSupervisor::create(so);
  if (!sup) return fail(std::move(sup).error());
  return std::unique_ptr<ArenaPool>(new ArenaPool(std::make_unique<Impl>(arena, std::move(on_event), std::move(*sup))));
}

Result<int> ArenaPool::start(int index, std::uint32_t slot, const PoolSpec& spec) { return impl_->start(index, slot, spec); }
std::uint64_t ArenaPool::recover(int index, std::uint32_t slot, std::span<const std::uint32_t> channels) {
  return impl_->recover(index, slot, channels);
}
bool ArenaPool::restarts(int index) const { return impl_->restarts(index); }
Result<void> ArenaPool::kill(int index) { return impl_->kill(index); }
void ArenaPool::shutdown() { impl_->shutdown(); }

}  // namespace tessera::pool
