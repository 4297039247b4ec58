package io.shoal.spark.shim;

/**
 * Spark's order-independent checksum of one map task's output rows (Spark 4.1+,
 * {@code spark.sql.shuffle.orderIndependentChecksum.enabled}): one running checksum per reduce
 * partition, fed every record the map writes, before map-side combine, as Spark's own writers
 * feed it. The aggregate goes into the task's MapStatus; when a retried map reports a different
 * value, Spark knows the map is not deterministic and re-runs the stages that read its old output.
 */
public interface RowChecksums {
  /** Whether the dependency asks for checksums; false on Spark lines that have none. */
  boolean enabled();

  /** Adds one record written to {@code partition}. */
  void update(int partition, Object key, Object value);

  /** The value the MapStatus reports (0 when disabled, as Spark's own writers report). */
  long value();

  /** No checksums: Spark before 4.1, or a dependency that asks for none. */
  RowChecksums NONE =
      new RowChecksums() {
        @Override
        public boolean enabled() {
          return false;
        }

        @Override
        public void update(int partition, Object key, Object value) {}

        @Override
        public long value() {
          return 0L;
        }
      };
}
