"""The host loop of the Java/C/Python host comparison, in Python over the same C ABI
(ctypes on libtessera_client.so): the same options, workers, tiles and timing points as
c_host_loop.c. Results are read at fixed offsets of tessera_result_t (no ctypes
Structure per result), as the Java binding does.

    python3 py_host_loop.py LIBTESSERA_CLIENT_SO WORKER_EXE TILES WORKERS
"""
import ctypes as C
import json
import struct
import sys
import time


def main() -> int:
    lib = C.CDLL(sys.argv[1])
    worker, tiles, workers = sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    warmup = tiles // 10
    in_flight, nbytes = 64, 16 * 16 * 3
    vp, u64, i64, u32, i32 = C.c_void_p, C.c_uint64, C.c_int64, C.c_uint32, C.c_int32
    lib.tessera_client_alloc.argtypes = [vp, u64, i64, vp, vp, vp]
    lib.tessera_client_submit.argtypes = [vp, u32, u64, vp, i32, i64, vp]
    lib.tessera_client_poll.argtypes = [vp, vp, C.c_size_t, i64]
    lib.tessera_client_release_result.argtypes = [vp, u64]
    lib.tessera_client_create.argtypes = [vp, vp]
    lib.tessera_client_start_pool.argtypes = [vp, vp]
    lib.tessera_client_open_stream.argtypes = [vp, vp, vp]
    lib.tessera_client_destroy.argtypes = [vp]
    lib.tessera_last_error.restype = C.c_char_p
    lib.tessera_set_log_level(3)

    def check(rc, what):
        if rc < 0:
            raise RuntimeError(f"{what}: {lib.tessera_last_error().decode()}")
        return rc

    opts = (C.c_ubyte * 48)()
    lib.tessera_client_options_init(opts)
    classes = (C.c_uint64 * 2)(4096, 1024)
    struct.pack_into("=QQ", opts, 0, C.addressof(classes), 1)
    c = vp()
    check(lib.tessera_client_create(opts, C.byref(c)), "create")
    spec = (C.c_ubyte * 72)()
    lib.tessera_pool_spec_init(spec)
    argv = (C.c_char_p * 1)(worker)
    struct.pack_into("=Qqi", spec, 0, C.addressof(argv), 1, workers)
    check(lib.tessera_client_start_pool(c, spec), "start_pool")
    so = (C.c_ubyte * 24)()
    lib.tessera_stream_options_init(so)
    struct.pack_into("=I", so, 8, in_flight)
    s = C.c_uint32()
    check(lib.tessera_client_open_stream(c, so, C.byref(s)), "open_stream")
    meta = (C.c_ubyte * 56)()
    lib.tessera_tile_meta_init(meta)
    struct.pack_into("=iIIIII", meta, 0, 1, 3, 16, 16, 3, 0)
    struct.pack_into("=I", meta, 36, 2)  # op 2: trivial
    res = (C.c_ubyte * (160 * in_flight))()
    data, cap, blk = vp(), u64(), u64()
    p_data, p_cap, p_blk = C.byref(data), C.byref(cap), C.byref(blk)
    alloc, submit, poll, release = (lib.tessera_client_alloc, lib.tessera_client_submit, lib.tessera_client_poll,
                                    lib.tessera_client_release_result)
    sid = s.value
    unpack_id, unpack_outcome = struct.Struct("=Q").unpack_from, struct.Struct("=i").unpack_from
    clock = time.perf_counter_ns
    submitted = done = bad = call_ns = 0
    t_start = 0
    total = tiles + warmup
    while done < total:
        if done >= warmup and t_start == 0:
            t_start = clock()
            call_ns = 0
        while submitted < total and submitted - done < in_flight:
            t0 = clock()
            if alloc(c, nbytes, 1000000000, p_data, p_cap, p_blk) != 0:
                check(-1, "alloc")
            C.memset(data.value, submitted & 0xFF, 1)
            if submit(c, sid, blk.value, meta, 0, 0, None) != 0:
                check(-1, "submit")
            call_ns += clock() - t0
            submitted += 1
        n = check(poll(c, res, in_flight, 1000000000), "poll")
        for i in range(n):
            if unpack_outcome(res, 160 * i + 24)[0] != 0:
                bad += 1
            rid = unpack_id(res, 160 * i)[0]
            t0 = clock()
            release(c, rid)
            call_ns += clock() - t0
        done += n
    wall = (clock() - t_start) / 1e9
    free_block = lib.tessera_client_free_block
    free_block.argtypes = [vp, u64]
    t0 = 0
    for i in range(tiles + warmup):
        if i == warmup:
            t0 = clock()
        if alloc(c, nbytes, 1000000000, p_data, p_cap, p_blk) != 0:
            check(-1, "alloc")
        C.memset(data.value, i & 0xFF, 1)
        free_block(c, blk.value)
    alloc_free_ns = (clock() - t0) / tiles
    print(json.dumps({"host": "python-ctypes", "tiles": tiles, "workers": workers, "tiles_per_s": round(tiles / wall, 1),
                      "call_ns_per_tile": round(call_ns / tiles, 1), "alloc_free_ns": round(alloc_free_ns, 1),
                      "failed": bad}))
    lib.tessera_client_destroy(c)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
