package io.shoal.spark.shim;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Chooses the {@link SparkShim} of the running Spark from its version, once per JVM. */
public final class Shims {
  /** The Spark lines Shoal is built and tested for, as the error for any other names them. */
  public static final String SUPPORTED = "3.5, 4.0, 4.1, 4.2 and 4.3";

  private static final Pattern MAJOR_MINOR = Pattern.compile("^(\\d+)\\.(\\d+)(?:[.\\-+].*)?$");
  private static volatile SparkShim shim;

  private Shims() {}

  /** The running Spark's shim; an unsupported version is an IllegalStateException naming it. */
  public static SparkShim get() {
    SparkShim s = shim;
    if (s == null) {
      synchronized (Shims.class) {
        s = shim;
        if (s == null) {
          shim = s = load(sparkVersion());
        }
      }
    }
    return s;
  }

  /** The running Spark's version string, e.g. {@code 3.5.9}. */
  public static String sparkVersion() {
    return org.apache.spark.package$.MODULE$.SPARK_VERSION();
  }

  /** The shim class for a Spark version, or null when Shoal does not support it. */
  static String shimFor(String version) {
    Matcher m = MAJOR_MINOR.matcher(version == null ? "" : version.trim());
    if (!m.matches()) {
      return null;
    }
    switch (m.group(1) + "." + m.group(2)) {
      case "3.5":
        return "io.shoal.spark.shim.Spark35";
      case "4.0":
        return "io.shoal.spark.shim.Spark40";
      case "4.1":
      case "4.2":
      case "4.3":
        return "io.shoal.spark.shim.Spark4";
      default:
        return null;
    }
  }

  private static SparkShim load(String version) {
    String name = shimFor(version);
    if (name == null) {
      throw new IllegalStateException("Shoal supports Spark " + SUPPORTED + ", not Spark " + version);
    }
    try {
      // By name: a shim links only against its own line's signatures, so only the chosen one is
      // ever loaded.
      return (SparkShim) Class.forName(name, true, Shims.class.getClassLoader()).getDeclaredConstructor().newInstance();
    } catch (ReflectiveOperationException | LinkageError e) {
      throw new IllegalStateException(
          "the Shoal jar has no working shim " + name + " for Spark " + version + " (" + e + "); rebuild it with build.sh", e);
    }
  }
}
