/* Cost of starting a child (exec of /bin/true) from a host of a given resident size:
 * fork + exec (what the supervisor did) against clone(CLONE_VM | CLONE_VFORK) + exec
 * (what it does now, like posix_spawn) and posix_spawn itself. Prints one line per RSS.
 *   spawn_rss [MiB ...]   (default: 50 2048) */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;
static char* const k_argv[] = {"/bin/true", NULL};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int child(void* arg) {
  (void)arg;
  execve(k_argv[0], k_argv, environ);
  _exit(127);
}

static double run(int how) {
  const double t0 = now_ms();
  pid_t pid = -1;
  if (how == 0) {
    pid = fork();
    if (pid == 0) {
      execve(k_argv[0], k_argv, environ);
      _exit(127);
    }
  } else if (how == 1) {
    enum { kStack = 64 * 1024 };
    void* stack = mmap(NULL, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    pid = clone(child, (char*)stack + kStack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
    munmap(stack, kStack);
  } else {
    posix_spawn(&pid, k_argv[0], NULL, NULL, k_argv, environ);
  }
  const double started = now_ms() - t0;  /* the host is free again */
  int st;
  waitpid(pid, &st, 0);
  return started;
}

static int cmp(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  long sizes[8] = {50, 2048};
  int n = 2;
  if (argc > 1) {
    n = 0;
    for (int i = 1; i < argc && n < 8; ++i) sizes[n++] = atol(argv[i]);
  }
  const char* names[3] = {"fork+exec", "clone(VM|VFORK)+exec", "posix_spawn"};
  for (int s = 0; s < n; ++s) {
    const size_t bytes = (size_t)sizes[s] << 20;
    char* mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    memset(mem, 1, bytes); /* resident */
    printf("host RSS %5ld MiB:", sizes[s]);
    for (int how = 0; how < 3; ++how) {
      enum { kReps = 15 };
      double t[kReps];
      for (int r = 0; r < kReps; ++r) t[r] = run(how);
      qsort(t, kReps, sizeof t[0], cmp);
      printf("  %s p50 %.3f ms (min %.3f, max %.3f)", names[how], t[kReps / 2], t[0], t[kReps - 1]);
    }
    printf("\n");
    munmap(mem, bytes);
  }
  return 0;
}
