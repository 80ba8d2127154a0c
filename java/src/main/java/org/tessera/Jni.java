package org.tessera;

import java.io.File;

/**
 * The per-tile calls through plain JNI (libtessera_client_jni.so, java/jni/tessera_jni.c),
 * used when that library sits next to libtessera_client.so; otherwise, or with
 * {@code -Dtessera.jni=false}, the same calls go through JNA. Same arguments, same
 * results: both forward to the C ABI.
 */
final class Jni {
  private Jni() {}

  static final boolean ENABLED = load();

  private static boolean load() {
    if ("false".equals(System.getProperty("tessera.jni"))) return false;
    String so = TesseraNative.LOADED_FROM;  // loads libtessera_client.so first
    File dir = so == null ? null : new File(so).getAbsoluteFile().getParentFile();
    if (dir == null) return false;
    File jni = new File(dir, "libtessera_client_jni.so");
    if (!jni.isFile()) return false;
    try {
      System.load(jni.getPath());
      return abiVersion() == TesseraNative.tessera_client_abi_version();
    } catch (UnsatisfiedLinkError | SecurityException e) {
      return false;
    }
  }

  static native int alloc(long c, long bytes, long timeoutNs, long data, long capacity, long block);
  static native int freeBlock(long c, long block);
  static native int submit(long c, int stream, long block, long meta, int mode, long timeoutNs, long seq);
  static native int poll(long c, long out, long max, long timeoutNs);
  static native int releaseN(long c, long ids, long n);
  static native int abiVersion();
}
