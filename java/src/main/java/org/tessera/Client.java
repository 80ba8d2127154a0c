package org.tessera;

import static org.tessera.TesseraNative.*;

import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import com.sun.jna.StringArray;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ClosedByInterruptException;
import java.nio.channels.spi.AbstractInterruptibleChannel;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

/**
 * A Tessera client (tessera_client_t): an embedded broker with its own arena and worker
 * pool, or a connection to a running {@code tessera-broker --listen}.
 *
 * <p>Threading: like the C ABI, a client's data path (alloc, submit, poll, results,
 * input blocks, streams) is used from one thread at a time, and the buffers it hands out
 * are read on that thread. {@link #wake()} and {@link #close()} may be called from any
 * thread: close wakes a blocking call, waits for it to return, then frees the client.
 * A blocking call is also ended by {@link Thread#interrupt()} of its thread, which throws
 * {@link TesseraInterruptedException}.
 */
public final class Client implements AutoCloseable {
  /** Creation options; a field left at its "unset" value (-1 / null) keeps the library default. */
  public static final class Options {
    public long[] blockSizes;          // size classes: block bytes (null: 64 KiB .. 4 MiB defaults)
    public int[] blockCounts;          // size classes: blocks per class
    public int rings = -1;             // 2 per worker
    public int ringCapacity = -1;      // power of two
    public Boolean prefault;           // touch every arena page at creation
    public int spinNanos = -1;         // spin before sleeping when waiting
    public Boolean sleep;              // false: spin until deadlines (benchmarks)
    public int maxInFlight = -1;       // tiles submitted and not yet delivered, all streams
    public int workerWindow = -1;      // tiles queued at one worker at once
    public int outputReservePercent = -1;  // share of each size class inputs leave to outputs

    /** One size class of {@code count} blocks of {@code bytes}. */
    public Options sizeClass(long bytes, int count) {
      int n = blockSizes == null ? 0 : blockSizes.length;
      long[] s = new long[n + 1];
      int[] c = new int[n + 1];
      if (n > 0) {
        System.arraycopy(blockSizes, 0, s, 0, n);
        System.arraycopy(blockCounts, 0, c, 0, n);
      }
      s[n] = bytes;
      c[n] = count;
      blockSizes = s;
      blockCounts = c;
      return this;
    }
  }

  /** A worker pool (tessera_pool_spec_t + ext). */
  public static final class PoolSpec {
    public List<String> argv = new ArrayList<>();   // argv[0] is the executable
    public int count = 1;
    public Map<String, String> env = Map.of();      // additions (the rest of the environment is scrubbed)
    public List<String> initScripts = List.of();
    public int maxRetries = -1;                     // re-dispatches of a tile whose worker died
    public Boolean restart;                         // respawn dead workers
    public long readyTimeoutMillis = -1;
    public long cancelGraceMillis = -1;             // a canceled tile's worker is killed after this

    public PoolSpec(String... argv) {
      this.argv = List.of(argv);
    }
  }

  /** Stream options (tessera_stream_options_t). */
  public static final class StreamOptions {
    public int priority;                 // higher first
    public boolean ordered;              // deliver in submission order
    public int maxInFlight = -1;         // per-stream bound (backpressure)
    public long deadlineNanos;           // per tile, from submit (0: none)

    public StreamOptions ordered(boolean v) {
      ordered = v;
      return this;
    }

    public StreamOptions maxInFlight(int v) {
      maxInFlight = v;
      return this;
    }

    public StreamOptions priority(int v) {
      priority = v;
      return this;
    }
  }

  private static final int CLOSING = Integer.MIN_VALUE;
  private static final long WINDOW_SHIFT = 30;           // arena windows start every 1 GiB
  private static final int ECANCELED = -TesseraException.ECANCELED;

  private final AtomicInteger state = new AtomicInteger();  // CLOSING bit | calls in progress
  private final long handle;
  private final ByteBuffer io;            // out-parameters: [0] data, [8] capacity, [16] block/seq/epoch
  private final long ioAddr;
  private final ByteBuffer metaBuf;       // tessera_tile_meta_t for submit
  private final long metaAddr;
  private ByteBuffer results;             // tessera_result_t[resultsMax] for poll
  private long resultsAddr;
  private int resultsMax;
  final long arenaBase, arenaSize;
  private final ByteBuffer[] windows;     // direct views of the arena, created on first use
  private final Owned live = new Owned() { @Override void invalidate() {} };  // sentinel
  // Results closed but not yet released natively: released together (one foreign call for
  // many tiles) at the next poll, before any wait, when full, and at close.
  private static final int RELEASE_BATCH = 64;
  private final ByteBuffer pending;
  private final long pendingAddr;
  private int pendingCount;
  // Batched alloc/submit scratch: tessera_block_info_t[] / tessera_block_t[] + tessera_tile_meta_t[] + seqs.
  private ByteBuffer batch;
  private long batchAddr;
  private int batchMax;
  private volatile boolean wakeRequested;
  private Interruptor interruptor = new Interruptor();

  private Client(long handle) {
    this.handle = handle;
    io = ByteBuffer.allocateDirect(64).order(ByteOrder.nativeOrder());
    ioAddr = address(io);
    metaBuf = ByteBuffer.allocateDirect(SIZEOF_TILE_META).order(ByteOrder.nativeOrder());
    metaAddr = address(metaBuf);
    arenaBase = tessera_client_arena_base(handle);
    arenaSize = tessera_client_arena_size(handle);
    windows = new ByteBuffer[(int) ((arenaSize >>> WINDOW_SHIFT) + 1)];
    live.prev = live.next = live;
    ensureResults(64);
    pending = ByteBuffer.allocateDirect(8 * RELEASE_BATCH).order(ByteOrder.nativeOrder());
    pendingAddr = address(pending);
  }

  // ---------------- creation ----------------

  /** An embedded broker with default options. */
  public static Client embedded() {
    return embedded(new Options());
  }

  /** An embedded broker: a fresh arena owned by this client. */
  public static Client embedded(Options o) {
    try (Memory opts = options(o); Memory ext = ext(o); Memory out = new Memory(8)) {
      int rc = tessera_client_create_ext(Pointer.nativeValue(opts), Pointer.nativeValue(ext), Pointer.nativeValue(out));
      if (rc < 0) throw TesseraException.fromLastError(rc);
      return new Client(out.getLong(0));
    }
  }

  /** Connects to a running {@code tessera-broker --listen socketPath}. */
  public static Client connect(String socketPath, Options o) {
    try (Memory opts = options(o); Memory ext = ext(o); Memory out = new Memory(8)) {
      int rc = tessera_client_connect_ext(socketPath, Pointer.nativeValue(opts), Pointer.nativeValue(ext),
          Pointer.nativeValue(out));
      if (rc < 0) throw TesseraException.fromLastError(rc);
      return new Client(out.getLong(0));
    }
  }

  private static Memory options(Options o) {
    Memory m = new Memory(SIZEOF_CLIENT_OPTIONS + 16L * (o.blockSizes == null ? 0 : o.blockSizes.length));
    long a = Pointer.nativeValue(m);
    tessera_client_options_init(a);
    if (o.blockSizes != null && o.blockSizes.length > 0) {
      if (o.blockCounts == null || o.blockCounts.length != o.blockSizes.length)
        throw new IllegalArgumentException("blockSizes and blockCounts differ in length");
      long classes = SIZEOF_CLIENT_OPTIONS;
      for (int i = 0; i < o.blockSizes.length; ++i) {
        m.setLong(classes + 16L * i, o.blockSizes[i]);
        m.setInt(classes + 16L * i + 8, o.blockCounts[i]);
        m.setInt(classes + 16L * i + 12, 0);
      }
      m.setLong(0, a + classes);
      m.setLong(8, o.blockSizes.length);
    }
    if (o.rings >= 0) m.setInt(16, o.rings);
    if (o.ringCapacity >= 0) m.setInt(20, o.ringCapacity);
    if (o.prefault != null) m.setInt(24, o.prefault ? 1 : 0);
    if (o.spinNanos >= 0) m.setInt(28, o.spinNanos);
    if (o.sleep != null) m.setInt(32, o.sleep ? 1 : 0);
    if (o.maxInFlight >= 0) m.setInt(36, o.maxInFlight);
    if (o.workerWindow >= 0) m.setInt(40, o.workerWindow);
    return m;
  }

  private static Memory ext(Options o) {
    Memory m = new Memory(SIZEOF_CLIENT_OPTIONS_EXT);
    tessera_client_options_ext_init(Pointer.nativeValue(m));
    if (o.outputReservePercent >= 0) m.setInt(4, o.outputReservePercent);
    return m;
  }

  // ---------------- workers ----------------

  /** Starts the pool and returns once every worker reported ready (or throws the worker's error). */
  public void startPool(PoolSpec spec) {
    if (spec.argv == null || spec.argv.isEmpty()) throw new IllegalArgumentException("PoolSpec needs argv[0]");
    List<String> envFlat = new ArrayList<>();
    spec.env.forEach((k, v) -> {
      envFlat.add(k);
      envFlat.add(v);
    });
    StringArray argv = new StringArray(spec.argv.toArray(new String[0]), "UTF-8");
    StringArray env = envFlat.isEmpty() ? null : new StringArray(envFlat.toArray(new String[0]), "UTF-8");
    StringArray init = spec.initScripts.isEmpty() ? null : new StringArray(spec.initScripts.toArray(new String[0]), "UTF-8");
    try (Memory m = new Memory(SIZEOF_POOL_SPEC); Memory x = new Memory(SIZEOF_POOL_SPEC_EXT)) {
      tessera_pool_spec_init(Pointer.nativeValue(m));
      tessera_pool_spec_ext_init(Pointer.nativeValue(x));
      m.setPointer(0, argv);
      m.setLong(8, spec.argv.size());
      m.setInt(16, spec.count);
      m.setPointer(24, env);
      m.setLong(32, envFlat.size());
      m.setPointer(40, init);
      m.setLong(48, spec.initScripts.size());
      if (spec.maxRetries >= 0) m.setInt(56, spec.maxRetries);
      if (spec.restart != null) m.setInt(60, spec.restart ? 1 : 0);
      if (spec.readyTimeoutMillis > 0) m.setLong(64, spec.readyTimeoutMillis);
      if (spec.cancelGraceMillis >= 0) x.setLong(8, spec.cancelGraceMillis);
      long h = enter();
      try {
        check(tessera_client_start_pool_ext(h, Pointer.nativeValue(m), Pointer.nativeValue(x)));
      } finally {
        exit();
      }
    } finally {
      java.lang.ref.Reference.reachabilityFence(argv);  // the native spec points into these
      java.lang.ref.Reference.reachabilityFence(env);
      java.lang.ref.Reference.reachabilityFence(init);
    }
  }

  /** The client's workers. */
  public List<WorkerInfo> workers() {
    long h = enter();
    try {
      int n = check(tessera_client_workers(h, 0, 0));
      List<WorkerInfo> out = new ArrayList<>(n);
      if (n == 0) return out;
      try (Memory m = new Memory((long) n * SIZEOF_WORKER_INFO)) {
        int got = Math.min(n, check(tessera_client_workers(h, Pointer.nativeValue(m), n)));
        for (int i = 0; i < got; ++i) {
          long o = (long) i * SIZEOF_WORKER_INFO;
          out.add(new WorkerInfo(m.getInt(o), m.getInt(o + 4), m.getInt(o + 8), m.getInt(o + 12) != 0, m.getLong(o + 16),
              m.getLong(o + 24), m.getLong(o + 32), m.getInt(o + 40)));
        }
      }
      return out;
    } finally {
      exit();
    }
  }

  /** Sends SIGKILL to a worker (tests, chaos); its tiles are retried or failed. */
  public void killWorker(int index) {
    long h = enter();
    try {
      check(tessera_client_kill_worker(h, index));
    } finally {
      exit();
    }
  }

  /**
   * The arena's memfd in this process. A child started by the host itself (ProcessBuilder
   * closes inherited descriptors) opens {@link #arenaPath()} to get its own descriptor.
   */
  public int arenaFd() {
    long h = enter();
    try {
      return check(tessera_client_arena_fd(h));
    } finally {
      exit();
    }
  }

  /** "/proc/PID/fd/N": the arena memfd, openable read-write by a child of the same user. */
  public String arenaPath() {
    return "/proc/" + ProcessHandle.current().pid() + "/fd/" + arenaFd();
  }

  // ---------------- streams ----------------

  public Stream openStream() {
    return openStream(new StreamOptions());
  }

  public Stream openStream(StreamOptions so) {
    long h = enter();
    try (Memory m = new Memory(SIZEOF_STREAM_OPTIONS)) {
      long a = Pointer.nativeValue(m);
      tessera_stream_options_init(a);
      m.setInt(0, so.priority);
      m.setInt(4, so.ordered ? 1 : 0);
      if (so.maxInFlight >= 0) m.setInt(8, so.maxInFlight);
      m.setLong(16, so.deadlineNanos);
      check(tessera_client_open_stream(h, a, ioAddr + 16));
      return new Stream(this, io.getInt(16));
    } finally {
      exit();
    }
  }

  // ---------------- data path ----------------

  /**
   * An input block of at least {@code bytes}, waiting up to {@code timeoutNanos} for one to
   * be free. Fill {@link InputBlock#buffer()} in place, then submit it on a stream.
   */
  public InputBlock alloc(long bytes, long timeoutNanos) {
    long h = enter();
    try {
      // Fast path: a free block, no waiting (and no interrupt bookkeeping).
      int rc = Hot.alloc(h, bytes, 0, ioAddr, ioAddr + 8, ioAddr + 16);
      if (rc == -TesseraException.ETIMEDOUT && pendingCount > 0) {
        flushReleases(h);  // closed results may be holding the blocks
        rc = Hot.alloc(h, bytes, 0, ioAddr, ioAddr + 8, ioAddr + 16);
      }
      if (rc == -TesseraException.ETIMEDOUT && timeoutNanos > 0) {
        final long deadline = System.nanoTime() + timeoutNanos;
        for (long left = timeoutNanos;;) {
          Interruptor ch = beginBlocking();
          try {
            rc = Hot.alloc(h, bytes, left, ioAddr, ioAddr + 8, ioAddr + 16);
          } finally {
            endBlocking(ch, rc == ECANCELED, "alloc");
          }
          if (rc != ECANCELED) break;
          left = deadline - System.nanoTime();  // a stale wake: wait out the rest
          if (left <= 0) {
            rc = -TesseraException.ETIMEDOUT;
            throw new TesseraException(rc, "tessera_client_alloc: no block free within the timeout");
          }
        }
      }
      if (rc < 0) throw TesseraException.fromLastError(rc);
      InputBlock b = new InputBlock(this, io.getLong(16), io.getLong(0), io.getLong(8));
      link(b);
      return b;
    } finally {
      exit();
    }
  }

  /**
   * Allocates up to {@code max} blocks of at least {@code bytes} into {@code out} with one
   * foreign call: waits up to {@code timeoutNanos} for the first, then takes only what is
   * free at once. Returns how many (at least 1).
   */
  public int alloc(long bytes, long timeoutNanos, InputBlock[] out, int max) {
    if (max <= 0 || max > out.length) throw new IllegalArgumentException("alloc: no room for blocks");
    long h = enter();
    try {
      ensureBatch(max);
      flushReleases(h);
      int n = tessera_client_alloc_n(h, bytes, max, 0, batchAddr);
      if (n == -TesseraException.ETIMEDOUT && timeoutNanos > 0) {
        Interruptor ch = beginBlocking();
        try {
          n = tessera_client_alloc_n(h, bytes, max, timeoutNanos, batchAddr);
        } finally {
          endBlocking(ch, n == ECANCELED, "alloc");
        }
      }
      if (n < 0) throw TesseraException.fromLastError(n);
      for (int i = 0; i < n; ++i) {
        int o = 24 * i;
        InputBlock b = new InputBlock(this, batch.getLong(o), batch.getLong(o + 8), batch.getLong(o + 16));
        link(b);
        out[i] = b;
      }
      return n;
    } finally {
      exit();
    }
  }

  /**
   * Delivers up to {@code out.length} outcomes into {@code out}, waiting up to
   * {@code timeoutNanos} for the first. Returns how many (0 on timeout). Each must be closed.
   */
  public int poll(TileResult[] out, long timeoutNanos) {
    return poll(out, 0, out.length, timeoutNanos);
  }

  public int poll(TileResult[] out, int offset, int max, long timeoutNanos) {
    if (max <= 0 || offset < 0 || offset + max > out.length) throw new IllegalArgumentException("poll: no room for results");
    long h = enter();
    try {
      ensureResults(max);
      flushReleases(h);
      int n = Hot.poll(h, resultsAddr, max, 0);
      if (n == 0 && timeoutNanos > 0) {
        final long deadline = System.nanoTime() + timeoutNanos;
        for (long left = timeoutNanos;;) {
          Interruptor ch = beginBlocking();
          try {
            n = Hot.poll(h, resultsAddr, max, left);
          } finally {
            endBlocking(ch, n == ECANCELED, "poll");
          }
          if (n != ECANCELED) break;
          left = deadline - System.nanoTime();
          if (left <= 0) return 0;
        }
      }
      if (n < 0) throw TesseraException.fromLastError(n);
      for (int i = 0; i < n; ++i) {
        TileResult r = new TileResult(this, results, i * SIZEOF_RESULT);
        link(r);
        out[offset + i] = r;
      }
      return n;
    } finally {
      exit();
    }
  }

  /** Convenience: a list of up to {@code max} outcomes. */
  public List<TileResult> poll(int max, long timeoutNanos) {
    TileResult[] a = new TileResult[max];
    int n = poll(a, 0, max, timeoutNanos);
    List<TileResult> out = new ArrayList<>(n);
    for (int i = 0; i < n; ++i) out.add(a[i]);
    return out;
  }

  /** Tiles submitted and not yet delivered. */
  public long inFlight() {
    long h = enter();
    try {
      return tessera_client_in_flight(h);
    } finally {
      exit();
    }
  }

  /**
   * Makes the blocking poll/alloc/submit on the client's thread return at once with
   * {@link TesseraInterruptedException} (or the next one, if none is waiting). Any thread.
   */
  public void wake() {
    long h = enter();
    try {
      wakeRequested = true;
      check(tessera_client_wake(h));
    } finally {
      exit();
    }
  }

  /** The message of the last failed call on this client, from whichever thread made it ("" if none). */
  public String lastError() {
    long h = enter();
    try (Memory m = new Memory(1024)) {
      tessera_client_last_error(h, Pointer.nativeValue(m), 1024, 0);
      return m.getString(0, "UTF-8");
    } finally {
      exit();
    }
  }

  public boolean isClosed() {
    return state.get() < 0;
  }

  /**
   * Stops the pool and frees the client; every result, input block and buffer it handed
   * out is revoked (later access throws). Idempotent; callable from any thread: a blocking
   * call on the client's thread is woken and finishes first.
   */
  @Override
  public void close() {
    int s;
    do {
      s = state.get();
      if (s < 0) return;
    } while (!state.compareAndSet(s, s | CLOSING));
    while (state.get() != CLOSING) {  // calls in progress on other threads: wake them, wait
      tessera_client_wake(handle);
      LockSupport.parkNanos(200_000);
    }
    for (Owned o = live.next; o != live; ) {
      Owned next = o.next;
      o.invalidate();
      o.prev = o.next = null;
      o = next;
    }
    live.next = live.prev = live;
    pendingCount = 0;  // destroy releases every result
    tessera_client_destroy(handle);
  }

  // ---------------- logging ----------------

  private static LogCallback logCallback;  // kept reachable while installed

  /** Routes the library's log records to {@code sink} (null: back to stderr). Process-wide. */
  public static synchronized void setLogSink(LogSink sink) {
    LogCallback cb = sink == null ? null : (user, level, message) -> {
      try {
        sink.log(LogLevel.of(level), message);
      } catch (Throwable t) {
        // a sink must not throw into native code; drop the record
      }
    };
    int rc = tessera_set_log_sink(cb, null);
    if (rc < 0) throw TesseraException.fromLastError(rc);
    logCallback = cb;
  }

  /** Records below {@code level} are dropped (default INFO). Process-wide. */
  public static void setLogLevel(LogLevel level) {
    int rc = tessera_set_log_level(level.ordinal());
    if (rc < 0) throw TesseraException.fromLastError(rc);
  }

  /** Whether the per-tile calls use the JNI fast path (libtessera_client_jni.so) rather than JNA. */
  public static boolean jniFastPath() {
    return Hot.JNI;
  }

  /** Where libtessera_client.so was loaded from. */
  public static String libraryPath() {
    return LOADED_FROM;
  }

  // ---------------- internals (package) ----------------

  /** Marks a call in progress; throws if the client is closed. Returns the native handle. */
  long enter() {
    if (state.incrementAndGet() < 0) {
      state.decrementAndGet();
      throw new TesseraException(TesseraException.ECLOSED, "client is closed");
    }
    return handle;
  }

  void exit() {
    state.decrementAndGet();
  }

  static int check(int rc) {
    if (rc < 0) throw TesseraException.fromLastError(rc);
    return rc;
  }

  long ioAddr() {
    return ioAddr;
  }

  ByteBuffer io() {
    return io;
  }

  long metaAddr(TileMeta m) {
    writeMeta(metaBuf, 0, m);
    return metaAddr;
  }

  /** A closed result's native release, deferred and batched (see RELEASE_BATCH). */
  void deferRelease(long h, long id) {
    pending.putLong(8 * pendingCount, id);
    if (++pendingCount == RELEASE_BATCH) flushReleases(h);
  }

  private void flushReleases(long h) {
    if (pendingCount == 0) return;
    int n = pendingCount;
    pendingCount = 0;
    check(Hot.releaseN(h, pendingAddr, n));
  }

  void ensureBatch(int max) {
    if (max <= batchMax) return;
    int cap = Math.max(max, 16);
    // tessera_block_info_t[cap] (24 B) or tessera_block_t[cap] + tessera_tile_meta_t[cap] + uint64_t[cap]
    batch = ByteBuffer.allocateDirect(cap * (8 + SIZEOF_TILE_META + 8 + 24)).order(ByteOrder.nativeOrder());
    batchAddr = address(batch);
    batchMax = cap;
  }

  ByteBuffer batch() {
    return batch;
  }

  long batchAddr() {
    return batchAddr;
  }

  int batchMax() {
    return batchMax;
  }

  /** Writes a tessera_tile_meta_t at offset {@code o} of {@code b}. */
  static void writeMeta(ByteBuffer b, int o, TileMeta m) {
    int nd = m.dims.length;
    if (nd < 1 || nd > 4) throw new IllegalArgumentException("a tile has 1 to 4 dimensions, got " + nd);
    b.putInt(o, m.dtype.code());
    b.putInt(o + 4, nd);
    for (int i = 0; i < 4; ++i) b.putInt(o + 8 + 4 * i, i < nd ? m.dims[i] : 0);
    b.putInt(o + 24, m.level);
    b.putInt(o + 28, m.x);
    b.putInt(o + 32, m.y);
    b.putInt(o + 36, m.op);
    b.putLong(o + 40, m.tag);
    b.putLong(o + 48, m.deadlineNanos);
  }

  void link(Owned o) {
    o.prev = live.prev;
    o.next = live;
    live.prev.next = o;
    live.prev = o;
  }

  void unlink(Owned o) {
    if (o.prev == null) return;
    o.prev.next = o.next;
    o.next.prev = o.prev;
    o.prev = o.next = null;
  }

  /** A direct ByteBuffer over [address, address + length) of the arena (no copy). */
  ByteBuffer view(long address, long length) {
    long off = address - arenaBase;
    if (off < 0 || length < 0 || off + length > arenaSize || length > Integer.MAX_VALUE)
      throw new TesseraException(TesseraException.EINTERNAL, "block outside the arena");
    int k = (int) (off >>> WINDOW_SHIFT);
    ByteBuffer w = windows[k];
    if (w == null) {
      long start = (long) k << WINDOW_SHIFT;
      w = new Pointer(arenaBase + start).getByteBuffer(0, Math.min(Integer.MAX_VALUE, arenaSize - start));
      windows[k] = w;
    }
    long in = off - ((long) k << WINDOW_SHIFT);
    if (in + length > w.capacity()) return new Pointer(address).getByteBuffer(0, length).order(ByteOrder.nativeOrder());
    return w.slice((int) in, (int) length).order(ByteOrder.nativeOrder());
  }

  /** Before a native call that may block: Thread.interrupt() now wakes this client. */
  Interruptor beginBlocking() {
    Interruptor ch = interruptor;
    ch.enter();
    return ch;
  }

  /**
   * After it: throws TesseraInterruptedException if the call ended because of an interrupt
   * or an explicit wake; otherwise (no wake, or a stale one to retry) returns.
   */
  void endBlocking(Interruptor ch, boolean wokenRc, String what) {
    boolean interrupted = ch.leave();
    if (interrupted) interruptor = new Interruptor();  // a channel closes for good once interrupted
    if (!wokenRc) return;
    if (state.get() < 0) throw new TesseraException(TesseraException.ECLOSED, what + ": the client was closed while waiting");
    if (interrupted || Thread.currentThread().isInterrupted())
      throw new TesseraInterruptedException(what + ": interrupted (Thread.interrupt)", true);
    if (wakeRequested) {
      wakeRequested = false;
      throw new TesseraInterruptedException(what + ": woken by Client.wake()", false);
    }
  }

  private void ensureResults(int max) {
    if (max <= resultsMax) return;
    int cap = Math.max(max, 64);
    results = ByteBuffer.allocateDirect(cap * SIZEOF_RESULT).order(ByteOrder.nativeOrder());
    resultsAddr = address(results);
    resultsMax = cap;
  }

  private static long address(ByteBuffer b) {
    return Pointer.nativeValue(Native.getDirectBufferPointer(b));
  }

  /**
   * Maps Thread.interrupt() onto tessera_client_wake for the duration of one blocking
   * call, through the JDK's public hook for interruptible I/O (begin/end of an
   * AbstractInterruptibleChannel): an interrupt "closes" the channel, which wakes the
   * client. The client is alive then, since the interrupted call holds it open.
   */
  final class Interruptor extends AbstractInterruptibleChannel {
    void enter() {
      begin();
    }

    /** True if this thread was interrupted during the call. */
    boolean leave() {
      try {
        end(true);
        return false;
      } catch (ClosedByInterruptException e) {
        return true;
      } catch (AsynchronousCloseException e) {
        return false;
      }
    }

    @Override
    protected void implCloseChannel() throws IOException {
      tessera_client_wake(handle);
    }
  }
}
