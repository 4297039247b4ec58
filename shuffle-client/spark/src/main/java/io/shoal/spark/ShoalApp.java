package io.shoal.spark;

import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.apache.spark.SparkConf;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Per-JVM state: the native client, and on the driver the application's registration in Shoal
 * with a heartbeat that keeps its lease. When the driver dies, the lease runs out and Shoal drops
 * the application's shuffles.
 */
final class ShoalApp {
  private static final Logger LOG = LoggerFactory.getLogger(ShoalApp.class);
  private static final Object LOCK = new Object();
  private static long client;
  private static ShoalConf conf;
  private static String registeredApp;
  /** The token Shoal gave this driver's application; handed to executors in shuffle handles. */
  private static String appToken = "";
  private static ScheduledExecutorService heartbeat;

  private ShoalApp() {}

  /** The process's client, opened on first use (on the driver, with its tenant credential). */
  static long client(ShoalConf c) throws ShoalException {
    return client(c, null);
  }

  /**
   * The process's client; an executor opens it with the app token from a shuffle handle. A
   * process that already has one (the driver, or local mode) keeps it: it speaks for the same
   * application.
   */
  static long client(ShoalConf c, String token) throws ShoalException {
    synchronized (LOCK) {
      if (client == 0) {
        client = ShoalNative.clientOpen(c.nativeSettings(token));
        conf = c;
      }
      return client;
    }
  }

  /** The app token this driver received ("" before registration or without authentication). */
  static String appToken() {
    synchronized (LOCK) {
      return appToken;
    }
  }

  /** Registers the application (once) and starts its heartbeat. Driver only. */
  static void register(SparkConf sparkConf, ShoalConf c) throws ShoalException {
    String app = sparkConf.getAppId();
    synchronized (LOCK) {
      if (app.equals(registeredApp)) {
        return;
      }
      long h = client(c);
      appToken = ShoalNative.registerApp(h, app, c.appLeaseMs);
      registeredApp = app;
      heartbeat =
          Executors.newSingleThreadScheduledExecutor(
              r -> {
                Thread t = new Thread(r, "shoal-app-heartbeat");
                t.setDaemon(true);
                return t;
              });
      long every = Math.max(1000, c.appLeaseMs / 4);
      heartbeat.scheduleWithFixedDelay(() -> beat(h, app), every, every, TimeUnit.MILLISECONDS);
      LOG.info("Registered application {} with Shoal at {}", app, c.endpoints);
    }
  }

  private static void beat(long h, String app) {
    try {
      ShoalNative.appHeartbeat(h, app);
    } catch (ShoalException e) {
      switch (e.remedy()) {
        case RETRY_LATER:
        case RELOCATE:
          // The next beat retries; the lease allows several misses.
          LOG.warn("Shoal heartbeat for {} failed ({}): {}", app, e.codeName(), e.getMessage());
          break;
        case RECOMPUTE:
        case FAIL:
        default:
          // Typically UnknownApp: the lease ran out while the masters were unreachable and
          // Shoal dropped the application. Register it again, so re-run stages can write (lost
          // shuffles are recomputed through FetchFailed).
          LOG.warn("Shoal refused the heartbeat of {} ({}: {}); registering it again", app, e.codeName(), e.getMessage());
          reregister(h, app);
          break;
      }
    }
  }

  private static void reregister(long h, String app) {
    try {
      String token = ShoalNative.registerApp(h, app, conf.appLeaseMs);
      synchronized (LOCK) {
        appToken = token;
      }
    } catch (ShoalException again) {
      LOG.warn("Could not register {} with Shoal again ({}): {}", app, again.codeName(), again.getMessage());
    }
  }

  /** The application id registered by this driver, or null. */
  static String registeredApp() {
    synchronized (LOCK) {
      return registeredApp;
    }
  }

  /** Unregisters the application; Shoal deletes its shuffle data. Idempotent. */
  static void unregister() {
    synchronized (LOCK) {
      if (registeredApp == null) {
        return;
      }
      heartbeat.shutdownNow();
      try {
        ShoalNative.unregisterApp(client, registeredApp);
        LOG.info("Unregistered application {} from Shoal", registeredApp);
      } catch (ShoalException e) {
        LOG.warn("Could not unregister {} from Shoal; its lease will expire: {}", registeredApp, e.getMessage());
      }
      registeredApp = null;
      heartbeat = null;
    }
  }

  /** Forgets what this process cached of a shuffle, if it ever opened a client. */
  static void forgetShuffle(int shuffleId) {
    synchronized (LOCK) {
      if (client == 0) {
        return;
      }
      try {
        ShoalNative.forgetShuffle(client, shuffleId);
      } catch (ShoalException e) {
        LOG.warn("Could not forget shuffle {}: {}", shuffleId, e.getMessage());
      }
    }
  }

  /** Unregisters every generation of a shuffle. */
  static void removeShuffle(int shuffleId) {
    synchronized (LOCK) {
      if (registeredApp == null) {
        return;
      }
      try {
        ShoalNative.unregisterShuffle(client, registeredApp, shuffleId);
      } catch (ShoalException e) {
        LOG.warn("Could not unregister shuffle {} from Shoal: {}", shuffleId, e.getMessage());
      }
    }
  }
}
