package org.tessera;

/** One worker of a client (tessera_worker_info_t). */
public record WorkerInfo(int index, int slot, int pid, boolean alive, long inFlight, long completed, long busyNanos,
                         int restarts) {}
