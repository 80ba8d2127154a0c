// Log routing for FFI hosts: the library logs through spdlog's default logger; the
// first tessera_set_log_sink/level call installs one logger whose single sink hands
// each record to the host's callback (or to stderr when none is set). The sink is
// swapped under the sink's own mutex, so changing it while other threads log is safe.
#include <tessera/client.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "capi_common.hpp"

namespace {

class CallbackSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void set(tessera_log_fn fn, void* user) {
    std::lock_guard<std::mutex> lk(this->mutex_);
    fn_ = fn;
    user_ = user;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    text_.assign(msg.payload.data(), msg.payload.size());
    if (fn_ != nullptr) {
      fn_(user_, static_cast<int32_t>(msg.level), text_.c_str());
    } else {
      std::fprintf(stderr, "[tessera] [%s] %s\n", spdlog::level::to_string_view(msg.level).data(), text_.c_str());
    }
  }
  void flush_() override {}

 private:
  tessera_log_fn fn_ = nullptr;
  void* user_ = nullptr;
  std::string text_;
};

// Installed once; the previous default logger is kept alive, since other threads may
// still hold its raw pointer (spdlog::info and friends use default_logger_raw()).
CallbackSink& sink() {
  static std::shared_ptr<CallbackSink> s = [] {
    auto k = std::make_shared<CallbackSink>();
    static std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("tessera", k);
    logger->set_level(previous != nullptr ? previous->level() : spdlog::level::info);
    spdlog::set_default_logger(std::move(logger));
    return k;
  }();
  return *s;
}

}  // namespace

extern "C" {

TESSERA_API int tessera_set_log_sink(tessera_log_fn fn, void* user) {
  return tessera::capi::guarded("tessera_set_log_sink", [&] {
    sink().set(fn, user);
    return 0;
  });
}

TESSERA_API int tessera_set_log_level(int32_t level) {
  return tessera::capi::guarded("tessera_set_log_level", [&] {
    if (level < TESSERA_LOG_TRACE || level > TESSERA_LOG_OFF)
      return tessera::capi::invalid("tessera_set_log_level: level must be TESSERA_LOG_TRACE..TESSERA_LOG_OFF");
    (void)sink();
    spdlog::set_level(static_cast<spdlog::level::level_enum>(level));
    return 0;
  });
}

}  // extern "C"

#define TESSERA_SAME_LEVEL(c, cxx) static_assert(static_cast<int>(c) == static_cast<int>(cxx), #c)
TESSERA_SAME_LEVEL(TESSERA_LOG_TRACE, spdlog::level::trace);
TESSERA_SAME_LEVEL(TESSERA_LOG_DEBUG, spdlog::level::debug);
TESSERA_SAME_LEVEL(TESSERA_LOG_INFO, spdlog::level::info);
TESSERA_SAME_LEVEL(TESSERA_LOG_WARN, spdlog::level::warn);
TESSERA_SAME_LEVEL(TESSERA_LOG_ERROR, spdlog::level::err);
TESSERA_SAME_LEVEL(TESSERA_LOG_CRITICAL, spdlog::level::critical);
TESSERA_SAME_LEVEL(TESSERA_LOG_OFF, spdlog::level::off);
#undef TESSERA_SAME_LEVEL
