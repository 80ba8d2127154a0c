package org.tessera;

import com.sun.jna.Pointer;

import java.nio.ByteBuffer;

/**
 * One delivered outcome. A completed tile's output stays in the arena (zero copy) until
 * {@link #close()}: {@link #buffer()} is a read-only direct ByteBuffer over it, revoked at
 * close (and when the client closes), so a late read throws instead of returning bytes of
 * a block that has been reused. The checked accessors ({@link #get(int)},
 * {@link #copyTo(byte[])}) throw after close too.
 */
public final class TileResult extends Owned implements AutoCloseable {
  private final Client client;
  private long id;                 // 0: released
  private final int stream, epoch;
  private final long seq;
  private final Outcome outcome;
  private final TileStatus status;
  private final String error;
  private final long data, nbytes;
  private final DType dtype;
  private final int[] dims;
  private final int x, y, level, op, worker;
  private final long tag;
  private final double latencyMicros;
  private ByteBuffer buffer;

  TileResult(Client client, ByteBuffer r, int o) {
    this.client = client;
    id = r.getLong(o);
    stream = r.getInt(o + 8);
    epoch = r.getInt(o + 12);
    seq = r.getLong(o + 16);
    outcome = Outcome.of(r.getInt(o + 24));
    status = TileStatus.of(r.getInt(o + 28));
    long err = r.getLong(o + 32);
    // the error text is copied only for outcomes that carry one
    error = outcome == Outcome.COMPLETED || err == 0 ? "" : new Pointer(err).getString(0, "UTF-8");
    data = r.getLong(o + 40);
    nbytes = r.getLong(o + 48);
    dtype = DType.of(r.getInt(o + 56));
    int nd = Math.min(4, r.getInt(o + 60));
    dims = new int[nd];
    for (int i = 0; i < nd; ++i) dims[i] = r.getInt(o + 64 + 4 * i);
    final int m = o + 88;  // tessera_tile_meta_t meta
    level = r.getInt(m + 24);
    x = r.getInt(m + 28);
    y = r.getInt(m + 32);
    op = r.getInt(m + 36);
    tag = r.getLong(m + 40);
    worker = r.getInt(o + 144);
    latencyMicros = r.getDouble(o + 152);
  }

  public Outcome outcome() { return outcome; }
  public boolean completed() { return outcome == Outcome.COMPLETED; }
  public TileStatus status() { return status; }
  /** Why, for failed/canceled outcomes; "" otherwise. */
  public String error() { return error; }
  public int stream() { return stream; }
  public int epoch() { return epoch; }
  public long seq() { return seq; }
  public long tag() { return tag; }
  public int x() { return x; }
  public int y() { return y; }
  public int level() { return level; }
  public int op() { return op; }
  /** Index of the worker that answered, -1 for none. */
  public int worker() { return worker; }
  public double latencyMicros() { return latencyMicros; }
  public DType dtype() { return dtype; }
  public int[] dims() { return dims.clone(); }
  /** Output bytes (0 unless completed). */
  public long nbytes() { return nbytes; }
  public boolean isOpen() { return id != 0; }

  /**
   * The output, read-only, native order, in place. Revoked by {@link #close()}: every later
   * access through this buffer throws. Views derived from it are not revoked.
   */
  public ByteBuffer buffer() {
    checkOpen();
    if (data == 0) throw new TesseraException(TesseraException.EINVAL, "tile " + seq + " has no output (" + outcome + ": " + error + ")");
    if (buffer == null) {
      if (!Revoker.AVAILABLE)
        throw new UnsupportedOperationException("revocable buffers need sun.misc.Unsafe (module jdk.unsupported); use copyTo/get");
      buffer = client.view(data, nbytes).asReadOnlyBuffer().order(java.nio.ByteOrder.nativeOrder());
    }
    return buffer;
  }

  /** Byte {@code i} of the output (checked against release and bounds). */
  public byte get(int i) {
    checkOpen();
    if (i < 0 || i >= nbytes) throw new IndexOutOfBoundsException("byte " + i + " of " + nbytes);
    return client.view(data, nbytes).get(i);
  }

  /** Copies the output into {@code dst} (at least {@link #nbytes()} long); returns the count. */
  public int copyTo(byte[] dst) {
    checkOpen();
    if (data == 0) return 0;
    int n = (int) nbytes;
    if (dst.length < n) throw new IndexOutOfBoundsException("destination holds " + dst.length + " of " + n + " bytes");
    client.view(data, nbytes).get(0, dst, 0, n);
    return n;
  }

  /**
   * Releases the output block; the buffer is revoked at once. Idempotent. The native release
   * is batched with other closed results (one foreign call per poll, not per tile); the
   * client flushes the batch before it polls or waits for a block.
   */
  @Override
  public void close() {
    if (id == 0) return;
    long h = client.enter();
    try {
      long r = id;
      id = 0;
      Revoker.revoke(buffer);
      buffer = null;
      client.unlink(this);
      client.deferRelease(h, r);  // released natively with others at the next poll
    } finally {
      client.exit();
    }
  }

  @Override
  void invalidate() {
    id = 0;
    Revoker.revoke(buffer);
    buffer = null;
  }

  private void checkOpen() {
    if (id == 0) throw new TesseraException(TesseraException.ESTALE, "result of tile " + seq + " already released (or its client closed)");
  }
}
