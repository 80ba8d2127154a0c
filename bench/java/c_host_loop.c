/* The host loop of the Java/C/Python host comparison (bench/java/README.md), in C
 * against libtessera_client.so: an embedded client, WORKERS tessera-tissue-worker
 * processes answering op 2 (trivial), TILES tiles of 768 bytes with up to 64 in flight.
 * Times tiles/s over the whole loop and the host's own calls per tile
 * (alloc + submit + release), and prints one JSON line.
 *   c_host_loop WORKER_EXE TILES WORKERS */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tessera/client.h>

static inline int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fprintf(stderr, ": %s\n", tessera_last_error()); exit(1); } while (0)

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: c_host_loop WORKER_EXE TILES WORKERS\n");
    return 2;
  }
  const long tiles = atol(argv[2]);
  const int workers = atoi(argv[3]);
  const long warmup = tiles / 10;
  enum { kInFlight = 64, kBytes = 16 * 16 * 3 };
  tessera_set_log_level(TESSERA_LOG_WARN);
  tessera_size_class_t classes[1] = {{4096, 1024}};
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  o.classes = classes;
  o.n_classes = 1;
  tessera_client_t* c = NULL;
  if (tessera_client_create(&o, &c) != 0) DIE("create");
  const char* wargv[] = {argv[1]};
  tessera_pool_spec_t spec;
  tessera_pool_spec_init(&spec);
  spec.argv = wargv;
  spec.argc = 1;
  spec.count = workers;
  if (tessera_client_start_pool(c, &spec) != 0) DIE("start_pool");
  tessera_stream_options_t so;
  tessera_stream_options_init(&so);
  so.max_in_flight = kInFlight;
  uint32_t s;
  if (tessera_client_open_stream(c, &so, &s) != 0) DIE("open_stream");
  tessera_tile_meta_t m;
  tessera_tile_meta_init(&m);
  m.ndim = 3;
  m.dims[0] = 16; m.dims[1] = 16; m.dims[2] = 3;
  m.op = 2;
  tessera_result_t res[kInFlight];
  long submitted = 0, done = 0, bad = 0;
  int64_t call_ns = 0, t_start = 0;
  const long total = tiles + warmup;
  while (done < total) {
    if (done >= warmup && t_start == 0) {
      t_start = now_ns();
      call_ns = 0;
    }
    while (submitted < total && submitted - done < kInFlight) {
      const int64_t t0 = now_ns();
      void* data;
      uint64_t cap;
      tessera_block_t b;
      if (tessera_client_alloc(c, kBytes, 1000000000LL, &data, &cap, &b) != 0) DIE("alloc");
      ((unsigned char*)data)[0] = (unsigned char)submitted;
      m.tag = (uint64_t)submitted;
      if (tessera_client_submit(c, s, b, &m, TESSERA_SUBMIT_BLOCK, 0, NULL) != 0) DIE("submit");
      call_ns += now_ns() - t0;
      ++submitted;
    }
    const int n = tessera_client_poll(c, res, kInFlight, 1000000000LL);
    if (n < 0) DIE("poll");
    for (int i = 0; i < n; ++i) {
      if (res[i].outcome != TESSERA_OUTCOME_COMPLETED) ++bad;
      const int64_t t0 = now_ns();
      tessera_client_release_result(c, res[i].id);
      call_ns += now_ns() - t0;
    }
    done += n;
  }
  const double wall = (double)(now_ns() - t_start) / 1e9;
  /* The calls alone, no worker wake-ups: alloc + write + free_block. */
  const long reps = tiles;
  int64_t t0 = 0;
  for (long i = 0; i < reps + warmup; ++i) {
    if (i == warmup) t0 = now_ns();
    void* data;
    uint64_t cap;
    tessera_block_t b;
    if (tessera_client_alloc(c, kBytes, 1000000000LL, &data, &cap, &b) != 0) DIE("alloc");
    ((unsigned char*)data)[0] = (unsigned char)i;
    if (tessera_client_free_block(c, b) != 0) DIE("free_block");
  }
  const double alloc_free_ns = (double)(now_ns() - t0) / (double)reps;
  printf("{\"host\":\"c\",\"tiles\":%ld,\"workers\":%d,\"tiles_per_s\":%.1f,\"call_ns_per_tile\":%.1f,"
         "\"alloc_free_ns\":%.1f,\"failed\":%ld}\n",
         tiles, workers, (double)tiles / wall, (double)call_ns / (double)tiles, alloc_free_ns, bad);
  tessera_client_destroy(c);
  return bad == 0 ? 0 : 1;
}
