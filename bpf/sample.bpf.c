// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The perf_event sampler. One program per online CPU fires at --hz; it
 * records who was on the CPU and the kernel stack, then tail-calls the user
 * stack unwinder the process was given (frame pointers unless a plugin set
 * another in `procs`), and copies the thread's tag (thread_tags.bpf.h) so
 * that a plugin can label the sample later. Every unwinder ends with
 * sonde_sample_emit(), which sends the used part of the per-CPU scratch
 * record to the events ringbuf.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sample.bpf.h"
#include "thread_tags.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Which unwinder a process starts with; written by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct sonde_proc_info);
} procs SEC(".maps");

/* Set by userspace once a plugin tags threads: until then the sampler
 * skips the thread_tags lookup. */
__u32 sonde_tags_on = 0;

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, slot = SONDE_UNWINDER_FP;
	struct sonde_proc_info *info;
	struct sonde_sample *s;
	long n;

	if ((__u32)pid_tgid == 0) { /* the idle task */
		sonde_stat_inc(SONDE_STAT_SAMPLES_IDLE);
		return 0;
	}
	info = bpf_map_lookup_elem(&procs, &tgid);
	if (info) {
		if (info->flags & SONDE_PROC_SKIP) {
			sonde_stat_inc(SONDE_STAT_SAMPLES_SKIPPED);
			return 0;
		}
		slot = info->unwinder;
	}
	s = sonde_scratch();
	if (!s)
		return 0;
	sonde_stat_inc(SONDE_STAT_SAMPLES);

	s->hdr.type = SONDE_EV_SAMPLE;
	s->hdr.pid = tgid;
	s->hdr.time_ns = bpf_ktime_get_ns();
	s->tid = (__u32)pid_tgid;
	s->cpu = bpf_get_smp_processor_id();
	s->cgroup_id = bpf_get_current_cgroup_id();
	/* x86-64: user addresses have the top bit clear, kernel ones set */
	s->flags = (long)ctx->regs.ip >= 0 ? SONDE_SAMPLE_USER_MODE : 0;
	s->ustack_len = 0;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->tag = 0;
	if (sonde_tags_on)
		s->tag = sonde_thread_tag(s->tid);

	/* interrupted in user mode, the thread has no kernel stack to show:
	 * skip the helper's callchain set-up */
	n = 0;
	if (!(s->flags & SONDE_SAMPLE_USER_MODE))
		n = bpf_get_stack(ctx, s->frames, SONDE_MAX_KSTACK * sizeof(__u64), 0);
	if (n < 0) {
		s->flags |= SONDE_SAMPLE_KSTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_KSTACK_ERRORS);
		n = 0;
	}
	s->kstack_len = n / sizeof(__u64);
	if (s->kstack_len == SONDE_MAX_KSTACK) {
		s->flags |= SONDE_SAMPLE_KSTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_KSTACK_TRUNCATED);
	}

	bpf_tail_call(ctx, &unwinders, slot);
	/* Only reached when the slot is empty: fall back to frame pointers,
	 * or, should that slot be empty too, to no user stack at all. */
	sonde_stat_inc(SONDE_STAT_TAIL_CALL_FAILED);
	bpf_tail_call(ctx, &unwinders, SONDE_UNWINDER_FP);
	s->flags |= SONDE_SAMPLE_USTACK_ERROR;
	return sonde_sample_emit(s);
}

/* Slot SONDE_UNWINDER_FP: the frame-pointer walk of the user stack, from
 * the interrupted registers or, when the sample hit the kernel, those the
 * task saved on entering it (sample.bpf.h, sonde_walk_fp). */
SEC("perf_event")
int unwind_fp(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();

	if (!s)
		return 0;
	return sonde_unwind_fp(ctx, s);
}
