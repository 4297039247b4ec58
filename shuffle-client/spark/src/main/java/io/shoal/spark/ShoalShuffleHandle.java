package io.shoal.spark;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;
import org.apache.spark.storage.BlockManagerId;
import scala.Option;

/**
 * What executors need of a shuffle: its application, shape and settings.
 *
 * <p>A map stage attempt writes generation {@code stageAttemptNumber}; its MapStatus names the
 * generation in a synthetic location {@code shoal-<shuffle>-<generation>} (no executor holds the
 * data, so executor loss never unregisters it). A reducer reads each map from the generation its
 * MapStatus names, so outputs of different stage attempts never mix. On lost data the reducer
 * throws FetchFailed naming that location, and Spark unregisters exactly that generation's
 * outputs and runs those maps again under a new attempt.
 */
public class ShoalShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  static final String EXECUTOR_PREFIX = "shoal-";
  static final String HOST = "shoal";

  final String appId;
  final int numMaps;
  final int numPartitions;
  final ShoalConf conf;
  /** The application's Shoal token: what executors present to the masters. */
  final String appToken;

  ShoalShuffleHandle(
      int shuffleId,
      ShuffleDependency<K, V, C> dependency,
      String appId,
      int numMaps,
      int numPartitions,
      ShoalConf conf,
      String appToken) {
    super(shuffleId, dependency);
    this.appId = appId;
    this.numMaps = numMaps;
    this.numPartitions = numPartitions;
    this.conf = conf;
    this.appToken = appToken;
  }

  /** This process's client, speaking for the handle's application. */
  long client() throws ShoalException {
    return ShoalApp.client(conf, appToken);
  }

  @Override
  public String toString() {
    // The token stays out of logs.
    return "ShoalShuffleHandle(" + shuffleId() + ", " + appId + ")";
  }

  /** The location a MapStatus of this generation names. */
  static BlockManagerId location(int shuffleId, int generation) {
    return BlockManagerId.apply(EXECUTOR_PREFIX + shuffleId + "-" + generation, HOST, 1, Option.empty());
  }

  /** The generation a location names, or -1 if it is not a Shoal location of this shuffle. */
  static int generationOf(BlockManagerId id, int shuffleId) {
    String exec = id.executorId();
    String prefix = EXECUTOR_PREFIX + shuffleId + "-";
    if (!exec.startsWith(prefix)) {
      return -1;
    }
    try {
      return Integer.parseInt(exec.substring(prefix.length()));
    } catch (NumberFormatException e) {
      return -1;
    }
  }
}
