package io.shoal.spark;

import java.io.IOException;

/**
 * An error from the Shoal client. The native bridge throws one subclass per error kind, so
 * callers branch on the class: {@link ShoalDataLostException} and {@link ShoalCorruptException}
 * (and {@link ShoalUnavailableException} on reads) become Spark's FetchFailedException.
 */
public class ShoalException extends IOException {
  public ShoalException(String message) {
    super(message);
  }

  /** Whether the same call may succeed if tried again later. */
  public boolean retryable() {
    return this instanceof ShoalUnavailableException;
  }

  /** Whether the data behind this error is gone and its map stage must run again. */
  public boolean needsRecompute() {
    return this instanceof ShoalDataLostException
        || this instanceof ShoalCorruptException
        || this instanceof ShoalUnavailableException;
  }
}
