import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

import org.tessera.Client;
import org.tessera.InputBlock;
import org.tessera.Stream;
import org.tessera.TileMeta;
import org.tessera.TileResult;

/**
 * A Java host running a tissue overlay through Tessera, the way a QuPath extension would:
 * the host owns the image and cuts it into tiles (here a synthetic slide, generated
 * tile by tile straight into arena blocks), workers compute masks, and the masks are
 * assembled into one overlay image (a PGM file).
 *
 *   java -cp tessera-overlay-example.jar:tessera.jar:jna.jar OverlayExample \
 *        WORKER_EXE [WIDTH HEIGHT TILE WORKERS OUT.pgm]
 */
public final class OverlayExample {
  public static void main(String[] args) throws IOException {
    if (args.length < 1) {
      System.err.println("usage: OverlayExample WORKER_EXE [WIDTH HEIGHT TILE WORKERS OUT.pgm]");
      System.exit(2);
    }
    String worker = args[0];
    int width = args.length > 1 ? Integer.parseInt(args[1]) : 8192;
    int height = args.length > 2 ? Integer.parseInt(args[2]) : 8192;
    int tile = args.length > 3 ? Integer.parseInt(args[3]) : 256;
    int workers = args.length > 4 ? Integer.parseInt(args[4]) : 2;
    Path out = Path.of(args.length > 5 ? args[5] : "overlay.pgm");

    int cols = (width + tile - 1) / tile, rows = (height + tile - 1) / tile, total = cols * rows;
    byte[] overlay = new byte[width * height];
    long t0 = System.nanoTime();
    Client.setLogLevel(org.tessera.LogLevel.WARN);
    try (Client c = Client.embedded(new Client.Options().sizeClass((long) tile * tile * 3, 256))) {
      Client.PoolSpec spec = new Client.PoolSpec(worker);
      spec.count = workers;
      c.startPool(spec);
      try (Stream s = c.openStream(new Client.StreamOptions().maxInFlight(128))) {
        TileResult[] buf = new TileResult[64];
        int next = 0, done = 0, tissue = 0;
        long lastPrint = 0;
        while (done < total) {
          // Submit while the stream takes more; the binding blocks (bounded) when it is full.
          while (next < total && c.inFlight() < 128) {
            int tx = next % cols, ty = next / cols;
            int w = Math.min(tile, width - tx * tile), h = Math.min(tile, height - ty * tile);
            InputBlock b = c.alloc((long) w * h * 3, 10_000_000_000L);
            synthesize(b.buffer(), tx * tile, ty * tile, w, h);
            s.submit(b, TileMeta.rgb8(h, w).at(0, tx * tile, ty * tile).tag(next));
            ++next;
          }
          int n = c.poll(buf, 100_000_000L);
          for (int i = 0; i < n; ++i) {
            try (TileResult r = buf[i]) {
              if (!r.completed()) throw new IllegalStateException("tile " + r.tag() + ": " + r.outcome() + " " + r.error());
              int[] d = r.dims();
              ByteBuffer m = r.buffer();
              for (int y = 0; y < d[0]; ++y) m.get(y * d[1], overlay, (r.y() + y) * width + r.x(), d[1]);
              for (int k = 0; k < m.capacity(); ++k) if (m.get(k) != 0) ++tissue;
            }
          }
          done += n;
          long now = System.nanoTime();
          if (now - lastPrint > 250_000_000L || done == total) {
            lastPrint = now;
            double sec = (now - t0) / 1e9;
            System.err.printf(Locale.ROOT, "\r%d/%d tiles  %.0f tiles/s  tissue %.1f%%   ", done, total, done / sec,
                100.0 * tissue / ((double) width * height));
          }
        }
        System.err.println();
      }
    }
    try (OutputStream o = new BufferedOutputStream(Files.newOutputStream(out))) {
      o.write(("P5\n" + width + " " + height + "\n255\n").getBytes(java.nio.charset.StandardCharsets.US_ASCII));
      o.write(overlay);
    }
    System.out.printf(Locale.ROOT, "wrote %s (%dx%d mask, %d tiles) in %.2f s%n", out, width, height, total,
        (System.nanoTime() - t0) / 1e9);
  }

  /** A synthetic H&E-like slide: pink tissue islands on bright glass, deterministic per pixel. */
  static void synthesize(ByteBuffer dst, int x0, int y0, int w, int h) {
    double[] sx = new double[w], sx2 = new double[w];
    for (int x = 0; x < w; ++x) {
      sx[x] = Math.sin((x0 + x) * 0.0021);
      sx2[x] = Math.sin((x0 + x) * 0.0049);
    }
    int p = 0;
    for (int y = 0; y < h; ++y) {
      int gy = y0 + y;
      double cy = Math.cos(gy * 0.0017), cy2 = 0.5 * Math.cos(gy * 0.0043);
      for (int x = 0; x < w; ++x) {
        boolean tissue = sx[x] * cy + sx2[x] * cy2 > 0.35;
        int noise = (((x0 + x) * 73856093) ^ (gy * 19349663)) & 15;
        dst.put(p++, (byte) (tissue ? 200 + noise : 240 + noise));
        dst.put(p++, (byte) (tissue ? 110 + noise : 238 + noise));
        dst.put(p++, (byte) (tissue ? 170 + noise : 240 + noise));
      }
    }
  }
}
