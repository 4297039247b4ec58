package io.shoal.spark;

/** A bug or an unexpected state in the Shoal client. Thrown by the native client. */
public class ShoalInternalException extends ShoalException {
  public ShoalInternalException(String message) {
    super(message);
  }

  ShoalInternalException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
