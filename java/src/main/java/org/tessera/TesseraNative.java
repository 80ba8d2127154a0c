package org.tessera;

import com.sun.jna.Callback;
import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Pointer;

import java.io.File;
import java.net.URISyntaxException;
import java.util.ArrayList;
import java.util.List;

/**
 * The C ABI of libtessera_client.so (tessera/client.h), bound with JNA direct mapping:
 * every pointer is passed as a {@code long} address and every struct is read at fixed
 * offsets from a direct ByteBuffer, so no call reflects over a Structure. Offsets are
 * checked once against {@code tessera_client_struct_size} when the library loads.
 */
final class TesseraNative {
  private TesseraNative() {}

  static final int ABI_VERSION = 2;
  static final String LIBRARY_FILE = "libtessera_client.so";

  // Struct sizes this binding was written for (tessera/client.h, LP64).
  static final int SIZEOF_CLIENT_OPTIONS = 48;
  static final int SIZEOF_POOL_SPEC = 72;
  static final int SIZEOF_STREAM_OPTIONS = 24;
  static final int SIZEOF_TILE_META = 56;
  static final int SIZEOF_RESULT = 160;
  static final int SIZEOF_STREAM_STATS = 72;
  static final int SIZEOF_WORKER_INFO = 48;
  static final int SIZEOF_CLIENT_OPTIONS_EXT = 8;
  static final int SIZEOF_POOL_SPEC_EXT = 16;

  /** Where the library was loaded from (for messages). */
  static final String LOADED_FROM;

  static {
    NativeLibrary lib = load();
    Native.register(TesseraNative.class, lib);
    LOADED_FROM = lib.getFile() != null ? lib.getFile().getPath() : lib.getName();
    int abi = tessera_client_abi_version();
    if (abi < ABI_VERSION)
      throw new UnsatisfiedLinkError(LOADED_FROM + " has client ABI version " + abi + "; this binding needs " + ABI_VERSION);
    int[][] sizes = {
      {1, SIZEOF_CLIENT_OPTIONS}, {2, SIZEOF_POOL_SPEC}, {3, SIZEOF_STREAM_OPTIONS}, {4, SIZEOF_TILE_META},
      {5, SIZEOF_RESULT}, {6, SIZEOF_STREAM_STATS}, {7, SIZEOF_WORKER_INFO}, {8, SIZEOF_CLIENT_OPTIONS_EXT},
      {9, SIZEOF_POOL_SPEC_EXT}};
    for (int[] s : sizes) {
      long got = tessera_client_struct_size(s[0]);
      if (got != s[1])
        throw new UnsatisfiedLinkError(LOADED_FROM + ": struct " + s[0] + " is " + got + " bytes, this binding expects " + s[1]);
    }
  }

  /**
   * Finds libtessera_client.so: the system property {@code tessera.library} (a file), then
   * next to this jar (and ../lib from it), then JNA's search (jna.library.path,
   * LD_LIBRARY_PATH, the system paths).
   */
  private static NativeLibrary load() {
    List<String> tried = new ArrayList<>();
    String explicit = System.getProperty("tessera.library");
    if (explicit != null && !explicit.isEmpty()) {
      File f = new File(explicit);
      if (!f.isFile()) throw new UnsatisfiedLinkError("tessera.library=" + explicit + " is not a file");
      return NativeLibrary.getInstance(f.getAbsolutePath());
    }
    File jarDir = jarDirectory();
    if (jarDir != null) {
      for (File f : new File[] {new File(jarDir, LIBRARY_FILE), new File(new File(jarDir.getParentFile(), "lib"), LIBRARY_FILE)}) {
        tried.add(f.getPath());
        if (f.isFile()) return NativeLibrary.getInstance(f.getAbsolutePath());
      }
    }
    try {
      return NativeLibrary.getInstance("tessera_client");
    } catch (UnsatisfiedLinkError e) {
      throw new UnsatisfiedLinkError("Tessera: " + LIBRARY_FILE + " not found. Looked next to the jar (" + String.join(", ", tried)
          + "), then on jna.library.path=" + System.getProperty("jna.library.path") + " and LD_LIBRARY_PATH="
          + System.getenv("LD_LIBRARY_PATH") + ". Set -Dtessera.library=/path/to/" + LIBRARY_FILE
          + " or -Djna.library.path=DIR. (" + e.getMessage() + ")");
    }
  }

  private static File jarDirectory() {
    try {
      var src = TesseraNative.class.getProtectionDomain().getCodeSource();
      if (src == null || src.getLocation() == null) return null;
      File f = new File(src.getLocation().toURI());
      return f.isFile() ? f.getParentFile() : f;
    } catch (URISyntaxException | SecurityException | IllegalArgumentException e) {
      return null;
    }
  }

  interface LogCallback extends Callback {
    void invoke(Pointer user, int level, String message);
  }

  static native int tessera_client_abi_version();
  static native long tessera_client_struct_size(int id);
  static native Pointer tessera_last_error();
  static native int tessera_last_error_code();
  static native String tessera_strerror(int code);

  static native void tessera_client_options_init(long opts);
  static native void tessera_pool_spec_init(long spec);
  static native void tessera_stream_options_init(long opts);
  static native void tessera_tile_meta_init(long meta);
  static native void tessera_client_options_ext_init(long ext);
  static native void tessera_pool_spec_ext_init(long ext);

  static native int tessera_client_create_ext(long opts, long ext, long out);
  static native int tessera_client_connect_ext(String socketPath, long opts, long ext, long out);
  static native void tessera_client_destroy(long c);
  static native int tessera_client_start_pool_ext(long c, long spec, long ext);
  static native int tessera_client_kill_worker(long c, int index);
  static native int tessera_client_workers(long c, long out, long max);
  static native int tessera_client_arena_fd(long c);
  static native long tessera_client_arena_base(long c);
  static native long tessera_client_arena_size(long c);

  static native int tessera_client_open_stream(long c, long opts, long stream);
  static native int tessera_client_close_stream(long c, int stream);

  static native int tessera_client_alloc(long c, long bytes, long timeoutNs, long data, long capacity, long block);
  static native int tessera_client_free_block(long c, long block);
  static native int tessera_client_submit(long c, int stream, long block, long meta, int mode, long timeoutNs, long seq);
  static native int tessera_client_poll(long c, long out, long max, long timeoutNs);
  static native int tessera_client_release_result(long c, long id);
  static native long tessera_client_in_flight(long c);

  static native int tessera_client_cancel(long c, int stream, long seq);
  static native int tessera_client_cancel_stream(long c, int stream);
  static native int tessera_client_advance_epoch(long c, int stream, long epoch);
  static native int tessera_client_stats(long c, int stream, long out);

  static native int tessera_client_alloc_n(long c, long bytes, int n, long timeoutNs, long out);
  static native int tessera_client_submit_n(long c, int stream, int n, long blocks, long metas, int mode, long timeoutNs,
                                            long seqs);
  static native int tessera_client_release_n(long c, long ids, long n);

  static native int tessera_client_wake(long c);
  static native int tessera_client_last_error(long c, long buf, long cap, long code);
  static native int tessera_set_log_sink(LogCallback fn, Pointer user);
  static native int tessera_set_log_level(int level);
}
