package io.shoal.spark;

/** Shuffle data failed a checksum; the map stage must run again. Thrown by the native client. */
public class ShoalCorruptException extends ShoalException {
  public ShoalCorruptException(String message) {
    super(message);
  }
}
