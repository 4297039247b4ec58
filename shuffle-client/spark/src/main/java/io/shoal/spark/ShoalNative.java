package io.shoal.spark;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * The native Shoal client (libshuffle_client). Handles are opaque longs; each writer and reader
 * handle is closed exactly once (commit or abort; readerClose), and the native side refuses a
 * closed or unknown handle with {@link ShoalInternalException} rather than touching freed memory.
 *
 * <p>The library is loaded from {@code java.library.path} when it is there, else unpacked from
 * this jar (where {@code build.sh} put it) into a temporary file.
 */
final class ShoalNative {
  static final String LIBRARY = "shuffle_client";
  private static final String RESOURCE = "/io/shoal/spark/native/linux-x86_64/libshuffle_client.so";

  static {
    load();
  }

  private ShoalNative() {}

  private static void load() {
    try {
      System.loadLibrary(LIBRARY);
      return;
    } catch (UnsatisfiedLinkError notOnPath) {
      // Fall through to the copy packed in the jar.
    }
    try (InputStream in = ShoalNative.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new UnsatisfiedLinkError(
            "lib" + LIBRARY + ".so is neither on java.library.path nor in the Shoal jar at " + RESOURCE);
      }
      Path tmp = Files.createTempFile("libshuffle_client", ".so");
      tmp.toFile().deleteOnExit();
      Files.copy(in, tmp, StandardCopyOption.REPLACE_EXISTING);
      System.load(tmp.toAbsolutePath().toString());
    } catch (IOException e) {
      throw new UnsatisfiedLinkError("cannot unpack the Shoal native library: " + e);
    }
  }

  /** Opens (or shares) a client for {@code key=value} settings lines. */
  static native long clientOpen(String settings) throws ShoalException;

  /** Registers the application with the client's tenant credential; returns the app token for executors ("" without authentication). */
  static native String registerApp(long client, String app, long leaseMs) throws ShoalException;

  static native void appHeartbeat(long client, String app) throws ShoalException;

  static native void unregisterApp(long client, String app) throws ShoalException;

  static native void registerShuffle(
      long client, String app, int shuffleId, int generation, int numMaps, int numPartitions, int replication)
      throws ShoalException;

  /** Unregisters every generation of a Spark shuffle id. */
  static native void unregisterShuffle(long client, String app, int shuffleId) throws ShoalException;

  /** Drops this process's cached assignments of a shuffle (every generation). */
  static native void forgetShuffle(long client, int shuffleId) throws ShoalException;

  static native long writerOpen(
      long client,
      String app,
      int shuffleId,
      int generation,
      int numMaps,
      int numPartitions,
      int replication,
      int map,
      long attempt)
      throws ShoalException;

  /** Pushes bytes {@code [offset, offset+len)} of a direct buffer as one self-contained chunk. */
  static native void writerWrite(long writer, int partition, ByteBuffer direct, int offset, int len)
      throws ShoalException;

  /**
   * Commits and closes: {@code [accepted 0/1, wire bytes, compressed bytes of partition 0, 1,
   * ...]}.
   */
  static native long[] writerCommit(long writer) throws ShoalException;

  static native void writerAbort(long writer) throws ShoalException;

  /** A reader of one partition over exactly these maps, each of which must have data for it. */
  static native long readerOpen(long client, String app, int shuffleId, int generation, int partition, int[] maps)
      throws ShoalException;

  /**
   * Copies the next chunk to the start of {@code direct}: its length, {@code -1} at the verified
   * end, or {@code -n} when the buffer must first grow to {@code n} bytes.
   */
  static native int readerNext(long reader, ByteBuffer direct) throws ShoalException;

  static native void readerClose(long reader) throws ShoalException;

  /** Writers and readers open in this process. */
  static native int openStreams();
}
