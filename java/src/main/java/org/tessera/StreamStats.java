package org.tessera;

/** Counters of one stream (tessera_stream_stats_t); latencies over the last 4096 delivered tiles. */
public record StreamStats(long submitted, long queued, long running, long completed, long failed, long canceled,
                          long retried, double p50Micros, double p99Micros) {}
