// Error state shared by the C ABIs: a thread-local code + message per thread.
//
// Both libtessera_worker.so and libtessera_client.so define these entry points.
// The libraries call tessera_set_last_error() through its exported (interposable)
// symbol, so when one process loads both, every call binds to one definition and
// tessera_last_error() always reports the error of the library that failed last.
#include <atomic>
#include <cstdlib>
#include <string>

#include <tessera/client.h>
#include <tessera/result.hpp>
#include <tessera/tensor.hpp>

#include "capi_common.hpp"

namespace {
thread_local std::string t_message;
thread_local int t_code = 0;
std::atomic<std::uint32_t> g_owner{0};
}  // namespace

namespace tessera::capi {
std::uint32_t next_owner_id() noexcept {
  // relaxed: only uniqueness matters; no data is published through the counter.
  std::uint32_t id = g_owner.fetch_add(1, std::memory_order_relaxed) % 0xfffffu;
  return id + 1;  // 1 .. 2^20-1: never 0, so no handle is 0
}
}  // namespace tessera::capi

extern "C" {

TESSERA_API int tessera_set_last_error(int code, const char* message) {
  const int c = code < 0 ? code : -code;
  t_code = c;
  try {
    t_message = message != nullptr ? message : "";
  } catch (...) {
    t_message.clear();  // out of memory: keep the code, drop the text
  }
  return c;
}

TESSERA_API const char* tessera_last_error(void) { return t_message.c_str(); }

TESSERA_API int tessera_last_error_code(void) { return t_code; }

TESSERA_API const char* tessera_strerror(int code) {
  const int c = code < 0 ? -code : code;
  if (c == tessera::capi::kEInternal) return "internal";
  if (c < 0 || c > static_cast<int>(tessera::Errc::unavailable)) return "unknown";
  return tessera::errc_name(static_cast<tessera::Errc>(c));
}

TESSERA_API size_t tessera_dtype_size(int dtype) {
  if (dtype < 0 || dtype > static_cast<int>(tessera::DType::MAX)) return 0;
  return tessera::dtype_size(static_cast<tessera::DType>(dtype));
}

}  // extern "C"

// The C enums mirror the C++ ones value for value.
#define TESSERA_SAME(c, cxx) static_assert(static_cast<int>(c) == static_cast<int>(cxx), #c)
TESSERA_SAME(TESSERA_EINVAL, tessera::Errc::invalid_argument);
TESSERA_SAME(TESSERA_EBADMAGIC, tessera::Errc::bad_magic);
TESSERA_SAME(TESSERA_EBADVERSION, tessera::Errc::bad_version);
TESSERA_SAME(TESSERA_EBADSIZE, tessera::Errc::bad_size);
TESSERA_SAME(TESSERA_ENOTREADY, tessera::Errc::not_ready);
TESSERA_SAME(TESSERA_EPERM, tessera::Errc::permission);
TESSERA_SAME(TESSERA_ESYSTEM, tessera::Errc::system);
TESSERA_SAME(TESSERA_ESTALE, tessera::Errc::stale_handle);
TESSERA_SAME(TESSERA_EBADHANDLE, tessera::Errc::bad_handle);
TESSERA_SAME(TESSERA_ENOTOWNER, tessera::Errc::not_owner);
TESSERA_SAME(TESSERA_ENOSPC, tessera::Errc::no_space);
TESSERA_SAME(TESSERA_ECORRUPT, tessera::Errc::corrupt);
TESSERA_SAME(TESSERA_ECLOSED, tessera::Errc::closed);
TESSERA_SAME(TESSERA_ETIMEDOUT, tessera::Errc::timeout);
TESSERA_SAME(TESSERA_EPROTO, tessera::Errc::protocol);
TESSERA_SAME(TESSERA_EWORKER, tessera::Errc::worker_failed);
TESSERA_SAME(TESSERA_ECANCELED, tessera::Errc::canceled);
TESSERA_SAME(TESSERA_ENOTFOUND, tessera::Errc::not_found);
TESSERA_SAME(TESSERA_EUNAVAILABLE, tessera::Errc::unavailable);
TESSERA_SAME(TESSERA_EINTERNAL, tessera::capi::kEInternal);
TESSERA_SAME(TESSERA_DTYPE_INVALID, tessera::DType::Invalid);
TESSERA_SAME(TESSERA_DTYPE_UINT8, tessera::DType::UInt8);
TESSERA_SAME(TESSERA_DTYPE_INT8, tessera::DType::Int8);
TESSERA_SAME(TESSERA_DTYPE_UINT16, tessera::DType::UInt16);
TESSERA_SAME(TESSERA_DTYPE_INT16, tessera::DType::Int16);
TESSERA_SAME(TESSERA_DTYPE_UINT32, tessera::DType::UInt32);
TESSERA_SAME(TESSERA_DTYPE_INT32, tessera::DType::Int32);
TESSERA_SAME(TESSERA_DTYPE_UINT64, tessera::DType::UInt64);
TESSERA_SAME(TESSERA_DTYPE_INT64, tessera::DType::Int64);
TESSERA_SAME(TESSERA_DTYPE_FLOAT16, tessera::DType::Float16);
TESSERA_SAME(TESSERA_DTYPE_FLOAT32, tessera::DType::Float32);
TESSERA_SAME(TESSERA_DTYPE_FLOAT64, tessera::DType::Float64);
TESSERA_SAME(TESSERA_DTYPE_BOOL, tessera::DType::Bool);
TESSERA_SAME(TESSERA_TILE_OK, tessera::fb::TileStatus::Ok);
TESSERA_SAME(TESSERA_TILE_HANDLER_ERROR, tessera::fb::TileStatus::HandlerError);
TESSERA_SAME(TESSERA_TILE_BAD_INPUT, tessera::fb::TileStatus::BadInput);
TESSERA_SAME(TESSERA_TILE_STALE_BLOCK, tessera::fb::TileStatus::StaleBlock);
TESSERA_SAME(TESSERA_TILE_NO_SPACE, tessera::fb::TileStatus::NoSpace);
TESSERA_SAME(TESSERA_TILE_CANCELED, tessera::fb::TileStatus::Canceled);
TESSERA_SAME(TESSERA_TILE_WORKER_DIED, tessera::fb::TileStatus::WorkerDied);
TESSERA_SAME(TESSERA_TILE_DEADLINE, tessera::fb::TileStatus::Deadline);
TESSERA_SAME(TESSERA_TILE_UNSUPPORTED, tessera::fb::TileStatus::Unsupported);
#undef TESSERA_SAME
