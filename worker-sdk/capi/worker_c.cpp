// The worker SDK's C ABI: a thin, checked layer over tessera::Worker and
// tessera::serve. Tiles and output blocks live in per-worker handle tables, so
// every handle a caller passes is validated (owner, kind, generation) before use.
#include <tessera/worker.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <tessera/runtime.hpp>
#include <tessera/worker.hpp>

#include "capi_common.hpp"

using tessera::Errc;
using tessera::capi::HandleKind;
using tessera::capi::HandleTable;
using tessera::capi::guarded;
using tessera::capi::invalid;
using tessera::capi::set_error;

struct tessera_worker {
  static constexpr std::uint32_t kMagic = 0x574b5254;  // "TRKW"
  explicit tessera_worker(bool serving)
      : id(tessera::capi::next_owner_id()), tiles(HandleKind::tile, id), outputs(HandleKind::output, id), serve_mode(serving) {}
  ~tessera_worker() {
    // Unanswered tiles are failed and unpublished blocks freed while the Worker still exists.
    outputs.clear();
    tiles.clear();
    magic = 0;
  }
  std::uint32_t magic = kMagic;
  std::uint32_t id;
  std::unique_ptr<tessera::Worker> owned;   // null in serve mode (the runtime owns the worker)
  tessera::Worker* w = nullptr;
  HandleTable<tessera::Tile> tiles;
  HandleTable<tessera::OutputBlock> outputs;
  std::vector<tessera::Tile> batch;
  bool serve_mode;
};

namespace {

// Every worker handle the ABI hands out; calls resolve the caller's pointer here first.
constinit tessera::capi::ObjectRegistry<tessera_worker, 0xB1> g_workers;

// `w` is a resolved handle (nullptr when stale, forged or closed).
bool live(const tessera_worker* w) noexcept { return w != nullptr && w->magic == tessera_worker::kMagic && w->w != nullptr; }

tessera_worker_t* as_handle(std::uint64_t h) noexcept { return reinterpret_cast<tessera_worker_t*>(static_cast<std::uintptr_t>(h)); }

tessera::WorkerOptions to_options(const tessera_worker_options_t* o) noexcept {
  tessera::WorkerOptions wo;
  if (o != nullptr) {
    wo.wait.spin_ns = o->spin_ns;
    wo.wait.sleep = o->sleep != 0;
  }
  return wo;
}

int from_errc(Errc rc, const char* what) noexcept {
  if (rc == Errc::ok) return 0;
  try {
    if (rc == Errc::closed) return set_error(rc, std::string(what) + ": the channel closed; the answer was dropped");
    return set_error(rc, std::string(what) + ": " + tessera::errc_name(rc));
  } catch (...) {
    return set_error(rc, what);
  }
}

}  // namespace

extern "C" {

TESSERA_API int tessera_worker_abi_version(void) { return TESSERA_WORKER_ABI_VERSION; }

TESSERA_API void tessera_worker_options_init(tessera_worker_options_t* opts) {
  if (opts == nullptr) return;
  const tessera::WaitPolicy d{};
  opts->spin_ns = d.spin_ns;
  opts->sleep = d.sleep ? 1 : 0;
}

TESSERA_API int tessera_worker_open_env(const tessera_worker_options_t* opts, tessera_worker_t** out) {
  return guarded("tessera_worker_open_env", [&] {
    if (out == nullptr) return invalid("tessera_worker_open_env: out is NULL");
    *out = nullptr;
    auto w = tessera::Worker::from_env(to_options(opts));
    if (!w) return set_error(w.error());
    auto h = std::make_unique<tessera_worker>(false);
    h->owned = std::move(*w);
    h->w = h->owned.get();
    const std::uint64_t handle = g_workers.insert(h.get());
    if (handle == 0) return set_error(Errc::no_space, "tessera_worker_open_env: more than 4096 live workers in this process");
    h.release();  // owned by the registry's handle until tessera_worker_close
    *out = as_handle(handle);
    return 0;
  });
}

TESSERA_API void tessera_worker_close(tessera_worker_t* handle) {
  if (handle == nullptr) return;
  {
    const tessera_worker* serving = g_workers.resolve(handle);
    if (serving != nullptr && serving->serve_mode) return;  // tessera_worker_serve owns it
  }
  tessera_worker* const w = g_workers.retire(handle);
  if (w == nullptr) {  // closed before, or never a worker: nothing is touched
    (void)invalid("tessera_worker_close: not a live worker (closed twice, or not a worker handle)");
    return;
  }
  try {
    delete w;
  } catch (...) {  // destructors here do not throw; belt and braces at the boundary
  }
}

TESSERA_API int tessera_worker_take(tessera_worker_t* handle, tessera_tile_t* tiles, size_t max, int64_t timeout_ns) {
  tessera_worker* const w = g_workers.resolve(handle);
  return guarded("tessera_worker_take", [&] {
    if (!live(w)) return invalid("tessera_worker_take: not a live worker (closed, or not a worker handle)");
    if (w->serve_mode) return invalid("tessera_worker_take: tiles are handed to the serve() callback");
    if (tiles == nullptr || max == 0) return invalid("tessera_worker_take: no room for tiles");
    max = std::min<size_t>(max, INT_MAX);
    if (w->batch.capacity() < max) w->batch.reserve(max);
    const auto st = w->w->take(w->batch, max, std::chrono::nanoseconds(std::max<int64_t>(timeout_ns, 0)));
    if (st == tessera::TakeStatus::stopped) {
      w->batch.clear();
      return set_error(Errc::closed, "tessera_worker_take: the worker was asked to stop");
    }
    const int n = static_cast<int>(w->batch.size());
    for (int i = 0; i < n; ++i) tiles[i] = w->tiles.insert(std::move(w->batch[static_cast<size_t>(i)]));
    w->batch.clear();
    return n;
  });
}

TESSERA_API int tessera_worker_tile_info(tessera_worker_t* handle, tessera_tile_t tile, tessera_tile_info_t* out) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_tile_info: not a live worker (closed, or not a worker handle)");
  if (out == nullptr) return invalid("tessera_worker_tile_info: out is NULL");
  const tessera::Tile* t = w->tiles.find(tile, "tessera_worker_tile_info");
  if (t == nullptr) return tessera_last_error_code();
  const tessera::TileDesc& d = t->desc();
  const tessera::TensorView& v = t->input();
  *out = tessera_tile_info_t{};
  out->seq = d.seq();
  out->stream = d.stream();
  out->epoch = d.epoch();
  out->op = d.op();
  out->x = d.x();
  out->y = d.y();
  out->level = d.level();
  out->dtype = static_cast<int32_t>(v.dtype());
  out->ndim = v.shape().ndim;
  const auto strides = v.strides();
  for (uint32_t i = 0; i < TESSERA_MAX_DIMS; ++i) {
    out->dims[i] = i < out->ndim ? v.shape().dims[i] : 0;
    out->strides[i] = i < out->ndim ? strides[i] : 0;
  }
  out->nbytes = v.nbytes();
  out->capacity = v.capacity();
  out->data = v.data();
  out->arena_offset = v.data() != nullptr ? static_cast<uint64_t>(v.data() - w->w->arena().base()) : 0;
  return 0;
}

TESSERA_API int tessera_worker_cancel_requested(tessera_worker_t* handle, tessera_tile_t tile) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_cancel_requested: not a live worker (closed, or not a worker handle)");
  const tessera::Tile* t = w->tiles.find(tile, "tessera_worker_cancel_requested");
  if (t == nullptr) return tessera_last_error_code();
  return t->cancel_requested() ? 1 : 0;
}

TESSERA_API int tessera_worker_alloc_output(tessera_worker_t* handle, int32_t dtype, const uint32_t* shape, uint32_t ndim,
                                            void** data, uint64_t* capacity, tessera_output_t* out) {
  tessera_worker* const w = g_workers.resolve(handle);
  return guarded("tessera_worker_alloc_output", [&] {
    if (!live(w)) return invalid("tessera_worker_alloc_output: not a live worker (closed, or not a worker handle)");
    if (out == nullptr || data == nullptr) return invalid("tessera_worker_alloc_output: out/data is NULL");
    *out = 0;
    *data = nullptr;
    if (tessera_dtype_size(dtype) == 0) return invalid("tessera_worker_alloc_output: unknown dtype");
    if (shape == nullptr || ndim == 0 || ndim > TESSERA_MAX_DIMS)
      return invalid("tessera_worker_alloc_output: a tensor has 1 to 4 dimensions");
    tessera::Shape s;
    for (uint32_t i = 0; i < ndim; ++i) s.dims[i] = shape[i];
    s.ndim = static_cast<std::uint8_t>(ndim);
    tessera::OutputBlock ob;
    const auto st = w->w->alloc_output(static_cast<tessera::DType>(dtype), s, ob);
    if (st == tessera::AllocStatus::no_space)
      return set_error(Errc::no_space, "tessera_worker_alloc_output: no block free");
    if (st != tessera::AllocStatus::ok)
      return set_error(Errc::invalid_argument,
                       "tessera_worker_alloc_output: shape " + s.str() + " of " +
                           std::string(tessera::dtype_name(static_cast<tessera::DType>(dtype))) +
                           (tessera::tensor_nbytes(static_cast<tessera::DType>(dtype), s)
                                ? " needs " + std::to_string(*tessera::tensor_nbytes(static_cast<tessera::DType>(dtype), s)) +
                                      " bytes; no block class holds that many"
                                : std::string(" overflows a 64-bit byte count")));
    *data = ob.view().data();
    if (capacity != nullptr) *capacity = ob.view().capacity();
    *out = w->outputs.insert(std::move(ob));
    return 0;
  });
}

TESSERA_API int tessera_worker_free_output(tessera_worker_t* handle, tessera_output_t output) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_free_output: not a live worker (closed, or not a worker handle)");
  if (w->outputs.find(output, "tessera_worker_free_output") == nullptr) return tessera_last_error_code();
  w->outputs.erase(output);  // OutputBlock's reset frees the block
  return 0;
}

TESSERA_API int tessera_worker_publish(tessera_worker_t* handle, tessera_tile_t tile, tessera_output_t output) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_publish: not a live worker (closed, or not a worker handle)");
  tessera::Tile* t = w->tiles.find(tile, "tessera_worker_publish");
  if (t == nullptr) return tessera_last_error_code();
  tessera::OutputBlock* ob = w->outputs.find(output, "tessera_worker_publish");
  if (ob == nullptr) return tessera_last_error_code();
  const Errc rc = w->w->publish(*t, *ob);
  w->outputs.erase(output);
  w->tiles.erase(tile);
  return from_errc(rc, "tessera_worker_publish");
}

TESSERA_API int tessera_worker_fail(tessera_worker_t* handle, tessera_tile_t tile, int32_t status, const char* message) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_fail: not a live worker (closed, or not a worker handle)");
  if (status <= TESSERA_TILE_OK || status > TESSERA_TILE_UNSUPPORTED)
    return invalid("tessera_worker_fail: status must be a tessera_tile_status other than OK");
  tessera::Tile* t = w->tiles.find(tile, "tessera_worker_fail");
  if (t == nullptr) return tessera_last_error_code();
  const Errc rc = w->w->fail(*t, static_cast<tessera::TileStatus>(status), message != nullptr ? message : "");
  w->tiles.erase(tile);
  return from_errc(rc, "tessera_worker_fail");
}

TESSERA_API int tessera_worker_cancel(tessera_worker_t* handle, tessera_tile_t tile) {
  tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_cancel: not a live worker (closed, or not a worker handle)");
  tessera::Tile* t = w->tiles.find(tile, "tessera_worker_cancel");
  if (t == nullptr) return tessera_last_error_code();
  const Errc rc = w->w->cancel(*t);
  w->tiles.erase(tile);
  return from_errc(rc, "tessera_worker_cancel");
}

TESSERA_API int tessera_worker_request_stop(tessera_worker_t* handle) {
  tessera_worker* const w = g_workers.resolve(handle);
  // Async-signal-safe: no error text is recorded here.
  if (!live(w)) return -TESSERA_EINVAL;
  w->w->request_stop();
  return 0;
}

TESSERA_API int tessera_worker_stats(const tessera_worker_t* handle, tessera_worker_stats_t* out) {
  const tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_stats: not a live worker (closed, or not a worker handle)");
  if (out == nullptr) return invalid("tessera_worker_stats: out is NULL");
  const auto s = w->w->stats();
  *out = tessera_worker_stats_t{s.taken, s.published, s.failed, s.canceled, s.rejected};
  return 0;
}

TESSERA_API int tessera_worker_slot(const tessera_worker_t* handle) {
  const tessera_worker* const w = g_workers.resolve(handle);
  if (!live(w)) return invalid("tessera_worker_slot: not a live worker (closed, or not a worker handle)");
  return static_cast<int>(w->w->slot());
}

TESSERA_API void tessera_serve_options_init(tessera_serve_options_t* opts) {
  if (opts == nullptr) return;
  tessera_worker_options_init(&opts->worker);
  const tessera::ServeOptions d{};
  opts->max_batch = static_cast<uint32_t>(d.max_batch);
  opts->take_timeout_ms = static_cast<uint32_t>(d.take_timeout.count());
  opts->require_arena = d.runtime.require_arena ? 1 : 0;
}

TESSERA_API int tessera_worker_serve(tessera_worker_handler_fn handler, void* user_data, const tessera_serve_options_t* opts) {
  const int rc = guarded("tessera_worker_serve", [&] {
    if (handler == nullptr) return invalid("tessera_worker_serve: handler is NULL");
    tessera_serve_options_t o;
    tessera_serve_options_init(&o);
    if (opts != nullptr) o = *opts;
    tessera::ServeOptions so;
    so.runtime.worker = to_options(&o.worker);
    so.runtime.require_arena = o.require_arena != 0;
    so.max_batch = std::max<uint32_t>(o.max_batch, 1);
    so.take_timeout = std::chrono::milliseconds(std::max<uint32_t>(o.take_timeout_ms, 1));
    tessera_worker wrapper(true);
    const std::uint64_t wrapper_handle = g_workers.insert(&wrapper);
    if (wrapper_handle == 0) return set_error(Errc::no_space, "tessera_worker_serve: more than 4096 live workers in this process");
    // The handler's handle dies with this call (stale afterwards, never dangling).
    struct Unregister {
      std::uint64_t h;
      ~Unregister() { (void)g_workers.retire(as_handle(h)); }
    } unregister{wrapper_handle};
    return tessera::serve(
        [&](tessera::Worker& worker, tessera::Tile& tile) {
          wrapper.w = &worker;
          const tessera_tile_t h = wrapper.tiles.insert(std::move(tile));
          tessera::capi::clear_error();
          std::string why;
          try {
            const int r = handler(as_handle(wrapper_handle), h, user_data);
            if (r < 0) {
              why = tessera_last_error();
              if (why.empty()) why = std::string("handler returned ") + tessera_strerror(r);
            }
          } catch (const std::exception& e) {  // a C++ callback behind the C pointer
            why = e.what();
          } catch (...) {
            why = "handler threw a non-standard exception";
          }
          if (tessera::Tile* left = wrapper.tiles.peek(h)) {
            (void)worker.fail(*left, tessera::TileStatus::HandlerError,
                              why.empty() ? "handler returned without answering the tile" : why);
          }
          wrapper.tiles.clear();
          wrapper.outputs.clear();  // unpublished blocks go back to the arena
        },
        std::move(so));
  });
  return rc;
}

}  // extern "C"
