package org.tessera;

import static org.tessera.TesseraNative.*;

import java.nio.ByteBuffer;

/** A stream of tiles: a priority, an ordering, a backpressure bound, epochs. */
public final class Stream implements AutoCloseable {
  private final Client client;
  private final int id;
  private boolean closed;

  Stream(Client client, int id) {
    this.client = client;
    this.id = id;
  }

  public int id() {
    return id;
  }

  /** Submits a filled block, waiting (up to 30 s) while the stream is full. Returns the tile's sequence number. */
  public long submit(InputBlock block, TileMeta meta) {
    return submit(block, meta, SubmitMode.BLOCK, 0);
  }

  /**
   * Submits a filled block; the block (and its buffer) is used up on success and still the
   * caller's on failure. Returns the tile's sequence number in this stream.
   */
  public long submit(InputBlock block, TileMeta meta, SubmitMode mode, long timeoutNanos) {
    long h = client.enter();
    try {
      long b = block.handleForSubmit();
      long metaAddr = client.metaAddr(meta);
      long seqAddr = client.ioAddr() + 24;
      // Fast path: FAIL_FAST never waits; only a full stream falls through to the blocking call.
      int rc = Hot.submit(h, id, b, metaAddr, SubmitMode.FAIL_FAST.ordinal(), timeoutNanos, seqAddr);
      if (rc == -TesseraException.ENOSPC && mode != SubmitMode.FAIL_FAST) {
        final long budget = timeoutNanos > 0 ? timeoutNanos : 30_000_000_000L;
        final long deadline = System.nanoTime() + budget;
        for (long left = budget;;) {
          Client.Interruptor ch = client.beginBlocking();
          try {
            rc = Hot.submit(h, id, b, metaAddr, mode.ordinal(), left, seqAddr);
          } finally {
            client.endBlocking(ch, rc == -TesseraException.ECANCELED, "submit");
          }
          if (rc != -TesseraException.ECANCELED) break;
          left = deadline - System.nanoTime();
          if (left <= 0) throw new TesseraException(TesseraException.ETIMEDOUT, "submit: stream stayed full for the whole timeout");
        }
      }
      if (rc < 0) throw TesseraException.fromLastError(rc);
      block.markUsed();
      return client.io().getLong(24);
    } finally {
      client.exit();
    }
  }

  /**
   * Submits {@code blocks[0..n)} with {@code metas[0..n)} in order with one foreign call
   * (BLOCK mode). Returns how many were accepted; those blocks are used up, the rest are
   * still the caller's. Throws if none was accepted.
   */
  public int submit(InputBlock[] blocks, TileMeta[] metas, int n) {
    if (n <= 0 || n > blocks.length || n > metas.length) throw new IllegalArgumentException("submit: n out of range");
    long h = client.enter();
    try {
      client.ensureBatch(n);
      ByteBuffer b = client.batch();
      int max = client.batchMax();
      int metaOff = 8 * max, seqOff = metaOff + SIZEOF_TILE_META * max;
      for (int i = 0; i < n; ++i) {
        b.putLong(8 * i, blocks[i].handleForSubmit());
        Client.writeMeta(b, metaOff + SIZEOF_TILE_META * i, metas[i]);
      }
      long a = client.batchAddr();
      int rc = 0;
      Client.Interruptor ch = client.beginBlocking();
      try {
        rc = tessera_client_submit_n(h, id, n, a, a + metaOff, SubmitMode.BLOCK.ordinal(), 0, a + seqOff);
      } finally {
        client.endBlocking(ch, rc == -TesseraException.ECANCELED, "submit");
      }
      if (rc < 0) throw TesseraException.fromLastError(rc);
      for (int i = 0; i < rc; ++i) blocks[i].markUsed();
      return rc;
    } finally {
      client.exit();
    }
  }

  /** Cancels one tile (its outcome is delivered as canceled). */
  public void cancel(long seq) {
    long h = client.enter();
    try {
      Client.check(tessera_client_cancel(h, id, seq));
    } finally {
      client.exit();
    }
  }

  /** Cancels everything queued or running in the stream. */
  public void cancelAll() {
    long h = client.enter();
    try {
      Client.check(tessera_client_cancel_stream(h, id));
    } finally {
      client.exit();
    }
  }

  /** Starts a new viewport epoch (older tiles are canceled); returns it. */
  public int advanceEpoch() {
    long h = client.enter();
    try {
      Client.check(tessera_client_advance_epoch(h, id, client.ioAddr() + 32));
      return client.io().getInt(32);
    } finally {
      client.exit();
    }
  }

  public StreamStats stats() {
    long h = client.enter();
    try {
      ByteBuffer b = ByteBuffer.allocateDirect(SIZEOF_STREAM_STATS).order(java.nio.ByteOrder.nativeOrder());
      Client.check(tessera_client_stats(h, id, com.sun.jna.Pointer.nativeValue(com.sun.jna.Native.getDirectBufferPointer(b))));
      return new StreamStats(b.getLong(0), b.getLong(8), b.getLong(16), b.getLong(24), b.getLong(32), b.getLong(40),
          b.getLong(48), b.getDouble(56), b.getDouble(64));
    } finally {
      client.exit();
    }
  }

  /** Cancels what is in flight and closes the stream. Idempotent. */
  @Override
  public void close() {
    if (closed || client.isClosed()) return;
    closed = true;
    long h = client.enter();
    try {
      Client.check(tessera_client_close_stream(h, id));
    } finally {
      client.exit();
    }
  }
}
