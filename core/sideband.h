/* SPDX-License-Identifier: MIT */
/*
 * perf side-band records: one dummy software event per online CPU that
 * asks the kernel for the records perf itself relies on: executable mmaps
 * (PERF_RECORD_MMAP2), exec boundaries (PERF_RECORD_COMM with
 * PERF_RECORD_MISC_COMM_EXEC) and forks (PERF_RECORD_FORK), each stamped
 * with CLOCK_MONOTONIC at the moment it happened. They feed the process
 * registry's address spaces.
 *
 * The loop must drain side-band records before the events ringbuf, so that
 * a sample never meets an address space older than itself.
 *
 * Threading: loop thread only. Errors: NULL/errno, 0/-errno; logs nothing.
 */
#ifndef SONDE_SIDEBAND_H
#define SONDE_SIDEBAND_H

#include <stdint.h>

struct sonde_procs;
struct sonde_sideband;

/* NULL and errno (EACCES/EPERM when perf_event_open is refused). */
struct sonde_sideband *sonde_sideband__new(struct sonde_procs *procs, unsigned int pages_per_cpu);
void sonde_sideband__free(struct sonde_sideband *sb);

/* One fd to put in the loop; readable when records wait. */
int sonde_sideband__fd(const struct sonde_sideband *sb);

/* Hands every waiting record to the registry. Number of records or -errno. */
int sonde_sideband__drain(struct sonde_sideband *sb);

/* Records the kernel lost (PERF_RECORD_LOST), for /metrics. */
uint64_t sonde_sideband__lost(const struct sonde_sideband *sb);

#endif /* SONDE_SIDEBAND_H */
