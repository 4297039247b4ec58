package io.shoal.spark;

import java.util.Collections;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.api.ShuffleMapOutputWriter;

/**
 * {@code spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO}: tells Spark that
 * shuffle data outlives executors ({@code supportsReliableStorage}), which lets dynamic allocation
 * run without an external shuffle service or shuffle tracking and keeps map outputs registered
 * when executors go; registers the application in Shoal and removes its shuffles there.
 */
public class ShoalShuffleDataIO implements ShuffleDataIO {
  private final SparkConf sparkConf;

  public ShoalShuffleDataIO(SparkConf sparkConf) {
    this.sparkConf = sparkConf;
  }

  @Override
  public ShuffleExecutorComponents executor() {
    return new Executor();
  }

  @Override
  public ShuffleDriverComponents driver() {
    return new Driver(sparkConf);
  }

  static final class Driver implements ShuffleDriverComponents {
    private final SparkConf sparkConf;

    Driver(SparkConf sparkConf) {
      this.sparkConf = sparkConf;
    }

    @Override
    public Map<String, String> initializeApplication() {
      try {
        ShoalApp.register(sparkConf, new ShoalConf(sparkConf));
      } catch (ShoalException e) {
        throw new IllegalStateException("cannot register the application with Shoal: " + e.getMessage(), e);
      }
      return Collections.emptyMap();
    }

    @Override
    public void cleanupApplication() {
      ShoalApp.unregister();
    }

    @Override
    public void removeShuffle(int shuffleId, boolean blocking) {
      ShoalApp.removeShuffle(shuffleId);
    }

    @Override
    public boolean supportsReliableStorage() {
      return true;
    }
  }

  /** Map output goes through the Shoal shuffle manager's writer, never through these. */
  static final class Executor implements ShuffleExecutorComponents {
    @Override
    public void initializeExecutor(String appId, String execId, Map<String, String> extraConfigs) {}

    @Override
    public ShuffleMapOutputWriter createMapOutputWriter(int shuffleId, long mapTaskId, int numPartitions) {
      throw new UnsupportedOperationException(
          "ShoalShuffleDataIO needs spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager"
              + " (Spark 4.3) or io.shoal.spark.ShoalShuffleManagerPre43 (Spark 3.5 to 4.2)");
    }
  }
}
