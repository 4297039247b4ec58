"""A Spark job through Shoal: local-cluster mode (executors are separate JVMs), a DataFrame
aggregate and an RDD reduceByKey, each checked against a result computed without a shuffle.

Usage: python demo.py CLUSTER_JSON PLUGIN_JAR
CLUSTER_JSON is what `shoal local up` writes (.shoal/cluster.json).
"""
import json
import sys
import time
import urllib.request

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main():
    cluster = json.load(open(sys.argv[1]))
    jar = sys.argv[2]
    builder = (
        SparkSession.builder.appName("shoal-demo")
        .master("local-cluster[2,1,1024]")
        .config("spark.jars", jar)
        .config("spark.sql.shuffle.partitions", "16")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for line in cluster["spark_conf"]:
        k, v = line.split("=", 1)
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    started = time.time()

    rows = 2_000_000
    df = spark.range(rows).select((F.col("id") % 1000).alias("k"), F.col("id").alias("v"))
    agg = df.groupBy("k").agg(F.count("*").alias("n"), F.sum("v").alias("s")).orderBy("k").collect()
    assert len(agg) == 1000, len(agg)
    for r in agg:
        # ids congruent to k mod 1000 below `rows`: k, k+1000, ...
        n = rows // 1000
        assert r["n"] == n and r["s"] == n * r["k"] + 1000 * n * (n - 1) // 2, r

    words = sc.parallelize(range(200_000), 8).map(lambda i: ("w%d" % (i % 5000), 1))
    counts = dict(words.reduceByKey(lambda a, b: a + b, 12).collect())
    assert len(counts) == 5000 and all(c == 40 for c in counts.values())

    took = time.time() - started
    written = read = 0
    try:
        base = sc.uiWebUrl
        stages = json.load(urllib.request.urlopen(f"{base}/api/v1/applications/{sc.applicationId}/stages"))
        written = sum(s.get("shuffleWriteBytes", 0) for s in stages)
        read = sum(s.get("shuffleReadBytes", 0) for s in stages)
    except Exception as e:  # the UI is optional; the results above are the check
        print(f"(no shuffle totals from the Spark UI: {e})")
    print(f"groupBy over {rows} rows: {len(agg)} groups, exact")
    print(f"reduceByKey over 200000 words: {len(counts)} keys, exact")
    print(f"shuffled through Shoal: {written} bytes written, {read} bytes read, {took:.1f} s")
    spark.stop()


if __name__ == "__main__":
    main()
