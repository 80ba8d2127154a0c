package org.tessera;

import java.nio.ByteBuffer;

/**
 * An arena block being filled before submit ({@link Client#alloc}). {@link #buffer()} is a
 * direct, writable ByteBuffer over the block itself (no copy; native byte order). Once the
 * block is submitted or closed the buffer is revoked (see {@link #buffer()}): a late write
 * throws instead of landing in a block that is no longer the caller's. Close a block that
 * will not be submitted to free it.
 */
public final class InputBlock extends Owned implements AutoCloseable {
  private final Client client;
  private long handle;             // 0: submitted, freed or revoked
  private final long address;
  private final long capacity;
  private ByteBuffer buffer;

  InputBlock(Client client, long handle, long address, long capacity) {
    this.client = client;
    this.handle = handle;
    this.address = address;
    this.capacity = capacity;
  }

  /**
   * The block's memory, writable, {@link #capacity()} bytes, native order. Revoked
   * (capacity 0: every access throws) when the block is submitted or closed; views derived
   * from it (slice, duplicate, asXBuffer) are not revoked, so derive them only while
   * filling.
   */
  public ByteBuffer buffer() {
    if (handle == 0) throw stale();
    if (buffer == null) {
      if (!Revoker.AVAILABLE)
        throw new UnsupportedOperationException("revocable buffers need sun.misc.Unsafe (module jdk.unsupported)");
      buffer = client.view(address, capacity);
    }
    return buffer;
  }

  /** Usable bytes (the block class's size, at least what was asked for). */
  public long capacity() {
    return capacity;
  }

  /** The arena address of the block (for native code that fills it). */
  public long address() {
    if (handle == 0) throw stale();
    return address;
  }

  public boolean isOpen() {
    return handle != 0;
  }

  /** Frees the block if it was not submitted (idempotent). */
  @Override
  public void close() {
    if (handle == 0) return;
    long h = client.enter();
    try {
      long b = handle;
      markUsed();
      Client.check(Hot.freeBlock(h, b));
    } finally {
      client.exit();
    }
  }

  long handleForSubmit() {
    if (handle == 0) throw stale();
    return handle;
  }

  /** The tile owns the block now (or it was freed): revoke the buffer. */
  void markUsed() {
    handle = 0;
    Revoker.revoke(buffer);
    buffer = null;
    client.unlink(this);
  }

  @Override
  void invalidate() {
    handle = 0;
    Revoker.revoke(buffer);
    buffer = null;
  }

  private static TesseraException stale() {
    return new TesseraException(TesseraException.ESTALE, "input block already submitted, freed, or its client closed");
  }
}
