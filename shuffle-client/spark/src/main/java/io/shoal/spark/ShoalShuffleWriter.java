package io.shoal.spark;

import io.shoal.spark.shim.RowChecksums;
import io.shoal.spark.shim.Shims;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Arrays;
import org.apache.spark.Partitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializationStream;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import scala.Option;
import scala.Product2;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * Writes one map task's output: Spark's partitioner, serializer and (when the dependency asks)
 * map-side combine on this side; chunks pushed through the native MapWriter.
 *
 * <p>Invariants:
 *
 * <ul>
 *   <li>Every pushed chunk is a self-contained serialization stream: a reducer deserializes each
 *       chunk on its own, whatever order chunks of different maps arrive in.
 *   <li>Buffered bytes stay under {@code spark.shoal.writer.bufferLimit}: a partition's chunk is
 *       pushed when it reaches {@code spark.shoal.push.chunkSize}, and all are pushed when the total
 *       reaches the limit. The native side bounds the pushes in flight.
 *   <li>The native writer is closed exactly once: by the commit in {@code stop(true)} or the abort
 *       in {@code stop(false)} (also after a failed commit).
 *   <li>A failure fails the task whatever its {@link Remedy}: the native writer has already retried
 *       and relocated its pushes, and a map task has nothing to fetch again; Spark retries the task.
 *   <li>When the dependency asks for row checksums (Spark 4.1+), every input record feeds its
 *       partition's checksum before map-side combine, as in Spark's own writers, and the MapStatus
 *       carries the aggregate: Spark compares it across attempts of a map.
 * </ul>
 *
 * <p>Serializers whose records can be concatenated (Kryo, Spark SQL's UnsafeRow) share one stream,
 * pointed at the record's partition chunk and flushed after each record; others (Java
 * serialization) get one stream per partition, closed at each chunk's end.
 */
final class ShoalShuffleWriter<K, V, C> extends ShuffleWriter<K, V> {
  private static final ClassTag<Object> ANY = ClassTag$.MODULE$.Any();

  private final ShoalShuffleHandle<K, V, C> handle;
  private final ShuffleDependency<K, V, C> dep;
  private final long mapTaskId;
  private final TaskContext context;
  private final ShuffleWriteMetricsReporter metrics;
  private final int generation;
  private final int numPartitions;
  private final SerializerInstance ser;
  private final boolean relocatable;
  private final Chunk[] chunks;
  private final SerializationStream[] streams;
  private final RowChecksums checksums;
  /** Where the shared stream's bytes go: the chunk of the record being written. */
  private final Redirect target = new Redirect();
  private SerializationStream shared;
  private ByteBuffer direct;
  private long buffered;
  private long writer;
  private boolean closed;
  private long[] lengths;

  ShoalShuffleWriter(
      ShoalShuffleHandle<K, V, C> handle, long mapTaskId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
    this.handle = handle;
    this.dep = handle.dependency();
    this.mapTaskId = mapTaskId;
    this.context = context;
    this.metrics = metrics;
    this.generation = context.stageAttemptNumber();
    this.numPartitions = handle.numPartitions;
    Serializer s = dep.serializer();
    this.ser = s.newInstance();
    this.relocatable = s.supportsRelocationOfSerializedObjects();
    this.chunks = new Chunk[numPartitions];
    this.streams = relocatable ? null : new SerializationStream[numPartitions];
    this.lengths = new long[numPartitions];
    this.checksums = Shims.get().rowChecksums(dep);
  }

  private long nativeWriter() throws ShoalException {
    if (writer == 0 && !closed) {
      long start = System.nanoTime();
      writer =
          ShoalNative.writerOpen(
              handle.client(),
              handle.appId,
              handle.shuffleId(),
              generation,
              handle.numMaps,
              numPartitions,
              handle.conf.replication,
              context.partitionId(),
              mapTaskId);
      metrics.incWriteTime(System.nanoTime() - start);
    }
    return writer;
  }

  @Override
  @SuppressWarnings("unchecked")
  public void write(scala.collection.Iterator<Product2<K, V>> records) throws IOException {
    if (numPartitions == 0) {
      return;
    }
    Partitioner partitioner = dep.partitioner();
    scala.collection.Iterator<? extends Product2<K, ?>> it = records;
    boolean sumHere = checksums.enabled();
    if (dep.mapSideCombine()) {
      if (dep.aggregator().isEmpty()) {
        throw new IllegalStateException("map-side combine without an aggregator");
      }
      if (sumHere) {
        // The checksum covers the map's input records, not the combined ones.
        records = new Summed<>(records, partitioner, checksums);
        sumHere = false;
      }
      it = dep.aggregator().get().combineValuesByKey(records, context);
    }
    nativeWriter();
    while (it.hasNext()) {
      Product2<K, ?> r = it.next();
      int p = partitioner.getPartition(r._1());
      if (sumHere) {
        checksums.update(p, r._1(), r._2());
      }
      append(p, r._1(), r._2());
      metrics.incRecordsWritten(1);
    }
  }

  /** Passes records through, feeding each to its partition's row checksum. */
  static final class Summed<K, V> extends scala.collection.AbstractIterator<Product2<K, V>> {
    private final scala.collection.Iterator<Product2<K, V>> in;
    private final Partitioner partitioner;
    private final RowChecksums checksums;

    Summed(scala.collection.Iterator<Product2<K, V>> in, Partitioner partitioner, RowChecksums checksums) {
      this.in = in;
      this.partitioner = partitioner;
      this.checksums = checksums;
    }

    @Override
    public boolean hasNext() {
      return in.hasNext();
    }

    @Override
    public Product2<K, V> next() {
      Product2<K, V> r = in.next();
      checksums.update(partitioner.getPartition(r._1()), r._1(), r._2());
      return r;
    }
  }

  private void append(int p, Object key, Object value) throws IOException {
    Chunk c = chunks[p];
    if (c == null) {
      c = chunks[p] = new Chunk();
    }
    int before = c.size();
    if (relocatable) {
      if (shared == null) {
        shared = ser.serializeStream(target);
      }
      // The record goes straight into its partition's chunk: the flush empties the stream's
      // own buffer into whichever chunk is the target now.
      target.to = c;
      shared.writeKey(key, ANY);
      shared.writeValue(value, ANY);
      shared.flush();
    } else {
      SerializationStream s = streams[p];
      if (s == null) {
        s = streams[p] = ser.serializeStream(c);
      }
      s.writeKey(key, ANY);
      s.writeValue(value, ANY);
    }
    buffered += c.size() - before;
    if (c.size() >= handle.conf.chunkSize) {
      push(p);
    } else if (buffered >= handle.conf.bufferLimit) {
      for (int i = 0; i < numPartitions; i++) {
        push(i);
      }
    }
  }

  /** Ends partition p's current chunk and pushes it. */
  private void push(int p) throws IOException {
    Chunk c = chunks[p];
    if (c == null) {
      return;
    }
    if (!relocatable && streams[p] != null) {
      streams[p].close();
      streams[p] = null;
    }
    int n = c.size();
    if (n == 0) {
      return;
    }
    if (n > ShoalConf.MAX_CHUNK) {
      throw new ShoalConfigException(
          "a chunk of " + n + " bytes exceeds Shoal's 64 MiB batch limit (one record is too large)");
    }
    if (direct == null || direct.capacity() < n) {
      direct = ByteBuffer.allocateDirect(Math.max(n, handle.conf.chunkSize + (handle.conf.chunkSize >> 2)));
    }
    direct.clear();
    direct.put(c.array(), 0, n);
    long start = System.nanoTime();
    ShoalNative.writerWrite(nativeWriter(), p, direct, 0, n);
    metrics.incWriteTime(System.nanoTime() - start);
    buffered -= n;
    // A chunk that grew far past the chunk size (one large record) is not kept around.
    if (c.capacity() > 4 * handle.conf.chunkSize) {
      chunks[p] = null;
    } else {
      c.reset();
    }
  }

  @Override
  public Option<MapStatus> stop(boolean success) {
    if (closed) {
      return Option.empty();
    }
    try {
      if (!success) {
        abort();
        return Option.empty();
      }
      if (numPartitions == 0) {
        closed = true;
        return Option.apply(
            Shims.get()
                .mapStatus(
                    ShoalShuffleHandle.location(handle.shuffleId(), generation), lengths, mapTaskId, checksums.value()));
      }
      for (int p = 0; p < numPartitions; p++) {
        push(p);
      }
      long h = nativeWriter();
      long start = System.nanoTime();
      long[] r = ShoalNative.writerCommit(h);
      closed = true;
      writer = 0;
      metrics.incWriteTime(System.nanoTime() - start);
      metrics.incBytesWritten(r[1]);
      lengths = Arrays.copyOfRange(r, 2, r.length);
      if (lengths.length != numPartitions) {
        throw new ShoalInternalException("commit returned " + lengths.length + " partition sizes, not " + numPartitions);
      }
      MapStatus status =
          Shims.get()
              .mapStatus(
                  ShoalShuffleHandle.location(handle.shuffleId(), generation), lengths, mapTaskId, checksums.value());
      return Option.apply(status);
    } catch (IOException e) {
      abort();
      throw sneaky(e);
    } finally {
      Arrays.fill(chunks, null);
      direct = null;
    }
  }

  private void abort() {
    if (!closed) {
      closed = true;
      if (writer != 0) {
        try {
          ShoalNative.writerAbort(writer);
        } catch (ShoalException ignored) {
          // Already closed by a failed commit: nothing left to release.
        }
        writer = 0;
      }
    }
  }

  @Override
  public long[] getPartitionLengths() {
    return lengths;
  }

  @SuppressWarnings("unchecked")
  static <E extends Throwable> RuntimeException sneaky(Throwable e) throws E {
    throw (E) e;
  }

  /** An OutputStream that forwards to a target the writer switches between records. */
  static final class Redirect extends java.io.OutputStream {
    java.io.OutputStream to = java.io.OutputStream.nullOutputStream();

    @Override
    public void write(int b) throws IOException {
      to.write(b);
    }

    @Override
    public void write(byte[] b, int off, int len) throws IOException {
      to.write(b, off, len);
    }
  }

  /** A growable byte buffer whose array the writer reads without copying. */
  static final class Chunk extends ByteArrayOutputStream {
    Chunk() {
      super(1024);
    }

    byte[] array() {
      return buf;
    }

    int capacity() {
      return buf.length;
    }
  }
}
