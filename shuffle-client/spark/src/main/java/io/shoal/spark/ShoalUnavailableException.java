package io.shoal.spark;

/** The Shoal cluster could not be reached or was overloaded; the call may be retried. Thrown by the native client. */
public class ShoalUnavailableException extends ShoalException {
  public ShoalUnavailableException(String message) {
    super(message);
  }

  ShoalUnavailableException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
