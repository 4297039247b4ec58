package io.shoal.spark;

/** The Shoal cluster refused the request. Thrown by the native client. */
public class ShoalRejectedException extends ShoalException {
  public ShoalRejectedException(String message) {
    super(message);
  }

  ShoalRejectedException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
