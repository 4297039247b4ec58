package io.shoal.spark.it;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.spark.HashPartitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.rdd.ShuffledRDD;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerJobStart;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.scheduler.SparkListenerTaskStart;
import org.apache.spark.serializer.KryoSerializer;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.api.java.UDF1;
import org.apache.spark.sql.expressions.UserDefinedFunction;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.functions;
import scala.Tuple2;
import scala.reflect.ClassTag$;

/**
 * Runs Spark workloads twice, under Spark's own sort shuffle (local[2]) and through Shoal
 * (local-cluster, executors in their own JVMs, dynamic allocation, speculation on), and compares
 * the results exactly; then scale to zero, an attempt dying mid-write, lost data, (Spark 4.1+)
 * a map stage whose retry writes different rows, and a second application with replication 2
 * losing a worker.
 *
 * <p>Arguments: {@code key=value} Spark settings for the Shoal session (the cluster's
 * {@code spark.shoal.*} lines). Talks to the test that started it on stdin/stdout: it prints
 * {@code SHOAL-EVENT <what> ...} and waits for a reply line; it prints {@code CHECK <name> ok}
 * for each passed check and {@code SHOAL-RESULT ok} at the end. Any failure exits non-zero.
 */
public final class SparkChecks {
  private static final BufferedReader IN = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

  private SparkChecks() {}

  interface Workload {
    List<String> run(SparkSession spark, JavaSparkContext sc) throws Exception;
  }

  static Map<String, Workload> workloads() {
    Map<String, Workload> w = new LinkedHashMap<>();
    w.put("groupByKey", SparkChecks::groupByKey);
    w.put("reduceByKey-combine", SparkChecks::reduceByKey);
    w.put("sortByKey", SparkChecks::sortByKey);
    w.put("dataframe-join-aggregate-aqe", SparkChecks::joinAggregate);
    w.put("skewed-key", SparkChecks::skewed);
    w.put("2000-partitions-mostly-empty", SparkChecks::sparse);
    w.put("1MiB-records", SparkChecks::bigRecords);
    w.put("kryo", SparkChecks::kryo);
    return w;
  }

  static List<String> groupByKey(SparkSession spark, JavaSparkContext sc) {
    return sc.parallelize(range(200_000), 8)
        .mapToPair(i -> new Tuple2<>(i % 997, (long) i))
        .groupByKey(16)
        .map(
            t -> {
              long n = 0, sum = 0, min = Long.MAX_VALUE, max = Long.MIN_VALUE;
              for (long v : t._2()) {
                n++;
                sum += v;
                min = Math.min(min, v);
                max = Math.max(max, v);
              }
              return t._1() + ":" + n + ":" + sum + ":" + min + ":" + max;
            })
        .collect();
  }

  static List<String> reduceByKey(SparkSession spark, JavaSparkContext sc) {
    return sc.parallelize(range(300_000), 8)
        .mapToPair(i -> new Tuple2<>("w" + (i * 7919L % 5003), 1L))
        .reduceByKey(Long::sum, 12)
        .map(t -> t._1() + "=" + t._2())
        .collect();
  }

  static List<String> sortByKey(SparkSession spark, JavaSparkContext sc) {
    // Distinct keys, so the total order is unique and comparable between shuffles.
    List<String> out =
        sc.parallelize(range(100_000), 8)
            .mapToPair(i -> new Tuple2<>((i * 2_654_435_761L) % 1_000_000_007L, i))
            .sortByKey(true, 8)
            .map(t -> t._1() + ">" + t._2())
            .collect();
    long prev = Long.MIN_VALUE;
    for (String s : out) {
      long k = Long.parseLong(s.substring(0, s.indexOf('>')));
      if (k < prev) {
        throw new AssertionError("sortByKey out of order: " + k + " after " + prev);
      }
      prev = k;
    }
    List<String> ordered = new ArrayList<>(out);
    ordered.add("ordered:" + out.size());
    return ordered;
  }

  static List<String> joinAggregate(SparkSession spark, JavaSparkContext sc) {
    Dataset<Row> orders =
        spark.range(0, 400_000).selectExpr("id as order_id", "id % 5000 as customer", "(id * 37) % 1000 as amount");
    Dataset<Row> customers = spark.range(0, 5000).selectExpr("id as customer", "concat('region-', id % 17) as region");
    Dataset<Row> out =
        orders
            .join(customers, "customer")
            .groupBy("region")
            .agg(functions.count("*").alias("n"), functions.sum("amount").alias("total"));
    return rows(out);
  }

  static List<String> skewed(SparkSession spark, JavaSparkContext sc) {
    // 90% of the rows share one key: AQE splits that reduce partition by map ranges.
    Dataset<Row> facts = spark.range(0, 300_000).selectExpr("case when id % 10 < 9 then 0 else id % 1000 end as k", "id as v");
    Dataset<Row> dims = spark.range(0, 1000).selectExpr("id as k", "id * 3 as w");
    Dataset<Row> out =
        facts.join(dims, "k").groupBy(functions.expr("k % 7").alias("b")).agg(functions.sum("v"), functions.sum("w"), functions.count("*"));
    return rows(out);
  }

  static List<String> sparse(SparkSession spark, JavaSparkContext sc) {
    return sc.parallelize(range(300), 4)
        .mapToPair(i -> new Tuple2<>(i * 31, "v" + i))
        .partitionBy(new HashPartitioner(2000))
        .mapPartitionsWithIndex(
            (idx, it) -> {
              List<String> l = new ArrayList<>();
              while (it.hasNext()) {
                Tuple2<Integer, String> t = it.next();
                l.add(idx + ":" + t._1() + ":" + t._2());
              }
              return l.iterator();
            },
            true)
        .collect();
  }

  static List<String> bigRecords(SparkSession spark, JavaSparkContext sc) {
    return sc.parallelize(range(48), 6)
        .mapToPair(
            i -> {
              byte[] b = new byte[1 << 20];
              new Random(i).nextBytes(b);
              return new Tuple2<>(i % 5, b);
            })
        .groupByKey(3)
        .flatMap(
            t -> {
              List<String> l = new ArrayList<>();
              for (byte[] b : t._2()) {
                l.add(t._1() + ":" + b.length + ":" + sha(b));
              }
              return l.iterator();
            })
        .collect();
  }

  static List<String> kryo(SparkSession spark, JavaSparkContext sc) {
    JavaPairRDD<Integer, String> pairs = sc.parallelize(range(100_000), 8).mapToPair(i -> new Tuple2<>(i % 1009, "s" + i));
    ShuffledRDD<Integer, String, String> shuffled =
        new ShuffledRDD<Integer, String, String>(
                pairs.rdd(), new HashPartitioner(10), ClassTag$.MODULE$.apply(Integer.class), ClassTag$.MODULE$.apply(String.class), ClassTag$.MODULE$.apply(String.class))
            .setSerializer(new KryoSerializer(sc.getConf()));
    if (!(shuffled.dependencies().head() instanceof ShuffleDependency)) {
      throw new AssertionError("no shuffle");
    }
    return JavaPairRDD.fromRDD(shuffled, ClassTag$.MODULE$.apply(Integer.class), ClassTag$.MODULE$.apply(String.class))
        .groupByKey()
        .map(t -> {
          List<String> l = new ArrayList<>();
          t._2().forEach(l::add);
          Collections.sort(l);
          return t._1() + "=" + String.join(",", l).hashCode() + "/" + l.size();
        })
        .collect();
  }

  // ---------------------------------------------------------------------------------------------

  public static void main(String[] args) throws Exception {
    Map<String, String> shoalConf = new LinkedHashMap<>();
    boolean speculationOnly = false;
    for (String a : args) {
      if (a.equals("--speculation")) {
        speculationOnly = true;
        continue;
      }
      int eq = a.indexOf('=');
      shoalConf.put(a.substring(0, eq), a.substring(eq + 1));
    }
    if (speculationOnly) {
      speculationMain(shoalConf);
      return;
    }
    Map<String, Workload> work = workloads();

    Map<String, List<String>> expected = new LinkedHashMap<>();
    SparkSession base = session(new SparkConf().setMaster("local[2]").setAppName("shoal-checks-baseline"));
    JavaSparkContext baseSc = new JavaSparkContext(base.sparkContext());
    for (Map.Entry<String, Workload> w : work.entrySet()) {
      expected.put(w.getKey(), canonical(w.getValue().run(base, baseSc)));
    }
    expected.put("scale-to-zero", canonical(twoStage(baseSc, 0, 40_000)));
    expected.put("dead-attempt", canonical(twoStage(baseSc, 0, 20_000)));
    expected.put("lost-data", canonical(twoStage(baseSc, 0, 30_000)));
    expected.put("replicated-loss", canonical(twoStage(baseSc, 7, 25_000)));
    expected.put("leader-failover", canonical(twoStage(baseSc, 3, 24_000)));
    expected.put("drained-worker", canonical(twoStage(baseSc, 5, 24_000)));
    base.stop();

    SparkConf c =
        shoalSession("shoal-checks", shoalConf)
            .set("spark.dynamicAllocation.enabled", "true")
            .set("spark.dynamicAllocation.shuffleTracking.enabled", "false")
            .set("spark.shuffle.service.enabled", "false")
            .set("spark.dynamicAllocation.minExecutors", "0")
            .set("spark.dynamicAllocation.initialExecutors", "2")
            .set("spark.dynamicAllocation.maxExecutors", "2")
            .set("spark.dynamicAllocation.executorIdleTimeout", "4s");
    SparkSession spark = session(c);
    JavaSparkContext sc = new JavaSparkContext(spark.sparkContext());
    Tracker tracker = new Tracker();
    sc.sc().addSparkListener(tracker);
    if (!sc.getConf().get("spark.master").startsWith("local-cluster")) {
      throw new AssertionError("the Shoal session must run executors in their own JVMs");
    }

    for (Map.Entry<String, Workload> w : work.entrySet()) {
      long[] before = tracker.shuffleMetrics();
      List<String> got = canonical(w.getValue().run(spark, sc));
      compare(w.getKey(), expected.get(w.getKey()), got);
      if (w.getKey().equals("groupByKey")) {
        metrics(sc, tracker, before);
      }
    }

    leaderFailover(sc, tracker, expected.get("leader-failover"));
    scaleToZero(sc, tracker, expected.get("scale-to-zero"));
    drainMidJob(sc, tracker, expected.get("drained-worker"));
    deadAttempt(sc, tracker, expected.get("dead-attempt"));
    lostData(sc, tracker, expected.get("lost-data"));
    if (hasRowChecksums(sc.version())) {
      rowChecksumRollback(spark, sc, tracker);
    }

    spark.stop();
    replicatedLoss(shoalConf, expected.get("replicated-loss"));
    System.out.println("SHOAL-RESULT ok");
  }

  /**
   * A second application, with {@code spark.shoal.replication=2}: with the object store still
   * stopped, a shuffle is written and the worker owning its first partition is killed. Every
   * batch was acknowledged by both copies, so the reduce side reads the replica: no FetchFailed,
   * no map task run again, exact results.
   */
  static void replicatedLoss(Map<String, String> shoalConf, List<String> want) throws Exception {
    SparkSession spark = session(shoalSession("shoal-checks-replicated", shoalConf).set("spark.shoal.replication", "2"));
    JavaSparkContext sc = new JavaSparkContext(spark.sparkContext());
    Tracker t = new Tracker();
    sc.sc().addSparkListener(t);
    JavaPairRDD<Long, Long> shuffled = pairs(sc, 7, 25_000);
    int shuffleId = shuffleIdOf(shuffled);
    shuffled.count();
    settle(sc);
    int attemptsBefore = t.attemptsWriting(shuffleId);
    int tasksBefore = t.tasksWriting(shuffleId);
    event("kill-worker " + sc.sc().applicationId() + " " + shuffleId);
    List<String> got = canonical(render(shuffled));
    settle(sc);
    int reruns = t.attemptsWriting(shuffleId) - attemptsBefore, tasks = t.tasksWriting(shuffleId) - tasksBefore;
    if (reruns != 0 || tasks != 0) {
      throw new AssertionError(
          "replication 2: the map stage of shuffle " + shuffleId + " ran again (" + reruns + " stage attempts, " + tasks
              + " tasks) after one worker was lost");
    }
    compare("replicated-loss", want, got);
    System.out.println("CHECK replicated-loss-no-rerun ok (shuffle " + shuffleId + ": 0 map tasks re-run)");
    spark.stop();
  }

  /**
   * The leading Shoal master is killed while map tasks push and commit: the other masters elect
   * a leader, clients follow, and the job finishes with exact results and no stage run again.
   */
  static void leaderFailover(JavaSparkContext sc, Tracker t, List<String> want) throws Exception {
    midJob(sc, t, want, 3, "leader-failover", p -> "kill-leader");
  }

  /**
   * The worker owning partition 0 is drained (decommissioned, its data spilled, the process
   * gone) while map tasks push to it: their pushes move to other workers, and the job finishes
   * with exact results and no stage run again.
   */
  static void drainMidJob(JavaSparkContext sc, Tracker t, List<String> want) throws Exception {
    midJob(sc, t, want, 5, "drained-worker", shuffleId -> "drain-worker " + sc.sc().applicationId() + " " + shuffleId);
  }

  /** Runs a two-stage job whose six map tasks each span an event the test makes happen. */
  static void midJob(
      JavaSparkContext sc, Tracker t, List<String> want, int salt, String name, java.util.function.IntFunction<String> what)
      throws Exception {
    JavaPairRDD<Long, Long> p =
        sc.parallelize(range(24_000), 6)
            .mapToPair(
                i -> {
                  // Each map task spans the event: half its rows before, half after.
                  if (i % 4_000 == 2_000) {
                    Thread.sleep(1_500);
                  }
                  return new Tuple2<>((long) (i % 1000), (long) i + salt);
                })
            .reduceByKey(Long::sum, 8);
    int shuffleId = shuffleIdOf(p);
    long started = System.currentTimeMillis();
    int tasksBefore = t.tasks.values().stream().mapToInt(AtomicInteger::get).sum();
    org.apache.spark.api.java.JavaFutureAction<List<String>> job = p.map(x -> x._1() + "=" + x._2()).collectAsync();
    long deadline = System.currentTimeMillis() + 60_000;
    while (t.tasks.values().stream().mapToInt(AtomicInteger::get).sum() == tasksBefore) {
      if (System.currentTimeMillis() > deadline) {
        throw new AssertionError("no map task started");
      }
      Thread.sleep(50);
    }
    Thread.sleep(500);
    event(what.apply(shuffleId));
    List<String> got = canonical(job.get());
    settle(sc);
    int attempts = t.attemptsWriting(shuffleId);
    if (attempts != 1) {
      throw new AssertionError(name + ": the map stage ran " + attempts + " times");
    }
    compare(name, want, got);
    System.out.println(
        "CHECK " + name + "-no-rerun ok (job done " + (System.currentTimeMillis() - started) + " ms after it started)");
  }

  /**
   * Waits until no executor is left and, once the shuffle is spilled, stops every Shoal worker;
   * runs the reduce side, which reads the object store: the map stage must be skipped.
   */
  static void scaleToZero(JavaSparkContext sc, Tracker t, List<String> want) throws Exception {
    JavaPairRDD<Long, Long> shuffled = pairs(sc, 0, 40_000);
    int shuffleId = shuffleIdOf(shuffled);
    shuffled.count();
    settle(sc);
    if (t.tasksWriting(shuffleId) == 0) {
      throw new AssertionError("no task wrote shuffle " + shuffleId);
    }
    long deadline = System.currentTimeMillis() + 90_000;
    while (sc.sc().getExecutorIds().size() > 0) {
      if (System.currentTimeMillis() > deadline) {
        throw new AssertionError("executors did not go away: " + sc.sc().getExecutorIds());
      }
      Thread.sleep(250);
    }
    // The Shoal workers go too, once the shuffle is in the object store.
    event("stop-workers " + sc.sc().applicationId() + " " + shuffleId);
    int before = t.tasksWriting(shuffleId);
    List<String> got = canonical(render(shuffled));
    settle(sc);
    int rerun = t.tasksWriting(shuffleId) - before;
    event("start-workers");
    if (rerun != 0) {
      throw new AssertionError("the map stage ran " + rerun + " tasks again after executors and workers went away");
    }
    compare("scale-to-zero", want, got);
    System.out.println(
        "CHECK scale-to-zero-map-stage-skipped ok (shuffle " + shuffleId
            + ": no executor and no worker left; read from the object store, 0 map tasks re-run)");
  }

  /**
   * The executor running map 0's first attempt dies halfway through its output, after pushing
   * some chunks: the attempt that runs instead commits, and the dead attempt's chunks are never
   * read. (A speculative copy would be the same hazard, but Spark never runs one on the host of
   * the original attempt, and local-cluster executors share one host.)
   */
  static void deadAttempt(JavaSparkContext sc, Tracker t, List<String> want) throws Exception {
    int lostBefore = t.executorLost.get();
    JavaPairRDD<Long, Long> grouped =
        sc.parallelize(range(20_000), 4)
            .mapToPair(
                i -> {
                  TaskContext ctx = TaskContext.get();
                  if (ctx.partitionId() == 0 && ctx.attemptNumber() == 0 && i == 4_000) {
                    Runtime.getRuntime().halt(3);
                  }
                  return new Tuple2<>((long) (i % 1000), (long) i);
                })
            .groupByKey(6)
            .mapToPair(SparkChecks::sumGroup);
    List<String> got = canonical(render(grouped));
    settle(sc);
    int lost = t.executorLost.get() - lostBefore;
    if (lost == 0) {
      throw new AssertionError("no task attempt was lost with its executor");
    }
    compare("dead-attempt", want, got);
    System.out.println("CHECK dead-attempt-not-read ok (" + lost + " attempt(s) lost with their executor)");
  }

  /**
   * Speculation needs executors on two hosts (Spark never runs a copy on the host of the
   * original attempt): run by the test against a standalone cluster whose workers bind to
   * different loopback addresses.
   */
  static void speculationMain(Map<String, String> shoalConf) throws Exception {
    SparkSession base = session(new SparkConf().setMaster("local[2]").setAppName("shoal-speculation-baseline"));
    List<String> want = canonical(slowJob(new JavaSparkContext(base.sparkContext()), false));
    base.stop();
    SparkConf c = shoalSession("shoal-speculation", shoalConf);
    SparkSession spark = session(c);
    JavaSparkContext sc = new JavaSparkContext(spark.sparkContext());
    Tracker t = new Tracker();
    sc.sc().addSparkListener(t);
    long deadline = System.currentTimeMillis() + 60_000;
    while (sc.sc().getExecutorIds().size() < 2) {
      if (System.currentTimeMillis() > deadline) {
        throw new AssertionError("two executors did not register: " + sc.sc().getExecutorIds());
      }
      Thread.sleep(200);
    }
    List<String> got = canonical(slowJob(sc, true));
    settle(sc);
    if (t.speculativeWon.get() == 0) {
      throw new AssertionError("no speculative copy finished first (" + t.speculative.get() + " launched)");
    }
    compare("speculation", want, got);
    System.out.println(
        "CHECK speculative-copies ok (" + t.speculative.get() + " launched, " + t.speculativeWon.get() + " won)");
    spark.stop();
    System.out.println("SHOAL-RESULT ok");
  }

  /** Map 0's first attempt stalls for 20 s after writing part of its output. */
  static List<String> slowJob(JavaSparkContext sc, boolean slow) {
    return render(
        sc.parallelize(range(40_000), 4)
            .mapToPair(
                i -> {
                  TaskContext ctx = TaskContext.get();
                  if (slow && ctx.partitionId() == 0 && ctx.attemptNumber() == 0 && i == 5_000) {
                    Thread.sleep(20_000);
                  }
                  return new Tuple2<>((long) (i % 1000), (long) i);
                })
            .groupByKey(6)
            .mapToPair(SparkChecks::sumGroup));
  }

  /** Stops the object store, writes, has the test kill a worker holding data, reads. */
  static void lostData(JavaSparkContext sc, Tracker t, List<String> want) throws Exception {
    event("stop-object-store");
    JavaPairRDD<Long, Long> shuffled = pairs(sc, 0, 30_000);
    int shuffleId = shuffleIdOf(shuffled);
    shuffled.count();
    settle(sc);
    int attemptsBefore = t.attemptsWriting(shuffleId);
    event("kill-worker " + sc.sc().applicationId() + " " + shuffleId);
    List<String> got = canonical(render(shuffled));
    settle(sc);
    int reruns = t.attemptsWriting(shuffleId) - attemptsBefore;
    if (reruns < 1) {
      throw new AssertionError(
          "the map stage of shuffle " + shuffleId + " was not re-run after its data was lost");
    }
    compare("lost-data", want, got);
    System.out.println("CHECK lost-data-map-stage-rerun ok (" + reruns + " new attempt(s))");
  }

  /** Spark 4.1 added row checksums to MapStatus. */
  static boolean hasRowChecksums(String version) {
    String[] v = version.split("[.\\-]");
    int major = Integer.parseInt(v[0]), minor = Integer.parseInt(v[1]);
    return major > 4 || (major == 4 && minor >= 1);
  }

  /**
   * Spark 4.1+: a SQL map stage whose rows depend on its attempt (a nondeterministic UDF) loses
   * one worker's data after it ran (the object store is still stopped). The consumer stage reads
   * the other partitions' gen-0 rows, fails to fetch the lost ones, and Spark runs the map stage
   * again, which now writes different rows. Only the row checksum Shoal reports in the MapStatus
   * tells Spark the retry differs; it then re-runs every task of the consumer stage, so the result
   * comes from one map attempt. With a checksum of 0 the consumer re-runs only its failed tasks
   * and the result mixes the rows of two attempts.
   */
  static void rowChecksumRollback(SparkSession spark, JavaSparkContext sc, Tracker t) throws Exception {
    String[] confs = {
      "spark.sql.shuffle.orderIndependentChecksum.enabled",
      "spark.sql.shuffle.orderIndependentChecksum.enableFullRetryOnMismatch",
      // Eight consumer tasks, not one coalesced: some finish on the surviving worker's rows.
      "spark.sql.adaptive.coalescePartitions.enabled"
    };
    String[] values = {"true", "true", "false"};
    for (int i = 0; i < confs.length; i++) {
      spark.conf().set(confs[i], values[i]);
    }
    try {
      UserDefinedFunction attempt =
          functions
              .udf((UDF1<Long, Integer>) id -> TaskContext.get().stageAttemptNumber(), DataTypes.IntegerType)
              .asNondeterministic();
      Dataset<Row> rows =
          spark
              .range(0, 30_000, 1, 6)
              .select(functions.col("id").mod(1000).as("k"), attempt.apply(functions.col("id")).as("v"))
              .repartition(8, functions.col("k"));
      java.util.Set<Integer> known = new java.util.HashSet<>(t.shuffleAttempts.keySet());
      JavaRDD<Row> exchanged = rows.toJavaRDD();
      // Runs the exchange's map stage (adaptive execution has already run it for the RDD).
      long n = exchanged.count();
      settle(sc);
      java.util.Set<Integer> fresh = new java.util.HashSet<>(t.shuffleAttempts.keySet());
      fresh.removeAll(known);
      if (n != 30_000 || fresh.size() != 1) {
        throw new AssertionError("the exchange wrote " + n + " rows in shuffles " + fresh + ", not 30000 in one");
      }
      int shuffleId = fresh.iterator().next();
      int attemptsBefore = t.attemptsWriting(shuffleId);
      event("kill-worker " + sc.sc().applicationId() + " " + shuffleId);
      List<Tuple2<Long, Long>> got =
          exchanged
              .mapToPair(r -> new Tuple2<>(r.getLong(0), r.getInt(1) * 1_000_000L + 1))
              .reduceByKey(Long::sum, 4)
              .collect();
      settle(sc);
      int reruns = t.attemptsWriting(shuffleId) - attemptsBefore;
      if (reruns < 1) {
        throw new AssertionError("the map stage of shuffle " + shuffleId + " was not re-run after its data was lost");
      }
      Map<Long, List<Long>> byAttempt = new java.util.TreeMap<>();
      for (Tuple2<Long, Long> kv : got) {
        long count = kv._2() % 1_000_000L, attempts = kv._2() / 1_000_000L;
        if (count != 30 || attempts % 30 != 0) {
          throw new AssertionError("key " + kv._1() + ": " + count + " rows with attempt numbers summing to " + attempts);
        }
        byAttempt.computeIfAbsent(attempts / 30, k -> new ArrayList<>()).add(kv._1());
      }
      if (got.size() != 1000 || byAttempt.size() != 1 || byAttempt.containsKey(0L)) {
        Map<Long, Integer> sizes = new java.util.TreeMap<>();
        byAttempt.forEach((a, keys) -> sizes.put(a, keys.size()));
        throw new AssertionError(
            got.size() + " keys; keys by the map attempt whose rows they read: " + sizes
                + " (the consumer stage mixed map attempts: Spark did not see the retried map's output change)");
      }
      System.out.println(
          "CHECK row-checksum-rollback ok (map stage re-run " + reruns + " time(s); all 1000 keys read map attempt "
              + byAttempt.keySet().iterator().next() + ")");
    } finally {
      for (String c : confs) {
        spark.conf().unset(c);
      }
    }
  }

  static Tuple2<Long, Long> sumGroup(Tuple2<Long, Iterable<Long>> g) {
    long sum = 0;
    for (long v : g._2()) {
      sum += v;
    }
    return new Tuple2<>(g._1(), sum);
  }

  /**
   * groupByKey has no map-side combine: the map stage must report its 200 000 records written
   * and some bytes, the reduce stage the same records read and some bytes fetched.
   */
  static void metrics(JavaSparkContext sc, Tracker t, long[] before) {
    settle(sc);
    long[] now = t.shuffleMetrics();
    long written = now[0] - before[0], bytes = now[1] - before[1], read = now[2] - before[2], fetched = now[3] - before[3];
    if (written != 200_000 || read != 200_000 || bytes <= 0 || fetched <= 0) {
      throw new AssertionError(
          "shuffle metrics: " + written + " records / " + bytes + " bytes written, " + read + " records / " + fetched + " bytes read");
    }
    System.out.println("CHECK shuffle-metrics ok (" + written + " records, " + bytes + " bytes written, " + fetched + " bytes read)");
  }

  static JavaPairRDD<Long, Long> pairs(JavaSparkContext sc, int salt, int n) {
    return sc.parallelize(range(n), 6).mapToPair(i -> new Tuple2<>((long) (i % 1000), (long) i + salt)).reduceByKey(Long::sum, 8);
  }

  static List<String> twoStage(JavaSparkContext sc, int salt, int n) {
    JavaPairRDD<Long, Long> p =
        n == 20_000
            ? sc.parallelize(range(n), 4).mapToPair(i -> new Tuple2<>((long) (i % 1000), (long) i)).reduceByKey(Long::sum, 6)
            : pairs(sc, salt, n);
    return render(p);
  }

  static List<String> render(JavaPairRDD<Long, Long> p) {
    return p.map(t -> t._1() + "=" + t._2()).collect();
  }

  static int shuffleIdOf(JavaPairRDD<?, ?> rdd) {
    return ((ShuffleDependency<?, ?, ?>) rdd.rdd().dependencies().head()).shuffleId();
  }

  /** Lets the listener catch up with the events of the jobs run so far. */
  static void settle(JavaSparkContext sc) {
    try {
      sc.sc().listenerBus().waitUntilEmpty();
    } catch (java.util.concurrent.TimeoutException e) {
      throw new AssertionError("listener events did not drain", e);
    }
  }

  static void event(String what) throws Exception {
    System.out.println("SHOAL-EVENT " + what);
    System.out.flush();
    String reply = IN.readLine();
    if (reply == null || !reply.startsWith("ok")) {
      throw new AssertionError("the test answered " + reply + " to " + what);
    }
  }

  /** Counts tasks and attempts per stage, and speculative tasks. */
  static final class Tracker extends SparkListener {
    final Map<Integer, AtomicInteger> tasks = new ConcurrentHashMap<>();
    final Map<Integer, AtomicInteger> stageAttempts = new ConcurrentHashMap<>();
    final AtomicInteger speculative = new AtomicInteger();
    final AtomicInteger executorLost = new AtomicInteger();
    final AtomicInteger speculativeWon = new AtomicInteger();
    final Map<Integer, Integer> shuffleStages = new ConcurrentHashMap<>();
    final Map<Integer, AtomicInteger> shuffleAttempts = new ConcurrentHashMap<>();

    @Override
    public void onTaskStart(SparkListenerTaskStart e) {
      tasks.computeIfAbsent(e.stageId(), k -> new AtomicInteger()).incrementAndGet();
      if (e.taskInfo().speculative()) {
        speculative.incrementAndGet();
      }
    }

    @Override
    public void onStageSubmitted(SparkListenerStageSubmitted e) {
      stageAttempts.computeIfAbsent(e.stageInfo().stageId(), k -> new AtomicInteger()).incrementAndGet();
      if (e.stageInfo().shuffleDepId().isDefined()) {
        int shuffle = (Integer) e.stageInfo().shuffleDepId().get();
        shuffleStages.put(e.stageInfo().stageId(), shuffle);
        shuffleAttempts.computeIfAbsent(shuffle, k -> new AtomicInteger()).incrementAndGet();
      }
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd e) {
      if (e.reason() instanceof org.apache.spark.ExecutorLostFailure) {
        executorLost.incrementAndGet();
      }
      if (e.taskInfo().speculative() && e.taskInfo().successful()) {
        speculativeWon.incrementAndGet();
      }
    }

    @Override
    public void onJobStart(SparkListenerJobStart e) {}

    /** Records and bytes written, records and bytes read, over completed stages (their
     * aggregated metrics count each partition's successful attempt once). */
    final long[] shuffle = new long[4];

    @Override
    public synchronized void onStageCompleted(org.apache.spark.scheduler.SparkListenerStageCompleted e) {
      org.apache.spark.executor.TaskMetrics m = e.stageInfo().taskMetrics();
      if (m == null) {
        return;
      }
      shuffle[0] += m.shuffleWriteMetrics().recordsWritten();
      shuffle[1] += m.shuffleWriteMetrics().bytesWritten();
      shuffle[2] += m.shuffleReadMetrics().recordsRead();
      shuffle[3] += m.shuffleReadMetrics().remoteBytesRead();
    }

    synchronized long[] shuffleMetrics() {
      return shuffle.clone();
    }

    /** Tasks run by any stage that writes this shuffle. */
    int tasksWriting(int shuffle) {
      int n = 0;
      for (Map.Entry<Integer, AtomicInteger> e : tasks.entrySet()) {
        if (Integer.valueOf(shuffle).equals(shuffleStages.get(e.getKey()))) {
          n += e.getValue().get();
        }
      }
      return n;
    }

    /** Stage attempts submitted to write this shuffle. */
    int attemptsWriting(int shuffle) {
      AtomicInteger n = shuffleAttempts.get(shuffle);
      return n == null ? 0 : n.get();
    }
  }

  // ---------------------------------------------------------------------------------------------

  /** Shoal's settings, speculation on, and small chunks: many pushes per task, so an attempt
   * that dies or is killed leaves some behind. */
  static SparkConf shoalSession(String name, Map<String, String> shoalConf) {
    SparkConf c =
        new SparkConf()
            .setAppName(name)
            .set("spark.shuffle.manager", "io.shoal.spark.ShoalShuffleManager")
            .set("spark.shuffle.sort.io.plugin.class", "io.shoal.spark.ShoalShuffleDataIO")
            .set("spark.speculation", "true")
            .set("spark.speculation.interval", "100ms")
            .set("spark.speculation.quantile", "0.5")
            .set("spark.speculation.multiplier", "2")
            .set("spark.speculation.minTaskRuntime", "500ms")
            .set("spark.shoal.push.chunkSize", "8k");
    shoalConf.forEach(c::set);
    return c;
  }

  static SparkSession session(SparkConf c) {
    c.set("spark.sql.adaptive.enabled", "true")
        .set("spark.sql.adaptive.skewJoin.enabled", "true")
        .set("spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes", "64k")
        .set("spark.sql.adaptive.skewJoin.skewedPartitionFactor", "2")
        .set("spark.sql.adaptive.advisoryPartitionSizeInBytes", "64k")
        .set("spark.sql.autoBroadcastJoinThreshold", "-1")
        .set("spark.sql.shuffle.partitions", "24")
        .set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false");
    SparkSession s = SparkSession.builder().config(c).getOrCreate();
    s.sparkContext().setLogLevel("WARN");
    return s;
  }

  static List<Integer> range(int n) {
    List<Integer> l = new ArrayList<>(n);
    for (int i = 0; i < n; i++) {
      l.add(i);
    }
    return l;
  }

  static List<String> rows(Dataset<Row> d) {
    List<String> out = new ArrayList<>();
    for (Row r : d.collectAsList()) {
      out.add(r.toString());
    }
    return out;
  }

  static List<String> canonical(List<String> l) {
    List<String> c = new ArrayList<>(l);
    Collections.sort(c);
    return c;
  }

  static void compare(String name, List<String> want, List<String> got) {
    if (!want.equals(got)) {
      StringBuilder why = new StringBuilder(name + ": " + got.size() + " results, expected " + want.size());
      for (int i = 0; i < Math.min(want.size(), got.size()); i++) {
        if (!want.get(i).equals(got.get(i))) {
          why.append("; first difference at ").append(i).append(": ").append(trim(got.get(i))).append(" vs ").append(trim(want.get(i)));
          break;
        }
      }
      throw new AssertionError(why.toString());
    }
    System.out.println("CHECK " + name + " ok (" + got.size() + " results, digest " + sha(String.join("\n", got).getBytes(StandardCharsets.UTF_8)).substring(0, 16) + ")");
  }

  static String trim(String s) {
    return s.length() > 80 ? s.substring(0, 80) + "..." : s;
  }

  static String sha(byte[] b) {
    try {
      byte[] d = MessageDigest.getInstance("SHA-256").digest(b);
      StringBuilder s = new StringBuilder();
      for (byte x : d) {
        s.append(String.format("%02x", x));
      }
      return s.toString();
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }
}
