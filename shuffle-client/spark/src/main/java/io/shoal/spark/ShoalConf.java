package io.shoal.spark;

import org.apache.spark.SparkConf;

/**
 * The {@code spark.shoal.*} settings, read once and checked. Every key and default is listed in
 * docs/spark.md.
 */
final class ShoalConf implements java.io.Serializable {
  static final String ENDPOINTS = "spark.shoal.master.endpoints";
  static final String TLS_CA = "spark.shoal.tls.ca";
  static final String TLS_INSECURE = "spark.shoal.tls.insecure";
  static final String OBJECT_STORE = "spark.shoal.objectStore.url";
  static final String REPLICATION = "spark.shoal.replication";
  static final String CHUNK_SIZE = "spark.shoal.push.chunkSize";
  static final String BUFFER_LIMIT = "spark.shoal.writer.bufferLimit";
  static final String MAX_IN_FLIGHT = "spark.shoal.push.maxInFlight";
  static final String NETWORK_TIMEOUT = "spark.shoal.network.timeout";
  static final String MASTER_DEADLINE = "spark.shoal.master.deadline";
  static final String CLIENT_THREADS = "spark.shoal.client.threads";
  static final String APP_LEASE = "spark.shoal.app.lease";
  static final String LOG_LEVEL = "spark.shoal.log.level";
  static final String CREDENTIAL_FILE = "spark.shoal.auth.credentialFile";

  /** The largest chunk the native client accepts (its batch limit). */
  static final long MAX_CHUNK = 64L << 20;

  final String endpoints;
  final String tlsCa;
  final boolean tlsInsecure;
  final String objectStore;
  final int replication;
  final int chunkSize;
  final long bufferLimit;
  final int maxInFlight;
  final long networkTimeoutMs;
  final long masterDeadlineMs;
  final int clientThreads;
  final long appLeaseMs;
  final String logLevel;
  /** The driver's tenant credential ({@code name:secret}); never the secret itself. */
  final String credentialFile;

  ShoalConf(SparkConf conf) {
    endpoints = conf.get(ENDPOINTS, "").trim();
    if (endpoints.isEmpty()) {
      throw new IllegalArgumentException(ENDPOINTS + " must name the Shoal masters (HOST:PORT[,HOST:PORT])");
    }
    tlsCa = conf.get(TLS_CA, "").trim();
    tlsInsecure = conf.getBoolean(TLS_INSECURE, false);
    objectStore = conf.get(OBJECT_STORE, "").trim();
    // 0: the cluster's default (the masters' replication setting).
    replication = conf.contains(REPLICATION) ? conf.getInt(REPLICATION, 1) : 0;
    if (conf.contains(REPLICATION) && replication != 1 && replication != 2) {
      throw new IllegalArgumentException(REPLICATION + "=" + replication + ": Shoal keeps 1 or 2 copies");
    }
    long chunk = conf.getSizeAsBytes(CHUNK_SIZE, "256k");
    if (chunk < 1024 || chunk > MAX_CHUNK) {
      throw new IllegalArgumentException(CHUNK_SIZE + " must be between 1k and 64m, not " + chunk);
    }
    chunkSize = (int) chunk;
    bufferLimit = conf.getSizeAsBytes(BUFFER_LIMIT, "64m");
    if (bufferLimit < chunkSize) {
      throw new IllegalArgumentException(BUFFER_LIMIT + " must be at least " + CHUNK_SIZE);
    }
    maxInFlight = conf.getInt(MAX_IN_FLIGHT, 16);
    networkTimeoutMs = conf.getTimeAsMs(NETWORK_TIMEOUT, "30s");
    masterDeadlineMs = conf.getTimeAsMs(MASTER_DEADLINE, "60s");
    clientThreads = conf.getInt(CLIENT_THREADS, 2);
    appLeaseMs = conf.getTimeAsMs(APP_LEASE, "120s");
    if (appLeaseMs < 4000) {
      throw new IllegalArgumentException(APP_LEASE + " must be at least 4s");
    }
    logLevel = conf.get(LOG_LEVEL, "warn");
    credentialFile = conf.get(CREDENTIAL_FILE, "").trim();
  }

  /**
   * The settings lines the native client parses (and checks again). With an app token (an
   * executor, from the shuffle handle) the client speaks for the application; without one (the
   * driver) it presents the tenant credential from {@link #CREDENTIAL_FILE} or the
   * SHOAL_CREDENTIAL environment variable.
   */
  String nativeSettings(String appToken) {
    StringBuilder s = new StringBuilder();
    if (appToken != null && !appToken.isEmpty()) {
      s.append("app_token=").append(appToken).append('\n');
    } else if (!credentialFile.isEmpty()) {
      s.append("credential_file=").append(credentialFile).append('\n');
    }
    s.append("masters=").append(endpoints).append('\n');
    if (!tlsCa.isEmpty()) {
      s.append("tls.ca=").append(tlsCa).append('\n');
    }
    if (tlsInsecure) {
      s.append("tls.insecure=true\n");
    }
    if (!objectStore.isEmpty()) {
      s.append("object_store=").append(objectStore).append('\n');
    }
    s.append("max_in_flight=").append(maxInFlight).append('\n');
    s.append("call_timeout_ms=").append(networkTimeoutMs).append('\n');
    s.append("master_deadline_ms=").append(masterDeadlineMs).append('\n');
    s.append("runtime_threads=").append(clientThreads).append('\n');
    s.append("log=").append(logLevel).append('\n');
    String ioKey = ioEncryptionKey();
    if (ioKey != null) {
      s.append("io_encryption_key=").append(ioKey).append('\n');
    }
    return s.toString();
  }

  /**
   * This application's IO encryption key when {@code spark.io.encryption.enabled} is on: Spark's
   * own, which the driver makes and hands its executors. Each process reads it from its own
   * SparkEnv; it never travels in task data or to Shoal. With it the native client seals every
   * batch before it leaves the executor, so workers and the object store hold ciphertext only.
   */
  static String ioEncryptionKey() {
    org.apache.spark.SparkEnv env = org.apache.spark.SparkEnv.get();
    if (env == null) {
      return null;
    }
    scala.Option<byte[]> key = env.securityManager().getIOEncryptionKey();
    if (key.isEmpty()) {
      return null;
    }
    return java.util.Base64.getUrlEncoder().withoutPadding().encodeToString(key.get());
  }
}
