package org.tessera;

import static org.junit.jupiter.api.Assertions.*;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The Java binding against real worker processes (tessera-tissue-worker, path from the
 * system property tessera.worker): byte-exact masks, ordering, cancellation and epochs,
 * a killed worker, bad calls, interrupts, log routing.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ClientTest {
  static final int H = 32, W = 32, TILE = H * W * 3;
  static final long SEC = 1_000_000_000L;
  static final int THRESHOLD = 200;  // the worker's default tissue threshold

  static String worker() {
    String w = System.getProperty("tessera.worker");
    assertNotNull(w, "-Dtessera.worker=PATH to tessera-tissue-worker");
    return w;
  }

  static Client newClient(int workers) {
    Client.Options o = new Client.Options().sizeClass(4096, 1024);
    o.rings = 8;
    o.ringCapacity = 64;
    o.prefault = false;
    Client c = Client.embedded(o);
    Client.PoolSpec spec = new Client.PoolSpec(worker());
    spec.count = workers;
    spec.readyTimeoutMillis = 20000;
    c.startPool(spec);
    return c;
  }

  static byte[] expectedMask(byte[] rgb) {
    byte[] m = new byte[rgb.length / 3];
    for (int i = 0; i < m.length; ++i) {
      int s = (rgb[3 * i] & 0xff) + (rgb[3 * i + 1] & 0xff) + (rgb[3 * i + 2] & 0xff);
      m[i] = (byte) (s < THRESHOLD * 3 ? 255 : 0);
    }
    return m;
  }

  static long submit(Client c, Stream s, byte[] rgb, int op, int x) {
    InputBlock b = c.alloc(rgb.length, 5 * SEC);
    b.buffer().put(0, rgb);
    return s.submit(b, TileMeta.rgb8(H, W).op(op).at(0, x, 0).tag(x * 10L));
  }

  /** Polls until n outcomes arrived or 30 s passed. */
  static List<TileResult> collect(Client c, int n) {
    List<TileResult> out = new ArrayList<>();
    TileResult[] buf = new TileResult[64];
    long end = System.nanoTime() + 30 * SEC;
    while (out.size() < n && System.nanoTime() < end) {
      int k = c.poll(buf, 0, Math.min(buf.length, n - out.size()), 100_000_000L);
      for (int i = 0; i < k; ++i) out.add(buf[i]);
    }
    return out;
  }

  @Test
  void roundTripGivesByteExactMasksInSubmissionOrder() {
    Random rnd = new Random(14);
    try (Client c = newClient(2); Stream s = c.openStream(new Client.StreamOptions().ordered(true).maxInFlight(32))) {
      final int n = 300;
      byte[][] inputs = new byte[n][TILE];
      List<TileResult> got = new ArrayList<>();
      TileResult[] buf = new TileResult[16];
      for (int i = 0; i < n; ++i) {
        rnd.nextBytes(inputs[i]);
        assertEquals(i, submit(c, s, inputs[i], 0, i));
        int k = c.poll(buf, 0);
        for (int j = 0; j < k; ++j) got.add(buf[j]);
      }
      got.addAll(collect(c, n - got.size()));
      assertEquals(n, got.size());
      byte[] mask = new byte[H * W];
      for (int i = 0; i < n; ++i) {
        TileResult r = got.get(i);
        assertEquals(i, r.seq(), "submission order");
        assertEquals(i, r.x());
        assertEquals(i * 10L, r.tag());
        assertEquals(Outcome.COMPLETED, r.outcome(), r.error());
        assertEquals(DType.UINT8, r.dtype());
        assertArrayEquals(new int[] {H, W}, r.dims());
        ByteBuffer out = r.buffer();
        assertTrue(out.isDirect() && out.isReadOnly());
        assertEquals(H * W, out.remaining());
        out.get(0, mask);
        assertArrayEquals(expectedMask(inputs[i]), mask, "mask of tile " + i);
        byte[] copy = new byte[H * W];
        assertEquals(H * W, r.copyTo(copy));
        assertArrayEquals(mask, copy);
        r.close();
      }
      StreamStats st = s.stats();
      assertEquals(n, st.completed());
      assertEquals(0, c.inFlight());
      List<WorkerInfo> ws = c.workers();
      assertEquals(2, ws.size());
      assertTrue(ws.stream().allMatch(WorkerInfo::alive));
      assertEquals(n, ws.stream().mapToLong(WorkerInfo::completed).sum());
    }
  }

  @Test
  void batchedAllocAndSubmitGiveByteExactMasks() {
    Random rnd = new Random(15);
    try (Client c = newClient(2); Stream s = c.openStream(new Client.StreamOptions().ordered(true).maxInFlight(64))) {
      InputBlock[] blocks = new InputBlock[16];
      TileMeta[] metas = new TileMeta[16];
      byte[][] inputs = new byte[160][TILE];
      int next = 0;
      while (next < inputs.length) {
        int k = c.alloc(TILE, 5 * SEC, blocks, Math.min(16, inputs.length - next));
        assertTrue(k >= 1 && k <= 16);
        for (int i = 0; i < k; ++i) {
          rnd.nextBytes(inputs[next + i]);
          assertTrue(blocks[i].capacity() >= TILE);
          blocks[i].buffer().put(0, inputs[next + i]);
          metas[i] = TileMeta.rgb8(H, W).at(0, next + i, 0);
        }
        assertEquals(k, s.submit(blocks, metas, k));
        for (int i = 0; i < k; ++i) assertFalse(blocks[i].isOpen(), "submitted blocks are used up");
        next += k;
        if (c.inFlight() >= 48) {
          for (TileResult r : collect(c, (int) c.inFlight())) {
            byte[] m = new byte[H * W];
            r.buffer().get(0, m);
            assertArrayEquals(expectedMask(inputs[r.x()]), m, "mask of tile " + r.x());
            assertEquals(r.x(), r.seq());
            r.close();
          }
        }
      }
      for (TileResult r : collect(c, (int) c.inFlight())) {
        byte[] m = new byte[H * W];
        r.buffer().get(0, m);
        assertArrayEquals(expectedMask(inputs[r.x()]), m, "mask of tile " + r.x());
        r.close();
      }
      assertEquals(inputs.length, s.stats().completed());
      // Closed results are released in batches: after a poll, none of their blocks is held.
      assertEquals(0, c.poll(new TileResult[1], 0));
      assertEquals(0, c.inFlight());
    }
  }

  @Test
  void failedTileCarriesTheWorkersErrorText() {
    try (Client c = newClient(1); Stream s = c.openStream()) {
      submit(c, s, new byte[TILE], 3, 7);
      List<TileResult> r = collect(c, 1);
      assertEquals(1, r.size());
      assertEquals(Outcome.FAILED, r.get(0).outcome());
      assertEquals(TileStatus.HANDLER_ERROR, r.get(0).status());
      assertTrue(r.get(0).error().contains("op 3 always fails"), r.get(0).error());
      TesseraException e = assertThrows(TesseraException.class, () -> r.get(0).buffer());
      assertTrue(e.getMessage().contains("no output"), e.getMessage());
      r.get(0).close();
    }
  }

  @Test
  void cancelAndEpochs() {
    try (Client c = newClient(1); Stream s = c.openStream(new Client.StreamOptions().ordered(true))) {
      byte[] rgb = new byte[TILE];
      long first = submit(c, s, rgb, 4, 0);  // op 4: 50 ms, honours cancellation
      long second = submit(c, s, rgb, 4, 1);
      s.cancel(second);
      TesseraException nf = assertThrows(TesseraException.class, () -> s.cancel(12345));
      assertEquals(-TesseraException.ENOTFOUND, nf.code());
      List<TileResult> r = collect(c, 2);
      assertEquals(2, r.size());
      assertEquals(first, r.get(0).seq());
      assertEquals(second, r.get(1).seq());
      assertEquals(Outcome.CANCELED, r.get(1).outcome());
      r.forEach(TileResult::close);

      for (int i = 0; i < 10; ++i) submit(c, s, rgb, 4, 100 + i);
      int epoch = s.advanceEpoch();
      assertTrue(epoch > 0);
      long fresh = submit(c, s, rgb, 0, 200);
      r = collect(c, 11);
      assertEquals(11, r.size());
      for (TileResult t : r) {
        if (t.epoch() < epoch) assertEquals(Outcome.CANCELED, t.outcome(), "an old epoch is never delivered as current");
        else {
          assertEquals(fresh, t.seq());
          assertEquals(Outcome.COMPLETED, t.outcome(), t.error());
        }
        t.close();
      }
      assertTrue(s.stats().canceled() >= 10);
    }
  }

  @Test
  void killedWorkerStillGivesExactlyOneOutcomePerTile() {
    try (Client c = newClient(2); Stream s = c.openStream(new Client.StreamOptions().maxInFlight(64))) {
      byte[] rgb = new byte[TILE];
      Set<Long> submitted = new HashSet<>();
      for (int i = 0; i < 40; ++i) submitted.add(submit(c, s, rgb, 4, i));
      c.killWorker(0);
      List<TileResult> r = collect(c, 40);
      Set<Long> seen = new HashSet<>();
      for (TileResult t : r) {
        assertTrue(seen.add(t.seq()), "one outcome per tile, tile " + t.seq() + " twice");
        assertNotEquals(Outcome.CANCELED, t.outcome());
        t.close();
      }
      assertEquals(submitted, seen);
      assertTrue(c.poll(new TileResult[4], 200_000_000L) == 0, "nothing more after every tile's outcome");
      assertEquals(0, c.inFlight());
    }
  }

  @Test
  void badCallsRaiseClearExceptions() {
    Client c = newClient(1);
    Stream s = c.openStream();
    // oversized block
    TesseraException big = assertThrows(TesseraException.class, () -> c.alloc(1L << 40, SEC));
    assertEquals(-TesseraException.EINVAL, big.code());
    assertTrue(big.getMessage().contains("larger than the largest block class"), big.getMessage());
    assertEquals("invalid_argument", big.codeName());
    assertTrue(c.lastError().contains("larger than the largest block class"), "the client keeps the text: " + c.lastError());
    // a shape bigger than the block
    InputBlock b = c.alloc(100, SEC);
    TesseraException shape = assertThrows(TesseraException.class, () -> s.submit(b, new TileMeta(DType.UINT8, 100000)));
    assertTrue(shape.getMessage().contains("bytes"), shape.getMessage());
    assertTrue(b.isOpen(), "a failed submit leaves the block with the caller");
    assertThrows(IllegalArgumentException.class, () -> s.submit(b, new TileMeta(DType.UINT8)));
    // a submitted block's buffer is revoked
    ByteBuffer in = b.buffer();
    in.put(0, (byte) 1);
    s.submit(b, new TileMeta(DType.UINT8, 3, 1, 3));
    assertThrows(IndexOutOfBoundsException.class, () -> in.put(0, (byte) 2));
    assertEquals(0, in.capacity());
    assertThrows(TesseraException.class, b::buffer);
    assertThrows(TesseraException.class, () -> s.submit(b, new TileMeta(DType.UINT8, 3, 1, 3)));
    // a released result's buffer throws instead of reading stale bytes
    List<TileResult> r = collect(c, 1);
    assertEquals(1, r.size());
    ByteBuffer out = r.get(0).buffer();
    assertEquals(3, out.remaining());
    r.get(0).close();
    r.get(0).close();  // idempotent
    assertThrows(IndexOutOfBoundsException.class, () -> out.get(0));
    TesseraException stale = assertThrows(TesseraException.class, () -> r.get(0).buffer());
    assertEquals(-TesseraException.ESTALE, stale.code());
    assertThrows(TesseraException.class, () -> r.get(0).get(0));
    // a held result and block are revoked when the client closes
    InputBlock held = c.alloc(10, SEC);
    ByteBuffer heldBuf = held.buffer();
    c.close();
    c.close();  // idempotent
    assertThrows(IndexOutOfBoundsException.class, () -> heldBuf.get(0));
    TesseraException closed = assertThrows(TesseraException.class, () -> c.alloc(10, SEC));
    assertEquals(-TesseraException.ECLOSED, closed.code());
    assertTrue(closed.getMessage().contains("closed"));
    assertThrows(TesseraException.class, () -> c.poll(new TileResult[1], 0));
    assertThrows(TesseraException.class, c::inFlight);
    assertThrows(TesseraException.class, c::wake);
    held.close();  // no-op after the client closed
    s.close();
  }

  @Test
  void theFastPathIsWhatTheRunAskedFor() {
    // JavaBinding.JUnit runs with libtessera_client_jni.so next to the library, JUnitJnaOnly without it.
    assertEquals(!"false".equals(System.getProperty("tessera.jni")), Client.jniFastPath(), Client.libraryPath());
  }

  @Test
  void connectWithoutABrokerFailsWithTheReason() {
    TesseraException e = assertThrows(TesseraException.class,
        () -> Client.connect("/nonexistent-dir/tessera-java-" + ProcessHandle.current().pid() + ".sock", new Client.Options()));
    assertEquals(-TesseraException.EUNAVAILABLE, e.code());
    assertTrue(e.getMessage().contains("no broker"), e.getMessage());
  }

  /** A tile stuck in a stopped worker keeps a poll blocking until something ends it. */
  static int stopWorker(Client c, String sig) throws Exception {
    int pid = c.workers().get(0).pid();
    assertTrue(pid > 0);
    Process p = new ProcessBuilder("kill", "-" + sig, Integer.toString(pid)).inheritIO().start();
    assertEquals(0, p.waitFor());
    return pid;
  }

  @Test
  void threadInterruptEndsABlockingPollPromptly() throws Exception {
    try (Client c = newClient(1); Stream s = c.openStream()) {
      stopWorker(c, "STOP");
      try {
        submit(c, s, new byte[TILE], 0, 1);
        final Thread me = Thread.currentThread();
        Thread t = new Thread(() -> {
          try {
            Thread.sleep(300);
          } catch (InterruptedException e) {
            return;
          }
          me.interrupt();
        });
        t.start();
        long t0 = System.nanoTime();
        TesseraInterruptedException e = assertThrows(TesseraInterruptedException.class,
            () -> c.poll(new TileResult[4], 20 * SEC));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertTrue(e.threadInterrupted());
        assertTrue(Thread.interrupted(), "the interrupt status stays set (and is cleared here)");
        assertTrue(ms < 5000, "interrupt took " + ms + " ms");
        t.join();

        // Already interrupted before the call: returns at once.
        Thread.currentThread().interrupt();
        t0 = System.nanoTime();
        assertThrows(TesseraInterruptedException.class, () -> c.poll(new TileResult[4], 20 * SEC));
        assertTrue((System.nanoTime() - t0) / 1_000_000 < 2000);
        assertTrue(Thread.interrupted());

        // A stale wake (interrupt status cleared) does not end the next poll early.
        t0 = System.nanoTime();
        assertEquals(0, c.poll(new TileResult[4], 300_000_000L));
        assertTrue((System.nanoTime() - t0) / 1_000_000 >= 250, "a poll after a consumed interrupt waits its timeout");

        // Client.wake() from another thread.
        Thread w = new Thread(() -> {
          try {
            Thread.sleep(300);
          } catch (InterruptedException ex) {
            return;
          }
          c.wake();
        });
        w.start();
        t0 = System.nanoTime();
        TesseraInterruptedException woken = assertThrows(TesseraInterruptedException.class,
            () -> c.poll(new TileResult[4], 20 * SEC));
        assertFalse(woken.threadInterrupted());
        assertTrue((System.nanoTime() - t0) / 1_000_000 < 5000);
        w.join();
      } finally {
        stopWorker(c, "CONT");
      }
      List<TileResult> r = collect(c, 1);
      assertEquals(1, r.size(), "the tile still gets its outcome");
      r.get(0).close();
    }
  }

  @Test
  void closeFromAnotherThreadEndsABlockingPoll() throws Exception {
    Client c = newClient(1);
    Stream s = c.openStream();
    stopWorker(c, "STOP");
    submit(c, s, new byte[TILE], 0, 1);
    Thread t = new Thread(() -> {
      try {
        Thread.sleep(300);
      } catch (InterruptedException e) {
        return;
      }
      c.close();
    });
    t.start();
    long t0 = System.nanoTime();
    TesseraException e = assertThrows(TesseraException.class, () -> c.poll(new TileResult[4], 20 * SEC));
    assertEquals(-TesseraException.ECLOSED, e.code());
    assertTrue(e.getMessage().contains("closed while waiting"), e.getMessage());
    assertTrue((System.nanoTime() - t0) / 1_000_000 < 5000);
    t.join();
    assertTrue(c.isClosed());
  }

  @Test
  void logRecordsReachTheSinkAndTheLevelFilters() {
    List<String> records = new CopyOnWriteArrayList<>();
    Client.setLogSink((level, msg) -> records.add(level + " " + msg));
    try {
      Client.setLogLevel(LogLevel.INFO);
      try (Client c = newClient(1)) {
        assertEquals(1, c.workers().size());
        assertTrue(records.stream().anyMatch(m -> m.startsWith("INFO") && m.contains("started")), records.toString());
      }
      records.clear();
      Client.setLogLevel(LogLevel.ERROR);
      try (Client c = newClient(1)) {
        assertEquals(1, c.workers().size());
        assertTrue(records.stream().noneMatch(m -> m.startsWith("INFO")), records.toString());
      }
    } finally {
      Client.setLogLevel(LogLevel.INFO);
      Client.setLogSink(null);
    }
  }

  @Test
  void arenaPathOpensTheSameArena() throws Exception {
    try (Client c = newClient(1)) {
      String p = c.arenaPath();
      assertTrue(p.matches("/proc/\\d+/fd/\\d+"), p);
      try (var ch = java.nio.channels.FileChannel.open(java.nio.file.Path.of(p), java.nio.file.StandardOpenOption.READ)) {
        assertEquals(c.arenaSize, ch.size(), "the reopened descriptor is the arena memfd");
      }
    }
  }
}
