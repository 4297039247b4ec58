package io.shoal.spark;

import org.apache.spark.SparkConf;

/**
 * Spark's shuffle manager for Shoal on Spark 3.5, 4.0, 4.1 and 4.2:
 * {@code spark.shuffle.manager=io.shoal.spark.ShoalShuffleManagerPre43}. The same manager as
 * {@link ShoalShuffleManager}, without Spark 4.3's {@code BlockingShuffleManager} interface, which
 * these lines do not have (their ShuffleManager declares {@code shuffleBlockResolver} itself).
 */
public class ShoalShuffleManagerPre43 extends ShoalShuffleManagerBase {
  public ShoalShuffleManagerPre43(SparkConf sparkConf, boolean isDriver) {
    super(sparkConf, isDriver);
    if (blockingManagerRequired()) {
      throw new IllegalStateException(
          "Spark " + io.shoal.spark.shim.Shims.sparkVersion()
              + " needs spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager, not " + getClass().getName());
    }
  }

  /** Spark 4.3 and later refuse any shuffle manager that is not a BlockingShuffleManager. */
  private static boolean blockingManagerRequired() {
    try {
      Class.forName("org.apache.spark.shuffle.BlockingShuffleManager", false, SparkConf.class.getClassLoader());
      return true;
    } catch (ClassNotFoundException e) {
      return false;
    }
  }
}
