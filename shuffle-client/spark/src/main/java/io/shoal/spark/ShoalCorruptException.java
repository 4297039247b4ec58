package io.shoal.spark;

/** Shuffle data failed a checksum; the map stage must run again. Thrown by the native client. */
public class ShoalCorruptException extends ShoalException {
  public ShoalCorruptException(String message) {
    super(message);
  }

  ShoalCorruptException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
