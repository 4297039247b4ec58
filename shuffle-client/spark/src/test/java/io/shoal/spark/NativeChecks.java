package io.shoal.spark;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

/**
 * Checks the native bridge through JNI itself, without Spark: errors arrive as the exception
 * class of their kind, carrying the wire code and remedy the native side chose; arguments are
 * checked, handles are closed exactly once, and chunks come back whole. Arguments: master
 * endpoints, CA file, two tenants' credential files. Prints {@code NATIVE-CHECKS ok} at the end.
 */
public final class NativeChecks {
  private NativeChecks() {}

  interface Call {
    void run() throws Exception;
  }

  static void expect(Class<? extends Throwable> kind, String contains, Call c) throws Exception {
    expect(kind, contains, null, null, c);
  }

  /** Also checks the wire code's name and the remedy the exception carries (when not null). */
  static void expect(Class<? extends Throwable> kind, String contains, String codeName, Remedy remedy, Call c)
      throws Exception {
    try {
      c.run();
    } catch (Throwable t) {
      if (!kind.isInstance(t) || !String.valueOf(t.getMessage()).contains(contains)) {
        throw new AssertionError("expected " + kind.getSimpleName() + " with '" + contains + "', got " + t, t);
      }
      ShoalException e = (ShoalException) t;
      if (codeName != null && (!e.codeName().equals(codeName) || (e.code() == 0) != codeName.equals("none"))) {
        throw new AssertionError("expected code " + codeName + ", got " + e.code() + " " + e.codeName(), t);
      }
      if (remedy != null && e.remedy() != remedy) {
        throw new AssertionError("expected remedy " + remedy + ", got " + e.remedy(), t);
      }
      System.out.println(
          "CHECK " + kind.getSimpleName() + " ok (" + e.code() + " " + e.codeName() + ", " + e.remedy() + "): "
              + t.getMessage());
      return;
    }
    throw new AssertionError("expected " + kind.getSimpleName() + ", nothing was thrown");
  }

  static ByteBuffer direct(String s) {
    byte[] b = s.getBytes(StandardCharsets.UTF_8);
    ByteBuffer d = ByteBuffer.allocateDirect(b.length);
    d.put(b).flip();
    return d;
  }

  public static void main(String[] args) throws Exception {
    String masters = args[0];
    String ca = args[1];
    String credA = args[2];
    String credB = args[3];
    String app = "native-checks";

    expect(ShoalConfigException.class, "colour", "none", Remedy.FAIL, () -> ShoalNative.clientOpen("masters=" + masters + "\ncolour=blue"));
    expect(ShoalConfigException.class, "no master", () -> ShoalNative.clientOpen("tls.ca=" + ca));
    String base = "masters=" + masters + "\ntls.ca=" + ca + "\ncall_timeout_ms=5000\n";
    expect(ShoalConfigException.class, "credential file", () -> ShoalNative.clientOpen(base + "credential_file=/nonexistent"));
    long anonymous = ShoalNative.clientOpen(base + "runtime_threads=1");
    expect(ShoalRejectedException.class, "tenant credential", "Unauthorized", Remedy.FAIL, () -> ShoalNative.registerApp(anonymous, app, 60_000));
    long h = ShoalNative.clientOpen(base + "credential_file=" + credA);
    String token = ShoalNative.registerApp(h, app, 60_000);
    if (token.isEmpty()) {
      throw new AssertionError("registration with a tenant credential gave no app token");
    }
    // Another tenant's application can neither take this app id nor touch its shuffles.
    long other = ShoalNative.clientOpen(base + "credential_file=" + credB);
    expect(ShoalRejectedException.class, "another tenant", () -> ShoalNative.registerApp(other, app, 60_000));
    ShoalNative.registerApp(other, app + "-b", 60_000);
    expect(ShoalRejectedException.class, "another application", () -> ShoalNative.registerShuffle(other, app, 1, 0, 2, 2, 1));
    expect(ShoalRejectedException.class, "", () -> ShoalNative.registerShuffle(h, "no-such-app", 1, 0, 2, 2, 1));
    expect(ShoalConfigException.class, "negative", () -> ShoalNative.registerShuffle(h, app, -1, 0, 2, 2, 1));
    ShoalNative.registerShuffle(h, app, 1, 0, 2, 2, 1);

    long w = ShoalNative.writerOpen(h, app, 1, 0, 2, 2, 1, 0, 1L);
    ShoalNative.writerWrite(w, 0, direct("chunk-one"), 0, 9);
    ShoalNative.writerWrite(w, 0, direct("xxchunk-two"), 2, 9);
    expect(ShoalConfigException.class, "not a direct", () -> ShoalNative.writerWrite(w, 0, ByteBuffer.allocate(4), 0, 4));
    expect(ShoalConfigException.class, "outside", () -> ShoalNative.writerWrite(w, 0, direct("abc"), 1, 3));
    expect(ShoalConfigException.class, "out of range", () -> ShoalNative.writerWrite(w, 7, direct("abc"), 0, 3));
    long[] r = ShoalNative.writerCommit(w);
    // Compressed sizes: two small chunks, each a batch with its header; nothing in partition 1.
    if (r.length != 4 || r[0] != 1 || r[2] < 18 || r[2] != r[1] || r[3] != 0) {
      throw new AssertionError("commit returned " + java.util.Arrays.toString(r));
    }
    expect(ShoalInternalException.class, "closed", "none", Remedy.FAIL, () -> ShoalNative.writerCommit(w));
    expect(ShoalInternalException.class, "closed", () -> ShoalNative.writerAbort(w));
    ShoalNative.writerCommit(ShoalNative.writerOpen(h, app, 1, 0, 2, 2, 1, 1, 2L));

    long rd = ShoalNative.readerOpen(h, app, 1, 0, 0, new int[] {0});
    ByteBuffer buf = ByteBuffer.allocateDirect(2);
    StringBuilder got = new StringBuilder();
    while (true) {
      int n = ShoalNative.readerNext(rd, buf);
      if (n == -1) {
        break;
      }
      if (n < -1) {
        buf = ByteBuffer.allocateDirect(-n);
        continue;
      }
      byte[] b = new byte[n];
      buf.duplicate().get(b, 0, n);
      got.append(new String(b, StandardCharsets.UTF_8)).append('|');
    }
    if (!got.toString().equals("chunk-one|chunk-two|")) {
      throw new AssertionError("read back " + got);
    }
    ShoalNative.readerClose(rd);
    expect(ShoalInternalException.class, "closed", () -> ShoalNative.readerClose(rd));
    ByteBuffer any = buf;
    expect(ShoalInternalException.class, "closed", () -> ShoalNative.readerNext(rd, any));

    // Map 0 committed nothing to partition 1: a reducer told otherwise gets DataLost.
    long lost = ShoalNative.readerOpen(h, app, 1, 0, 1, new int[] {0});
    expect(
        ShoalDataLostException.class, "no committed data", "DataLost", Remedy.RECOMPUTE,
        () -> ShoalNative.readerNext(lost, any));
    ShoalNative.readerClose(lost);
    if (ShoalNative.openStreams() != 0) {
      throw new AssertionError(ShoalNative.openStreams() + " streams left open");
    }
    ShoalNative.unregisterApp(h, app);
    System.out.println("NATIVE-CHECKS ok");
  }
}
