/* The client C ABI additions for FFI hosts (ABI version 2), written in C against
 * libtessera_client.so with real tessera-tissue-worker processes: wake of a blocking
 * poll and alloc from another thread (and a wake that arrives before the call), the
 * per-client error text read on another thread, the log sink and level, the extended
 * options, the worker listing, the arena descriptor and struct sizes.
 * Exit 0 = pass, 1 = fail. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <tessera/client.h>

static int g_failures;
#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                       \
      fprintf(stderr, " [last error: %s]\n", tessera_last_error());      \
      ++g_failures;                                                       \
    }                                                                     \
  } while (0)

static const char* worker_path(void) { return TESSERA_BIN_DIR "/tessera-tissue-worker"; }

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- log sink ---- */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_log_info_started, g_log_records;
static void on_log(void* user, int32_t level, const char* message) {
  pthread_mutex_lock(&g_log_mu);
  ++g_log_records;
  if (level == TESSERA_LOG_INFO && strstr(message, "started") != NULL) ++g_log_info_started;
  pthread_mutex_unlock(&g_log_mu);
  (void)user;
}

static tessera_client_t* make_client(uint32_t reserve_percent, int workers, uint32_t blocks) {
  tessera_size_class_t classes[1] = {{4096, blocks}};
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  o.classes = classes;
  o.n_classes = 1;
  o.n_rings = 8;
  o.ring_capacity = 64;
  o.prefault = 0;
  tessera_client_options_ext_t ext;
  tessera_client_options_ext_init(&ext);
  CHECK(ext.struct_size == sizeof ext && ext.output_reserve_percent == 25, "ext defaults");
  ext.output_reserve_percent = reserve_percent;
  tessera_client_t* c = NULL;
  int rc = tessera_client_create_ext(&o, &ext, &c);
  CHECK(rc == 0 && c != NULL, "create_ext rc=%d", rc);
  if (c == NULL) return NULL;
  const char* argv[] = {worker_path()};
  tessera_pool_spec_t spec;
  tessera_pool_spec_init(&spec);
  spec.argv = argv;
  spec.argc = 1;
  spec.count = workers;
  spec.ready_timeout_ms = 20000;
  tessera_pool_spec_ext_t pext;
  tessera_pool_spec_ext_init(&pext);
  CHECK(pext.struct_size == sizeof pext && pext.cancel_grace_ms == 2000, "pool ext defaults");
  pext.cancel_grace_ms = 500;
  rc = tessera_client_start_pool_ext(c, &spec, &pext);
  CHECK(rc == 0, "start_pool_ext rc=%d", rc);
  return c;
}

static int submit_tile(tessera_client_t* c, uint32_t s) {
  void* data;
  uint64_t cap;
  tessera_block_t b;
  int rc = tessera_client_alloc(c, 16 * 16 * 3, 2000000000LL, &data, &cap, &b);
  if (rc != 0) return rc;
  memset(data, 10, 16 * 16 * 3);
  tessera_tile_meta_t m;
  tessera_tile_meta_init(&m);
  m.ndim = 3;
  m.dims[0] = 16; m.dims[1] = 16; m.dims[2] = 3;
  return tessera_client_submit(c, s, b, &m, TESSERA_SUBMIT_BLOCK, 0, NULL);
}

static int signal_worker(tessera_client_t* c, int sig) {
  tessera_worker_info_t w[4];
  int n = tessera_client_workers(c, w, 4);
  CHECK(n >= 1 && w[0].pid > 0, "workers n=%d", n);
  return n >= 1 ? kill(w[0].pid, sig) : -1;
}

typedef struct {
  tessera_client_t* c;
  int delay_ms;
  int rc;
} waker_t;

static void* waker(void* p) {
  waker_t* w = (waker_t*)p;
  sleep_ms(w->delay_ms);
  w->rc = tessera_client_wake(w->c);
  return NULL;
}

static void test_wake(void) {
  tessera_client_t* c = make_client(0, 1, 8);
  if (c == NULL) return;
  uint32_t s;
  CHECK(tessera_client_open_stream(c, NULL, &s) == 0, "open_stream");
  CHECK(signal_worker(c, SIGSTOP) == 0, "SIGSTOP");
  CHECK(submit_tile(c, s) == 0, "submit");
  tessera_result_t r[4];

  /* A blocking poll, woken from another thread. */
  waker_t w = {c, 200, -1};
  pthread_t t;
  pthread_create(&t, NULL, waker, &w);
  double t0 = now_ms();
  int n = tessera_client_poll(c, r, 4, 20000000000LL);
  double ms = now_ms() - t0;
  pthread_join(t, NULL);
  CHECK(w.rc == 0, "wake rc=%d", w.rc);
  CHECK(n == -TESSERA_ECANCELED, "woken poll rc=%d", n);
  CHECK(strstr(tessera_last_error(), "woken") != NULL, "woken text: %s", tessera_last_error());
  CHECK(ms >= 150 && ms < 5000, "woken after %.0f ms", ms);

  /* A wake before the call is not lost; a non-blocking poll leaves it pending. */
  CHECK(tessera_client_wake(c) == 0, "wake");
  CHECK(tessera_client_poll(c, r, 4, 0) == 0, "non-blocking poll");
  t0 = now_ms();
  n = tessera_client_poll(c, r, 4, 20000000000LL);
  CHECK(n == -TESSERA_ECANCELED && now_ms() - t0 < 2000, "pending wake rc=%d after %.0f ms", n, now_ms() - t0);
  /* Consumed: the next poll waits its timeout. */
  t0 = now_ms();
  n = tessera_client_poll(c, r, 4, 300000000LL);
  CHECK(n == 0 && now_ms() - t0 >= 250, "poll after the wake rc=%d after %.0f ms", n, now_ms() - t0);

  /* A blocking alloc (every block held by tiles at the stopped worker), woken. */
  int held = 1, rc = 0;
  while (held < 16 && (rc = submit_tile(c, s)) == 0) ++held;
  CHECK(rc == -TESSERA_ETIMEDOUT, "blocks exhausted after %d tiles, rc=%d", held, rc);
  void* data;
  uint64_t cap;
  tessera_block_t b;
  w.delay_ms = 200;
  w.rc = -1;
  pthread_create(&t, NULL, waker, &w);
  t0 = now_ms();
  rc = tessera_client_alloc(c, 100, 20000000000LL, &data, &cap, &b);
  pthread_join(t, NULL);
  CHECK(rc == -TESSERA_ECANCELED && now_ms() - t0 < 5000, "woken alloc rc=%d after %.0f ms", rc, now_ms() - t0);

  CHECK(signal_worker(c, SIGCONT) == 0, "SIGCONT");
  int got = 0;
  for (int i = 0; i < 200 && got < held; ++i) {
    n = tessera_client_poll(c, r, 4, 100000000LL);
    CHECK(n >= 0, "poll rc=%d", n);
    for (int k = 0; k < n; ++k) {
      /* With no output reserve a tile may fail for want of an output block; it still has one outcome. */
      CHECK(r[k].outcome == TESSERA_OUTCOME_COMPLETED || r[k].status == TESSERA_TILE_NO_SPACE, "tile after SIGCONT: %s",
            r[k].error);
      tessera_client_release_result(c, r[k].id);
    }
    if (n > 0) got += n;
  }
  CHECK(got == held, "every tile delivered: %d of %d", got, held);
  tessera_client_destroy(c);
}

typedef struct {
  tessera_client_t* c;
  char text[256];
  int32_t code;
  int len;
  char thread_text[64];
} reader_t;

static void* read_error(void* p) {
  reader_t* r = (reader_t*)p;
  r->len = tessera_client_last_error(r->c, r->text, sizeof r->text, &r->code);
  snprintf(r->thread_text, sizeof r->thread_text, "%s", tessera_last_error());
  return NULL;
}

static void test_errors_workers_arena(void) {
  tessera_client_t* c = make_client(25, 2, 8);
  if (c == NULL) return;
  char buf[512];
  int32_t code = 1;
  CHECK(tessera_client_last_error(c, buf, sizeof buf, &code) == 0 && code == 0 && buf[0] == '\0', "no error yet");

  void* data;
  uint64_t cap;
  tessera_block_t b;
  CHECK(tessera_client_alloc(c, 1ULL << 32, 1000000LL, &data, &cap, &b) == -TESSERA_EINVAL, "oversized alloc");
  /* Another thread reads this client's error; its own thread error stays empty. */
  reader_t r;
  memset(&r, 0, sizeof r);
  r.c = c;
  pthread_t t;
  pthread_create(&t, NULL, read_error, &r);
  pthread_join(t, NULL);
  CHECK(r.code == -TESSERA_EINVAL, "client error code %d", r.code);
  CHECK(strstr(r.text, "larger than the largest block class") != NULL, "client error text '%s'", r.text);
  CHECK(r.len == (int)strlen(r.text), "length %d", r.len);
  CHECK(r.thread_text[0] == '\0', "the other thread's own error is empty: '%s'", r.thread_text);
  /* Copies truncate and terminate. */
  char small[8];
  int len = tessera_last_error_copy(small, sizeof small);
  CHECK(len > 7 && strlen(small) == 7 && strncmp(small, tessera_last_error(), 7) == 0, "copy '%s' len %d", small, len);
  CHECK(tessera_client_last_error(c, small, sizeof small, NULL) > 7 && strlen(small) == 7, "client copy");
  CHECK(tessera_client_last_error(NULL, buf, sizeof buf, NULL) == -TESSERA_EINVAL, "null client");

  /* Worker listing. */
  tessera_worker_info_t w[4];
  CHECK(tessera_client_workers(c, NULL, 0) == 2, "count only");
  int n = tessera_client_workers(c, w, 4);
  CHECK(n == 2, "workers %d", n);
  for (int i = 0; i < n && i < 4; ++i) {
    CHECK(w[i].index == i && w[i].alive == 1 && w[i].pid > 0, "worker %d: index %d alive %d pid %d", i, w[i].index,
          w[i].alive, w[i].pid);
    CHECK(kill(w[i].pid, 0) == 0, "worker pid %d exists", w[i].pid);
  }

  /* The arena: reopening /proc/self/fd/N gives the same memfd (what a host-started child does). */
  int fd = tessera_client_arena_fd(c);
  CHECK(fd >= 0, "arena fd %d", fd);
  CHECK(tessera_client_arena_base(c) != NULL && tessera_client_arena_size(c) > 0, "arena mapping");
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)getpid(), fd);
  int fd2 = open(path, O_RDWR | O_CLOEXEC);
  CHECK(fd2 >= 0, "open %s: %s", path, strerror(errno));
  if (fd2 >= 0) {
    struct stat a, b2;
    CHECK(fstat(fd, &a) == 0 && fstat(fd2, &b2) == 0 && a.st_ino == b2.st_ino && a.st_dev == b2.st_dev, "same inode");
    CHECK((uint64_t)b2.st_size == tessera_client_arena_size(c), "size %lld", (long long)b2.st_size);
    close(fd2);
  }
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "the arena fd is close-on-exec in the host");

  /* Struct sizes agree with this compiler's. */
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_RESULT) == sizeof(tessera_result_t), "result size");
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_TILE_META) == sizeof(tessera_tile_meta_t), "meta size");
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_CLIENT_OPTIONS) == sizeof(tessera_client_options_t), "options size");
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_POOL_SPEC) == sizeof(tessera_pool_spec_t), "spec size");
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_WORKER_INFO) == sizeof(tessera_worker_info_t), "worker info size");
  CHECK(tessera_client_struct_size(TESSERA_STRUCT_STREAM_STATS) == sizeof(tessera_stream_stats_t), "stats size");
  CHECK(tessera_client_struct_size(999) == 0, "unknown id");

  /* Extended structs that are too small are refused, not over-read. */
  tessera_client_options_ext_t ext;
  tessera_client_options_ext_init(&ext);
  ext.struct_size = 2;
  tessera_client_t* c2 = NULL;
  CHECK(tessera_client_create_ext(NULL, &ext, &c2) == -TESSERA_EINVAL && c2 == NULL, "short ext");
  tessera_client_destroy(c);
}

static void test_batched(void) {
  /* 8 blocks, 25 % left to outputs: 6 for inputs. alloc_n takes what is free at once. */
  tessera_client_t* c = make_client(25, 2, 8);
  if (c == NULL) return;
  tessera_block_info_t few[16];
  int k = tessera_client_alloc_n(c, 768, 16, 1000000000LL, few);
  CHECK(k == 6, "alloc_n with 6 free: %d", k);
  for (int i = 0; i < k; ++i) CHECK(tessera_client_free_block(c, few[i].block) == 0, "free %d", i);
  tessera_client_destroy(c);
  c = make_client(25, 2, 64);
  if (c == NULL) return;
  uint32_t s;
  tessera_stream_options_t so;
  tessera_stream_options_init(&so);
  so.ordering = TESSERA_ORDER_SUBMISSION;
  CHECK(tessera_client_open_stream(c, &so, &s) == 0, "open_stream");
  tessera_block_info_t info[16];
  int n = tessera_client_alloc_n(c, 16 * 16 * 3, 16, 1000000000LL, info);
  CHECK(n == 16, "alloc_n %d", n);
  if (n != 16) return;
  tessera_block_t blocks[16];
  tessera_tile_meta_t metas[16];
  uint64_t seqs[16];
  for (int i = 0; i < 16; ++i) {
    CHECK(info[i].data != NULL && info[i].capacity >= 768, "block %d", i);
    memset(info[i].data, (i % 2) ? 250 : 10, 768);
    blocks[i] = info[i].block;
    tessera_tile_meta_init(&metas[i]);
    metas[i].ndim = 3;
    metas[i].dims[0] = 16; metas[i].dims[1] = 16; metas[i].dims[2] = 3;
    metas[i].x = i;
  }
  /* A forged block in the middle: the first 10 are accepted, the rest stay the caller's. */
  const tessera_block_t keep = blocks[10];
  blocks[10] = 0xdeadbeefULL;
  n = tessera_client_submit_n(c, s, 16, blocks, metas, TESSERA_SUBMIT_BLOCK, 0, seqs);
  CHECK(n == 10, "submit_n accepted %d", n);
  CHECK(tessera_last_error_code() == -TESSERA_EBADHANDLE, "the refusal is recorded: %d", tessera_last_error_code());
  for (int i = 0; i < 10; ++i) CHECK(seqs[i] == (uint64_t)i, "seq %d = %llu", i, (unsigned long long)seqs[i]);
  blocks[10] = keep;
  n = tessera_client_submit_n(c, s, 6, blocks + 10, metas + 10, TESSERA_SUBMIT_BLOCK, 0, seqs + 10);
  CHECK(n == 6, "submit_n rest %d", n);
  CHECK(tessera_client_submit_n(c, s, 1, blocks, metas, TESSERA_SUBMIT_BLOCK, 0, NULL) == -TESSERA_ESTALE,
        "a used-up block is stale");
  tessera_result_t res[16];
  int got = 0;
  for (int i = 0; i < 300 && got < 16; ++i) {
    int k = tessera_client_poll(c, res + got, (size_t)(16 - got), 100000000LL);
    if (k > 0) got += k;
  }
  CHECK(got == 16, "batched: got %d", got);
  tessera_result_id_t ids[17];
  for (int i = 0; i < got; ++i) {
    CHECK(res[i].seq == (uint64_t)i && res[i].outcome == TESSERA_OUTCOME_COMPLETED, "tile %d: %s", i, res[i].error);
    if (res[i].data != NULL) CHECK(((const uint8_t*)res[i].data)[0] == ((i % 2) ? 0 : 255), "mask of %d", i);
    ids[i] = res[i].id;
  }
  ids[got] = ids[0];  /* a duplicate: reported, the others still released */
  CHECK(tessera_client_release_n(c, ids, (size_t)got + 1) == -TESSERA_ESTALE, "release_n reports the stale id");
  CHECK(tessera_client_release_result(c, ids[5]) == -TESSERA_ESTALE, "released by release_n");
  CHECK(tessera_client_release_n(c, NULL, 0) == 0, "empty release_n");
  CHECK(tessera_client_alloc_n(c, 100, 0, 0, info) == -TESSERA_EINVAL, "alloc_n of 0");
  tessera_client_destroy(c);
}

static void test_log(void) {
  CHECK(tessera_set_log_level(99) == -TESSERA_EINVAL, "bad level");
  CHECK(tessera_set_log_sink(on_log, NULL) == 0, "set sink");
  CHECK(tessera_set_log_level(TESSERA_LOG_INFO) == 0, "info");
  tessera_client_t* c = make_client(25, 1, 8);
  tessera_client_destroy(c);
  pthread_mutex_lock(&g_log_mu);
  int started = g_log_info_started;
  g_log_info_started = 0;
  pthread_mutex_unlock(&g_log_mu);
  CHECK(started >= 1, "info records reach the sink: %d", started);
  CHECK(tessera_set_log_level(TESSERA_LOG_ERROR) == 0, "error level");
  c = make_client(25, 1, 8);
  tessera_client_destroy(c);
  pthread_mutex_lock(&g_log_mu);
  started = g_log_info_started;
  pthread_mutex_unlock(&g_log_mu);
  CHECK(started == 0, "info records filtered: %d", started);
  CHECK(tessera_set_log_sink(NULL, NULL) == 0, "back to stderr");
  CHECK(tessera_set_log_level(TESSERA_LOG_INFO) == 0, "info");
}

int main(void) {
  alarm(170); /* never hang a test run */
  signal(SIGPIPE, SIG_IGN);
  if (tessera_client_abi_version() < 2) return 1;
  test_wake();
  test_errors_workers_arena();
  test_batched();
  test_log();
  if (g_failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("c client ffi additions: ok\n");
  return 0;
}
