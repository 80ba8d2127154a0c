package org.tessera;

/** Something a Client hands out that must be revoked when the client closes (intrusive list, no allocation). */
abstract class Owned {
  Owned prev, next;

  /** The client is closing: make every later access throw (the native side frees it). */
  abstract void invalidate();
}
