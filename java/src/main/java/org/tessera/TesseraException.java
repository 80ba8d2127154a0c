package org.tessera;

/**
 * A failed Tessera call: the C ABI's code (negative, {@code -TESSERA_E*}), its name
 * (e.g. "stale_handle") and the library's message for that call.
 */
public class TesseraException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public static final int EINVAL = 1, ESYSTEM = 7, ESTALE = 8, EBADHANDLE = 9, ENOSPC = 11, ECLOSED = 13,
      ETIMEDOUT = 14, EWORKER = 16, ECANCELED = 17, ENOTFOUND = 18, EUNAVAILABLE = 19, EINTERNAL = 20;

  private final int code;

  public TesseraException(int code, String message) {
    super(message);
    this.code = code < 0 ? code : -code;
  }

  /** The negative error code ({@code -TESSERA_E*}). */
  public int code() {
    return code;
  }

  /** The code's name, e.g. "stale_handle". */
  public String codeName() {
    return TesseraNative.tessera_strerror(code);
  }

  /** The failed call's error, read on the calling thread right after the call. */
  static TesseraException fromLastError(int rc) {
    var p = TesseraNative.tessera_last_error();
    String msg = p == null ? "" : p.getString(0, "UTF-8");
    if (msg.isEmpty()) msg = TesseraNative.tessera_strerror(rc);
    return new TesseraException(rc, msg);
  }
}
