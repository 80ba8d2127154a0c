// ArenaPool: worker processes in an arena, on top of the ProcessSupervisor (scrubbed
// environment, parent-death signal, pidfd, Appose init + readiness, backoff and
// crash-loop detection). The supervisor never respawns on its own here: the owner
// first recovers the dead worker's tiles and blocks, then recover() respawns it on
// the respawner thread, so a slow init never stalls the owner's thread.
#include "arena_pool.hpp"

#include <algorithm>
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
  Impl(Arena& arena, EventHandler on_event, std::unique_ptr<ProcessSupervisor> sup, ProcessOptions so)
      : arena_(arena), on_event_(std::move(on_event)), sup_(std::move(sup)), so_(so) {
    sup_->set_event_handler([this](const WorkerEvent& e) { on_supervisor_event(e); });
    respawner_ = std::thread([this] { respawn_loop(); });
    watchdog_ = std::thread([this] { watchdog_loop(); });
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
    if (watchdog_.joinable()) watchdog_.join();
    sup_->shutdown();
  }

  Result<int> start(int index, std::uint32_t slot, const PoolSpec& spec) {
    if (index < 0) return fail(Errc::invalid_argument, "pool: negative worker index");
    if (spec.stall_timeout.count() < 0) return fail(Errc::invalid_argument, "pool: stall_timeout must be >= 0 (0: off)");
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
      Entry& e = to_sup_[static_cast<std::size_t>(index)];
      e = Entry{};
      e.restart = spec.restart;
      e.slot = slot;
      e.stall_timeout = spec.stall_timeout;
    }
    auto sid = sup_->add_worker(std::move(ws));
    if (!sid) return fail(sid.error().code, "worker " + std::to_string(index) + " failed to start: " + sid.error().message);
    const int pid = sup_->worker_pid(*sid);
    std::lock_guard<std::mutex> lk(mu_);
    Entry& e = to_sup_[static_cast<std::size_t>(index)];
    e.sup_id = *sid;
    if (to_index_.size() <= static_cast<std::size_t>(*sid)) to_index_.resize(static_cast<std::size_t>(*sid) + 1, -1);
    to_index_[static_cast<std::size_t>(*sid)] = index;
    arena_.set_participant_pid(slot, pid);
    mark_running(e);
    cv_.notify_all();  // the watchdog may need a shorter tick
    return pid;
  }

  std::uint64_t recover(int index, std::uint32_t slot, std::span<const std::uint32_t> channels) {
    const bool restart = restarts(index);
    // Did it answer anything in this life? (Its channels are fresh at every start.)
    std::uint64_t answered = 0;
    for (const std::uint32_t ch : channels) {
      if (ch >= arena_.n_channels()) continue;
      const std::uint32_t r = arena_.channel(ch).response_ring;
      // relaxed: the worker is dead; a count read for the backoff decision only.
      if (r < arena_.header().n_rings) answered += arena_.ring(r).tail.load(std::memory_order_relaxed);
    }
    const std::uint64_t reclaimed = reclaim_dead_worker(arena_, slot, channels, restart);
    if (restart) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        // A death after readiness is never a start failure and never ends the worker: it
        // comes back at once when it answered tiles in this life, else with a backoff
        // that doubles per consecutive such death (a worker that dies on every tile it
        // is given is slowed down, not given up; its tiles fail as poison client-side).
        auto delay = std::chrono::milliseconds(0);
        if (index >= 0 && static_cast<std::size_t>(index) < to_sup_.size()) {
          Entry& e = to_sup_[static_cast<std::size_t>(index)];
          if (answered != 0) {
            e.idle_deaths = 0;
          } else {
            ++e.idle_deaths;
            delay = so_.respawn_backoff;
            for (int i = 1; i < e.idle_deaths && delay < so_.respawn_backoff_max; ++i) delay *= 2;
            delay = std::min(delay, so_.respawn_backoff_max);
          }
        }
        queue_.push_back({index, slot, std::chrono::steady_clock::now() + delay});
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
    return sup_->kill_worker(sid, SIGKILL);  // through the pidfd of the process we spawned
  }

 private:
  using SteadyClock = std::chrono::steady_clock;
  struct Entry {
    int sup_id = -1;
    bool restart = false;
    std::uint32_t slot = kNoSlot;
    std::chrono::milliseconds stall_timeout{0};
    int idle_deaths = 0;           // consecutive deaths with nothing answered in that life
    // Stall watchdog (watchdog_loop); `running` from readiness until its death.
    bool running = false;
    std::uint64_t seen_taken = 0, seen_answered = 0, seen_heartbeat = 0;
    SteadyClock::time_point last_progress{};
    std::string kill_reason;       // why the pool killed it (prefixed to its death)
  };
  struct Respawn {
    int index;
    std::uint32_t slot;
    SteadyClock::time_point due;
  };
  struct Progress {
    std::uint64_t pushed = 0, taken = 0, answered = 0, heartbeat = 0;
  };

  int sup_id(int index) const {
    std::lock_guard<std::mutex> lk(mu_);
    return index >= 0 && static_cast<std::size_t>(index) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(index)].sup_id : -1;
  }

  void mark_running(Entry& e) {  // under mu_
    e.running = true;
    e.last_progress = SteadyClock::now();
    e.seen_taken = e.seen_answered = e.seen_heartbeat = 0;
    e.kill_reason.clear();
  }

  // What worker `slot` did so far, summed over its open channels. Every index is a
  // relaxed read: counters compared between ticks, nothing is published through them.
  Progress progress(std::uint32_t slot) const {
    Progress p;
    const std::uint32_t n_rings = arena_.header().n_rings;
    for (std::uint32_t c = 0; c < arena_.n_channels(); ++c) {
      const Channel& ch = arena_.channel(c);
      // acquire: the channel's fields are complete once it reads open (SYNC[channel.state]).
      if (ch.state.load(std::memory_order_acquire) != static_cast<std::uint32_t>(ChannelState::open)) continue;
      if (ch.worker_slot != slot || ch.request_ring >= n_rings || ch.response_ring >= n_rings) continue;
      const RingHeader& rq = arena_.ring(ch.request_ring);
      const RingHeader& rs = arena_.ring(ch.response_ring);
      p.pushed += rq.tail.load(std::memory_order_relaxed);    // relaxed: a counter, see above
      p.taken += rq.head.load(std::memory_order_relaxed);     // relaxed: a counter, see above
      p.answered += rs.tail.load(std::memory_order_relaxed);  // relaxed: a counter, see above
    }
    if (slot < kMaxParticipants)
      p.heartbeat = arena_.participant(slot).heartbeat_ns.load(std::memory_order_relaxed);  // relaxed: a hint
    return p;
  }

  // Kills a running worker that holds tiles (pushed to it and not answered) and shows
  // no progress -- no tile taken or answered, no heartbeat (each take() beats) -- for
  // its stall_timeout. Its death then runs the usual recovery.
  void watchdog_loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stopping_) {
      auto tick = std::chrono::milliseconds(1000);
      for (const Entry& e : to_sup_)
        if (e.running && e.stall_timeout.count() > 0) tick = std::min(tick, e.stall_timeout / 4);
      tick = std::max(tick, std::chrono::milliseconds(10));
      cv_.wait_for(lk, tick);
      if (stopping_) return;
      const auto now = SteadyClock::now();
      std::vector<std::pair<int, std::string>> victims;
      for (std::size_t i = 0; i < to_sup_.size(); ++i) {
        Entry& e = to_sup_[i];
        if (!e.running || e.stall_timeout.count() <= 0 || e.sup_id < 0) continue;
        const Progress p = progress(e.slot);
        const bool holding = p.pushed > p.answered;
        if (!holding || p.taken != e.seen_taken || p.answered != e.seen_answered || p.heartbeat != e.seen_heartbeat) {
          e.seen_taken = p.taken;
          e.seen_answered = p.answered;
          e.seen_heartbeat = p.heartbeat;
          e.last_progress = now;
          continue;
        }
        if (now - e.last_progress < e.stall_timeout) continue;
        e.running = false;  // one kill; its death or respawn re-arms it
        e.kill_reason = "stalled: no progress for " + std::to_string(e.stall_timeout.count()) + " ms while holding " +
                        std::to_string(p.pushed - p.answered) + " tile(s); killed by the pool";
        victims.emplace_back(e.sup_id, e.kill_reason);
      }
      if (victims.empty()) continue;
      lk.unlock();  // the supervisor call waits for its loop thread
      for (const auto& [sid, why] : victims) (void)sup_->kill_worker(sid, SIGKILL);
      lk.lock();
    }
  }

  void on_supervisor_event(const WorkerEvent& e) {  // supervisor thread: must not block
    int index = -1;
    std::string prefix;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (e.worker >= 0 && static_cast<std::size_t>(e.worker) < to_index_.size()) index = to_index_[static_cast<std::size_t>(e.worker)];
      if (index >= 0 && e.kind == WorkerEventKind::died) {
        Entry& en = to_sup_[static_cast<std::size_t>(index)];
        en.running = false;
        prefix = std::move(en.kill_reason);
        en.kill_reason.clear();
      }
    }
    if (index < 0) return;  // still inside start(): its result reports the outcome
    switch (e.kind) {
      case WorkerEventKind::died:
        on_event_({Event::Kind::died, index, 0, prefix.empty() ? describe_exit(e) : prefix + ": " + describe_exit(e)});
        break;
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
      auto next = std::min_element(queue_.begin(), queue_.end(), [](const Respawn& a, const Respawn& b) { return a.due < b.due; });
      if (next->due > SteadyClock::now()) {  // backoff: wait for it (or for an earlier job, or stop)
        cv_.wait_until(lk, next->due);
        continue;
      }
      const Respawn job = *next;
      queue_.erase(next);
      const int sid = static_cast<std::size_t>(job.index) < to_sup_.size() ? to_sup_[static_cast<std::size_t>(job.index)].sup_id : -1;
      lk.unlock();
      if (sid >= 0) {
        auto r = sup_->respawn(sid);  // start failures: backoff and give-up live in the supervisor
        if (r) {
          const int pid = sup_->worker_pid(sid);
          arena_.set_participant_pid(job.slot, pid);
          {
            std::lock_guard<std::mutex> g(mu_);
            mark_running(to_sup_[static_cast<std::size_t>(job.index)]);
          }
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
  ProcessOptions so_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Respawn> queue_;
  std::vector<Entry> to_sup_;     // by owner index
  std::vector<int> to_index_;     // by supervisor id
  bool stopping_ = false;
  std::thread respawner_;
  std::thread watchdog_;
};

ArenaPool::ArenaPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ArenaPool::~ArenaPool() = default;

Result<std::unique_ptr<ArenaPool>> ArenaPool::create(Arena& arena, EventHandler on_event) {
  ProcessOptions so;
  so.auto_respawn = false;  // recover() respawns, after the owner reclaimed rings and blocks
  // Only a death before readiness (spawn, init scripts, ready timeout) is a start failure;
  // a death after it is a tile-time death (recover() respawns it with its own backoff).
  so.min_uptime = std::chrono::milliseconds(0);
  auto sup = ProcessSupervisor::create(so);
  if (!sup) return fail(std::move(sup).error());
  return std::unique_ptr<ArenaPool>(new ArenaPool(std::make_unique<Impl>(arena, std::move(on_event), std::move(*sup), so)));
}

Result<int> ArenaPool::start(int index, std::uint32_t slot, const PoolSpec& spec) { return impl_->start(index, slot, spec); }
std::uint64_t ArenaPool::recover(int index, std::uint32_t slot, std::span<const std::uint32_t> channels) {
  return impl_->recover(index, slot, channels);
}
bool ArenaPool::restarts(int index) const { return impl_->restarts(index); }
Result<void> ArenaPool::kill(int index) { return impl_->kill(index); }
void ArenaPool::shutdown() { impl_->shutdown(); }

}  // namespace tessera::pool
