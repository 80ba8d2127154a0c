// Event loop back ends: io_uring (liburing 2.3 + raw opcodes) and epoll.
#include <tessera/event_loop.hpp>

#include <liburing.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

namespace tessera {

const char* to_string(LoopBackend b) noexcept {
  return b == LoopBackend::io_uring ? "io_uring" : "epoll";
}

namespace {

// Opcodes newer than the liburing 2.3 headers (numbers from the upstream uapi header).
constexpr std::uint8_t kOpFutexWait = 51;
constexpr std::uint32_t kFutex2SizeU32 = 0x02;  // shared (not FUTEX2_PRIVATE): words live in shm
constexpr std::uint64_t kFutexBitsetMatchAny = 0xffffffffu;

constexpr EventLoop::Id kWakeId = ~std::uint64_t{0};
constexpr EventLoop::Id kIgnoreId = ~std::uint64_t{0} - 1;

std::uint32_t* futex_addr(const std::atomic<std::uint32_t>& word) {
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  // The kernel only reads the word; futex(2) takes a non-const pointer.
  return reinterpret_cast<std::uint32_t*>(const_cast<std::atomic<std::uint32_t>*>(&word));
}

// Shared parts: ids, the cross-thread post queue with its eventfd, stop flag, and
// the helper-thread futex wait used when the kernel interface has no futex op.
class LoopCommon : public EventLoop {
 public:
  LoopCommon() = default;
  ~LoopCommon() override {
    for (auto& [id, w] : thread_waits_) {
      // relaxed: the flag is only a request; join() below is the synchronisation.
      w.cancelled->store(true, std::memory_order_relaxed);
    }
    for (auto& [id, w] : thread_waits_) {
      if (w.thread.joinable()) w.thread.join();
    }
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  Result<void> init_common() {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) return fail(Error::sys("eventfd"));
    return {};
  }

  void post(Callback cb) override {
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      posted_.push_back(std::move(cb));
    }
    wake();
  }

  void stop() override {
    // SYNC[loop.stop] release: a stop request -> acquired in run().
    stop_.store(true, std::memory_order_release);
    wake();
  }

  Result<void> run() override {
    // SYNC[loop.stop] acquire: pairs with the release in stop().
    while (!stop_.load(std::memory_order_acquire)) {
      auto r = run_once(std::chrono::milliseconds(1000));
      if (!r) return r;
    }
    run_posted();  // whatever was posted before stop() still runs
    return {};
  }

 protected:
  void wake() {
    const std::uint64_t one = 1;
    // A full eventfd counter (EAGAIN) still means "readable": nothing is lost.
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  }

  void run_posted() {
    std::uint64_t v = 0;
    [[maybe_unused]] auto n = ::read(wake_fd_, &v, sizeof v);
    std::vector<Callback> batch;
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      batch.swap(posted_);
    }
    for (auto& cb : batch) cb();
  }

  // Futex wait on a helper thread (sliced so that cancel and destruction are prompt).
  Result<Id> thread_wait_futex(const std::atomic<std::uint32_t>& word, std::uint32_t expected, Callback cb) {
    const Id id = next_id_++;
    auto cancelled = std::make_shared<std::atomic<bool>>(false);
    auto shared_cb = std::make_shared<Callback>(std::move(cb));
    std::uint32_t* addr = futex_addr(word);
    ThreadWait w;
    w.cancelled = cancelled;
    w.thread = std::thread([this, id, addr, expected, cancelled, shared_cb] {
      // relaxed: a cancel request only needs to be seen eventually (next slice).
      while (!cancelled->load(std::memory_order_relaxed)) {
        timespec slice{0, 20'000'000};
        const long rc = ::syscall(SYS_futex, addr, FUTEX_WAIT, expected, &slice, nullptr, 0);
        if (rc == 0 || (rc < 0 && errno == EAGAIN)) break;  // woken, or the word changed
      }
      // relaxed: same as above; the posted closure re-checks on the loop thread.
      if (cancelled->load(std::memory_order_relaxed)) return;
      post([this, id, shared_cb] {
        auto it = thread_waits_.find(id);
        if (it == thread_waits_.end()) return;  // cancelled meanwhile
        it->second.thread.join();
        thread_waits_.erase(it);
        (*shared_cb)();
      });
    });
    thread_waits_.emplace(id, std::move(w));
    return id;
  }

  bool cancel_thread_wait(Id id) {
    auto it = thread_waits_.find(id);
    if (it == thread_waits_.end()) return false;
    // relaxed: join() below synchronises with the thread's exit.
    it->second.cancelled->store(true, std::memory_order_relaxed);
    it->second.thread.join();
    thread_waits_.erase(it);
    return true;
  }

  struct ThreadWait {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> cancelled;
  };

  int wake_fd_ = -1;
  Id next_id_ = 1;
  std::atomic<bool> stop_{false};
  std::mutex post_mu_;
  std::vector<Callback> posted_;
  std::unordered_map<Id, ThreadWait> thread_waits_;
};

// ---------------------------------------------------------------------------------
// io_uring

class UringLoop final : public LoopCommon {
 public:
  ~UringLoop() override {
    if (ring_ok_) io_uring_queue_exit(&ring_);
  }

  Result<void> init() {
    if (auto r = init_common(); !r) return r;
    const int rc = io_uring_queue_init(256, &ring_, 0);
    if (rc < 0) return fail(Error::sys("io_uring_queue_init", -rc));
    ring_ok_ = true;
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
      futex_ok_ = io_uring_opcode_supported(probe, kOpFutexWait) != 0;
      io_uring_free_probe(probe);
    }
    if (std::getenv("TESSERA_NO_URING_FUTEX") != nullptr) futex_ok_ = false;
    arm_poll(kWakeId, wake_fd_);
    return submit();
  }

  LoopBackend backend() const noexcept override { return LoopBackend::io_uring; }
  bool futex_native() const noexcept override { return futex_ok_; }

  Result<Id> watch_readable(int fd, Callback cb) override {
    const Id id = next_id_++;
    auto op = std::make_unique<Op>();
    op->kind = Kind::poll;
    op->fd = fd;
    op->cb = std::make_shared<Callback>(std::move(cb));
    ops_.emplace(id, std::move(op));
    arm_poll(id, fd);
    if (auto r = submit(); !r) return fail(r.error());
    return id;
  }

  Result<Id> add_timer(std::chrono::nanoseconds delay, Callback cb) override {
    const Id id = next_id_++;
    auto op = std::make_unique<Op>();
    op->kind = Kind::timer;
    const auto ns = std::max<std::int64_t>(delay.count(), 0);
    op->ts.tv_sec = ns / 1'000'000'000;
    op->ts.tv_nsec = ns % 1'000'000'000;
    op->cb = std::make_shared<Callback>(std::move(cb));
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_timeout(sqe, &op->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, id);
    ops_.emplace(id, std::move(op));
    // Submitted at once: the kernel reads `ts` at issue, so it must outlive submission.
    if (auto r = submit(); !r) return fail(r.error());
    return id;
  }

  Result<Id> wait_futex(const std::atomic<std::uint32_t>& word, std::uint32_t expected, Callback cb) override {
    if (!futex_ok_) return thread_wait_futex(word, expected, std::move(cb));
    const Id id = next_id_++;
    auto op = std::make_unique<Op>();
    op->kind = Kind::futex;
    op->cb = std::make_shared<Callback>(std::move(cb));
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_rw(kOpFutexWait, sqe, static_cast<int>(kFutex2SizeU32), futex_addr(word), 0, expected);
    sqe->rw_flags = 0;
    sqe->addr3 = kFutexBitsetMatchAny;
    io_uring_sqe_set_data64(sqe, id);
    ops_.emplace(id, std::move(op));
    if (auto r = submit(); !r) return fail(r.error());
    return id;
  }

  void cancel(Id id) override {
    if (cancel_thread_wait(id)) return;
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    const Kind kind = it->second->kind;
    ops_.erase(it);
    io_uring_sqe* sqe = get_sqe();
    if (kind == Kind::timer) io_uring_prep_timeout_remove(sqe, id, 0);
    else io_uring_prep_cancel64(sqe, id, 0);
    io_uring_sqe_set_data64(sqe, kIgnoreId);
    (void)submit();  // a failed cancel only means a late CQE, which is ignored
  }

  Result<void> run_once(std::chrono::milliseconds max_wait) override {
    if (auto r = submit(); !r) return r;
    __kernel_timespec ts{};
    ts.tv_sec = max_wait.count() / 1000;
    ts.tv_nsec = (max_wait.count() % 1000) * 1'000'000;
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN) {
      return fail(Error::sys("io_uring_wait_cqe_timeout", -rc));
    }
    batch_.clear();
    unsigned head = 0;
    unsigned n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      batch_.emplace_back(cqe->user_data, cqe->res);
      ++n;
    }
    io_uring_cq_advance(&ring_, n);
    for (std::size_t i = 0; i < batch_.size(); ++i) dispatch(batch_[i].first, batch_[i].second);
    return {};
  }

 private:
  enum class Kind : std::uint8_t { poll, timer, futex };
  struct Op {
    Kind kind = Kind::poll;
    int fd = -1;
    __kernel_timespec ts{};
    std::shared_ptr<Callback> cb;
  };

  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  Result<void> submit() {
    const int rc = io_uring_submit(&ring_);
    if (rc < 0 && rc != -EBUSY && rc != -EAGAIN) return fail(Error::sys("io_uring_submit", -rc));
    return {};
  }

  void arm_poll(Id id, int fd) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, id);
  }

  void dispatch(Id id, int res) {
    if (id == kIgnoreId) return;
    if (id == kWakeId) {
      run_posted();
      arm_poll(kWakeId, wake_fd_);
      return;
    }
    auto it = ops_.find(id);
    if (it == ops_.end()) return;  // cancelled: a late CQE
    std::shared_ptr<Callback> cb = it->second->cb;
    switch (it->second->kind) {
      case Kind::poll: {
        const int fd = it->second->fd;
        if (res < 0) ops_.erase(it);  // bad fd: report once, do not re-arm
        (*cb)();
        if (res >= 0 && ops_.count(id) != 0) arm_poll(id, fd);
        break;
      }
      case Kind::timer:
        if (res == -ECANCELED) return;
        ops_.erase(it);
        (*cb)();
        break;
      case Kind::futex:
        ops_.erase(it);
        (*cb)();  // woken (0), value changed (-EAGAIN) or error: the caller re-checks
        break;
    }
  }

  io_uring ring_{};
  bool ring_ok_ = false;
  bool futex_ok_ = false;
  std::unordered_map<Id, std::unique_ptr<Op>> ops_;
  std::vector<std::pair<std::uint64_t, int>> batch_;
};

// ---------------------------------------------------------------------------------
// epoll

class EpollLoop final : public LoopCommon {
 public:
  ~EpollLoop() override {
    if (ep_ >= 0) ::close(ep_);
  }

  Result<void> init() {
    if (auto r = init_common(); !r) return r;
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) return fail(Error::sys("epoll_create1"));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeId;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, wake_fd_, &ev) < 0) return fail(Error::sys("epoll_ctl(eventfd)"));
    return {};
  }

  LoopBackend backend() const noexcept override { return LoopBackend::epoll; }
  bool futex_native() const noexcept override { return false; }

  Result<Id> watch_readable(int fd, Callback cb) override {
    const Id id = next_id_++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) return fail(Error::sys("epoll_ctl(ADD)"));
    watches_.emplace(id, Watch{fd, std::make_shared<Callback>(std::move(cb))});
    return id;
  }

  Result<Id> add_timer(std::chrono::nanoseconds delay, Callback cb) override {
    const Id id = next_id_++;
    const auto when = std::chrono::steady_clock::now() + delay;
    timers_.emplace(std::make_pair(when, id), std::move(cb));
    timer_when_.emplace(id, when);
    return id;
  }

  Result<Id> wait_futex(const std::atomic<std::uint32_t>& word, std::uint32_t expected, Callback cb) override {
    return thread_wait_futex(word, expected, std::move(cb));
  }

  void cancel(Id id) override {
    if (cancel_thread_wait(id)) return;
    if (auto it = watches_.find(id); it != watches_.end()) {
      ::epoll_ctl(ep_, EPOLL_CTL_DEL, it->second.fd, nullptr);  // fails harmlessly if fd closed
      watches_.erase(it);
      return;
    }
    if (auto it = timer_when_.find(id); it != timer_when_.end()) {
      timers_.erase(std::make_pair(it->second, id));
      timer_when_.erase(it);
    }
  }

  Result<void> run_once(std::chrono::milliseconds max_wait) override {
    auto wait = max_wait;
    if (!timers_.empty()) {
      const auto until = timers_.begin()->first.first - std::chrono::steady_clock::now();
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(until);
      wait = std::max(std::chrono::milliseconds(0), std::min(wait, ms));
    }
    epoll_event evs[64];
    const int n = ::epoll_wait(ep_, evs, 64, static_cast<int>(wait.count()));
    if (n < 0 && errno != EINTR) return fail(Error::sys("epoll_wait"));
    for (int i = 0; i < n; ++i) {
      const Id id = evs[i].data.u64;
      if (id == kWakeId) {
        run_posted();
        continue;
      }
      auto it = watches_.find(id);
      if (it == watches_.end()) continue;
      std::shared_ptr<Callback> cb = it->second.cb;
      (*cb)();
    }
    const auto now = std::chrono::steady_clock::now();
    while (!timers_.empty() && timers_.begin()->first.first <= now) {
      auto node = timers_.extract(timers_.begin());
      timer_when_.erase(node.key().second);
      node.mapped()();
    }
    return {};
  }

 private:
  struct Watch {
    int fd;
    std::shared_ptr<Callback> cb;
  };
  int ep_ = -1;
  std::unordered_map<Id, Watch> watches_;
  std::map<std::pair<std::chrono::steady_clock::time_point, Id>, Callback> timers_;
  std::unordered_map<Id, std::chrono::steady_clock::time_point> timer_when_;
};

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::create(LoopChoice choice) {
  if (choice == LoopChoice::automatic) {
    if (const char* env = std::getenv("TESSERA_EVENT_LOOP")) {
      if (std::strcmp(env, "epoll") == 0) choice = LoopChoice::epoll;
      else if (std::strcmp(env, "io_uring") == 0) choice = LoopChoice::io_uring;
    }
  }
  if (choice != LoopChoice::epoll) {
    auto loop = std::make_unique<UringLoop>();
    auto r = loop->init();
    if (r) {
      spdlog::info("event loop: io_uring (futex wait: {})", loop->futex_native() ? "native" : "helper thread");
      return std::unique_ptr<EventLoop>(std::move(loop));
    }
    if (choice == LoopChoice::io_uring) return fail(r.error());
    spdlog::warn("event loop: io_uring unavailable ({}), falling back to epoll", r.error().message);
  }
  auto loop = std::make_unique<EpollLoop>();
  if (auto r = loop->init(); !r) return fail(r.error());
  spdlog::info("event loop: epoll");
  return std::unique_ptr<EventLoop>(std::move(loop));
}

}  // namespace tessera
