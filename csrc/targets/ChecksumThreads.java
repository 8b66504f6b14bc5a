// A JVM target for the real-program suite (tests/test_realprog_threads.py), compiled with javac
// at test time.  It holds a map of N entries (args[1], default 100000) with a CRC32 over every
// entry in key order, and runs W worker threads (args[0], default 20) besides the JVM's own: half
// tick in a short sleep loop (blocked in a nanosleep/futex wait most of the time), half wait on
// a shared monitor that main notifies.  It prints one JSON line "{"ready": true, "sum": ...,
// "threads": W}" and then answers each line on stdin with {"sum": ..., "ticks": [...]}: the sum
// recomputed from the data now, and every worker's tick count (a worker that no longer runs
// stops ticking).  End of stdin ends it.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.zip.CRC32;

public final class ChecksumThreads {
    private static final Object BELL = new Object();

    static String value(int i) {
        StringBuilder b = new StringBuilder();
        long x = i * 2654435761L;
        for (int k = 0; k <= i % 7; k++) {
            b.append(Long.toHexString(x ^ (k * 0x9E3779B97F4A7C15L)));
        }
        return b.toString();
    }

    static String checksum(TreeMap<Integer, String> data) {
        CRC32 crc = new CRC32();
        for (var e : data.entrySet()) {
            crc.update(Integer.toString(e.getKey()).getBytes(StandardCharsets.UTF_8));
            crc.update(e.getValue().getBytes(StandardCharsets.UTF_8));
        }
        return Long.toHexString(crc.getValue()) + ":" + data.size();
    }

    public static void main(String[] args) throws Exception {
        int workers = args.length > 0 ? Integer.parseInt(args[0]) : 20;
        int n = args.length > 1 ? Integer.parseInt(args[1]) : 100000;
        TreeMap<Integer, String> data = new TreeMap<>();
        for (int i = 0; i < n; i++) {
            data.put(i, value(i));
        }
        AtomicLongArray ticks = new AtomicLongArray(workers);
        for (int w = 0; w < workers; w++) {
            final int me = w;
            Thread t = new Thread(() -> {
                try {
                    for (;;) {
                        if (me % 2 == 0) {
                            Thread.sleep(2);
                        } else {
                            synchronized (BELL) {
                                BELL.wait(50);
                            }
                        }
                        ticks.incrementAndGet(me);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }, "worker-" + w);
            t.setDaemon(true);
            t.start();
        }
        String sum = checksum(data);
        System.out.println("{\"ready\": true, \"sum\": \"" + sum + "\", \"threads\": " + workers + "}");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        while (in.readLine() != null) {
            synchronized (BELL) {
                BELL.notifyAll();
            }
            StringBuilder t = new StringBuilder();
            for (int w = 0; w < workers; w++) {
                t.append(w == 0 ? "" : ", ").append(ticks.get(w));
            }
            System.out.println("{\"sum\": \"" + checksum(data) + "\", \"ticks\": [" + t + "]}");
            System.out.flush();
        }
    }
}
