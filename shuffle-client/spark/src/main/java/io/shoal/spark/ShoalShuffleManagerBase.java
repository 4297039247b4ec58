package io.shoal.spark;

import io.shoal.spark.shim.Shims;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleManager;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;

/**
 * Everything of Shoal's shuffle manager; {@link ShoalShuffleManager} (Spark 4.3, where Spark
 * requires a {@code BlockingShuffleManager}) and {@link ShoalShuffleManagerPre43} (Spark 3.5 to
 * 4.2, which have no such interface) only add the interface Spark checks for. The constructor
 * refuses a Spark version Shoal does not support, with one line naming the supported ones.
 */
abstract class ShoalShuffleManagerBase implements ShuffleManager {
  private final SparkConf sparkConf;
  private final boolean isDriver;
  private final ShoalConf conf;
  private final ShuffleBlockResolver resolver;

  ShoalShuffleManagerBase(SparkConf sparkConf, boolean isDriver) {
    // Fails here, before any shuffle, on a Spark line without a shim.
    this.resolver = Shims.get().noLocalBlocks();
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

  /** Declared by ShuffleManager up to Spark 4.2 and by BlockingShuffleManager in 4.3. */
  public ShuffleBlockResolver shuffleBlockResolver() {
    return resolver;
  }

  @Override
  public void stop() {
    if (isDriver) {
      ShoalApp.unregister();
    }
  }
}
