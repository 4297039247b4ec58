package io.shoal.spark;

/** Committed shuffle data can no longer be read; the map stage must run again. Thrown by the native client. */
public class ShoalDataLostException extends ShoalException {
  public ShoalDataLostException(String message) {
    super(message);
  }

  ShoalDataLostException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
