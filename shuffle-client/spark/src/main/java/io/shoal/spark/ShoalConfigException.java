package io.shoal.spark;

/** The Shoal client settings are wrong. Thrown by the native client. */
public class ShoalConfigException extends ShoalException {
  public ShoalConfigException(String message) {
    super(message);
  }

  ShoalConfigException(String message, int code, String codeName, int remedy) {
    super(message, code, codeName, remedy);
  }
}
