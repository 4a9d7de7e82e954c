// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The JVM walker of this increment: the kernel's frame-pointer walk (which
 * follows a JVM run with -XX:+PreserveFramePointer through its interpreter
 * and compiled frames), with every pc in the process's code cache rewritten
 * as a frame of the plugin's kind so that userspace can name it; the code
 * cache is anonymous memory the core cannot name.
 *
 * The bounds come from jvm_procs, filled by userspace from the JVM's
 * VMStructs: this code has no JVM version in it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sample.bpf.h"
#include "jvm.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The frame kind the host gave the plugin; set before load. */
const volatile __u64 jvm_kind = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JVM_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct jvm_proc);
} jvm_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JVM_ERR__BPF);
	__type(key, __u32);
	__type(value, __u64);
} jvm_errors SEC(".maps");

/* The walk lands here first: a JIT frame takes two words in the sample. */
struct native_buf {
	__u64 words[SONDE_MAX_USTACK + 1]; /* a power of two: indexes are masked */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct native_buf);
} jvm_native SEC(".maps");

static __always_inline void jvm_error(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&jvm_errors, &reason);

	if (v)
		*v += 1;
}

struct copy {
	struct sonde_sample *s;
	struct native_buf *nb;
	__u64 lo, hi;
	__u32 base;  /* first user word of the sample */
	__u32 n;     /* walked words */
	__u32 words; /* user words written */
	__u32 cut;   /* walked words left out */
};

/* One walked pc into place; a callback so that the indexes are computed
 * afresh, which the verifier can bound. */
static long copy_one(__u32 i, void *data)
{
	struct copy *c = data;
	__u64 to = (__u64)c->base + c->words, from = i, pc;

	if (i >= c->n || i >= SONDE_MAX_USTACK)
		return 1;
	/* The compiler knows i < 127 and would drop a plain mask; the
	 * verifier does not, so mask where it sees it. */
	asm volatile("%0 &= 127" : "+r"(from));
	pc = c->nb->words[from];
	/* Keep the bound checks below on the register the stores use. */
	asm volatile("" : "+r"(to));
	if (pc >= c->lo && pc < c->hi) {
		if (c->words + 2 > SONDE_MAX_USTACK || to > SONDE_MAX_FRAMES - 2) {
			c->cut = c->n - i;
			return 1;
		}
		c->s->frames[to] =
			(jvm_kind << SONDE_FRAME_KIND_SHIFT) | (i ? JVM_FRAME_RETURN : 0);
		c->s->frames[to + 1] = pc;
		c->words += 2;
		return 0;
	}
	if (c->words + 1 > SONDE_MAX_USTACK || to > SONDE_MAX_FRAMES - 1) {
		c->cut = c->n - i;
		return 1;
	}
	c->s->frames[to] = pc;
	c->words += 1;
	return 0;
}

SEC("perf_event")
int unwind_jvm(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	const struct jvm_proc *p;
	struct native_buf *nb;
	struct copy c = {};
	__u32 zero = 0;
	long got;

	if (!s)
		return 0;
	p = bpf_map_lookup_elem(&jvm_procs, &s->hdr.pid);
	nb = bpf_map_lookup_elem(&jvm_native, &zero);
	if (!p || !nb) {
		jvm_error(JVM_ERR_NO_PROC);
		return sonde_unwind_fp(ctx, s);
	}
	s->ustack_len = 0;
	if (s->kstack_len > SONDE_MAX_KSTACK)
		return sonde_sample_emit(s);
	got = bpf_get_stack(ctx, nb->words, SONDE_MAX_USTACK * sizeof(__u64), BPF_F_USER_STACK);
	if (got < 0) {
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
		jvm_error(JVM_ERR_USTACK);
		return sonde_sample_emit(s);
	}
	c = (struct copy){.s = s,
			  .nb = nb,
			  .lo = p->code_lo,
			  .hi = p->code_hi,
			  .base = s->kstack_len,
			  .n = got / sizeof(__u64)};
	bpf_loop(SONDE_MAX_USTACK, copy_one, &c, 0);
	s->ustack_len = c.words;
	if (c.cut || c.n == SONDE_MAX_USTACK) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
		if (c.cut)
			jvm_error(JVM_ERR_TRUNCATED);
	}
	return sonde_sample_emit(s);
}
