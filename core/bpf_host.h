/* SPDX-License-Identifier: MIT */
/*
 * Owner of the core BPF objects (bpf/sample.bpf.c, bpf/proc.bpf.c) and the
 * maps plugins share: loads them, attaches the sampler to every online CPU
 * and the lifecycle programs to their tracepoints, and delivers the events
 * ringbuf to one callback.
 *
 * This layer knows what a failure means, so it logs it once, as one line
 * that names what is missing and how to fix it; callers only exit.
 * Programs whose hook this kernel lacks are switched off before load, with
 * a logged reason.
 *
 * Threading: loop thread only.
 */
#ifndef SONDE_BPF_HOST_H
#define SONDE_BPF_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sonde/errors.h"

struct sonde_bpf_host;

/* One ringbuf record: a struct sonde_event_hdr first. Return 0 to go on. */
typedef int (*sonde_bpf_event_fn)(void *ctx, void *data, size_t size);

struct sonde_bpf_host_opts {
	unsigned int hz;        /* samples per second per CPU */
	size_t ringbuf_bytes;   /* power of two; 0: sized from hz and the CPUs */
	size_t wakeup_bytes;    /* wake userspace once this much waits (common.bpf.h);
				 * 0 or more than the ring: a quarter of the ring */
	sonde_bpf_event_fn on_event;
	void *ctx;
};

/* Opens and loads. NULL (and the reason logged) on failure; errno set. */
struct sonde_bpf_host *sonde_bpf_host__load(const struct sonde_bpf_host_opts *opts);
/* Starts sampling and lifecycle events. 0 or -errno (logged). */
int sonde_bpf_host__attach(struct sonde_bpf_host *host);
/* Detaches everything and unloads. Accepts NULL. */
void sonde_bpf_host__free(struct sonde_bpf_host *host);

/* The ringbuf's epoll fd, and draining it (records handled or -errno). */
int sonde_bpf_host__ring_fd(const struct sonde_bpf_host *host);
int sonde_bpf_host__consume(struct sonde_bpf_host *host);

/* CPUs sampled, and lifecycle programs attached. */
unsigned int sonde_bpf_host__cpus(const struct sonde_bpf_host *host);
unsigned int sonde_bpf_host__hooks(const struct sonde_bpf_host *host);

/* Sums the per-CPU counters into out[SONDE_STAT__COUNT]. 0 or -errno. */
int sonde_bpf_host__stats(const struct sonde_bpf_host *host, uint64_t *out);
/* The self-metric reason label of a counter ("samples", "ringbuf_full", ...). */
const char *sonde_stat_name(enum sonde_stat stat);

/*
 * Puts prog_fd in a free slot of the unwinders PROG_ARRAY. The slot
 * (1..SONDE_MAX_UNWINDERS-1), or -ENOSPC, or -errno.
 */
int sonde_bpf_host__add_unwinder(struct sonde_bpf_host *host, int prog_fd);
/*
 * Whether pid is profiled (if not, the sampler drops its samples before
 * reading any stack) and the unwinder its user stack starts with (slot 0:
 * frame pointers, the default for every process not set here). 0 or -errno.
 */
int sonde_bpf_host__set_process(struct sonde_bpf_host *host, uint32_t pid, uint32_t slot,
				bool profiled);
/* Forgets pid in the procs and handover maps (it exited). */
void sonde_bpf_host__forget_process(struct sonde_bpf_host *host, uint32_t pid);

/* The shared map fds plugins reuse: "events", "stats", "scratch", "procs",
 * "unwinders", "thread_tags", "handover", "unwind_state" (any map of the
 * sampler's object, by name). -ENOENT for another name. */
int sonde_bpf_host__map_fd(const struct sonde_bpf_host *host, const char *name);

/*
 * Replaces the hand-over ranges of unwinder slot in pid's entry of the
 * handover map (abi.h) with the n ranges [ranges[2i], ranges[2i + 1]); n 0
 * removes them. 0, -EINVAL, -ENOSPC (more than SONDE_MAX_HANDOVER_RANGES
 * for the process), or -errno.
 */
int sonde_bpf_host__set_handover(struct sonde_bpf_host *host, uint32_t pid, uint32_t slot,
				 const uint64_t *ranges, int n);

/* From now on the sampler copies each thread's tag (thread_tags) into its
 * samples; a plugin asked for it (sonde_host_api.register_sample_tags). */
void sonde_bpf_host__enable_tags(struct sonde_bpf_host *host);

#endif /* SONDE_BPF_HOST_H */
