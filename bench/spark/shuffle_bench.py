"""Spark job time through Shoal against Spark's own sort shuffle, measured in the same run.

Both runs use local-cluster mode (executors in their own JVMs) on the same machine; each job is
timed after a warm-up job, so JVM start-up and JIT are outside the numbers. Prints one JSON line.

Usage: python shuffle_bench.py CLUSTER_JSON PLUGIN_JAR [ROWS] [REPEATS]
"""
import json
import statistics
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def run(conf, rows, repeats):
    b = SparkSession.builder.master("local-cluster[2,1,1024]").appName("shoal-bench")
    for k, v in conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")

    def job(n):
        df = spark.range(n).select(
            (F.col("id") * 7919 % 100_003).alias("k"),
            F.col("id").alias("v"),
            F.sha2(F.col("id").cast("string"), 256).alias("pad"),
        )
        # A full shuffle of every row (repartition), then an aggregate (a second shuffle).
        out = df.repartition(32, "k").groupBy("k").agg(F.count("*").alias("n"), F.max("pad").alias("m"))
        return out.agg(F.sum("n")).collect()[0][0]

    assert job(rows // 10) == rows // 10  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        assert job(rows) == rows
        times.append(time.perf_counter() - t)
    spark.stop()
    return times


def main():
    cluster = json.load(open(sys.argv[1]))
    jar = sys.argv[2]
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 4_000_000
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    # The jar goes on both: the driver JVM is started once, by the first session.
    common = {
        "spark.sql.shuffle.partitions": "32",
        "spark.ui.enabled": "false",
        "spark.sql.adaptive.enabled": "false",
        "spark.jars": jar,
    }
    shoal = dict(common)
    for line in cluster["spark_conf"]:
        k, v = line.split("=", 1)
        shoal[k] = v
    sort_t = run(common, rows, repeats)
    shoal_t = run(shoal, rows, repeats)
    result = {
        "rows": rows,
        "repeats": repeats,
        "sort_shuffle_s": [round(t, 2) for t in sort_t],
        "shoal_s": [round(t, 2) for t in shoal_t],
        "median_ratio_shoal_over_sort": round(statistics.median(shoal_t) / statistics.median(sort_t), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
