/* Tessera worker SDK, C ABI (libtessera_worker.so / tessera::worker_c).
 *
 * A worker takes tiles from the shared arena without copying, answers each one
 * exactly once (publish, fail or cancel), and stays a conforming Appose worker
 * when it runs through tessera_worker_serve(). Conventions (docs/c-abi.md):
 *  - functions are tessera_worker_<verb>; objects are opaque handles;
 *  - 0 (or a count) on success, -TESSERA_E* on failure, with a message in
 *    tessera_last_error() for the calling thread; nothing throws across the ABI;
 *  - tiles and output blocks are 64-bit handles checked on every call: a handle
 *    of another worker, of the other kind, already answered/published, or forged
 *    is rejected with -TESSERA_EBADHANDLE / -TESSERA_ESTALE, never undefined behaviour;
 *  - a tessera_worker_t is used from one thread at a time, except
 *    tessera_worker_request_stop() (any thread, async-signal-safe).
 *
 *   tessera_worker_t* w;
 *   if (tessera_worker_open_env(NULL, &w) < 0) { fprintf(stderr, "%s\n", tessera_last_error()); return 2; }
 *   tessera_tile_t tiles[16];
 *   int n;
 *   while ((n = tessera_worker_take(w, tiles, 16, 100000000)) >= 0)
 *     for (int i = 0; i < n; ++i) handle(w, tiles[i]);
 *   tessera_worker_close(w);
 */
#ifndef TESSERA_WORKER_H_
#define TESSERA_WORKER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, last-error functions, dtypes and tile statuses (shared with the other C ABI). */
#include <tessera/capi_common.h>

#define TESSERA_WORKER_ABI_VERSION 1

typedef struct tessera_worker tessera_worker_t;  /* opaque */
typedef uint64_t tessera_tile_t;                 /* one request taken by a worker (0 = none) */
typedef uint64_t tessera_output_t;               /* an output block owned by a worker (0 = none) */

typedef struct tessera_worker_options {
  uint32_t spin_ns;   /* spin this long before sleeping on the doorbell */
  int32_t sleep;      /* 0: spin until the timeout (benchmarks) */
} tessera_worker_options_t;

/* Everything a handler needs to know about a tile. `data` points into the
 * shared arena (zero copy): it is valid until the tile is answered and must be
 * treated as read-only. */
typedef struct tessera_tile_info {
  uint64_t seq;                        /* per-stream sequence number */
  uint32_t stream;
  uint32_t epoch;                      /* viewport epoch at submit */
  uint32_t op;                         /* handler selector chosen by the client */
  int32_t x, y;                        /* tile origin at `level` */
  uint32_t level;
  int32_t dtype;                       /* enum tessera_dtype */
  uint32_t ndim;
  uint32_t dims[TESSERA_MAX_DIMS];     /* C order; unused trailing dims are 0 */
  int64_t strides[TESSERA_MAX_DIMS];   /* bytes, C order */
  uint64_t nbytes;                     /* payload bytes */
  uint64_t capacity;                   /* bytes of the block holding the payload */
  const void* data;                    /* payload, in place */
  uint64_t arena_offset;               /* data - arena base (same in every process) */
} tessera_tile_info_t;

typedef struct tessera_worker_counters {
  uint64_t taken, published, failed, canceled, rejected;
} tessera_worker_stats_t;

/* Returns TESSERA_WORKER_ABI_VERSION of the library actually loaded. */
TESSERA_API int tessera_worker_abi_version(void);

/* Fills defaults. */
TESSERA_API void tessera_worker_options_init(tessera_worker_options_t* opts);

/* Attaches the arena handed over by the broker (TESSERA_ARENA_FD, TESSERA_SLOT).
 * `opts` may be NULL. On success *out owns the attachment. */
TESSERA_API int tessera_worker_open_env(const tessera_worker_options_t* opts, tessera_worker_t** out);

/* Fails every tile still unanswered ("tile dropped without an answer"), frees
 * every unpublished output block, detaches. NULL is ignored. Invalid inside
 * tessera_worker_serve()'s callback (the runtime owns that worker). */
TESSERA_API void tessera_worker_close(tessera_worker_t* w);

/* Takes up to `max` tiles into `tiles`, waiting up to `timeout_ns` for the
 * first. Returns how many (>= 1), 0 on timeout, -TESSERA_ECLOSED once a stop
 * was requested. Invalid requests (stale/forged block, bad dtype/shape,
 * superseded epoch) are answered by the SDK and never returned. */
TESSERA_API int tessera_worker_take(tessera_worker_t* w, tessera_tile_t* tiles, size_t max, int64_t timeout_ns);

/* Descriptor fields and the zero-copy input of a pending tile. */
TESSERA_API int tessera_worker_tile_info(tessera_worker_t* w, tessera_tile_t tile, tessera_tile_info_t* out);

/* 1 once the client superseded the tile's epoch (cooperative cancellation), 0 if
 * not, negative for a bad handle. */
TESSERA_API int tessera_worker_cancel_requested(tessera_worker_t* w, tessera_tile_t tile);

/* Allocates an output block for a tensor of `dtype` and `shape[ndim]` (1..4
 * dims). On success *data points at the block (writable, *capacity bytes) and
 * *out is its handle. -TESSERA_ENOSPC when no block is free (normal outcome),
 * -TESSERA_EINVAL when no block class is large enough or the tensor is invalid. */
TESSERA_API int tessera_worker_alloc_output(tessera_worker_t* w, int32_t dtype, const uint32_t* shape, uint32_t ndim,
                                            void** data, uint64_t* capacity, tessera_output_t* out);

/* Returns an unpublished output block to the arena. */
TESSERA_API int tessera_worker_free_output(tessera_worker_t* w, tessera_output_t output);

/* Answers `tile` with `output`. Both handles are used up, whatever the result
 * (on failure the block is freed and the tile failed or orphaned). */
TESSERA_API int tessera_worker_publish(tessera_worker_t* w, tessera_tile_t tile, tessera_output_t output);

/* Answers `tile` with an error: `status` is a tessera_tile_status (not OK);
 * `message` (may be NULL) reaches the client as the tile's error text. */
TESSERA_API int tessera_worker_fail(tessera_worker_t* w, tessera_tile_t tile, int32_t status, const char* message);

/* Answers `tile` as canceled (after cancel_requested, typically). */
TESSERA_API int tessera_worker_cancel(tessera_worker_t* w, tessera_tile_t tile);

/* Makes take() return -TESSERA_ECLOSED. Any thread; async-signal-safe. */
TESSERA_API int tessera_worker_request_stop(tessera_worker_t* w);

TESSERA_API int tessera_worker_stats(const tessera_worker_t* w, tessera_worker_stats_t* out);

/* This worker's participant slot in the arena (negative on a NULL worker). */
TESSERA_API int tessera_worker_slot(const tessera_worker_t* w);

/* ---- the whole worker: Appose protocol loop + tile loop ---- */

/* Called for every valid tile. The callback answers the tile (publish, fail or
 * cancel). If it returns without answering, the tile is failed: with the
 * thread's last error message when it returned a negative code, otherwise with
 * "handler returned without answering the tile". Output blocks it allocated and
 * did not publish are freed when it returns. */
typedef int (*tessera_worker_handler_fn)(tessera_worker_t* w, tessera_tile_t tile, void* user_data);

typedef struct tessera_serve_options {
  tessera_worker_options_t worker;
  uint32_t max_batch;        /* tiles taken per wake-up */
  uint32_t take_timeout_ms;  /* how often the loop looks at the stop flag */
  int32_t require_arena;     /* 0: run as a plain Appose worker when no arena is handed over */
} tessera_serve_options_t;

TESSERA_API void tessera_serve_options_init(tessera_serve_options_t* opts);

/* Runs the worker: protects the protocol descriptor (fd 1 is pointed at stderr,
 * so printf cannot corrupt a protocol line), answers Appose EXECUTE/CANCEL on
 * stdin/stdout (tessera.ready, tessera.stats, tessera.stop), and feeds tiles to
 * `handler` until stdin reaches EOF or SIGTERM/SIGINT arrives. Returns the
 * process exit code (0 after a clean stop, 2 when the arena cannot be attached).
 * `opts` may be NULL. */
TESSERA_API int tessera_worker_serve(tessera_worker_handler_fn handler, void* user_data,
                                     const tessera_serve_options_t* opts);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* TESSERA_WORKER_H_ */
