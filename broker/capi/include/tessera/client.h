/* Tessera client, C ABI (libtessera_client.so / tessera::client_c), shaped for
 * FFI bindings (Java Panama/JNA, Python ctypes, ...): only plain structs, fixed
 * width integers, opaque handles and non-inline functions.
 *
 * Conventions (docs/c-abi.md):
 *  - functions are tessera_client_<verb>; a client is an opaque tessera_client_t;
 *  - 0 (or a count) on success, -TESSERA_E* on failure, with a message in
 *    tessera_last_error() for the calling thread; nothing throws across the ABI;
 *  - input blocks and results are 64-bit handles checked on every call: a handle
 *    of another client, of the other kind, already submitted/released, or forged
 *    is rejected with -TESSERA_EBADHANDLE / -TESSERA_ESTALE, never undefined behaviour;
 *  - a client is used from one thread at a time (the data path has no locks).
 *
 *   tessera_client_t* c;
 *   tessera_client_create(NULL, &c);
 *   ... start workers (tessera_client_start_pool or add_external_worker) ...
 *   uint32_t s; tessera_client_open_stream(c, NULL, &s);
 *   void* p; uint64_t cap; tessera_block_t b;
 *   tessera_client_alloc(c, 196608, 1000000000, &p, &cap, &b);   fill p in place
 *   tessera_tile_meta_t m; tessera_tile_meta_init(&m); m.ndim = 3; ...
 *   uint64_t seq; tessera_client_submit(c, s, b, &m, TESSERA_SUBMIT_BLOCK, 0, &seq);
 *   tessera_result_t r[16]; int n = tessera_client_poll(c, r, 16, 10000000);
 *   ... read r[i].data ...; tessera_client_release_result(c, r[i].id);
 *   tessera_client_destroy(c);
 */
#ifndef TESSERA_CLIENT_H_
#define TESSERA_CLIENT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, last-error functions, dtypes and tile statuses (shared with the other C ABI). */
#include <tessera/capi_common.h>

#define TESSERA_CLIENT_ABI_VERSION 2

typedef struct tessera_client tessera_client_t;  /* opaque */
typedef uint64_t tessera_block_t;                /* an input block being filled (0 = none) */
typedef uint64_t tessera_result_id_t;            /* a delivered result (0 = none) */

enum tessera_ordering { TESSERA_ORDER_COMPLETION = 0, TESSERA_ORDER_SUBMISSION = 1 };
enum tessera_submit_mode { TESSERA_SUBMIT_BLOCK = 0, TESSERA_SUBMIT_FAIL_FAST = 1, TESSERA_SUBMIT_TIMEOUT = 2 };
enum tessera_outcome { TESSERA_OUTCOME_COMPLETED = 0, TESSERA_OUTCOME_FAILED = 1, TESSERA_OUTCOME_CANCELED = 2 };

typedef struct tessera_size_class {
  uint64_t block_size;    /* bytes (rounded up to a page) */
  uint32_t block_count;
} tessera_size_class_t;

typedef struct tessera_client_options {
  const tessera_size_class_t* classes;  /* NULL: the default classes (64 KiB .. 4 MiB) */
  size_t n_classes;
  uint32_t n_rings;          /* 2 per worker */
  uint32_t ring_capacity;    /* power of two */
  int32_t prefault;          /* touch every arena page at creation */
  uint32_t spin_ns;          /* spin before sleeping when waiting */
  int32_t sleep;             /* 0: spin until deadlines (benchmarks) */
  uint32_t max_in_flight;    /* tiles submitted and not yet delivered, all streams */
  uint32_t worker_window;    /* tiles queued at one worker at once */
} tessera_client_options_t;

typedef struct tessera_pool_spec {
  const char* const* argv;          /* worker command line, argv[0] is the executable */
  size_t argc;
  int32_t count;                    /* worker processes */
  const char* const* env;           /* environment additions: key0, value0, key1, value1, ... */
  size_t n_env;                     /* number of strings in env (even) */
  const char* const* init_scripts;  /* Appose init steps, in order */
  size_t n_init_scripts;
  int32_t max_retries;              /* re-dispatches of a tile whose worker died */
  int32_t restart;                  /* respawn dead workers */
  int64_t ready_timeout_ms;
} tessera_pool_spec_t;

typedef struct tessera_external_worker {
  int32_t index;     /* worker index in this client */
  uint32_t slot;     /* TESSERA_SLOT for the process */
  int32_t arena_fd;  /* the arena descriptor to hand over as TESSERA_ARENA_FD (close-on-exec here) */
} tessera_external_worker_t;

typedef struct tessera_stream_options {
  int32_t priority;          /* higher first (visible tiles before prefetch) */
  int32_t ordering;          /* enum tessera_ordering */
  uint32_t max_in_flight;    /* per-stream bound (backpressure) */
  int64_t deadline_ns;       /* per-tile deadline from submit (0 = none) */
} tessera_stream_options_t;

typedef struct tessera_tile_meta {
  int32_t dtype;                     /* enum tessera_dtype */
  uint32_t ndim;                     /* 1..4 */
  uint32_t dims[TESSERA_MAX_DIMS];
  uint32_t level;                    /* slide pyramid level (0..255) */
  int32_t x, y;
  uint32_t op;                       /* handler selector, opaque to Tessera */
  uint64_t tag;                      /* returned with the result */
  int64_t deadline_ns;               /* overrides the stream's (0 = stream default) */
} tessera_tile_meta_t;

/* One delivered outcome. Pointers (error, data) stay valid until
 * tessera_client_release_result(id) or tessera_client_destroy(). */
typedef struct tessera_result {
  tessera_result_id_t id;
  uint32_t stream;
  uint32_t epoch;
  uint64_t seq;
  int32_t outcome;                   /* enum tessera_outcome */
  int32_t status;                    /* enum tessera_tile_status */
  const char* error;                 /* why, for failed/canceled; "" otherwise */
  const void* data;                  /* completed: the worker's output, in place (zero copy); else NULL */
  uint64_t nbytes;
  int32_t dtype;
  uint32_t ndim;
  uint32_t dims[TESSERA_MAX_DIMS];
  uint64_t arena_offset;             /* data - arena base (same in every process) */
  tessera_tile_meta_t meta;          /* what was submitted */
  int32_t worker;                    /* index of the worker that answered, -1: none */
  uint32_t reserved;
  double latency_us;                 /* submit -> delivery */
} tessera_result_t;

typedef struct tessera_stream_stats {
  uint64_t submitted, queued, running, completed, failed, canceled, retried;
  double p50_us, p99_us;
} tessera_stream_stats_t;

TESSERA_API int tessera_client_abi_version(void);

/* Fill defaults (the same as the C++ API's). */
TESSERA_API void tessera_client_options_init(tessera_client_options_t* opts);
TESSERA_API void tessera_pool_spec_init(tessera_pool_spec_t* spec);
TESSERA_API void tessera_stream_options_init(tessera_stream_options_t* opts);
TESSERA_API void tessera_tile_meta_init(tessera_tile_meta_t* meta);

/* Starts an embedded broker: a fresh arena owned by this client. `opts` may be NULL. */
TESSERA_API int tessera_client_create(const tessera_client_options_t* opts, tessera_client_t** out);
/* Connects to a running `tessera-broker --listen PATH` (its arena and workers). Only the
 * wait policy and in-flight limits of `opts` apply; `opts` may be NULL. */
TESSERA_API int tessera_client_connect(const char* socket_path, const tessera_client_options_t* opts,
                                       tessera_client_t** out);
/* Stops the pool, releases every block and result, frees the client. NULL is ignored. */
TESSERA_API void tessera_client_destroy(tessera_client_t* c);

/* ---- workers (control path) ---- */
/* Spawns spec->count workers and returns once each reported ready, or fails with
 * the worker's own error. -TESSERA_EUNAVAILABLE if this build has no pool support. */
TESSERA_API int tessera_client_start_pool(tessera_client_t* c, const tessera_pool_spec_t* spec);
/* Like tessera_client_start_pool, with one worker per device (spec->count is ignored):
 * worker i runs with CUDA_VISIBLE_DEVICES=devices[i]. A separate entry point rather than
 * a field, so that tessera_pool_spec_t keeps its size for programs built against it. */
TESSERA_API int tessera_client_start_pool_on_devices(tessera_client_t* c, const tessera_pool_spec_t* spec,
                                                     const char* const* devices, size_t n_devices);
/* Registers a worker slot and channel for a process the caller starts itself; the
 * caller then reports its pid (set_worker_pid) and its death (worker_died). */
TESSERA_API int tessera_client_add_external_worker(tessera_client_t* c, const char* name, tessera_external_worker_t* out);
TESSERA_API int tessera_client_set_worker_pid(tessera_client_t* c, int32_t index, int32_t pid);
/* The worker is gone: its tiles are retried or failed, its blocks reclaimed. */
TESSERA_API int tessera_client_worker_died(tessera_client_t* c, int32_t index, const char* reason);
/* Sends SIGKILL to a worker (tests, chaos). */
TESSERA_API int tessera_client_kill_worker(tessera_client_t* c, int32_t index);

/* ---- streams ---- */
TESSERA_API int tessera_client_open_stream(tessera_client_t* c, const tessera_stream_options_t* opts, uint32_t* stream);
/* Cancels everything queued or running in the stream and closes it. */
TESSERA_API int tessera_client_close_stream(tessera_client_t* c, uint32_t stream);

/* ---- data path ---- */
/* Allocates an input block of at least `bytes`, waiting up to `timeout_ns`.
 * *data (writable, *capacity bytes) is where the caller writes the tile in place. */
TESSERA_API int tessera_client_alloc(tessera_client_t* c, uint64_t bytes, int64_t timeout_ns, void** data,
                                     uint64_t* capacity, tessera_block_t* block);
/* Frees a block that will not be submitted. */
TESSERA_API int tessera_client_free_block(tessera_client_t* c, tessera_block_t block);
/* Submits a filled block (the handle is used up on success; on failure the
 * caller still owns it). `timeout_ns` applies to TESSERA_SUBMIT_TIMEOUT (and
 * bounds BLOCK; 0 means 30 s). *seq (may be NULL) receives the tile's sequence number. */
TESSERA_API int tessera_client_submit(tessera_client_t* c, uint32_t stream, tessera_block_t block,
                                      const tessera_tile_meta_t* meta, int32_t mode, int64_t timeout_ns, uint64_t* seq);
/* Delivers up to `max` outcomes into out[], waiting up to `timeout_ns` for the
 * first. Returns how many (0 on timeout). Each must be released. */
TESSERA_API int tessera_client_poll(tessera_client_t* c, tessera_result_t* out, size_t max, int64_t timeout_ns);
/* Frees a result's output block and error text. */
TESSERA_API int tessera_client_release_result(tessera_client_t* c, tessera_result_id_t id);
/* Tiles submitted and not yet delivered (0 for a NULL client). */
TESSERA_API uint64_t tessera_client_in_flight(const tessera_client_t* c);

/* ---- cancellation ---- */
TESSERA_API int tessera_client_cancel(tessera_client_t* c, uint32_t stream, uint64_t seq);
TESSERA_API int tessera_client_cancel_stream(tessera_client_t* c, uint32_t stream);
/* Starts a new viewport epoch; older tiles are canceled. *epoch (may be NULL) gets the new one. */
TESSERA_API int tessera_client_advance_epoch(tessera_client_t* c, uint32_t stream, uint32_t* epoch);

TESSERA_API int tessera_client_stats(const tessera_client_t* c, uint32_t stream, tessera_stream_stats_t* out);

/* ---- additions for FFI hosts (ABI version 2; everything above is unchanged) ---- */

/* Makes a blocking tessera_client_poll/alloc/submit of `c` return soon: poll with
 * -TESSERA_ECANCELED if it delivered nothing, alloc and submit with -TESSERA_ECANCELED.
 * If no call is waiting, the next call that would wait returns at once (a wake is never
 * lost); calls that return without waiting leave it pending. Thread-safe: callable from
 * any thread while `c` exists (not concurrently with tessera_client_destroy). */
TESSERA_API int tessera_client_wake(tessera_client_t* c);

/* Copies the message of the last failed call on `c` (from whichever thread made it) into
 * buf (cap bytes, always NUL-terminated when cap > 0); *code (may be NULL) gets its
 * negative code, 0 if no call failed. Returns the message length (may exceed cap - 1).
 * Thread-safe. */
TESSERA_API int tessera_client_last_error(const tessera_client_t* c, char* buf, size_t cap, int32_t* code);
/* Copies the calling thread's last error message into buf (see tessera_last_error). */
TESSERA_API int tessera_last_error_copy(char* buf, size_t cap);

/* Log records of the library (supervisor, worker deaths, ...). */
enum tessera_log_level {
  TESSERA_LOG_TRACE = 0, TESSERA_LOG_DEBUG = 1, TESSERA_LOG_INFO = 2, TESSERA_LOG_WARN = 3,
  TESSERA_LOG_ERROR = 4, TESSERA_LOG_CRITICAL = 5, TESSERA_LOG_OFF = 6
};
/* Called on the logging thread (any thread, possibly one the library started) with the
 * record's level and text; the text is valid during the call only. Calls are serialized. */
typedef void (*tessera_log_fn)(void* user, int32_t level, const char* message);
/* Routes the library's log records to fn (NULL: back to stderr). Process-wide. */
TESSERA_API int tessera_set_log_sink(tessera_log_fn fn, void* user);
/* Records below `level` are dropped (default TESSERA_LOG_INFO). Process-wide. */
TESSERA_API int tessera_set_log_level(int32_t level);

/* Options the first structs lack. Versioned: struct_size is set by the _init function,
 * and fields appended later are read only when struct_size covers them. */
typedef struct tessera_client_options_ext {
  uint32_t struct_size;              /* sizeof(tessera_client_options_ext_t) */
  uint32_t output_reserve_percent;   /* share of each size class inputs leave to outputs */
} tessera_client_options_ext_t;

typedef struct tessera_pool_spec_ext {
  uint32_t struct_size;              /* sizeof(tessera_pool_spec_ext_t) */
  uint32_t reserved;
  int64_t cancel_grace_ms;           /* a canceled tile's worker is killed after this (0 = never) */
} tessera_pool_spec_ext_t;

TESSERA_API void tessera_client_options_ext_init(tessera_client_options_ext_t* ext);
TESSERA_API void tessera_pool_spec_ext_init(tessera_pool_spec_ext_t* ext);
/* tessera_client_create / _connect / _start_pool with the extended options (ext may be NULL). */
TESSERA_API int tessera_client_create_ext(const tessera_client_options_t* opts, const tessera_client_options_ext_t* ext,
                                          tessera_client_t** out);
TESSERA_API int tessera_client_connect_ext(const char* socket_path, const tessera_client_options_t* opts,
                                           const tessera_client_options_ext_t* ext, tessera_client_t** out);
TESSERA_API int tessera_client_start_pool_ext(tessera_client_t* c, const tessera_pool_spec_t* spec,
                                              const tessera_pool_spec_ext_t* ext);

typedef struct tessera_worker_info {
  int32_t index;
  uint32_t slot;
  int32_t pid;
  int32_t alive;
  uint64_t in_flight, completed, busy_ns;
  uint32_t restarts;
  uint32_t reserved;
} tessera_worker_info_t;
/* Fills up to `max` entries (out may be NULL when max is 0); returns the number of workers. */
TESSERA_API int tessera_client_workers(const tessera_client_t* c, tessera_worker_info_t* out, size_t max);

/* The arena's memfd in this process (close-on-exec): a child the host starts itself
 * (e.g. with Java's ProcessBuilder, which closes inherited descriptors) opens
 * "/proc/<host pid>/fd/<this fd>" read-write to get its own descriptor of the same
 * arena (docs/c-abi.md). */
TESSERA_API int tessera_client_arena_fd(const tessera_client_t* c);
/* The arena's mapping in this process: its base address and size in bytes (NULL / 0 for
 * a bad client). Every data pointer the client hands out lies inside it. */
TESSERA_API const void* tessera_client_arena_base(const tessera_client_t* c);
TESSERA_API uint64_t tessera_client_arena_size(const tessera_client_t* c);

/* Batched data-path calls, so that a host whose foreign calls are dear (JNA, ctypes) pays
 * one call for many tiles. Each behaves as the single-tile call applied in order. */
typedef struct tessera_block_info {
  tessera_block_t block;
  void* data;
  uint64_t capacity;
} tessera_block_info_t;
/* Allocates up to n blocks of at least `bytes`: waits up to timeout_ns for the first, then
 * takes only what is free at once. Returns how many (>= 1) or a negative code. */
TESSERA_API int tessera_client_alloc_n(tessera_client_t* c, uint64_t bytes, uint32_t n, int64_t timeout_ns,
                                       tessera_block_info_t* out);
/* Submits blocks[i] with metas[i] in order (as n tessera_client_submit calls). Returns
 * how many were accepted (their blocks are used up; seqs[i], if seqs is not NULL, gets each
 * sequence number); from the first refused one on, the blocks are still the caller's and
 * the refusal's error is recorded. A negative code if none was accepted. */
TESSERA_API int tessera_client_submit_n(tessera_client_t* c, uint32_t stream, uint32_t n, const tessera_block_t* blocks,
                                        const tessera_tile_meta_t* metas, int32_t mode, int64_t timeout_ns, uint64_t* seqs);
/* Releases n results. Returns n, or the negative code of the first id that is not a live
 * result (the others are still released). */
TESSERA_API int tessera_client_release_n(tessera_client_t* c, const tessera_result_id_t* ids, size_t n);

/* sizeof of this library's structs, for bindings that read them at fixed offsets. */
enum tessera_struct_id {
  TESSERA_STRUCT_CLIENT_OPTIONS = 1, TESSERA_STRUCT_POOL_SPEC = 2, TESSERA_STRUCT_STREAM_OPTIONS = 3,
  TESSERA_STRUCT_TILE_META = 4, TESSERA_STRUCT_RESULT = 5, TESSERA_STRUCT_STREAM_STATS = 6,
  TESSERA_STRUCT_WORKER_INFO = 7, TESSERA_STRUCT_CLIENT_OPTIONS_EXT = 8, TESSERA_STRUCT_POOL_SPEC_EXT = 9
};
/* 0 for an unknown id. */
TESSERA_API size_t tessera_client_struct_size(int32_t id);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* TESSERA_CLIENT_H_ */
