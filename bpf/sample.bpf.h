/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every user stack unwinder shares: the per-CPU scratch sample and the
 * emit step. Plugins include this and reuse the core's maps
 * (bpf_map__reuse_fd) so that all of them point at one scratch record.
 */
#ifndef SONDE_SAMPLE_BPF_H
#define SONDE_SAMPLE_BPF_H

#include "common.bpf.h"

/* One sample under construction per CPU, carried across tail calls. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_sample);
} scratch SEC(".maps");

static __always_inline struct sonde_sample *sonde_scratch(void)
{
	__u32 zero = 0;
	struct sonde_sample *s = bpf_map_lookup_elem(&scratch, &zero);

	if (!s)
		sonde_stat_inc(SONDE_STAT_SCRATCH_MISSING);
	return s;
}

/* Sends the kernel and user frames gathered so far. */
static __always_inline int sonde_sample_emit(struct sonde_sample *s)
{
	__u64 words = (__u64)s->kstack_len + s->ustack_len;

	if (words > SONDE_MAX_FRAMES)
		words = SONDE_MAX_FRAMES;
	if (bpf_ringbuf_output(&events, s, SONDE_SAMPLE_HDR_SIZE + words * sizeof(__u64),
			       sonde_wakeup_flags()))
		sonde_stat_inc(SONDE_STAT_RINGBUF_DROPS);
	return 0;
}

static __always_inline int sonde_unwind_fp(struct bpf_perf_event_data *ctx, struct sonde_sample *s)
{
	__u32 k = s->kstack_len;
	long n;

	if (k > SONDE_MAX_KSTACK)
		return 0;
	n = bpf_get_stack(ctx, &s->frames[k], SONDE_MAX_USTACK * sizeof(__u64), BPF_F_USER_STACK);
	if (n < 0) {
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
		n = 0;
	}
	s->ustack_len = n / sizeof(__u64);
	if (s->ustack_len == SONDE_MAX_USTACK) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
	}
	return sonde_sample_emit(s);
}

#endif /* SONDE_SAMPLE_BPF_H */
