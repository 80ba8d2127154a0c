package org.tessera;

/** Why a tile did not complete (enum tessera_tile_status). */
public enum TileStatus {
  OK, HANDLER_ERROR, BAD_INPUT, STALE_BLOCK, NO_SPACE, CANCELED, WORKER_DIED, DEADLINE, UNSUPPORTED;

  private static final TileStatus[] BY_CODE = values();

  static TileStatus of(int code) {
    return code >= 0 && code < BY_CODE.length ? BY_CODE[code] : HANDLER_ERROR;
  }
}
