"""Three Spark jobs, alternately under Spark's own sort shuffle and through Shoal, in one run.

Jobs (data generated in the job, so no input I/O; results go to Spark's no-op sink):
  repartition  ROWS rows of about 100 bytes (a key and 96 hex characters) into 64 partitions
  sort         the same rows sorted by key (range partitioning into 64 partitions)
  sql          a fact table joined to two dimension tables (shuffled joins: broadcast joins
               off) and aggregated twice, then ranked

Each round runs every job once under each shuffle, the order of the two alternating by round;
each session runs a small warm-up job first, so JVM start-up and JIT stay outside the numbers.
Spark's defaults for compression (lz4) hold on both sides. Prints a table and one JSON line.

Usage: python jobs_bench.py CLUSTER_JSON PLUGIN_JAR [ROWS] [ROUNDS] [JOBS]
  ROWS default 15150000 (about 2 GB shuffled), ROUNDS default 3, JOBS a comma list.
"""
import json
import os
import statistics
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

PARTITIONS = 64


def rows_df(spark, n):
    # A 64-bit key and 96 hex characters: digests do not compress to nothing under lz4.
    idc = F.col("id")
    return spark.range(n).select(
        (F.xxhash64(idc) % 1_000_003).alias("k"),
        F.concat(F.sha2(idc.cast("string"), 256), F.md5(idc.cast("string"))).alias("pad"),
    )


def job_repartition(spark, n):
    rows_df(spark, n).repartition(PARTITIONS, "k").write.format("noop").mode("overwrite").save()


def job_sort(spark, n):
    rows_df(spark, n).orderBy("k").write.format("noop").mode("overwrite").save()


def job_sql(spark, n):
    facts = spark.range(n).select(
        (F.xxhash64(F.col("id")) % 200_000).alias("item"),
        (F.col("id") % 1_000).alias("store"),
        (F.col("id") % 97).cast("double").alias("amount"),
        F.md5(F.col("id").cast("string")).alias("note"),
    )
    items = spark.range(200_000).select(
        F.col("id").alias("item"),
        (F.col("id") % 50).alias("category"),
        F.sha2(F.col("id").cast("string"), 256).alias("item_desc"),
    )
    stores = spark.range(1_000).select(F.col("id").alias("store"), (F.col("id") % 20).alias("region"))
    joined = facts.join(items, "item").join(stores, "store")
    by_item = joined.groupBy("region", "category", "item").agg(
        F.sum("amount").alias("sales"), F.count("*").alias("n"), F.max("note").alias("last_note")
    )
    by_region = by_item.groupBy("region", "category").agg(F.sum("sales").alias("sales"), F.sum("n").alias("n"))
    by_region.orderBy(F.desc("sales")).write.format("noop").mode("overwrite").save()


JOBS = {"repartition": job_repartition, "sort": job_sort, "sql": job_sql}


def session(conf):
    b = SparkSession.builder.master("local-cluster[2,1,2048]").appName("shoal-jobs-bench")
    for k, v in conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_round(conf, rows, jobs):
    spark = session(conf)
    for name in jobs:
        JOBS[name](spark, max(rows // 50, 1000))  # warm-up
    times = {}
    for name in jobs:
        t = time.perf_counter()
        JOBS[name](spark, rows)
        times[name] = time.perf_counter() - t
    spark.stop()
    return times


def main():
    cluster = json.load(open(sys.argv[1]))
    jar = sys.argv[2]
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 15_150_000
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    jobs = sys.argv[5].split(",") if len(sys.argv) > 5 else list(JOBS)
    common = {
        "spark.sql.shuffle.partitions": str(PARTITIONS),
        "spark.sql.autoBroadcastJoinThreshold": "-1",
        "spark.sql.adaptive.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.jars": jar,
    }
    shoal = dict(common)
    for line in cluster["spark_conf"]:
        k, v = line.split("=", 1)
        shoal[k] = v
    times = {"sort": {j: [] for j in jobs}, "shoal": {j: [] for j in jobs}}
    for r in range(rounds):
        order = [("sort", common), ("shoal", shoal)]
        if r % 2 == 1:
            order.reverse()
        # SHOAL_BENCH_ONLY=shoal (or sort) runs one side only, e.g. under a profiler.
        only = os.environ.get("SHOAL_BENCH_ONLY")
        if only:
            order = [(m, c) for m, c in order if m == only]
        for mode, conf in order:
            for name, t in run_round(conf, rows, jobs).items():
                times[mode][name].append(t)
                print(f"round {r + 1} {mode:5} {name:11} {t:7.2f} s", file=sys.stderr, flush=True)
    result = {"rows": rows, "rounds": rounds, "jobs": {}}
    if os.environ.get("SHOAL_BENCH_ONLY"):
        print(json.dumps(times))
        return
    print(f"{'job':12} {'sort shuffle (s)':>18} {'Shoal (s)':>12} {'Shoal / sort':>13}")
    for name in jobs:
        s, h = statistics.median(times["sort"][name]), statistics.median(times["shoal"][name])
        result["jobs"][name] = {
            "sort_s": [round(t, 2) for t in times["sort"][name]],
            "shoal_s": [round(t, 2) for t in times["shoal"][name]],
            "median_ratio": round(h / s, 3),
        }
        print(f"{name:12} {s:18.2f} {h:12.2f} {h / s:13.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
