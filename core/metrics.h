/* SPDX-License-Identifier: MIT */
/*
 * sonded's self metrics in the Prometheus text format: what the BPF side
 * took and dropped, what userspace received, named and missed, and the
 * process's own CPU and memory.
 */
#ifndef SONDE_METRICS_H
#define SONDE_METRICS_H

#include <stdint.h>

struct sonde_bpf_host;
struct sonde_symbolizer;
struct sonde_procs;
struct sonde_sideband;
struct sonde_strbuf;

/* Counted by the daemon's userspace side. */
struct sonde_daemon_counters {
	uint64_t samples_received;
	uint64_t samples_unknown_process; /* pid neither known nor in /proc */
	uint64_t samples_lost_memory;     /* not aggregated: out of memory */
	uint64_t frames_unmapped;         /* user frames no mapping covered */
	uint64_t stacks_truncated;
	uint64_t records_malformed;
	uint64_t samples_tag_waiting; /* held for their tag's labels now (a gauge, set by the caller) */
	uint64_t samples_tag_late;    /* went unlabeled: the tag's labels came too late */
	uint64_t samples_tag_unknown; /* went unlabeled: no plugin could name the tag */
	uint64_t samples_tag_full;    /* went unlabeled: too many samples were waiting */
	uint64_t windows_written;
	uint64_t window_write_errors;
};

struct sonde_metrics_sources {
	const struct sonde_bpf_host *host; /* each may be NULL */
	const struct sonde_symbolizer *sym;
	const struct sonde_procs *procs;
	const struct sonde_sideband *sideband;
	const struct sonde_daemon_counters *counters;
};

void sonde_metrics_write(const struct sonde_metrics_sources *src, struct sonde_strbuf *out);

#endif /* SONDE_METRICS_H */
