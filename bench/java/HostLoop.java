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
 *   java -cp bench-host-loop.jar:tessera.jar:jna.jar HostLoop WORKER_EXE TILES WORKERS
 */
public final class HostLoop {
  public static void main(String[] args) {
    String worker = args[0];
    long tiles = Long.parseLong(args[1]);
    int workers = Integer.parseInt(args[2]);
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
        long submitted = 0, done = 0, bad = 0, callNs = 0, tStart = 0;
        final long total = tiles + warmup;
        while (done < total) {
          if (done >= warmup && tStart == 0) {
            tStart = System.nanoTime();
            callNs = 0;
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
        System.out.printf(Locale.ROOT,
            "{\"host\":\"java\",\"tiles\":%d,\"workers\":%d,\"tiles_per_s\":%.1f,\"call_ns_per_tile\":%.1f,\"failed\":%d}%n",
            tiles, workers, tiles / wall, (double) callNs / tiles, bad);
        if (bad != 0) System.exit(1);
      }
    }
  }
}
