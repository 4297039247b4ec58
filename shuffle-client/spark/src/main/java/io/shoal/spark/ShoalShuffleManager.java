package io.shoal.spark;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.BlockingShuffleManager;

/**
 * Spark's shuffle manager for Shoal on Spark 4.3:
 * {@code spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager} (Spark 3.5 to 4.2 use
 * {@link ShoalShuffleManagerPre43}). Map output goes to the Shoal workers that own each
 * partition, not to executor disks, so executors may go away as soon as their tasks end. Pair it
 * with {@code spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO}, which tells
 * Spark the storage is reliable (dynamic allocation without an external shuffle service) and ties
 * the application's lifetime in Shoal to the driver.
 *
 * <p>Spark 4.3 accepts only a {@code BlockingShuffleManager} here, an interface earlier lines do
 * not have; a class naming it cannot load on them, hence the second class.
 */
public class ShoalShuffleManager extends ShoalShuffleManagerBase implements BlockingShuffleManager {
  public ShoalShuffleManager(SparkConf sparkConf, boolean isDriver) {
    super(sparkConf, isDriver);
  }
}
