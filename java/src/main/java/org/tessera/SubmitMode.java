package org.tessera;

/** What submit does when the stream is full (enum tessera_submit_mode). */
public enum SubmitMode {
  /** Wait (bounded by the timeout; 30 s when the timeout is 0). */
  BLOCK,
  /** Fail at once with ENOSPC. */
  FAIL_FAST,
  /** Wait up to the timeout, then fail with ETIMEDOUT. */
  TIMEOUT
}
