/* Both C ABI headers compile as C11 (with -pedantic -Werror) in one translation unit. */
#include <tessera/client.h>
#include <tessera/worker.h>
#include <tessera/client.h>

int main(void) {
  tessera_tile_info_t info = {0};
  tessera_result_t res = {0};
  tessera_tile_meta_t meta;
  tessera_tile_meta_init(&meta);
  return (int)(info.seq + res.seq) + (tessera_strerror(-TESSERA_ESTALE)[0] == 's' ? 0 : 1) +
         (meta.dtype == TESSERA_DTYPE_UINT8 ? 0 : 1) + (tessera_dtype_size(TESSERA_DTYPE_FLOAT32) == 4 ? 0 : 1);
}
