package io.shoal.spark;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.shuffle.MergedBlockMeta;
import org.apache.spark.shuffle.BlockingShuffleManager;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.ShuffleMergedBlockId;
import scala.Option;
import scala.collection.immutable.Seq;

/**
 * Spark's shuffle manager for Shoal: {@code spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager}.
 * Map output goes to the Shoal workers that own each partition, not to executor disks, so
 * executors may go away as soon as their tasks end. Pair it with
 * {@code spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO}, which tells Spark
 * the storage is reliable (dynamic allocation without an external shuffle service) and ties the
 * application's lifetime in Shoal to the driver.
 */
public class ShoalShuffleManager implements BlockingShuffleManager {
  private final SparkConf sparkConf;
  private final boolean isDriver;
  private final ShoalConf conf;
  private final ShuffleBlockResolver resolver = new NoLocalBlocks();

  public ShoalShuffleManager(SparkConf sparkConf, boolean isDriver) {
    this.sparkConf = sparkConf;
    this.isDriver = isDriver;
    this.conf = new ShoalConf(sparkConf);
  }

  @Override
  public <K, V, C> ShuffleHandle registerShuffle(int shuffleId, ShuffleDependency<K, V, C> dependency) {
    int numMaps = dependency.rdd().partitions().length;
    int numPartitions = dependency.partitioner().numPartitions();
    String app = SparkEnv.get().conf().getAppId();
    if (numPartitions > 0) {
      try {
        // The driver may not have gone through ShoalShuffleDataIO (not configured): make sure the
        // application is known before its first shuffle.
        ShoalApp.register(SparkEnv.get().conf(), conf);
        ShoalNative.registerShuffle(ShoalApp.client(conf), app, shuffleId, 0, numMaps, numPartitions, conf.replication);
      } catch (ShoalException e) {
        throw new IllegalStateException("Shoal refused shuffle " + shuffleId + ": " + e.getMessage(), e);
      }
    }
    return new ShoalShuffleHandle<>(shuffleId, dependency, app, numMaps, numPartitions, conf, ShoalApp.appToken());
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, V> ShuffleWriter<K, V> getWriter(
      ShuffleHandle handle, long mapId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
    return new ShoalShuffleWriter<>((ShoalShuffleHandle<K, V, ?>) handle, mapId, context, metrics);
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, C> ShuffleReader<K, C> getReader(
      ShuffleHandle handle,
      int startMapIndex,
      int endMapIndex,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    return new ShoalShuffleReader<>(
        (ShoalShuffleHandle<K, ?, C>) handle, startMapIndex, endMapIndex, startPartition, endPartition, context, metrics);
  }

  @Override
  public boolean unregisterShuffle(int shuffleId) {
    // Shoal's copy goes with ShoalShuffleDataIO's removeShuffle, on the driver; here only what
    // this process cached of it.
    ShoalApp.forgetShuffle(shuffleId);
    return true;
  }

  @Override
  public ShuffleBlockResolver shuffleBlockResolver() {
    return resolver;
  }

  @Override
  public void stop() {
    if (isDriver) {
      ShoalApp.unregister();
    }
  }

  /** Shoal keeps no shuffle blocks in the executor's block manager. */
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
