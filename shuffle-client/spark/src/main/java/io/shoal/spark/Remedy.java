package io.shoal.spark;

/**
 * What to do about a failed Shoal call, as the native client classified it (the Rust
 * {@code ErrorCode::remedy}); every {@link ShoalException} carries one, and the plugin branches on
 * it rather than on exception classes or messages.
 */
public enum Remedy {
  /** The same call, to the same place, after a backoff. */
  RETRY_LATER,
  /** The data belongs elsewhere now: ask the master where, then go there. */
  RELOCATE,
  /** The data is gone: re-run what produced it (a FetchFailed, then the map stage). */
  RECOMPUTE,
  /** Retrying cannot help: report the failure. */
  FAIL;

  /**
   * The remedy the native library numbers {@code n} ({@code remedy_number} in bridge.rs); a
   * number this jar does not know fails rather than guessing.
   */
  static Remedy fromNative(int n) {
    switch (n) {
      case 0:
        return RETRY_LATER;
      case 1:
        return RELOCATE;
      case 2:
        return RECOMPUTE;
      default:
        return FAIL;
    }
  }
}
