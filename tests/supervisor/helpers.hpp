// Test helpers: response recorder, fd/process leak checks, fake-worker specs.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <tessera/appose_router.hpp>

namespace tessera::test {

inline std::string fake_worker_path() { return TESSERA_FAKE_WORKER; }

inline ApposeWorkerSpec fake_worker(std::vector<std::string> extra_args = {}) {
  ApposeWorkerSpec s;
  s.argv = {"/usr/bin/python3", "-u", fake_worker_path()};
  s.argv.insert(s.argv.end(), extra_args.begin(), extra_args.end());
  s.ready_timeout = std::chrono::milliseconds(10'000);
  return s;
}

inline std::set<int> open_fds() {
  std::set<int> fds;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const int fd = std::atoi(e->d_name);
      if (fd != own) fds.insert(fd);
    }
    ::closedir(d);
  }
  return fds;
}

inline bool process_exists(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH); }

inline std::string loop_name(LoopChoice c) { return c == LoopChoice::epoll ? "epoll" : "io_uring"; }

// Collects responses per task; wait_terminal() blocks until the task's terminal.
class Recorder {
 public:
  TaskCallback callback() {
    return [this](const appose::Response& r) {
      std::lock_guard<std::mutex> lock(mu_);
      seen_[r.task].push_back(r);
      cv_.notify_all();
    };
  }

  // The whole sequence once a terminal arrived (empty on timeout).
  std::vector<appose::Response> wait_terminal(const std::string& task,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    std::unique_lock<std::mutex> lock(mu_);
    const bool ok = cv_.wait_for(lock, timeout, [&] {
      auto it = seen_.find(task);
      if (it == seen_.end()) return false;
      for (const auto& r : it->second) {
        if (appose::is_terminal(r.type)) return true;
      }
      return false;
    });
    if (!ok) return {};
    return seen_[task];
  }

  std::vector<appose::Response> get(const std::string& task) {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_[task];
  }

  std::size_t tasks_seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<appose::Response>> seen_;
};

inline std::vector<appose::ResponseType> types(const std::vector<appose::Response>& rs) {
  std::vector<appose::ResponseType> t;
  for (const auto& r : rs) t.push_back(r.type);
  return t;
}

inline int terminal_count(const std::vector<appose::Response>& rs) {
  int n = 0;
  for (const auto& r : rs) n += appose::is_terminal(r.type) ? 1 : 0;
  return n;
}

// Records worker events (thread-safe) and lets a test wait for one.
class EventLog {
 public:
  std::function<void(const WorkerEvent&)> handler() {
    return [this](const WorkerEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back({e, std::chrono::steady_clock::now()});
      cv_.notify_all();
    };
  }
  struct Stamped {
    WorkerEvent ev;
    std::chrono::steady_clock::time_point at;
  };
  // Waits until `count` events of `kind` have been seen; returns the last one.
  std::optional<Stamped> wait(WorkerEventKind kind, int count = 1,
                              std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<Stamped> last;
    cv_.wait_for(lock, timeout, [&] {
      int n = 0;
      for (const auto& s : events_) {
        if (s.ev.kind == kind && ++n == count) {
          last = s;
          return true;
        }
      }
      return false;
    });
    return last;
  }
  int count(WorkerEventKind kind) {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& s : events_) n += s.ev.kind == kind ? 1 : 0;
    return n;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Stamped> events_;
};

}  // namespace tessera::test
