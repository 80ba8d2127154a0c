package org.tessera;

/**
 * Receives the library's log records (see {@link Client#setLogSink}). Called on whichever
 * thread logs, including threads the library started; calls are serialized. Must not throw.
 */
@FunctionalInterface
public interface LogSink {
  void log(LogLevel level, String message);
}
