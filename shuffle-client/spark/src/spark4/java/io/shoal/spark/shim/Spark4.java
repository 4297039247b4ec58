package io.shoal.spark.shim;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.shuffle.MergedBlockMeta;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.scheduler.MapStatus$;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.checksum.RowBasedChecksum;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleMergedBlockId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;
import scala.collection.Iterator;
import scala.collection.immutable.Seq;
import scala.math.Ordering;

/**
 * Spark 4.1 to 4.3 (Scala 2.13): compiled by build.sh against the newest of them; the signatures
 * used here (MapStatus with a row checksum, RowBasedChecksum, ExternalSorter) are the same in 4.1,
 * 4.2 and 4.3.
 */
public final class Spark4 implements SparkShim {
  @Override
  public MapStatus mapStatus(BlockManagerId location, long[] partitionLengths, long mapTaskId, long rowChecksum) {
    return MapStatus$.MODULE$.apply(location, partitionLengths, mapTaskId, rowChecksum);
  }

  @Override
  public RowChecksums rowChecksums(ShuffleDependency<?, ?, ?> dependency) {
    RowBasedChecksum[] sums = dependency.rowBasedChecksums();
    return sums == null || sums.length == 0 ? RowChecksums.NONE : new Rows(sums);
  }

  /**
   * The dependency's own checksum objects, one per reduce partition. Each task deserializes its
   * own copy of the dependency, so they start empty for every attempt.
   */
  static final class Rows implements RowChecksums {
    private final RowBasedChecksum[] sums;

    Rows(RowBasedChecksum[] sums) {
      this.sums = sums;
    }

    @Override
    public boolean enabled() {
      return true;
    }

    @Override
    public void update(int partition, Object key, Object value) {
      sums[partition].update(key, value);
    }

    @Override
    public long value() {
      return RowBasedChecksum.getAggregatedChecksumValue(sums);
    }
  }

  @Override
  public <K, C> Iterator<Product2<K, C>> sortByKey(
      TaskContext context, Ordering<K> ordering, Serializer serializer, Iterator<Product2<K, C>> records) {
    ExternalSorter<K, C, C> sorter =
        new ExternalSorter<>(
            context,
            Option.empty(),
            Option.empty(),
            Option.apply(ordering),
            serializer,
            ExternalSorter.$lessinit$greater$default$6());
    return sorter.insertAllAndUpdateMetrics(records);
  }

  @Override
  public ShuffleBlockResolver noLocalBlocks() {
    return new NoLocalBlocks();
  }

  /** {@code getMergedBlockData} returns Scala 2.13's {@code scala.collection.immutable.Seq}. */
  static final class NoLocalBlocks implements ShuffleBlockResolver {
    @Override
    public ManagedBuffer getBlockData(BlockId blockId, Option<String[]> dirs) {
      throw new UnsupportedOperationException("Shoal shuffle blocks are served by Shoal workers, not " + blockId);
    }

    @Override
    public Seq<ManagedBuffer> getMergedBlockData(ShuffleMergedBlockId blockId, Option<String[]> dirs) {
      throw new UnsupportedOperationException("push-based shuffle merging is not used with Shoal");
    }

    @Override
    public MergedBlockMeta getMergedBlockMeta(ShuffleMergedBlockId blockId, Option<String[]> dirs) {
      throw new UnsupportedOperationException("push-based shuffle merging is not used with Shoal");
    }

    @Override
    public void stop() {}
  }
}
