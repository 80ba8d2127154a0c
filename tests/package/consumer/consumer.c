/* The C ABIs from C, through the installed package: both libraries answer and a
 * client without workers refuses a pool-less submit with a clear error. */
#include <tessera/client.h>
#include <tessera/worker.h>

#include <stdio.h>

int main(void) {
  if (tessera_client_abi_version() <= 0 || tessera_worker_abi_version() <= 0) {
    fprintf(stderr, "no ABI version\n");
    return 1;
  }
  tessera_client_t* c = NULL;
  if (tessera_client_create(NULL, &c) != 0 || c == NULL) {
    fprintf(stderr, "create: %s\n", tessera_last_error());
    return 1;
  }
  tessera_client_destroy(c);
  printf("consumer_c: client ABI %d, worker ABI %d\n", tessera_client_abi_version(), tessera_worker_abi_version());
  return 0;
}
