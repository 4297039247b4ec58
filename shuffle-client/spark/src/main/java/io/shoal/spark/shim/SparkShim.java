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
 * The Spark APIs whose binary signatures differ between the Spark lines Shoal supports. Each
 * implementation is compiled by {@code build.sh} against its own line's jars; {@link Shims}
 * picks one at run time. Everything else in the plugin is compiled once and links unchanged on
 * every line.
 */
public interface SparkShim {
  /**
   * The MapStatus a map task reports, with its row checksum (an argument since 4.1; earlier lines
   * have no place for it and drop it).
   */
  MapStatus mapStatus(BlockManagerId location, long[] partitionLengths, long mapTaskId, long rowChecksum);

  /** The row checksums a map task of this dependency feeds: {@link RowChecksums#NONE} before 4.1. */
  RowChecksums rowChecksums(ShuffleDependency<?, ?, ?> dependency);

  /**
   * The records sorted by key, spilling as needed, with the reader's metrics updated, as Spark's
   * own reader sorts them (ExternalSorter's constructor gained row checksums in 4.1).
   */
  <K, C> Iterator<Product2<K, C>> sortByKey(
      TaskContext context, Ordering<K> ordering, Serializer serializer, Iterator<Product2<K, C>> records);

  /**
   * A block resolver that serves nothing: Shoal keeps no shuffle blocks in executors. Its
   * signatures name Scala's {@code Seq}, a different class in Scala 2.12 and 2.13.
   */
  ShuffleBlockResolver noLocalBlocks();
}
