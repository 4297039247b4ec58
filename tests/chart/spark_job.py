"""A small Spark job through a Shoal cluster described by a cluster.json (the layout `shoal local
up` writes): its spark_conf settings, a DataFrame aggregate and an RDD reduceByKey, each checked
exactly. A lighter shuffle-client/spark/examples/demo.py, for tests/tests/chart_cluster.rs.

Usage: python spark_job.py CLUSTER_JSON PLUGIN_JAR SPARK_MASTER
"""
import json
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main():
    cluster = json.load(open(sys.argv[1]))
    builder = (
        SparkSession.builder.appName("shoal-chart-cluster")
        .master(sys.argv[3])
        .config("spark.jars", sys.argv[2])
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # A miswired cluster fails the job at once instead of after Spark's retries.
        .config("spark.task.maxFailures", "1")
        .config("spark.stage.maxConsecutiveAttempts", "1")
    )
    for line in cluster["spark_conf"]:
        k, v = line.split("=", 1)
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    manager = sc.getConf().get("spark.shuffle.manager")
    assert manager == "io.shoal.spark.ShoalShuffleManager", manager

    rows = 200_000
    df = spark.range(rows).select((F.col("id") % 100).alias("k"), F.col("id").alias("v"))
    agg = df.groupBy("k").agg(F.count("*").alias("n"), F.sum("v").alias("s")).orderBy("k").collect()
    n = rows // 100
    assert len(agg) == 100, len(agg)
    for r in agg:
        assert r["n"] == n and r["s"] == n * r["k"] + 100 * n * (n - 1) // 2, r

    words = sc.parallelize(range(50_000), 4).map(lambda i: ("w%d" % (i % 1000), 1))
    counts = dict(words.reduceByKey(lambda a, b: a + b, 6).collect())
    assert len(counts) == 1000 and all(c == 50 for c in counts.values()), "reduceByKey counts differ"
    print(f"SPARK-JOB ok: groupBy {len(agg)} groups, reduceByKey {len(counts)} keys, exact")
    spark.stop()


if __name__ == "__main__":
    main()
