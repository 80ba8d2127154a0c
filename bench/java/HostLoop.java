import java.util.Locale;

import org.tessera.Client;
import org.tessera.InputBlock;
import org.tessera.LogLevel;
import org.tessera.Stream;
import org.tessera.TileMeta;
import org.tessera.TileResult;

/**
 * The host loop of the Java/C/Python host comparison, through the Java binding: the same
 * client options, workers, tiles and timing points as c_host_loop.c.
 *   java -cp bench-host-loop.jar:tessera.jar:jna.jar HostLoop WORKER_EXE TILES WORKERS [batched]
 * (batched: alloc and submit 16 tiles per foreign call)
 */
public final class HostLoop {
  public static void main(String[] args) {
    String worker = args[0];
    long tiles = Long.parseLong(args[1]);
    int workers = Integer.parseInt(args[2]);
    boolean batched = args.length > 3 && args[3].equals("batched");
    long warmup = tiles / 10;
    final int inFlight = 64, bytes = 16 * 16 * 3;
    Client.setLogLevel(LogLevel.WARN);
    try (Client c = Client.embedded(new Client.Options().sizeClass(4096, 1024))) {
      Client.PoolSpec spec = new Client.PoolSpec(worker);
      spec.count = workers;
      c.startPool(spec);
      try (Stream s = c.openStream(new Client.StreamOptions().maxInFlight(inFlight))) {
        TileMeta m = TileMeta.rgb8(16, 16).op(2);
        TileResult[] res = new TileResult[inFlight];
        InputBlock[] blocks = new InputBlock[16];
        TileMeta[] metas = new TileMeta[16];
        for (int i = 0; i < metas.length; ++i) metas[i] = TileMeta.rgb8(16, 16).op(2);
        long submitted = 0, done = 0, bad = 0, callNs = 0, tStart = 0;
        final long total = tiles + warmup;
        while (done < total) {
          if (done >= warmup && tStart == 0) {
            tStart = System.nanoTime();
            callNs = 0;
          }
          if (batched) {
            while (submitted < total && submitted - done < inFlight) {
              long t0 = System.nanoTime();
              int want = (int) Math.min(Math.min(16, total - submitted), inFlight - (submitted - done));
              int k = c.alloc(bytes, 1_000_000_000L, blocks, want);
              for (int i = 0; i < k; ++i) {
                blocks[i].buffer().put(0, (byte) (submitted + i));
                metas[i].tag = submitted + i;
              }
              int accepted = s.submit(blocks, metas, k);
              if (accepted != k) throw new IllegalStateException("submitted " + accepted + " of " + k);
              callNs += System.nanoTime() - t0;
              submitted += k;
            }
          }
          while (submitted < total && submitted - done < inFlight) {
            long t0 = System.nanoTime();
            InputBlock b = c.alloc(bytes, 1_000_000_000L);
            b.buffer().put(0, (byte) submitted);
            m.tag = submitted;
            s.submit(b, m);
            callNs += System.nanoTime() - t0;
            ++submitted;
          }
          int n = c.poll(res, 1_000_000_000L);
          for (int i = 0; i < n; ++i) {
            if (!res[i].completed()) ++bad;
            long t0 = System.nanoTime();
            res[i].close();
            callNs += System.nanoTime() - t0;
            res[i] = null;
          }
          done += n;
        }
        double wall = (System.nanoTime() - tStart) / 1e9;
        // The calls alone, no worker wake-ups: alloc + write + free (close of an unsubmitted block).
        long t0 = 0;
        for (long i = 0; i < tiles + warmup; ++i) {
          if (i == warmup) t0 = System.nanoTime();
          InputBlock b = c.alloc(bytes, 1_000_000_000L);
          b.buffer().put(0, (byte) i);
          b.close();
        }
        double allocFreeNs = (double) (System.nanoTime() - t0) / tiles;
        System.out.printf(Locale.ROOT,
            "{\"host\":\"%s\",\"tiles\":%d,\"workers\":%d,\"tiles_per_s\":%.1f,\"call_ns_per_tile\":%.1f,"
                + "\"alloc_free_ns\":%.1f,\"failed\":%d}%n",
            batched ? "java-batched" : "java", tiles, workers, tiles / wall, (double) callNs / tiles, allocFreeNs, bad);
        if (bad != 0) System.exit(1);
      }
    }
  }
}
