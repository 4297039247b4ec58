package io.shoal.spark;

import java.io.IOException;

/**
 * An error from the Shoal client. The native bridge throws one subclass per error kind, each
 * carrying the wire error code ({@link #code()}, {@link #codeName()}; 0 and "none" when the
 * failure has none, e.g. bad settings or a closed handle) and the {@link Remedy} the native client
 * chose. Callers decide on {@link #remedy()}; the class only names the kind for logs and users.
 */
public class ShoalException extends IOException {
  private final int code;
  private final String codeName;
  private final Remedy remedy;

  /** An error raised on the Java side: no wire code, and retrying cannot help. */
  public ShoalException(String message) {
    this(message, 0, "none", Remedy.FAIL);
  }

  /** Called by the native client, which numbers the remedy. */
  ShoalException(String message, int code, String codeName, int remedy) {
    this(message, code, codeName, Remedy.fromNative(remedy));
  }

  private ShoalException(String message, int code, String codeName, Remedy remedy) {
    super(message);
    this.code = code;
    this.codeName = codeName == null ? "none" : codeName;
    this.remedy = remedy;
  }

  /** The wire error code's number, 0 when there is none. */
  public int code() {
    return code;
  }

  /** The wire error code's name (for example {@code DataLost}), "none" when there is none. */
  public String codeName() {
    return codeName;
  }

  /** What to do about this error. */
  public Remedy remedy() {
    return remedy;
  }
}
