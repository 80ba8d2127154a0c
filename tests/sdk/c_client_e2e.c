/* The client C ABI end to end, written in C against libtessera_client.so: two
 * example C++ workers (tessera-tissue-worker) started through the external-worker
 * path, ordered masks, a failing tile, bad calls, cancellation, a killed worker,
 * and start_pool when this build has it. Exit 0 = pass, 1 = fail. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

typedef struct { pid_t pid; int stdin_w; } proc_t;

static proc_t spawn(const tessera_external_worker_t* ew) {
  proc_t p = {-1, -1};
  int in[2];
  if (pipe2(in, O_CLOEXEC) != 0) return p;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    if (ew->arena_fd == 3) fcntl(3, F_SETFD, 0);
    else dup2(ew->arena_fd, 3);
    char slot[16];
    snprintf(slot, sizeof slot, "%u", ew->slot);
    setenv("TESSERA_ARENA_FD", "3", 1);
    setenv("TESSERA_SLOT", slot, 1);
    execl(worker_path(), worker_path(), (char*)NULL);
    _exit(127);
  }
  close(in[0]);
  p.pid = pid;
  p.stdin_w = in[1];
  return p;
}

static void fill(void* p, uint8_t v) { memset(p, v, 16 * 16 * 3); }

static int submit(tessera_client_t* c, uint32_t s, uint32_t op, uint8_t v, int32_t x) {
  void* data;
  uint64_t cap;
  tessera_block_t b;
  int rc = tessera_client_alloc(c, 16 * 16 * 3, 5000000000LL, &data, &cap, &b);
  CHECK(rc == 0, "alloc rc=%d", rc);
  if (rc != 0) return rc;
  CHECK(cap >= 768, "capacity %llu", (unsigned long long)cap);
  fill(data, v);
  tessera_tile_meta_t m;
  tessera_tile_meta_init(&m);
  m.dtype = TESSERA_DTYPE_UINT8;
  m.ndim = 3;
  m.dims[0] = 16; m.dims[1] = 16; m.dims[2] = 3;
  m.op = op;
  m.x = x;
  m.tag = (uint64_t)x * 10;
  rc = tessera_client_submit(c, s, b, &m, TESSERA_SUBMIT_BLOCK, 0, NULL);
  CHECK(rc == 0, "submit rc=%d", rc);
  return rc;
}

/* Polls until n results arrived (30 s at most). */
static int collect(tessera_client_t* c, tessera_result_t* out, int n) {
  int got = 0;
  for (int i = 0; i < 3000 && got < n; ++i) {
    int k = tessera_client_poll(c, out + got, (size_t)(n - got), 10000000);
    CHECK(k >= 0, "poll rc=%d", k);
    if (k < 0) break;
    got += k;
  }
  return got;
}

static void test_pipeline(void) {
  tessera_size_class_t classes[2] = {{4096, 512}, {65536, 16}};
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  o.classes = classes;
  o.n_classes = 2;
  o.n_rings = 8;
  o.ring_capacity = 64;
  o.prefault = 0;
  o.worker_window = 16;
  tessera_client_t* c = NULL;
  /* No broker at that path: a clear error, nothing created. */
  int rc = tessera_client_connect("/nonexistent-dir/tessera.sock", NULL, &c);
  CHECK(rc == -TESSERA_EUNAVAILABLE && c == NULL, "connect without a broker rc=%d", rc);
  CHECK(strstr(tessera_last_error(), "no broker") != NULL, "connect error text: %s", tessera_last_error());
  rc = tessera_client_create(&o, &c);
  CHECK(rc == 0 && c != NULL, "create rc=%d", rc);
  if (c == NULL) return;

  proc_t procs[2];
  tessera_external_worker_t ew[2];
  for (int i = 0; i < 2; ++i) {
    rc = tessera_client_add_external_worker(c, "c-test", &ew[i]);
    CHECK(rc == 0, "add_external_worker rc=%d", rc);
    procs[i] = spawn(&ew[i]);
    CHECK(procs[i].pid > 0, "spawn");
    CHECK(tessera_client_set_worker_pid(c, ew[i].index, procs[i].pid) == 0, "set_worker_pid");
  }

  tessera_stream_options_t so;
  tessera_stream_options_init(&so);
  so.ordering = TESSERA_ORDER_SUBMISSION;
  so.max_in_flight = 32;
  uint32_t s;
  CHECK(tessera_client_open_stream(c, &so, &s) == 0, "open_stream");

  /* 200 tiles, alternating dark and bright, in submission order; tile 50 fails (op 3). */
  enum { kTiles = 200 };
  static tessera_result_t res[kTiles];
  int got = 0;
  for (int i = 0; i < kTiles; ++i) {
    submit(c, s, i == 50 ? 3u : 0u, (i % 2) ? 250 : 10, i);
    int k = tessera_client_poll(c, res + got, (size_t)(kTiles - got), 0);
    if (k > 0) got += k;
  }
  got += collect(c, res + got, kTiles - got);
  CHECK(got == kTiles, "got %d of %d", got, kTiles);
  for (int i = 0; i < got; ++i) {
    const tessera_result_t* r = &res[i];
    CHECK(r->seq == (uint64_t)i, "order: result %d has seq %llu", i, (unsigned long long)r->seq);
    CHECK(r->meta.x == i && r->meta.tag == (uint64_t)i * 10, "meta of %d", i);
    if (i == 50) {
      CHECK(r->outcome == TESSERA_OUTCOME_FAILED, "tile 50 outcome %d", r->outcome);
      CHECK(r->status == TESSERA_TILE_HANDLER_ERROR, "tile 50 status %d", r->status);
      CHECK(strstr(r->error, "op 3 always fails") != NULL, "tile 50 error '%s'", r->error);
      CHECK(r->data == NULL, "a failed tile has no data");
    } else {
      CHECK(r->outcome == TESSERA_OUTCOME_COMPLETED, "tile %d outcome %d (%s)", i, r->outcome, r->error);
      CHECK(r->dtype == TESSERA_DTYPE_UINT8 && r->ndim == 2 && r->dims[0] == 16 && r->nbytes == 256, "tile %d shape", i);
      if (r->data != NULL) {
        const uint8_t* m = (const uint8_t*)r->data;
        CHECK(m[0] == ((i % 2) ? 0 : 255), "tile %d mask %u", i, m[0]);
      }
      CHECK(r->error != NULL && r->error[0] == '\0', "no error text on success");
    }
  }
  for (int i = 0; i < got; ++i) CHECK(tessera_client_release_result(c, res[i].id) == 0, "release %d", i);
  CHECK(tessera_client_release_result(c, res[0].id) == -TESSERA_ESTALE, "double release is stale");

  tessera_stream_stats_t st;
  CHECK(tessera_client_stats(c, s, &st) == 0, "stats");
  CHECK(st.completed == kTiles - 1 && st.failed == 1, "stats completed=%llu failed=%llu",
        (unsigned long long)st.completed, (unsigned long long)st.failed);

  /* Bad calls get clear errors at the call. */
  void* data;
  uint64_t cap;
  tessera_block_t b;
  CHECK(tessera_client_alloc(c, 100, 1000000000LL, &data, &cap, &b) == 0, "alloc");
  tessera_tile_meta_t m;
  tessera_tile_meta_init(&m);
  m.ndim = 1;
  m.dims[0] = 1000000;
  CHECK(tessera_client_submit(c, s, b, &m, TESSERA_SUBMIT_BLOCK, 0, NULL) == -TESSERA_EINVAL, "oversized shape");
  CHECK(strstr(tessera_last_error(), "bytes") != NULL, "message names the size: %s", tessera_last_error());
  m.dims[0] = 4;
  CHECK(tessera_client_submit(c, 99, b, &m, TESSERA_SUBMIT_BLOCK, 0, NULL) == -TESSERA_ECLOSED, "closed stream");
  CHECK(tessera_client_submit(c, s, 0xdeadbeefULL, &m, TESSERA_SUBMIT_BLOCK, 0, NULL) == -TESSERA_EBADHANDLE, "forged block");
  CHECK(tessera_client_submit(c, s, res[3].id, &m, TESSERA_SUBMIT_BLOCK, 0, NULL) == -TESSERA_EBADHANDLE, "result id as block");
  CHECK(tessera_client_free_block(c, b) == 0, "free_block");
  CHECK(tessera_client_free_block(c, b) == -TESSERA_ESTALE, "double free");
  CHECK(tessera_client_alloc(c, 1ULL << 32, 1000000LL, &data, &cap, &b) == -TESSERA_EINVAL, "oversized alloc");
  CHECK(tessera_client_poll(c, NULL, 4, 0) == -TESSERA_EINVAL, "poll without room");
  CHECK(tessera_client_submit(NULL, s, b, &m, 0, 0, NULL) == -TESSERA_EINVAL, "null client");

  /* A new epoch cancels older tiles; none is delivered as current. */
  for (int i = 0; i < 10; ++i) submit(c, s, 4, 10, 1000 + i); /* op 4 is slow */
  uint32_t epoch = 0;
  CHECK(tessera_client_advance_epoch(c, s, &epoch) == 0 && epoch > 0, "advance_epoch");
  submit(c, s, 0, 10, 2000);
  got = collect(c, res, 11);
  CHECK(got == 11, "epoch: got %d", got);
  for (int i = 0; i < got; ++i) {
    if (res[i].epoch < epoch) CHECK(res[i].outcome == TESSERA_OUTCOME_CANCELED, "old epoch delivered as %d", res[i].outcome);
    else CHECK(res[i].outcome == TESSERA_OUTCOME_COMPLETED, "new epoch tile %d", res[i].outcome);
    tessera_client_release_result(c, res[i].id);
  }

  /* kill -9 of a worker: every tile still gets exactly one outcome. */
  for (int i = 0; i < 20; ++i) submit(c, s, 0, 10, 3000 + i);
  kill(procs[0].pid, SIGKILL);
  int wst;
  waitpid(procs[0].pid, &wst, 0);
  procs[0].pid = -1;
  CHECK(tessera_client_worker_died(c, ew[0].index, "killed by signal 9") == 0, "worker_died");
  got = collect(c, res, 20);
  CHECK(got == 20, "after kill: got %d", got);
  for (int i = 0; i < got; ++i) {
    CHECK(res[i].seq == res[0].seq + (uint64_t)i, "after kill: order");
    CHECK(res[i].outcome == TESSERA_OUTCOME_COMPLETED, "after kill: tile retried on the other worker (%s)", res[i].error);
    tessera_client_release_result(c, res[i].id);
  }
  CHECK(tessera_client_in_flight(c) == 0, "in flight %llu", (unsigned long long)tessera_client_in_flight(c));
  CHECK(tessera_client_close_stream(c, s) == 0, "close_stream");

  /* Clean stop: stdin EOF -> exit 0. */
  close(procs[1].stdin_w);
  waitpid(procs[1].pid, &wst, 0);
  CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "worker exit status %d", wst);
  close(procs[0].stdin_w);
  tessera_client_destroy(c);
}

static void test_start_pool(void) {
  tessera_client_t* c = NULL;
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  tessera_size_class_t classes[1] = {{4096, 256}};
  o.classes = classes;
  o.n_classes = 1;
  o.n_rings = 8;
  o.ring_capacity = 64;
  o.prefault = 0;
  CHECK(tessera_client_create(&o, &c) == 0, "create");
  if (c == NULL) return;
  const char* argv[] = {worker_path(), "--threshold", "100"};
  const char* env[] = {"TESSERA_C_TEST", "1"};
  tessera_pool_spec_t spec;
  tessera_pool_spec_init(&spec);
  spec.argv = argv;
  spec.argc = 3;
  spec.count = 2;
  spec.env = env;
  spec.n_env = 2;
  spec.ready_timeout_ms = 20000;
  int rc = tessera_client_start_pool(c, &spec);
  if (rc == -TESSERA_EUNAVAILABLE && strstr(tessera_last_error(), "no worker pool") != NULL) {
    printf("start_pool: not in this build (%s)\n", tessera_last_error());
    tessera_client_destroy(c);
    return;
  }
  CHECK(rc == 0, "start_pool rc=%d", rc);
  uint32_t s;
  CHECK(tessera_client_open_stream(c, NULL, &s) == 0, "open_stream");
  for (int i = 0; i < 20; ++i) submit(c, s, 0, (i % 2) ? 250 : 10, i);
  tessera_result_t res[20];
  int got = collect(c, res, 20);
  CHECK(got == 20, "pool: got %d", got);
  for (int i = 0; i < got; ++i) {
    CHECK(res[i].outcome == TESSERA_OUTCOME_COMPLETED, "pool tile: %s", res[i].error);
    tessera_client_release_result(c, res[i].id);
  }
  tessera_client_destroy(c);
}

/* One worker per device: bad device lists are rejected at the call, a good one starts
 * one worker per entry whatever count says, and its tiles complete. */
static void test_start_pool_on_devices(void) {
  tessera_client_t* c = NULL;
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  tessera_size_class_t classes[1] = {{4096, 256}};
  o.classes = classes;
  o.n_classes = 1;
  o.n_rings = 8;
  o.ring_capacity = 64;
  o.prefault = 0;
  CHECK(tessera_client_create(&o, &c) == 0, "create");
  if (c == NULL) return;
  const char* argv[] = {worker_path(), "--threshold", "100"};
  tessera_pool_spec_t spec;
  tessera_pool_spec_init(&spec);
  spec.argv = argv;
  spec.argc = 3;
  spec.count = 5; /* ignored: one worker per device */
  spec.ready_timeout_ms = 20000;
  const char* bad[] = {"0", NULL};
  CHECK(tessera_client_start_pool_on_devices(c, &spec, bad, 0) == -TESSERA_EINVAL, "no devices must be EINVAL");
  CHECK(tessera_client_start_pool_on_devices(c, &spec, bad, 2) == -TESSERA_EINVAL, "NULL device must be EINVAL");
  const char* devs[] = {"0", "1"};
  int rc = tessera_client_start_pool_on_devices(c, &spec, devs, 2);
  if (rc == -TESSERA_EUNAVAILABLE && strstr(tessera_last_error(), "no worker pool") != NULL) {
    tessera_client_destroy(c);
    return;
  }
  CHECK(rc == 0, "start_pool_on_devices rc=%d: %s", rc, tessera_last_error());
  uint32_t s;
  CHECK(tessera_client_open_stream(c, NULL, &s) == 0, "open_stream");
  for (int i = 0; i < 10; ++i) submit(c, s, 0, 10, i);
  tessera_result_t res[10];
  int got = collect(c, res, 10);
  CHECK(got == 10, "devices pool: got %d", got);
  for (int i = 0; i < got; ++i) {
    CHECK(res[i].outcome == TESSERA_OUTCOME_COMPLETED, "devices pool tile: %s", res[i].error);
    tessera_client_release_result(c, res[i].id);
  }
  tessera_client_destroy(c);
}

int main(void) {
  alarm(170); /* never hang a test run */
  signal(SIGPIPE, SIG_IGN);
  if (tessera_client_abi_version() != TESSERA_CLIENT_ABI_VERSION) return 1;
  test_pipeline();
  test_start_pool();
  test_start_pool_on_devices();
  if (g_failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("c client abi: ok\n");
  return 0;
}
