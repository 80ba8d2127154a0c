package org.tessera;

/** The per-tile calls: JNI when available ({@link Jni}), JNA otherwise. The JIT folds the branch. */
final class Hot {
  private Hot() {}

  static final boolean JNI = Jni.ENABLED;

  static int alloc(long c, long bytes, long timeoutNs, long data, long capacity, long block) {
    return JNI ? Jni.alloc(c, bytes, timeoutNs, data, capacity, block)
               : TesseraNative.tessera_client_alloc(c, bytes, timeoutNs, data, capacity, block);
  }

  static int freeBlock(long c, long block) {
    return JNI ? Jni.freeBlock(c, block) : TesseraNative.tessera_client_free_block(c, block);
  }

  static int submit(long c, int stream, long block, long meta, int mode, long timeoutNs, long seq) {
    return JNI ? Jni.submit(c, stream, block, meta, mode, timeoutNs, seq)
               : TesseraNative.tessera_client_submit(c, stream, block, meta, mode, timeoutNs, seq);
  }

  static int poll(long c, long out, long max, long timeoutNs) {
    return JNI ? Jni.poll(c, out, max, timeoutNs) : TesseraNative.tessera_client_poll(c, out, max, timeoutNs);
  }

  static int releaseN(long c, long ids, long n) {
    return JNI ? Jni.releaseN(c, ids, n) : TesseraNative.tessera_client_release_n(c, ids, n);
  }
}
