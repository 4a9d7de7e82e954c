/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * One table of counters for everything the BPF side takes, drops or cuts
 * short. Each index is a slot of the per-CPU `stats` array; userspace sums
 * the CPUs and exports each one under the name given by sonde_stat_name().
 * Append only: the order is part of the ABI.
 */
#ifndef SONDE_ERRORS_H
#define SONDE_ERRORS_H

enum sonde_stat {
	SONDE_STAT_SAMPLES = 0,         /* samples taken (idle and not profiled excluded) */
	SONDE_STAT_SAMPLES_IDLE,        /* samples that hit the idle task, skipped */
	SONDE_STAT_RINGBUF_DROPS,       /* samples lost: ringbuf full */
	SONDE_STAT_KSTACK_ERRORS,       /* kernel stack could not be read */
	SONDE_STAT_USTACK_ERRORS,       /* user stack walk failed */
	SONDE_STAT_KSTACK_TRUNCATED,    /* kernel stack cut at SONDE_MAX_KSTACK */
	SONDE_STAT_USTACK_TRUNCATED,    /* user stack cut at SONDE_MAX_USTACK */
	SONDE_STAT_TAIL_CALL_FAILED,    /* an unwinder slot was empty */
	SONDE_STAT_PROC_EVENT_DROPS,    /* exec/fork/exit events lost: ringbuf full */
	SONDE_STAT_SCRATCH_MISSING,     /* per-CPU scratch lookup failed (a bug) */
	SONDE_STAT_SAMPLES_SKIPPED,     /* samples of processes the script does not profile */
	SONDE_STAT__COUNT,
};

#endif /* SONDE_ERRORS_H */
