/* Definitions shared by the two C ABIs, tessera/worker.h and tessera/client.h:
 * error codes, the last-error functions, dtypes and tile statuses. The implementation
 * static_asserts every value against the C++ enums. */
#ifndef TESSERA_CAPI_COMMON_H_
#define TESSERA_CAPI_COMMON_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TESSERA_CAPI_COMMON_DEFINED
#define TESSERA_CAPI_COMMON_DEFINED

#if defined(__GNUC__)
#define TESSERA_API __attribute__((visibility("default")))
#else
#define TESSERA_API
#endif

/* Error codes. Functions return 0 (or a count) on success and -TESSERA_E* on
 * failure; tessera_last_error() then holds a message for the calling thread.
 * The values mirror tessera::Errc. */
enum tessera_errc {
  TESSERA_OK = 0,
  TESSERA_EINVAL = 1,        /* the caller passed something unusable */
  TESSERA_EBADMAGIC = 2,     /* not a Tessera arena */
  TESSERA_EBADVERSION = 3,   /* arena of another layout version */
  TESSERA_EBADSIZE = 4,      /* arena sizes disagree with the mapping */
  TESSERA_ENOTREADY = 5,     /* arena creator has not finished */
  TESSERA_EPERM = 6,         /* owned by another user, or wrong mode */
  TESSERA_ESYSTEM = 7,       /* a system call failed (message has errno text) */
  TESSERA_ESTALE = 8,        /* handle already used up: answered, published, released, freed */
  TESSERA_EBADHANDLE = 9,    /* handle of another object, another kind, or forged */
  TESSERA_ENOTOWNER = 10,    /* block held by another participant */
  TESSERA_ENOSPC = 11,       /* no block free (a normal outcome on the data path) */
  TESSERA_ECORRUPT = 12,     /* a shared structure failed validation */
  TESSERA_ECLOSED = 13,      /* stream/channel closed, or the worker was asked to stop */
  TESSERA_ETIMEDOUT = 14,
  TESSERA_EPROTO = 15,       /* malformed or out-of-order control message */
  TESSERA_EWORKER = 16,      /* a worker died or reported an error */
  TESSERA_ECANCELED = 17,
  TESSERA_ENOTFOUND = 18,
  TESSERA_EUNAVAILABLE = 19, /* broker or worker absent, or not supported by this build */
  TESSERA_EINTERNAL = 20     /* an unexpected C++ exception was caught at the boundary */
};

/* Element types of a tile (values of tessera::fb::DType). */
enum tessera_dtype {
  TESSERA_DTYPE_INVALID = 0,
  TESSERA_DTYPE_UINT8 = 1,
  TESSERA_DTYPE_INT8 = 2,
  TESSERA_DTYPE_UINT16 = 3,
  TESSERA_DTYPE_INT16 = 4,
  TESSERA_DTYPE_UINT32 = 5,
  TESSERA_DTYPE_INT32 = 6,
  TESSERA_DTYPE_UINT64 = 7,
  TESSERA_DTYPE_INT64 = 8,
  TESSERA_DTYPE_FLOAT16 = 9,
  TESSERA_DTYPE_FLOAT32 = 10,
  TESSERA_DTYPE_FLOAT64 = 11,
  TESSERA_DTYPE_BOOL = 12
};

/* Why a tile did not complete (values of tessera::fb::TileStatus). */
enum tessera_tile_status {
  TESSERA_TILE_OK = 0,
  TESSERA_TILE_HANDLER_ERROR = 1,
  TESSERA_TILE_BAD_INPUT = 2,
  TESSERA_TILE_STALE_BLOCK = 3,
  TESSERA_TILE_NO_SPACE = 4,
  TESSERA_TILE_CANCELED = 5,
  TESSERA_TILE_WORKER_DIED = 6,
  TESSERA_TILE_DEADLINE = 7,
  TESSERA_TILE_UNSUPPORTED = 8
};

#define TESSERA_MAX_DIMS 4

/* The calling thread's message for the last failed call ("" if none). Valid
 * until the thread's next failing Tessera call. Never NULL. */
TESSERA_API const char* tessera_last_error(void);
/* The code of the last failed call on this thread (negative), 0 if none. */
TESSERA_API int tessera_last_error_code(void);
/* Sets the calling thread's error (e.g. from a handler callback before it
 * returns a negative code). `code` may be given with either sign. Returns -|code|. */
TESSERA_API int tessera_set_last_error(int code, const char* message);
/* Static name of an error code, e.g. "stale_handle" (either sign accepted). */
TESSERA_API const char* tessera_strerror(int code);
/* Bytes per element of a dtype, 0 for unknown. */
TESSERA_API size_t tessera_dtype_size(int dtype);

#endif /* TESSERA_CAPI_COMMON_DEFINED */

#ifdef __cplusplus
}
#endif

#endif /* TESSERA_CAPI_COMMON_H_ */
