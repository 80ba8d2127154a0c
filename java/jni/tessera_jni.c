/* Optional fast path of the Java binding: the five per-tile calls as plain JNI
 * functions that forward to libtessera_client.so. A JNA call costs about 40 C calls
 * (docs/benchmarks.md); a JNI call costs about one. The binding uses this library when
 * it sits next to libtessera_client.so and falls back to JNA otherwise (docs/java.md).
 * Pointers travel as jlong addresses, exactly as in the JNA mapping. */
#include <jni.h>
#include <stdint.h>

#include <tessera/client.h>

#define PTR(T, v) ((T)(uintptr_t)(v))

JNIEXPORT jint JNICALL Java_org_tessera_Jni_alloc(JNIEnv* env, jclass cls, jlong c, jlong bytes, jlong timeout,
                                                  jlong data, jlong cap, jlong block) {
  (void)env;
  (void)cls;
  return tessera_client_alloc(PTR(tessera_client_t*, c), (uint64_t)bytes, timeout, PTR(void**, data),
                              PTR(uint64_t*, cap), PTR(tessera_block_t*, block));
}

JNIEXPORT jint JNICALL Java_org_tessera_Jni_freeBlock(JNIEnv* env, jclass cls, jlong c, jlong block) {
  (void)env;
  (void)cls;
  return tessera_client_free_block(PTR(tessera_client_t*, c), (tessera_block_t)block);
}

JNIEXPORT jint JNICALL Java_org_tessera_Jni_submit(JNIEnv* env, jclass cls, jlong c, jint stream, jlong block,
                                                   jlong meta, jint mode, jlong timeout, jlong seq) {
  (void)env;
  (void)cls;
  return tessera_client_submit(PTR(tessera_client_t*, c), (uint32_t)stream, (tessera_block_t)block,
                               PTR(const tessera_tile_meta_t*, meta), mode, timeout, PTR(uint64_t*, seq));
}

JNIEXPORT jint JNICALL Java_org_tessera_Jni_poll(JNIEnv* env, jclass cls, jlong c, jlong out, jlong max,
                                                 jlong timeout) {
  (void)env;
  (void)cls;
  return tessera_client_poll(PTR(tessera_client_t*, c), PTR(tessera_result_t*, out), (size_t)max, timeout);
}

JNIEXPORT jint JNICALL Java_org_tessera_Jni_releaseN(JNIEnv* env, jclass cls, jlong c, jlong ids, jlong n) {
  (void)env;
  (void)cls;
  return tessera_client_release_n(PTR(tessera_client_t*, c), PTR(const tessera_result_id_t*, ids), (size_t)n);
}

JNIEXPORT jint JNICALL Java_org_tessera_Jni_abiVersion(JNIEnv* env, jclass cls) {
  (void)env;
  (void)cls;
  return tessera_client_abi_version();
}
