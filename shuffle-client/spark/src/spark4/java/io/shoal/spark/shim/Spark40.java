package io.shoal.spark.shim;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.storage.BlockManagerId;
import scala.Product2;
import scala.collection.Iterator;
import scala.math.Ordering;

/**
 * Spark 4.0: Scala 2.13 like 4.1+, but MapStatus and ExternalSorter still have 3.5's signatures
 * (no checksums). Those two come from {@link Spark35}, whose calls name no Scala collection and so
 * link the same on 4.0; the block resolver comes from {@link Spark4}. This spares the build a
 * third Spark download.
 */
public final class Spark40 implements SparkShim {
  private final SparkShim beforeChecksums = new Spark35();
  private final SparkShim scala213 = new Spark4();

  @Override
  public MapStatus mapStatus(BlockManagerId location, long[] partitionLengths, long mapTaskId, long rowChecksum) {
    return beforeChecksums.mapStatus(location, partitionLengths, mapTaskId, rowChecksum);
  }

  @Override
  public RowChecksums rowChecksums(ShuffleDependency<?, ?, ?> dependency) {
    return RowChecksums.NONE;
  }

  @Override
  public <K, C> Iterator<Product2<K, C>> sortByKey(
      TaskContext context, Ordering<K> ordering, Serializer serializer, Iterator<Product2<K, C>> records) {
    return beforeChecksums.sortByKey(context, ordering, serializer, records);
  }

  @Override
  public ShuffleBlockResolver noLocalBlocks() {
    return scala213.noLocalBlocks();
  }
}
