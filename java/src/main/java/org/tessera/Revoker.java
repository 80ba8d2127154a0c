package org.tessera;

import java.lang.reflect.Field;
import java.nio.Buffer;
import java.nio.ByteBuffer;

/**
 * Revokes a direct ByteBuffer that views arena memory the binding handed out, once that
 * memory is no longer the caller's (a result released, an input block submitted or freed).
 *
 * <p>Java has no way to unmap part of a shared mapping or to invalidate a ByteBuffer, so
 * the binding keeps the one buffer object it gave out and sets its capacity, limit and
 * position to 0 and its address to 0 (through sun.misc.Unsafe, module jdk.unsupported).
 * Every later access through that buffer then throws IndexOutOfBoundsException or
 * BufferUnderflow/OverflowException instead of reading stale bytes or writing into a
 * block that belongs to someone else. Views the caller derived from it before (slice,
 * duplicate, asXBuffer) are separate objects and are not revoked: derive views only
 * while the owner is open. Where Unsafe is unavailable, {@link #AVAILABLE} is false and
 * the binding does not hand out buffers (the checked accessors still work).
 */
final class Revoker {
  private Revoker() {}

  private static final sun.misc.Unsafe U;
  private static final long CAPACITY, LIMIT, POSITION, MARK, ADDRESS;
  static final boolean AVAILABLE;

  static {
    sun.misc.Unsafe u = null;
    long cap = -1, lim = -1, pos = -1, mark = -1, addr = -1;
    try {
      Field f = sun.misc.Unsafe.class.getDeclaredField("theUnsafe");
      f.setAccessible(true);
      u = (sun.misc.Unsafe) f.get(null);
      cap = u.objectFieldOffset(Buffer.class.getDeclaredField("capacity"));
      lim = u.objectFieldOffset(Buffer.class.getDeclaredField("limit"));
      pos = u.objectFieldOffset(Buffer.class.getDeclaredField("position"));
      mark = u.objectFieldOffset(Buffer.class.getDeclaredField("mark"));
      addr = u.objectFieldOffset(Buffer.class.getDeclaredField("address"));
    } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
      u = null;
    }
    U = u;
    CAPACITY = cap;
    LIMIT = lim;
    POSITION = pos;
    MARK = mark;
    ADDRESS = addr;
    AVAILABLE = u != null;
  }

  /** Makes every later access through {@code b} throw. */
  static void revoke(ByteBuffer b) {
    if (b == null || U == null) return;
    U.putInt(b, LIMIT, 0);
    U.putInt(b, POSITION, 0);
    U.putInt(b, MARK, -1);
    U.putInt(b, CAPACITY, 0);
    U.putLong(b, ADDRESS, 0L);
    U.storeFence();
  }
}
