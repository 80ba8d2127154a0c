// `tessera batch node`: a durable pull consumer that runs one slide at a time on a
// warm client, keeps the item alive while it runs, and acks only durable outputs.
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <tessera/batch/batch.hpp>
#include <tessera/batch/slide_job.hpp>

namespace tessera::batch {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Retries a NATS control call while the connection is down (a server restart takes
// seconds); gives up after `budget`.
template <class F>
natsStatus retry_nats(F&& call, std::chrono::milliseconds budget) {
  const auto end = SteadyClock::now() + budget;
  for (;;) {
    const natsStatus st = call();
    if (st == NATS_OK || SteadyClock::now() >= end) return st;
    std::this_thread::sleep_for(200ms);
  }
}

class Node {
 public:
  Node(const NodeOptions& o, const std::atomic<bool>& stop) : o_(o), stop_(stop) {}

  Result<NodeReport> run() {
    if (auto v = validate(o_.names); !v) return fail(v.error());
    ConnectOptions co = o_.connect;
    co.retry_initial_connect = true;
    co.name = "tessera-node " + o_.node_name;
    auto session = Session::connect(co);
    if (!session) return fail(session.error());
    s_ = std::move(*session);
    // The stream and consumer exist once anything was submitted; a node started
    // first waits for them (it may also be started before the server is up).
    std::string last_error;
    for (;;) {
      auto ready = setup();
      if (ready) break;
      if (stop_.load(std::memory_order_relaxed)) return report_;  // SYNC[batch.stop] relaxed: a flag polled in a loop
      if (idle_expired())
        return fail(Errc::unavailable, "batch '" + o_.names.stream + "' not reachable within --exit-when-idle: " +
                                           ready.error().message);
      if (ready.error().message != last_error)
        spdlog::info("node {}: waiting for batch '{}': {}", o_.node_name, o_.names.stream, ready.error().message);
      last_error = ready.error().message;
      std::this_thread::sleep_for(500ms);
    }
    spdlog::info("node {}: consuming {} (ack wait {} ms, heartbeat {} ms, max attempts {})", o_.node_name,
                 o_.names.subject(), ack_wait_.count(), heartbeat_.count(), o_.max_attempts);
    idle_since_ = SteadyClock::now();
    while (!stop_.load(std::memory_order_relaxed)) {  // SYNC[batch.stop] relaxed: a flag polled in a loop
      if (o_.max_items > 0 && processed_ >= o_.max_items) break;
      if (idle_expired()) break;
      natsMsgList list{};
      jsErrCode jerr = static_cast<jsErrCode>(0);
      const auto wait = o_.exit_when_idle.count() > 0 ? std::min<std::int64_t>(1000, o_.exit_when_idle.count()) : 1000;
      const natsStatus st = natsSubscription_Fetch(&list, sub_.get(), 1, wait, &jerr);
      if (st == NATS_TIMEOUT) continue;
      if (st != NATS_OK) {
        spdlog::debug("node {}: fetch: {}", o_.node_name, nats_error(st, "fetch", jerr).message);
        std::this_thread::sleep_for(200ms);
        continue;
      }
      for (int i = 0; i < list.Count; ++i) {
        MsgPtr msg(list.Msgs[i]);
        list.Msgs[i] = nullptr;
        handle(std::move(msg));
        ++processed_;
      }
      natsMsgList_Destroy(&list);
      idle_since_ = SteadyClock::now();
    }
    spdlog::info("node {}: stopped ({} done, {} failed, {} retried, {} released, {} skipped)", o_.node_name, report_.done,
                 report_.failed, report_.retried, report_.released, report_.skipped);
    return report_;
  }

 private:
  bool idle_expired() const {
    return o_.exit_when_idle.count() > 0 && SteadyClock::now() - idle_since_ > o_.exit_when_idle;
  }

  Result<void> setup() {
    if (auto r = s_->consumer_ack_wait(o_.names); r) {
      ack_wait_ = *r;
    } else if (r.error().code == Errc::not_found) {
      // The consumer is missing but the stream may exist (a node started right after
      // the stream was made): create the consumer with this node's ack wait.
      if (auto c = s_->ensure_consumer(o_.names, o_.ack_wait); !c) return fail(c.error());
      auto again = s_->consumer_ack_wait(o_.names);
      if (!again) return fail(again.error());
      ack_wait_ = *again;
    } else {
      return fail(r.error());
    }
    // InProgress well inside the ack wait; at least every 2 s so that status shows progress.
    heartbeat_ = std::clamp<std::chrono::milliseconds>(ack_wait_ / 4, 100ms, 2'000ms);
    auto kv = s_->status_bucket(o_.names, true);
    if (!kv) return fail(kv.error());
    kv_ = *kv;
    natsSubscription* sub = nullptr;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o_.names.stream.c_str();
    so.Consumer = o_.names.consumer.c_str();
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const std::string subject = o_.names.subject();
    const natsStatus st = js_PullSubscribe(&sub, s_->js(), subject.c_str(), o_.names.consumer.c_str(), nullptr, &so, &jerr);
    if (st != NATS_OK) return fail(nats_error(st, "pull subscription", jerr));
    sub_.reset(sub);
    return {};
  }

  // Writes the item's status entry; retried through a reconnect.
  bool put_status(const std::string& id, const ItemStatus& s, std::chrono::milliseconds budget = 30s) {
    const std::string v = to_json(s);
    const natsStatus st = retry_nats(
        [&] { return kvStore_Put(nullptr, kv_, id.c_str(), v.data(), static_cast<int>(v.size())); }, budget);
    if (st != NATS_OK) spdlog::warn("node {}: status of {} not recorded: {}", o_.node_name, s.stem, natsStatus_GetText(st));
    return st == NATS_OK;
  }

  std::optional<ItemStatus> get_status(const std::string& id) {
    kvEntry* raw = nullptr;
    const natsStatus st = retry_nats(
        [&] {
          const natsStatus r = kvStore_Get(&raw, kv_, id.c_str());
          return r == NATS_NOT_FOUND ? NATS_OK : r;
        },
        10s);
    EntryPtr e(raw);
    if (st != NATS_OK || !e) return std::nullopt;
    auto s = status_from_json(kvEntry_ValueString(e.get()) ? kvEntry_ValueString(e.get()) : "");
    if (!s) return std::nullopt;
    return *s;
  }

  void ack(natsMsg* msg, const std::string& what) {
    // AckSync: the server confirms; retried through a reconnect. If it never lands the
    // item is redelivered and the next node finds it done in the bucket.
    const natsStatus st = retry_nats([&] { return natsMsg_AckSync(msg, nullptr, nullptr); }, 30s);
    if (st != NATS_OK) spdlog::warn("node {}: ack of {} failed: {}", o_.node_name, what, natsStatus_GetText(st));
  }

  void terminate(natsMsg* msg, const std::string& id, ItemStatus st, const std::string& reason) {
    st.state = ItemState::failed;
    st.error = reason;
    st.node = o_.node_name;
    st.updated_ms = unix_ms();
    if (!id.empty()) put_status(id, st);
    retry_nats([&] { return natsMsg_Term(msg, nullptr); }, 10s);
    ++report_.failed;
    spdlog::error("node {}: {} failed for good: {}", o_.node_name, st.stem.empty() ? id : st.stem, reason);
  }

  void handle(MsgPtr msg) {
    jsMsgMetaData* meta = nullptr;
    std::int64_t attempt = 1;
    if (natsMsg_GetMetaData(&meta, msg.get()) == NATS_OK) {
      attempt = static_cast<std::int64_t>(meta->NumDelivered);
      jsMsgMetaData_Destroy(meta);
    }
    const char* data = natsMsg_GetData(msg.get());
    auto job = job_from_json(std::string(data ? data : "", static_cast<std::size_t>(natsMsg_GetDataLength(msg.get()))));
    if (!job) {
      terminate(msg.get(), "", {}, "unreadable work item: " + job.error().message);
      return;
    }
    ItemStatus st;
    if (auto cur = get_status(job->id)) st = *cur;
    st.slide = job->slide;
    st.stem = job->stem;
    st.submitted_ms = job->submitted_ms;
    if (st.state == ItemState::done && outputs_exist(*job)) {
      // A redelivered copy of finished work (a late ack, a resubmission): nothing to do.
      ack(msg.get(), job->stem);
      ++report_.skipped;
      spdlog::info("node {}: {} already done", o_.node_name, job->stem);
      return;
    }
    if (attempt > o_.max_attempts) {
      terminate(msg.get(), job->id, st,
                fmt::format("delivered {} times without completing (nodes died or were stopped while running it){}", attempt - 1,
                            st.error.empty() ? "" : "; last error: " + st.error));
      return;
    }
    const std::int64_t now = unix_ms();
    spdlog::info("node {}: start {} (attempt {}, {} ms after submit)", o_.node_name, job->stem, attempt,
                 now - job->submitted_ms);
    st.state = ItemState::running;
    st.node = o_.node_name;
    st.attempt = attempt;
    st.started_ms = now;
    st.updated_ms = now;
    st.tiles_done = 0;
    st.tiles_total = 0;
    put_status(job->id, st);

    // Heartbeat: InProgress resets the ack timer; the status entry shows progress. It
    // also enforces the drain deadline after SIGTERM: release the item and exit.
    std::atomic<std::int64_t> done{0}, total{0};
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    last_beat_ = SteadyClock::now();  // before the thread starts: only the heartbeat thread touches it from now on
    std::thread heartbeat([&] {
      std::unique_lock lk(mu);
      std::optional<SteadyClock::time_point> drain_deadline;
      while (!cv.wait_for(lk, std::min<std::chrono::milliseconds>(heartbeat_, 100ms), [&] { return finished; })) {
        if (!drain_deadline && stop_.load(std::memory_order_relaxed))  // SYNC[batch.stop] relaxed: polled flag
          drain_deadline = SteadyClock::now() + o_.drain_timeout;
        if (drain_deadline && SteadyClock::now() >= *drain_deadline) release_and_exit(msg.get(), job->id, st);
        if (SteadyClock::now() - last_beat_ < heartbeat_) continue;
        last_beat_ = SteadyClock::now();
        natsMsg_InProgress(msg.get(), nullptr);
        ItemStatus beat = st;
        // SYNC[batch.progress] relaxed: display counters; nothing is published with them.
        beat.tiles_done = done.load(std::memory_order_relaxed);
        beat.tiles_total = total.load(std::memory_order_relaxed);
        beat.updated_ms = unix_ms();
        const std::string v = to_json(beat);
        kvStore_Put(nullptr, kv_, job->id.c_str(), v.data(), static_cast<int>(v.size()));
      }
    });
    auto result = run(*job, [&](std::int64_t d, std::int64_t t) {
      // SYNC[batch.progress] relaxed: display counters; nothing is published with them.
      done.store(d, std::memory_order_relaxed);
      total.store(t, std::memory_order_relaxed);
    });
    {
      std::lock_guard lk(mu);
      finished = true;
    }
    cv.notify_all();
    heartbeat.join();

    st.updated_ms = unix_ms();
    if (result) {
      st.state = ItemState::done;
      st.error.clear();
      st.seconds = result->seconds;
      st.tiles_done = st.tiles_total = result->tiles;
      put_status(job->id, st, 60s);  // outputs are durable; now record, then ack
      ack(msg.get(), job->stem);
      ++report_.done;
      spdlog::info("node {}: done {} ({} tiles in {:.3f} s)", o_.node_name, job->stem, result->tiles, result->seconds);
      return;
    }
    const std::string reason = result.error().message;
    if (attempt >= o_.max_attempts) {
      terminate(msg.get(), job->id, st, fmt::format("attempt {} of {}: {}", attempt, o_.max_attempts, reason));
      return;
    }
    st.state = ItemState::retry;
    st.error = reason;
    put_status(job->id, st);
    retry_nats([&] { return natsMsg_NakWithDelay(msg.get(), 500 * attempt, nullptr); }, 10s);
    ++report_.retried;
    spdlog::warn("node {}: {} attempt {} failed, retrying later: {}", o_.node_name, job->stem, attempt, reason);
  }

  static bool outputs_exist(const SlideJob& job) {
    std::error_code ec;
    for (const auto& n : output_names(job))
      if (!std::filesystem::exists(std::filesystem::path(job.out_dir) / n, ec)) return false;
    return true;
  }

  Result<SlideJobReport> run(const SlideJob& job, const JobProgress& progress) {
    const std::string key = warm_key(job);
    if (!client_ || key != client_key_) {
      client_.reset();
      auto c = start_warm_client(job, o_.bin_dir);
      if (!c) return fail(c.error());
      client_ = std::move(*c);
      client_key_ = key;
      spdlog::info("node {}: started {} x {} workers", o_.node_name, job.workers, job.worker);
    }
    auto r = run_slide_job(*client_, job, progress);
    // A failed pipeline may leave the client in any state: start a fresh one next time.
    if (!r) client_.reset();
    return r;
  }

  // Drain deadline passed on SIGTERM: hand the item back (Nak: redelivered at once to
  // another node), mark it pending again, and end the process without waiting for the
  // pipeline (its worker processes die with it: PR_SET_PDEATHSIG).
  [[noreturn]] void release_and_exit(natsMsg* msg, const std::string& id, ItemStatus st) {
    natsMsg_Nak(msg, nullptr);
    st.state = ItemState::pending;
    st.error = "released by node " + o_.node_name + " on shutdown";
    st.updated_ms = unix_ms();
    const std::string v = to_json(st);
    kvStore_Put(nullptr, kv_, id.c_str(), v.data(), static_cast<int>(v.size()));
    natsConnection_Flush(s_->conn());
    spdlog::warn("node {}: drain timeout: released {}", o_.node_name, st.stem);
    spdlog::default_logger()->flush();
    std::_Exit(3);
  }

  const NodeOptions& o_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<Session> s_;
  SubPtr sub_;
  kvStore* kv_ = nullptr;
  std::chrono::milliseconds ack_wait_{60'000}, heartbeat_{15'000};
  SteadyClock::time_point idle_since_ = SteadyClock::now(), last_beat_{};
  std::unique_ptr<Client> client_;
  std::string client_key_;
  std::int64_t processed_ = 0;
  NodeReport report_;
};

}  // namespace

Result<NodeReport> run_node(const NodeOptions& opts, const std::atomic<bool>& stop) {
  Node n(opts, stop);
  return n.run();
}

}  // namespace tessera::batch
