/* A worker written in C against libtessera_worker.so (tests only).
 *   c_worker [serve]  the full runtime through tessera_worker_serve (Appose on stdin/stdout)
 *   c_worker loop     its own tile loop over tessera_worker_take; SIGTERM stops it (exit 0)
 * ops: 0 mask (uint8 HxWx3 -> uint8 HxW, 255 where r+g+b < 600)
 *      1 where: uint64[3] = {input arena offset, output arena offset, byte sum}
 *      3 fails with a message; 7 returns without answering (serve mode). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <tessera/worker.h>

static tessera_worker_t* g_loop_worker;

static void on_term(int sig) {
  (void)sig;
  tessera_worker_request_stop(g_loop_worker); /* async-signal-safe */
}

static int handle(tessera_worker_t* w, tessera_tile_t tile, void* user) {
  (void)user;
  tessera_tile_info_t in;
  int rc = tessera_worker_tile_info(w, tile, &in);
  if (rc < 0) return rc;
  printf("c worker: stray stdout from the handler, tile %llu\n", (unsigned long long)in.seq); /* must not corrupt */
  void* data;
  uint64_t cap;
  tessera_output_t out;
  switch (in.op) {
    case 0: {
      if (in.dtype != TESSERA_DTYPE_UINT8 || in.ndim != 3 || in.dims[2] != 3)
        return tessera_worker_fail(w, tile, TESSERA_TILE_BAD_INPUT, "c worker: mask needs uint8 (H, W, 3)");
      const uint32_t shape[2] = {in.dims[0], in.dims[1]};
      rc = tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT8, shape, 2, &data, &cap, &out);
      if (rc < 0) return rc;
      const uint8_t* px = (const uint8_t*)in.data;
      uint8_t* m = (uint8_t*)data;
      for (uint64_t i = 0; i < (uint64_t)shape[0] * shape[1]; ++i)
        m[i] = (px[3 * i] + px[3 * i + 1] + px[3 * i + 2]) < 600 ? 255 : 0;
      return tessera_worker_publish(w, tile, out);
    }
    case 1: {
      const uint32_t shape[1] = {3};
      rc = tessera_worker_alloc_output(w, TESSERA_DTYPE_UINT64, shape, 1, &data, &cap, &out);
      if (rc < 0) return rc;
      uint64_t* o = (uint64_t*)data;
      uint64_t sum = 0;
      for (uint64_t i = 0; i < in.nbytes; ++i) sum += ((const uint8_t*)in.data)[i];
      tessera_tile_info_t again;
      tessera_worker_tile_info(w, tile, &again);
      o[0] = in.arena_offset;
      o[1] = in.arena_offset + (uint64_t)((const char*)data - (const char*)in.data);
      o[2] = sum;
      return tessera_worker_publish(w, tile, out);
    }
    case 3:
      return tessera_set_last_error(TESSERA_EINVAL, "c worker: op 3 fails on purpose");
    case 7:
      return 0; /* forgets to answer: the runtime fails the tile */
    default:
      return tessera_worker_fail(w, tile, TESSERA_TILE_UNSUPPORTED, "c worker: unknown op");
  }
}

static int run_loop(void) {
  if (tessera_worker_open_env(NULL, &g_loop_worker) < 0) {
    fprintf(stderr, "c worker: %s\n", tessera_last_error());
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  tessera_tile_t tiles[8];
  int n;
  while ((n = tessera_worker_take(g_loop_worker, tiles, 8, 50 * 1000 * 1000)) >= 0) {
    for (int i = 0; i < n; ++i) {
      if (handle(g_loop_worker, tiles[i], NULL) < 0 && tessera_worker_cancel_requested(g_loop_worker, tiles[i]) >= 0)
        tessera_worker_fail(g_loop_worker, tiles[i], TESSERA_TILE_HANDLER_ERROR, tessera_last_error());
      if (tessera_worker_cancel_requested(g_loop_worker, tiles[i]) >= 0)
        tessera_worker_fail(g_loop_worker, tiles[i], TESSERA_TILE_HANDLER_ERROR, "c worker: not answered");
    }
  }
  const int stopped = n == -TESSERA_ECLOSED;
  tessera_worker_close(g_loop_worker);
  return stopped ? 0 : 3;
}

int main(int argc, char** argv) {
  if (tessera_worker_abi_version() != TESSERA_WORKER_ABI_VERSION) return 4;
  if (argc > 1 && strcmp(argv[1], "loop") == 0) return run_loop();
  tessera_serve_options_t opts;
  tessera_serve_options_init(&opts);
  opts.max_batch = 8;
  return tessera_worker_serve(handle, NULL, &opts);
}
