package org.tessera;

/** What became of a tile: exactly one outcome per submitted tile. */
public enum Outcome {
  COMPLETED, FAILED, CANCELED;

  static Outcome of(int code) {
    return code == 0 ? COMPLETED : code == 2 ? CANCELED : FAILED;
  }
}
