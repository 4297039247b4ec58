package io.shoal.spark.shim;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.shuffle.MergedBlockMeta;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.scheduler.MapStatus$;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleMergedBlockId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;
import scala.collection.Iterator;
import scala.collection.Seq;
import scala.math.Ordering;

/** Spark 3.5 (Scala 2.12): compiled by build.sh against Spark 3.5's jars. */
public final class Spark35 implements SparkShim {
  @Override
  public MapStatus mapStatus(BlockManagerId location, long[] partitionLengths, long mapTaskId, long rowChecksum) {
    return MapStatus$.MODULE$.apply(location, partitionLengths, mapTaskId);
  }

  @Override
  public RowChecksums rowChecksums(ShuffleDependency<?, ?, ?> dependency) {
    return RowChecksums.NONE;
  }

  @Override
  public <K, C> Iterator<Product2<K, C>> sortByKey(
      TaskContext context, Ordering<K> ordering, Serializer serializer, Iterator<Product2<K, C>> records) {
    ExternalSorter<K, C, C> sorter =
        new ExternalSorter<>(context, Option.empty(), Option.empty(), Option.apply(ordering), serializer);
    return sorter.insertAllAndUpdateMetrics(records);
  }

  @Override
  public ShuffleBlockResolver noLocalBlocks() {
    return new NoLocalBlocks();
  }

  /** {@code getMergedBlockData} returns Scala 2.12's {@code scala.collection.Seq}. */
  private static final class NoLocalBlocks implements ShuffleBlockResolver {
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
