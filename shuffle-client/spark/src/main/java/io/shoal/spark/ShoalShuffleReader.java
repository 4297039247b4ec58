package io.shoal.spark;

import io.shoal.spark.shim.Shims;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.DeserializationStream;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockId;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.AbstractIterator;
import scala.math.Ordering;

/**
 * Reads partitions {@code [startPartition, endPartition)} of maps {@code [startMap, endMap)}.
 *
 * <p>Which maps to read, and from which generation, comes from Spark's MapOutputTracker: a map
 * with a zero size for a partition is skipped, and each map is read from the generation its
 * MapStatus names, so a reducer never mixes stage attempts. Aggregation and key ordering follow
 * Spark's own reader. A failed read is decided by its {@link Remedy}: data that is gone
 * ({@code RECOMPUTE}), or that the native reader could not reach within its own retries and
 * re-planning ({@code RETRY_LATER}, {@code RELOCATE}), becomes a FetchFailedException naming the
 * generation's location, so Spark re-runs those maps; {@code FAIL} fails the task.
 */
final class ShoalShuffleReader<K, C> implements ShuffleReader<K, C> {
  private final ShoalShuffleHandle<K, ?, C> handle;
  private final int startMap;
  private final int endMap;
  private final int startPartition;
  private final int endPartition;
  private final TaskContext context;
  private final ShuffleReadMetricsReporter metrics;

  ShoalShuffleReader(
      ShoalShuffleHandle<K, ?, C> handle,
      int startMap,
      int endMap,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    this.handle = handle;
    this.startMap = startMap;
    this.endMap = endMap;
    this.startPartition = startPartition;
    this.endPartition = endPartition;
    this.context = context;
    this.metrics = metrics;
  }

  /** One native read: a partition of one generation over exactly these maps. */
  static final class Read {
    final int partition;
    final int generation;
    final int[] maps;

    Read(int partition, int generation, int[] maps) {
      this.partition = partition;
      this.generation = generation;
      this.maps = maps;
    }
  }

  /** Groups the tracker's non-empty blocks into reads, in partition order. */
  List<Read> plan() {
    int sid = handle.shuffleId();
    // partition -> generation -> maps
    TreeMap<Integer, TreeMap<Integer, List<Integer>>> byPartition = new TreeMap<>();
    scala.collection.Iterator<Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>>> it =
        SparkEnv.get().mapOutputTracker().getMapSizesByExecutorId(sid, startMap, endMap, startPartition, endPartition);
    while (it.hasNext()) {
      Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>> loc = it.next();
      int gen = ShoalShuffleHandle.generationOf(loc._1(), sid);
      if (gen < 0) {
        throw new IllegalStateException("shuffle " + sid + " has map output at " + loc._1() + ", not in Shoal");
      }
      scala.collection.Iterator<Tuple3<BlockId, Object, Object>> blocks = loc._2().iterator();
      while (blocks.hasNext()) {
        Tuple3<BlockId, Object, Object> b = blocks.next();
        int reduceId = reduceIdOf(b._1());
        int mapIndex = (Integer) b._3();
        byPartition
            .computeIfAbsent(reduceId, k -> new TreeMap<>())
            .computeIfAbsent(gen, k -> new ArrayList<>())
            .add(mapIndex);
      }
    }
    List<Read> reads = new ArrayList<>();
    for (Map.Entry<Integer, TreeMap<Integer, List<Integer>>> p : byPartition.entrySet()) {
      for (Map.Entry<Integer, List<Integer>> g : p.getValue().entrySet()) {
        int[] maps = g.getValue().stream().mapToInt(Integer::intValue).sorted().distinct().toArray();
        reads.add(new Read(p.getKey(), g.getKey(), maps));
      }
    }
    return reads;
  }

  private static int reduceIdOf(BlockId id) {
    if (!(id instanceof ShuffleBlockId)) {
      throw new IllegalStateException("unexpected block " + id + " in a Shoal shuffle");
    }
    return ((ShuffleBlockId) id).reduceId();
  }

  @Override
  @SuppressWarnings("unchecked")
  public scala.collection.Iterator<Product2<K, C>> read() {
    ShuffleDependency<K, ?, C> dep = (ShuffleDependency<K, ?, C>) handle.dependency();
    Records records = new Records(plan(), dep.serializer().newInstance());
    context.addTaskCompletionListener((org.apache.spark.util.TaskCompletionListener) ctx -> records.finish());
    scala.collection.Iterator<Product2<K, Object>> raw =
        new InterruptibleIterator<>(context, (scala.collection.Iterator<Product2<K, Object>>) (Object) records);
    scala.collection.Iterator<Product2<K, C>> aggregated;
    if (dep.aggregator().isDefined()) {
      if (dep.mapSideCombine()) {
        aggregated =
            (scala.collection.Iterator<Product2<K, C>>)
                (Object) dep.aggregator().get().combineCombinersByKey((scala.collection.Iterator) raw, context);
      } else {
        aggregated =
            (scala.collection.Iterator<Product2<K, C>>)
                (Object) dep.aggregator().get().combineValuesByKey((scala.collection.Iterator) raw, context);
      }
    } else {
      aggregated = (scala.collection.Iterator<Product2<K, C>>) (Object) raw;
    }
    Option<Ordering<K>> ordering = dep.keyOrdering();
    if (ordering.isDefined()) {
      return new InterruptibleIterator<>(
          context, Shims.get().sortByKey(context, ordering.get(), dep.serializer(), aggregated));
    }
    if (aggregated instanceof InterruptibleIterator) {
      return aggregated;
    }
    return new InterruptibleIterator<>(context, aggregated);
  }

  /** The records of every read in turn, one chunk (a serialization stream) at a time. */
  private final class Records extends AbstractIterator<Product2<Object, Object>> {
    private final List<Read> reads;
    private final SerializerInstance ser;
    private int next;
    private Read current;
    private long reader;
    private ByteBuffer buf = ByteBuffer.allocateDirect(handle.conf.chunkSize + (handle.conf.chunkSize >> 2));
    private scala.collection.Iterator<Tuple2<Object, Object>> chunk;
    private boolean closed;
    private boolean merged;
    private long waitNanos;

    Records(List<Read> reads, SerializerInstance ser) {
      this.reads = reads;
      this.ser = ser;
    }

    @Override
    public boolean hasNext() {
      try {
        while (chunk == null || !chunk.hasNext()) {
          if (!nextChunk()) {
            finish();
            return false;
          }
        }
        return true;
      } catch (ShoalException e) {
        close();
        throw ShoalShuffleWriter.sneaky(failure(e));
      }
    }

    @Override
    public Product2<Object, Object> next() {
      if (!hasNext()) {
        throw new java.util.NoSuchElementException();
      }
      metrics.incRecordsRead(1);
      return chunk.next();
    }

    /** Moves to the next chunk; false when every read is done. */
    private boolean nextChunk() throws ShoalException {
      while (true) {
        if (reader == 0) {
          if (next >= reads.size()) {
            return false;
          }
          current = reads.get(next++);
          reader =
              ShoalNative.readerOpen(
                  handle.client(),
                  handle.appId,
                  handle.shuffleId(),
                  current.generation,
                  current.partition,
                  current.maps);
        }
        long start = System.nanoTime();
        int n = ShoalNative.readerNext(reader, buf);
        waitNanos += System.nanoTime() - start;
        if (n < -1) {
          buf = ByteBuffer.allocateDirect(-n);
          continue;
        }
        if (n == -1) {
          long r = reader;
          reader = 0;
          ShoalNative.readerClose(r);
          metrics.incRemoteBlocksFetched(current.maps.length);
          continue;
        }
        metrics.incRemoteBytesRead(n);
        ByteBuffer view = buf.duplicate();
        view.position(0).limit(n);
        DeserializationStream d = ser.deserializeStream(new BufferInput(view));
        chunk = d.asKeyValueIterator();
        return true;
      }
    }

    private Throwable failure(ShoalException e) {
      if (current == null) {
        return e;
      }
      switch (e.remedy()) {
        case RECOMPUTE:
        case RETRY_LATER:
        case RELOCATE:
          // The native reader already retried and planned again: what it still cannot serve is
          // written again under a new generation, wherever the cluster places it now.
          break;
        case FAIL:
        default:
          return e;
      }
      return new FetchFailedException(
          ShoalShuffleHandle.location(handle.shuffleId(), current.generation),
          handle.shuffleId(),
          -1L,
          -1,
          current.partition,
          "Shoal: " + e.getMessage(),
          e);
    }

    void finish() {
      close();
      if (!merged) {
        merged = true;
        metrics.incFetchWaitTime(waitNanos / 1_000_000);
        context.taskMetrics().mergeShuffleReadMetrics();
      }
    }

    void close() {
      if (!closed) {
        closed = true;
        next = reads.size();
        chunk = null;
        if (reader != 0) {
          long r = reader;
          reader = 0;
          try {
            ShoalNative.readerClose(r);
          } catch (ShoalException ignored) {
            // Closed already: nothing to release.
          }
        }
      }
    }
  }

  /** An InputStream over a ByteBuffer's remaining bytes, without copying them to the heap first. */
  static final class BufferInput extends InputStream {
    private final ByteBuffer b;

    BufferInput(ByteBuffer b) {
      this.b = b;
    }

    @Override
    public int read() {
      return b.hasRemaining() ? b.get() & 0xff : -1;
    }

    @Override
    public int read(byte[] dst, int off, int len) {
      if (len == 0) {
        return 0;
      }
      if (!b.hasRemaining()) {
        return -1;
      }
      int n = Math.min(len, b.remaining());
      b.get(dst, off, n);
      return n;
    }

    @Override
    public int available() {
      return b.remaining();
    }

    @Override
    public long skip(long n) {
      int k = (int) Math.min(n, b.remaining());
      b.position(b.position() + k);
      return k;
    }
  }
}
