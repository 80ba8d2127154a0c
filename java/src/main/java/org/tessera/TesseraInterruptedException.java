package org.tessera;

/**
 * A blocking call (poll, alloc, submit) returned early because its thread was
 * interrupted ({@link Thread#interrupt()}; the thread's interrupt status stays set,
 * as with NIO channels) or because {@link Client#wake()} was called.
 */
public final class TesseraInterruptedException extends TesseraException {
  private static final long serialVersionUID = 1L;
  private final boolean threadInterrupted;

  TesseraInterruptedException(String message, boolean threadInterrupted) {
    super(ECANCELED, message);
    this.threadInterrupted = threadInterrupted;
  }

  /** True for Thread.interrupt(), false for Client.wake(). */
  public boolean threadInterrupted() {
    return threadInterrupted;
  }
}
