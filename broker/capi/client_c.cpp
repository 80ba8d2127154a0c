// The client's C ABI: a thin, checked layer over tessera::Client. Input blocks
// and delivered results live in per-client handle tables, so every handle a
// caller passes is validated (owner, kind, generation) before use, and the
// pointers handed out (payload, output, error text) stay put until released.
#include <tessera/client.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <tessera/client.hpp>

#include "capi_common.hpp"

using tessera::Errc;
using tessera::capi::HandleKind;
using tessera::capi::HandleTable;
using tessera::capi::guarded;
using tessera::capi::invalid;
using tessera::capi::set_error;

struct tessera_client {
  static constexpr std::uint32_t kMagic = 0x434c5254;  // "TRLC"
  explicit tessera_client(std::unique_ptr<tessera::Client> cl)
      : c(std::move(cl)), id(tessera::capi::next_owner_id()), blocks(HandleKind::block, id), results(HandleKind::result, id) {}
  ~tessera_client() {
    results.clear();  // release result blocks and input blocks while the client still exists
    blocks.clear();
    magic = 0;
  }
  std::uint32_t magic = kMagic;
  std::unique_ptr<tessera::Client> c;
  std::uint32_t id;
  HandleTable<tessera::InputBlock> blocks;
  HandleTable<tessera::TileResult> results;
  std::vector<tessera::TileResult> scratch;
  // The last failed call's message, for any thread (tessera_client_last_error).
  mutable std::mutex err_mu;
  mutable std::string err_text;
  mutable int32_t err_code = 0;
};

namespace {

// Every client handle the ABI hands out; calls resolve the caller's pointer here first.
constinit tessera::capi::ObjectRegistry<tessera_client, 0xC1> g_clients;

// `c` is a resolved handle (nullptr when stale, forged or destroyed).
bool live(const tessera_client* c) noexcept { return c != nullptr && c->magic == tessera_client::kMagic && c->c; }

// Registers a new client and hands out its handle.
int publish_client(std::unique_ptr<tessera_client> obj, tessera_client_t** out) {
  const std::uint64_t h = g_clients.insert(obj.get());
  if (h == 0) return set_error(Errc::no_space, "tessera_client: more than 4096 live clients in this process");
  obj.release();  // owned by the registry's handle until tessera_client_destroy
  *out = reinterpret_cast<tessera_client_t*>(static_cast<std::uintptr_t>(h));
  return 0;
}

// Records a failed call's thread error on the client too, so that any thread can read it.
int rec(const tessera_client* c, int rc) noexcept {
  if (rc >= 0 || !live(c)) return rc;
  try {
    std::lock_guard<std::mutex> lk(c->err_mu);
    c->err_text = tessera_last_error();  // reuses the string's capacity: no allocation once grown
    c->err_code = rc;
  } catch (...) {  // out of memory: the thread's copy is still there
  }
  return rc;
}

std::chrono::nanoseconds ns(int64_t v) noexcept { return std::chrono::nanoseconds(std::max<int64_t>(v, 0)); }

void to_c(const tessera::TileMeta& m, tessera_tile_meta_t& out) noexcept {
  out = tessera_tile_meta_t{};
  out.dtype = static_cast<int32_t>(m.dtype);
  out.ndim = m.shape.ndim;
  for (uint32_t i = 0; i < TESSERA_MAX_DIMS; ++i) out.dims[i] = i < m.shape.ndim ? m.shape.dims[i] : 0;
  out.level = m.level;
  out.x = m.x;
  out.y = m.y;
  out.op = m.op;
  out.tag = m.tag;
  out.deadline_ns = m.deadline.count();
}

tessera::TileMeta from_c(const tessera_tile_meta_t& meta) noexcept {
  tessera::TileMeta m;
  m.dtype = static_cast<tessera::DType>(meta.dtype);
  for (uint32_t i = 0; i < meta.ndim && i < TESSERA_MAX_DIMS; ++i) m.shape.dims[i] = meta.dims[i];
  m.shape.ndim = static_cast<std::uint8_t>(meta.ndim);
  m.level = static_cast<std::uint8_t>(meta.level);
  m.x = meta.x;
  m.y = meta.y;
  m.op = meta.op;
  m.tag = meta.tag;
  m.deadline = ns(meta.deadline_ns);
  return m;
}

// Extended client options; false if the struct is older than its first field set.
bool apply_ext(const tessera_client_options_ext_t* ext, tessera::ClientOptions& o) noexcept {
  if (ext == nullptr) return true;
  if (ext->struct_size < offsetof(tessera_client_options_ext_t, output_reserve_percent) + sizeof(uint32_t)) return false;
  o.output_reserve_percent = std::min<uint32_t>(ext->output_reserve_percent, 90);
  return true;
}

}  // namespace

extern "C" {

TESSERA_API int tessera_client_abi_version(void) { return TESSERA_CLIENT_ABI_VERSION; }

TESSERA_API void tessera_client_options_init(tessera_client_options_t* o) {
  if (o == nullptr) return;
  const tessera::ClientOptions d{};
  *o = tessera_client_options_t{};
  o->classes = nullptr;
  o->n_classes = 0;
  o->n_rings = d.arena.n_rings;
  o->ring_capacity = d.arena.ring_capacity;
  o->prefault = d.arena.prefault ? 1 : 0;
  o->spin_ns = d.wait.spin_ns;
  o->sleep = d.wait.sleep ? 1 : 0;
  o->max_in_flight = d.max_in_flight;
  o->worker_window = d.worker_window;
}

TESSERA_API void tessera_pool_spec_init(tessera_pool_spec_t* s) {
  if (s == nullptr) return;
  const tessera::PoolSpec d{};
  *s = tessera_pool_spec_t{};
  s->count = d.count;
  s->max_retries = d.max_retries;
  s->restart = d.restart ? 1 : 0;
  s->ready_timeout_ms = d.ready_timeout.count();
}

TESSERA_API void tessera_stream_options_init(tessera_stream_options_t* o) {
  if (o == nullptr) return;
  const tessera::StreamOptions d{};
  o->priority = d.priority;
  o->ordering = static_cast<int32_t>(d.ordering);
  o->max_in_flight = d.max_in_flight;
  o->deadline_ns = d.deadline.count();
}

TESSERA_API void tessera_tile_meta_init(tessera_tile_meta_t* m) {
  if (m == nullptr) return;
  to_c(tessera::TileMeta{}, *m);
}

TESSERA_API int tessera_client_create(const tessera_client_options_t* opts, tessera_client_t** out) {
  return tessera_client_create_ext(opts, nullptr, out);
}

TESSERA_API int tessera_client_create_ext(const tessera_client_options_t* opts, const tessera_client_options_ext_t* ext,
                                          tessera_client_t** out) {
  return guarded("tessera_client_create", [&] {
    if (out == nullptr) return invalid("tessera_client_create: out is NULL");
    *out = nullptr;
    tessera::ClientOptions o;
    if (opts != nullptr) {
      if (opts->n_classes > 0) {
        if (opts->classes == nullptr) return invalid("tessera_client_create: n_classes > 0 but classes is NULL");
        o.arena.classes.clear();
        for (size_t i = 0; i < opts->n_classes; ++i)
          o.arena.classes.push_back({opts->classes[i].block_size, opts->classes[i].block_count});
      }
      o.arena.n_rings = opts->n_rings;
      o.arena.ring_capacity = opts->ring_capacity;
      o.arena.prefault = opts->prefault != 0;
      o.wait.spin_ns = opts->spin_ns;
      o.wait.sleep = opts->sleep != 0;
      o.max_in_flight = opts->max_in_flight;
      o.worker_window = opts->worker_window;
    }
    if (!apply_ext(ext, o)) return invalid("tessera_client_create: ext->struct_size is too small");
    auto c = tessera::Client::embedded(std::move(o));
    if (!c) return set_error(c.error());
    return publish_client(std::make_unique<tessera_client>(std::move(*c)), out);
  });
}

TESSERA_API int tessera_client_connect(const char* socket_path, const tessera_client_options_t* opts,
                                       tessera_client_t** out) {
  return tessera_client_connect_ext(socket_path, opts, nullptr, out);
}

TESSERA_API int tessera_client_connect_ext(const char* socket_path, const tessera_client_options_t* opts,
                                           const tessera_client_options_ext_t* ext, tessera_client_t** out) {
  return guarded("tessera_client_connect", [&] {
    if (out == nullptr || socket_path == nullptr) return invalid("tessera_client_connect: socket_path or out is NULL");
    *out = nullptr;
    tessera::ClientOptions o;
    if (opts != nullptr) {
      o.wait.spin_ns = opts->spin_ns;
      o.wait.sleep = opts->sleep != 0;
      o.max_in_flight = opts->max_in_flight;
      o.worker_window = opts->worker_window;
    }
    if (!apply_ext(ext, o)) return invalid("tessera_client_connect: ext->struct_size is too small");
    auto c = tessera::Client::connect(socket_path, std::move(o));
    if (!c) return set_error(c.error());
    return publish_client(std::make_unique<tessera_client>(std::move(*c)), out);
  });
}

TESSERA_API void tessera_client_destroy(tessera_client_t* handle) {
  if (handle == nullptr) return;
  tessera_client* const c = g_clients.retire(handle);
  if (c == nullptr) {  // destroyed before, or never a client: nothing is touched
    (void)invalid("tessera_client_destroy: not a live client (destroyed twice, or not a client handle)");
    return;
  }
  try {
    delete c;
  } catch (...) {  // destructors here do not throw; belt and braces at the boundary
  }
}

namespace {

int start_pool_impl(tessera_client_t* c, const tessera_pool_spec_t* spec, const tessera_pool_spec_ext_t* ext,
                    const char* const* devices, size_t n_devices) {
  return rec(c, guarded("tessera_client_start_pool", [&] {
    if (!live(c)) return invalid("tessera_client_start_pool: not a live client (destroyed, or not a client handle)");
    if (spec == nullptr || spec->argv == nullptr || spec->argc == 0 || spec->argv[0] == nullptr)
      return invalid("tessera_client_start_pool: spec needs argv[0]");
    if (spec->n_env % 2 != 0 || (spec->n_env > 0 && spec->env == nullptr))
      return invalid("tessera_client_start_pool: env holds key/value pairs");
    if (spec->n_init_scripts > 0 && spec->init_scripts == nullptr)
      return invalid("tessera_client_start_pool: n_init_scripts > 0 but init_scripts is NULL");
    tessera::PoolSpec ps;
    for (size_t i = 0; i < spec->argc; ++i) {
      if (spec->argv[i] == nullptr) return invalid("tessera_client_start_pool: NULL in argv");
      ps.argv.emplace_back(spec->argv[i]);
    }
    for (size_t i = 0; i + 1 < spec->n_env; i += 2) {
      if (spec->env[i] == nullptr || spec->env[i + 1] == nullptr) return invalid("tessera_client_start_pool: NULL in env");
      ps.env[spec->env[i]] = spec->env[i + 1];
    }
    for (size_t i = 0; i < spec->n_init_scripts; ++i) {
      if (spec->init_scripts[i] == nullptr) return invalid("tessera_client_start_pool: NULL in init_scripts");
      ps.init_scripts.emplace_back(spec->init_scripts[i]);
    }
    ps.count = spec->count;
    if (n_devices > 0 && devices == nullptr) return invalid("tessera_client_start_pool_on_devices: n_devices > 0 but devices is NULL");
    for (size_t i = 0; i < n_devices; ++i) {
      if (devices[i] == nullptr) return invalid("tessera_client_start_pool_on_devices: NULL in devices");
      ps.devices.emplace_back(devices[i]);
    }
    ps.max_retries = spec->max_retries;
    ps.restart = spec->restart != 0;
    if (spec->ready_timeout_ms > 0) ps.ready_timeout = std::chrono::milliseconds(spec->ready_timeout_ms);
    if (ext != nullptr) {
      if (ext->struct_size < sizeof(tessera_pool_spec_ext_t))
        return invalid("tessera_client_start_pool: ext->struct_size is too small");
      if (ext->cancel_grace_ms < 0) return invalid("tessera_client_start_pool: cancel_grace_ms must be >= 0");
      ps.cancel_grace = std::chrono::milliseconds(ext->cancel_grace_ms);
    }
    auto r = c->c->start_pool(ps);
    if (!r) return set_error(r.error());
    return 0;
  }));
}

}  // namespace

TESSERA_API int tessera_client_start_pool(tessera_client_t* handle, const tessera_pool_spec_t* spec) {
  tessera_client* const c = g_clients.resolve(handle);
  return start_pool_impl(c, spec, nullptr, nullptr, 0);
}

TESSERA_API int tessera_client_start_pool_ext(tessera_client_t* handle, const tessera_pool_spec_t* spec,
                                              const tessera_pool_spec_ext_t* ext) {
  tessera_client* const c = g_clients.resolve(handle);
  return start_pool_impl(c, spec, ext, nullptr, 0);
}

TESSERA_API int tessera_client_start_pool_on_devices(tessera_client_t* handle, const tessera_pool_spec_t* spec,
                                                     const char* const* devices, size_t n_devices) {
  tessera_client* const c = g_clients.resolve(handle);
  if (n_devices == 0) return rec(c, invalid("tessera_client_start_pool_on_devices: no devices"));
  return start_pool_impl(c, spec, nullptr, devices, n_devices);
}

TESSERA_API int tessera_client_add_external_worker(tessera_client_t* handle, const char* name, tessera_external_worker_t* out) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_add_external_worker", [&] {
    if (!live(c)) return invalid("tessera_client_add_external_worker: not a live client (destroyed, or not a client handle)");
    if (out == nullptr) return invalid("tessera_client_add_external_worker: out is NULL");
    auto ew = c->c->add_external_worker(name != nullptr ? name : "worker");
    if (!ew) return set_error(ew.error());
    out->index = ew->index;
    out->slot = ew->slot;
    out->arena_fd = ew->arena_fd;
    return 0;
  }));
}

TESSERA_API int tessera_client_set_worker_pid(tessera_client_t* handle, int32_t index, int32_t pid) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_set_worker_pid", [&] {
    if (!live(c)) return invalid("tessera_client_set_worker_pid: not a live client (destroyed, or not a client handle)");
    const auto ws = c->c->workers();
    if (index < 0 || static_cast<size_t>(index) >= ws.size()) return invalid("tessera_client_set_worker_pid: no such worker");
    c->c->set_worker_pid(index, pid);
    return 0;
  }));
}

TESSERA_API int tessera_client_worker_died(tessera_client_t* handle, int32_t index, const char* reason) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_worker_died", [&] {
    if (!live(c)) return invalid("tessera_client_worker_died: not a live client (destroyed, or not a client handle)");
    const auto ws = c->c->workers();
    if (index < 0 || static_cast<size_t>(index) >= ws.size()) return invalid("tessera_client_worker_died: no such worker");
    c->c->worker_died(index, reason != nullptr ? reason : "worker died");
    return 0;
  }));
}

TESSERA_API int tessera_client_kill_worker(tessera_client_t* handle, int32_t index) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_kill_worker", [&] {
    if (!live(c)) return invalid("tessera_client_kill_worker: not a live client (destroyed, or not a client handle)");
    auto r = c->c->kill_worker(index);
    return r ? 0 : set_error(r.error());
  }));
}

TESSERA_API int tessera_client_open_stream(tessera_client_t* handle, const tessera_stream_options_t* opts, uint32_t* stream) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_open_stream", [&] {
    if (!live(c)) return invalid("tessera_client_open_stream: not a live client (destroyed, or not a client handle)");
    if (stream == nullptr) return invalid("tessera_client_open_stream: stream is NULL");
    tessera::StreamOptions so;
    if (opts != nullptr) {
      if (opts->ordering != TESSERA_ORDER_COMPLETION && opts->ordering != TESSERA_ORDER_SUBMISSION)
        return invalid("tessera_client_open_stream: unknown ordering");
      so.priority = opts->priority;
      so.ordering = static_cast<tessera::Ordering>(opts->ordering);
      so.max_in_flight = opts->max_in_flight;
      so.deadline = ns(opts->deadline_ns);
    }
    auto s = c->c->open_stream(so);
    if (!s) return set_error(s.error());
    *stream = *s;
    return 0;
  }));
}

TESSERA_API int tessera_client_close_stream(tessera_client_t* handle, uint32_t stream) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_close_stream", [&] {
    if (!live(c)) return invalid("tessera_client_close_stream: not a live client (destroyed, or not a client handle)");
    auto r = c->c->close_stream(stream);
    return r ? 0 : set_error(r.error());
  }));
}

TESSERA_API int tessera_client_alloc(tessera_client_t* handle, uint64_t bytes, int64_t timeout_ns, void** data,
                                     uint64_t* capacity, tessera_block_t* block) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_alloc", [&] {
    if (!live(c)) return invalid("tessera_client_alloc: not a live client (destroyed, or not a client handle)");
    if (data == nullptr || block == nullptr) return invalid("tessera_client_alloc: data/block is NULL");
    *data = nullptr;
    *block = 0;
    tessera::InputBlock in;
    auto r = c->c->alloc(bytes, in, ns(timeout_ns));
    if (!r) return set_error(r.error());
    *data = in.bytes().data();
    if (capacity != nullptr) *capacity = in.bytes().size();
    *block = c->blocks.insert(std::move(in));
    return 0;
  }));
}

TESSERA_API int tessera_client_free_block(tessera_client_t* handle, tessera_block_t block) {
  tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_free_block: not a live client (destroyed, or not a client handle)");
  if (c->blocks.find(block, "tessera_client_free_block") == nullptr) return rec(c, tessera_last_error_code());
  c->blocks.erase(block);  // InputBlock's reset frees the block
  return 0;
}

TESSERA_API int tessera_client_submit(tessera_client_t* handle, uint32_t stream, tessera_block_t block,
                                      const tessera_tile_meta_t* meta, int32_t mode, int64_t timeout_ns, uint64_t* seq) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_submit", [&] {
    if (!live(c)) return invalid("tessera_client_submit: not a live client (destroyed, or not a client handle)");
    if (meta == nullptr) return invalid("tessera_client_submit: meta is NULL");
    if (mode < TESSERA_SUBMIT_BLOCK || mode > TESSERA_SUBMIT_TIMEOUT) return invalid("tessera_client_submit: unknown mode");
    if (meta->ndim == 0 || meta->ndim > TESSERA_MAX_DIMS)
      return invalid("tessera_client_submit: a tile has 1 to 4 dimensions");
    if (meta->level > 255) return invalid("tessera_client_submit: level must be 0..255");
    tessera::InputBlock* in = c->blocks.find(block, "tessera_client_submit");
    if (in == nullptr) return tessera_last_error_code();
    const tessera::TileMeta m = from_c(*meta);
    const auto timeout = timeout_ns > 0 ? ns(timeout_ns) : std::chrono::nanoseconds(std::chrono::seconds(30));
    auto r = c->c->submit(stream, *in, m, static_cast<tessera::SubmitMode>(mode), timeout);
    if (!r) return set_error(r.error());  // the caller still owns the block
    c->blocks.erase(block);               // the tile owns it now
    if (seq != nullptr) *seq = *r;
    return 0;
  }));
}

TESSERA_API int tessera_client_poll(tessera_client_t* handle, tessera_result_t* out, size_t max, int64_t timeout_ns) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_poll", [&] {
    if (!live(c)) return invalid("tessera_client_poll: not a live client (destroyed, or not a client handle)");
    if (out == nullptr || max == 0) return invalid("tessera_client_poll: no room for results");
    max = std::min<size_t>(max, INT_MAX);
    if (c->scratch.capacity() < max) c->scratch.reserve(max);
    c->scratch.clear();
    const size_t n = c->c->poll(c->scratch, max, ns(timeout_ns));
    if (n == 0 && c->c->woken()) return set_error(Errc::canceled, "tessera_client_poll: woken by tessera_client_wake");
    const std::byte* base = c->c->arena().base();
    for (size_t i = 0; i < n; ++i) {
      const tessera_result_id_t id = c->results.insert(std::move(c->scratch[i]));
      const tessera::TileResult& r = *c->results.peek(id);  // stored: its pointers stay put until release
      tessera_result_t& o = out[i];
      o = tessera_result_t{};
      o.id = id;
      o.stream = r.stream;
      o.epoch = r.epoch;
      o.seq = r.seq;
      o.outcome = static_cast<int32_t>(r.outcome);
      o.status = static_cast<int32_t>(r.status);
      o.error = r.error.c_str();
      if (r.output.valid()) {
        const tessera::TensorView& v = r.output.view();
        o.data = v.data();
        o.nbytes = v.nbytes();
        o.dtype = static_cast<int32_t>(v.dtype());
        o.ndim = v.shape().ndim;
        for (uint32_t k = 0; k < TESSERA_MAX_DIMS; ++k) o.dims[k] = k < o.ndim ? v.shape().dims[k] : 0;
        o.arena_offset = static_cast<uint64_t>(v.data() - base);
      }
      to_c(r.meta, o.meta);
      o.worker = r.worker;
      o.latency_us = r.latency_us;
    }
    c->scratch.clear();
    return static_cast<int>(n);
  }));
}

TESSERA_API int tessera_client_release_result(tessera_client_t* handle, tessera_result_id_t id) {
  tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_release_result: not a live client (destroyed, or not a client handle)");
  if (c->results.find(id, "tessera_client_release_result") == nullptr) return rec(c, tessera_last_error_code());
  c->results.erase(id);  // frees the output block and the error text
  return 0;
}

TESSERA_API uint64_t tessera_client_in_flight(const tessera_client_t* handle) {
  const tessera_client* const c = g_clients.resolve(handle);
  return live(c) ? c->c->in_flight() : 0;
}

TESSERA_API int tessera_client_cancel(tessera_client_t* handle, uint32_t stream, uint64_t seq) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_cancel", [&] {
    if (!live(c)) return invalid("tessera_client_cancel: not a live client (destroyed, or not a client handle)");
    auto r = c->c->cancel(stream, seq);
    return r ? 0 : set_error(r.error());
  }));
}

TESSERA_API int tessera_client_cancel_stream(tessera_client_t* handle, uint32_t stream) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_cancel_stream", [&] {
    if (!live(c)) return invalid("tessera_client_cancel_stream: not a live client (destroyed, or not a client handle)");
    auto r = c->c->cancel_stream(stream);
    return r ? 0 : set_error(r.error());
  }));
}

TESSERA_API int tessera_client_advance_epoch(tessera_client_t* handle, uint32_t stream, uint32_t* epoch) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_advance_epoch", [&] {
    if (!live(c)) return invalid("tessera_client_advance_epoch: not a live client (destroyed, or not a client handle)");
    auto r = c->c->advance_epoch(stream);
    if (!r) return set_error(r.error());
    if (epoch != nullptr) *epoch = *r;
    return 0;
  }));
}

TESSERA_API int tessera_client_stats(const tessera_client_t* handle, uint32_t stream, tessera_stream_stats_t* out) {
  const tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_stats", [&] {
    if (!live(c)) return invalid("tessera_client_stats: not a live client (destroyed, or not a client handle)");
    if (out == nullptr) return invalid("tessera_client_stats: out is NULL");
    const tessera::StreamStats s = c->c->stats(stream);
    *out = tessera_stream_stats_t{s.submitted, s.queued, s.running, s.completed, s.failed, s.canceled, s.retried,
                                  s.p50_us, s.p99_us};
    return 0;
  }));
}

TESSERA_API int tessera_client_alloc_n(tessera_client_t* handle, uint64_t bytes, uint32_t n, int64_t timeout_ns,
                                       tessera_block_info_t* out) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_alloc_n", [&] {
    if (!live(c)) return invalid("tessera_client_alloc_n: not a live client (destroyed, or not a client handle)");
    if (out == nullptr || n == 0) return invalid("tessera_client_alloc_n: no room for blocks");
    n = std::min<uint32_t>(n, INT_MAX);
    uint32_t got = 0;
    for (; got < n; ++got) {
      tessera::InputBlock in;
      if (got == 0) {
        auto r = c->c->alloc(bytes, in, ns(timeout_ns));
        if (!r) return set_error(r.error());
      } else if (c->c->try_alloc(bytes, in) != tessera::AllocStatus::ok) {
        break;  // only what is free at once
      }
      out[got].data = in.bytes().data();
      out[got].capacity = in.bytes().size();
      out[got].block = c->blocks.insert(std::move(in));
    }
    return static_cast<int>(got);
  }));
}

TESSERA_API int tessera_client_submit_n(tessera_client_t* handle, uint32_t stream, uint32_t n, const tessera_block_t* blocks,
                                        const tessera_tile_meta_t* metas, int32_t mode, int64_t timeout_ns, uint64_t* seqs) {
  tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_submit_n", [&] {
    if (!live(c)) return invalid("tessera_client_submit_n: not a live client (destroyed, or not a client handle)");
    if (n == 0 || blocks == nullptr || metas == nullptr) return invalid("tessera_client_submit_n: no tiles");
    uint32_t done = 0;
    for (; done < n; ++done) {
      const int rc = tessera_client_submit(handle, stream, blocks[done], &metas[done], mode, timeout_ns,
                                           seqs != nullptr ? &seqs[done] : nullptr);
      if (rc < 0) return done == 0 ? rc : static_cast<int>(done);  // the error stays recorded
    }
    return static_cast<int>(std::min<uint32_t>(done, INT_MAX));
  }));
}

TESSERA_API int tessera_client_release_n(tessera_client_t* handle, const tessera_result_id_t* ids, size_t n) {
  tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_release_n: not a live client (destroyed, or not a client handle)");
  if (n > 0 && ids == nullptr) return invalid("tessera_client_release_n: ids is NULL");
  int first_error = 0;
  for (size_t i = 0; i < n; ++i) {
    if (c->results.find(ids[i], "tessera_client_release_n") == nullptr) {
      if (first_error == 0) first_error = rec(c, tessera_last_error_code());
      continue;
    }
    c->results.erase(ids[i]);
  }
  return first_error != 0 ? first_error : static_cast<int>(std::min<size_t>(n, INT_MAX));
}

TESSERA_API int tessera_client_wake(tessera_client_t* handle) {
  tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_wake: not a live client (destroyed, or not a client handle)");
  c->c->wake();
  return 0;
}

TESSERA_API int tessera_client_last_error(const tessera_client_t* handle, char* buf, size_t cap, int32_t* code) {
  const tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_last_error: not a live client (destroyed, or not a client handle)");
  std::lock_guard<std::mutex> lk(c->err_mu);
  if (code != nullptr) *code = c->err_code;
  if (buf != nullptr && cap > 0) {
    const size_t n = std::min(cap - 1, c->err_text.size());
    std::memcpy(buf, c->err_text.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(std::min<size_t>(c->err_text.size(), INT_MAX));
}

TESSERA_API int tessera_last_error_copy(char* buf, size_t cap) {
  const char* m = tessera_last_error();
  const size_t len = std::strlen(m);
  if (buf != nullptr && cap > 0) {
    const size_t n = std::min(cap - 1, len);
    std::memcpy(buf, m, n);
    buf[n] = '\0';
  }
  return static_cast<int>(std::min<size_t>(len, INT_MAX));
}

TESSERA_API void tessera_client_options_ext_init(tessera_client_options_ext_t* ext) {
  if (ext == nullptr) return;
  *ext = tessera_client_options_ext_t{};
  ext->struct_size = sizeof(tessera_client_options_ext_t);
  ext->output_reserve_percent = tessera::ClientOptions{}.output_reserve_percent;
}

TESSERA_API void tessera_pool_spec_ext_init(tessera_pool_spec_ext_t* ext) {
  if (ext == nullptr) return;
  *ext = tessera_pool_spec_ext_t{};
  ext->struct_size = sizeof(tessera_pool_spec_ext_t);
  ext->cancel_grace_ms = tessera::PoolSpec{}.cancel_grace.count();
}

TESSERA_API int tessera_client_workers(const tessera_client_t* handle, tessera_worker_info_t* out, size_t max) {
  const tessera_client* const c = g_clients.resolve(handle);
  return rec(c, guarded("tessera_client_workers", [&] {
    if (!live(c)) return invalid("tessera_client_workers: not a live client (destroyed, or not a client handle)");
    if (max > 0 && out == nullptr) return invalid("tessera_client_workers: out is NULL");
    const auto ws = c->c->workers();
    for (size_t i = 0; i < std::min(max, ws.size()); ++i) {
      tessera_worker_info_t& o = out[i];
      o = tessera_worker_info_t{};
      o.index = ws[i].index;
      o.slot = ws[i].slot;
      o.pid = ws[i].pid;
      o.alive = ws[i].alive ? 1 : 0;
      o.in_flight = ws[i].in_flight;
      o.completed = ws[i].completed;
      o.busy_ns = ws[i].busy_ns;
      o.restarts = ws[i].restarts;
    }
    return static_cast<int>(std::min<size_t>(ws.size(), INT_MAX));
  }));
}

TESSERA_API int tessera_client_arena_fd(const tessera_client_t* handle) {
  const tessera_client* const c = g_clients.resolve(handle);
  if (!live(c)) return invalid("tessera_client_arena_fd: not a live client (destroyed, or not a client handle)");
  return c->c->arena().fd();
}

TESSERA_API const void* tessera_client_arena_base(const tessera_client_t* handle) {
  const tessera_client* const c = g_clients.resolve(handle);
  return live(c) ? static_cast<const void*>(c->c->arena().base()) : nullptr;
}

TESSERA_API uint64_t tessera_client_arena_size(const tessera_client_t* handle) {
  const tessera_client* const c = g_clients.resolve(handle);
  return live(c) ? c->c->arena().size() : 0;
}

TESSERA_API size_t tessera_client_struct_size(int32_t id) {
  switch (id) {
    case TESSERA_STRUCT_CLIENT_OPTIONS: return sizeof(tessera_client_options_t);
    case TESSERA_STRUCT_POOL_SPEC: return sizeof(tessera_pool_spec_t);
    case TESSERA_STRUCT_STREAM_OPTIONS: return sizeof(tessera_stream_options_t);
    case TESSERA_STRUCT_TILE_META: return sizeof(tessera_tile_meta_t);
    case TESSERA_STRUCT_RESULT: return sizeof(tessera_result_t);
    case TESSERA_STRUCT_STREAM_STATS: return sizeof(tessera_stream_stats_t);
    case TESSERA_STRUCT_WORKER_INFO: return sizeof(tessera_worker_info_t);
    case TESSERA_STRUCT_CLIENT_OPTIONS_EXT: return sizeof(tessera_client_options_ext_t);
    case TESSERA_STRUCT_POOL_SPEC_EXT: return sizeof(tessera_pool_spec_ext_t);
    default: return 0;
  }
}

}  // extern "C"
