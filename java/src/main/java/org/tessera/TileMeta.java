package org.tessera;

/** What a tile is (tessera_tile_meta_t): dtype, shape, position, handler op, a tag returned with the result. */
public final class TileMeta {
  public DType dtype = DType.UINT8;
  public int[] dims = new int[0];    // 1..4 dimensions
  public int level;                  // slide pyramid level, 0..255
  public int x, y;
  public int op;                     // handler selector, opaque to Tessera
  public long tag;                   // returned with the result
  public long deadlineNanos;         // 0: the stream's deadline

  public TileMeta() {}

  public TileMeta(DType dtype, int... dims) {
    this.dtype = dtype;
    this.dims = dims.clone();
  }

  /** An 8-bit RGB tile of height x width pixels. */
  public static TileMeta rgb8(int height, int width) {
    return new TileMeta(DType.UINT8, height, width, 3);
  }

  public TileMeta at(int level, int x, int y) {
    this.level = level;
    this.x = x;
    this.y = y;
    return this;
  }

  public TileMeta op(int op) {
    this.op = op;
    return this;
  }

  public TileMeta tag(long tag) {
    this.tag = tag;
    return this;
  }

  /** Bytes the tile's data takes. */
  public long nbytes() {
    long n = dtype.size();
    for (int d : dims) n *= d;
    return n;
  }
}
