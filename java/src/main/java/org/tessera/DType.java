package org.tessera;

/** Element types (enum tessera_dtype). */
public enum DType {
  INVALID(0, 0), UINT8(1, 1), INT8(2, 1), UINT16(3, 2), INT16(4, 2), UINT32(5, 4), INT32(6, 4), UINT64(7, 8),
  INT64(8, 8), FLOAT16(9, 2), FLOAT32(10, 4), FLOAT64(11, 8), BOOL(12, 1);

  private final int code, size;
  private static final DType[] BY_CODE = values();

  DType(int code, int size) {
    this.code = code;
    this.size = size;
  }

  public int code() {
    return code;
  }

  /** Bytes per element. */
  public int size() {
    return size;
  }

  static DType of(int code) {
    return code >= 0 && code < BY_CODE.length ? BY_CODE[code] : INVALID;
  }
}
