package org.tessera;

/** Levels of the library's log records (enum tessera_log_level). */
public enum LogLevel {
  TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL, OFF;

  static LogLevel of(int code) {
    LogLevel[] v = values();
    return code >= 0 && code < v.length ? v[code] : INFO;
  }
}
