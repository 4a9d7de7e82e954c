// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The CPython 3.11+ walker: finds the thread state of the thread on CPU,
 * emits one interpreter frame per Python function (innermost first), then
 * the frame-pointer walk of the native stack, and sends the sample.
 *
 * Every layout fact comes from py_procs, filled by userspace per process:
 * this code has no version in it.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sample.bpf.h"
#include "python.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The frame kind the host gave the plugin; set before load. */
const volatile __u64 py_kind = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PY_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PY_ERR__BPF);
	__type(key, __u32);
	__type(value, __u64);
} py_errors SEC(".maps");

/* The native walk lands here first: bpf_get_stack() needs a constant size,
 * and the Python frames before it take a variable number of words. */
struct native_buf {
	__u64 words[SONDE_MAX_USTACK + 1]; /* a power of two: indexes are masked */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct native_buf);
} py_native SEC(".maps");

static __always_inline void py_error(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&py_errors, &reason);

	if (v)
		*v += 1;
}

static __always_inline __u64 read_u64(__u64 addr, int *err)
{
	__u64 v = 0;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*err = 1;
	return v;
}

/* The thread state of the current thread: its pthread key slot (exact), or
 * else the GIL holder; either must name this thread. */
static __always_inline __u64 py_tstate(const struct py_proc *p, __u32 tid)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 tstate = 0, ntid;
	__u32 key = 0;
	int err = 0;

	if (p->tss_key && !bpf_probe_read_user(&key, sizeof(key), (const void *)p->tss_key) &&
	    key < p->tsd_keys) {
		__u64 tp = BPF_CORE_READ(task, thread.fsbase);

		tstate = read_u64(tp + p->tsd_base + (__u64)key * p->tsd_stride, &err);
		ntid = tstate && !err ? read_u64(tstate + p->ts_thread_id, &err) : 0;
		if (!err && tstate && (__u32)ntid == tid)
			return tstate;
	}
	if (!p->gil_tstate)
		return 0;
	err = 0;
	tstate = read_u64(p->gil_tstate, &err);
	ntid = tstate && !err ? read_u64(tstate + p->ts_thread_id, &err) : 0;
	return !err && tstate && (__u32)ntid == tid ? tstate : 0;
}

struct walk {
	struct sonde_sample *s;
	const struct py_proc *p;
	__u64 frame;
	__u32 words; /* Python words written after the kernel part */
	__u32 err;
};

static long walk_one(__u32 i, void *data)
{
	struct walk *w = data;
	const struct py_proc *p = w->p;
	__u64 code, instr, word, *f;
	__u32 first = 0, idx;
	int err = 0;

	(void)i;
	if (!w->frame)
		return 1;
	code = read_u64(w->frame + p->fr_code, &err);
	instr = read_u64(w->frame + p->fr_instr, &err);
	if (!err &&
	    bpf_probe_read_user(&first, sizeof(first), (const void *)(code + p->co_firstlineno)))
		err = 1;
	if (err || !code) {
		w->err = PY_ERR_READ;
		return 1;
	}
	idx = w->s->kstack_len + w->words;
	if (idx > SONDE_MAX_FRAMES - 2)
		return 1;
	word = (py_kind << SONDE_FRAME_KIND_SHIFT) | ((__u64)(first & 0xffffff) << 32) |
	       (__u32)(instr - code);
	f = &w->s->frames[idx]; /* one bounded index for both words */
	f[0] = word;
	f[1] = code;
	w->words += 2;
	w->frame = read_u64(w->frame + p->fr_previous, &err);
	if (err) {
		w->err = PY_ERR_READ;
		return 1;
	}
	return 0;
}

struct copy {
	struct sonde_sample *s;
	struct native_buf *nb;
	__u32 to; /* first frame word to fill */
	__u32 n;  /* native words to copy */
};

/* One native word into place; a callback so that the index is computed
 * afresh, which the verifier can bound. */
static long copy_one(__u32 i, void *data)
{
	struct copy *c = data;
	__u32 to = c->to + i;
	__u64 from = i;

	if (i >= c->n || i >= SONDE_MAX_USTACK || to >= SONDE_MAX_FRAMES)
		return 1;
	/* The compiler knows i < 127 and would drop a plain mask; the
	 * verifier does not, so mask where it sees it. */
	asm volatile("%0 &= 127" : "+r"(from));
	c->s->frames[to] = c->nb->words[from];
	return 0;
}

/* Appends the frame-pointer walk after the Python words. */
static __always_inline void native_walk(struct bpf_perf_event_data *ctx, struct sonde_sample *s,
					__u32 words)
{
	__u32 zero = 0, k = s->kstack_len, n;
	struct native_buf *nb = bpf_map_lookup_elem(&py_native, &zero);
	struct copy c;
	long got;

	s->ustack_len = words;
	if (!nb || k > SONDE_MAX_KSTACK || words >= SONDE_MAX_USTACK)
		return;
	got = bpf_get_stack(ctx, nb->words, SONDE_MAX_USTACK * sizeof(__u64), BPF_F_USER_STACK);
	if (got < 0) {
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
		return;
	}
	n = got / sizeof(__u64);
	c = (struct copy){.s = s,
			  .nb = nb,
			  .to = k + words,
			  .n = n < SONDE_MAX_USTACK - words ? n : SONDE_MAX_USTACK - words};
	bpf_loop(SONDE_MAX_USTACK, copy_one, &c, 0);
	s->ustack_len = words + c.n;
	if (c.n < n || n == SONDE_MAX_USTACK) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
	}
}

SEC("perf_event")
int unwind_python(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	struct walk w = {};
	const struct py_proc *p;
	__u64 cframe;
	int err = 0;

	if (!s)
		return 0;
	w.s = s;
	p = bpf_map_lookup_elem(&py_procs, &s->hdr.pid);
	if (!p) {
		py_error(PY_ERR_NO_PROC);
		goto native;
	}
	w.p = p;
	w.frame = py_tstate(p, s->tid);
	if (!w.frame) {
		py_error(PY_ERR_NO_TSTATE);
		goto native;
	}
	cframe = read_u64(w.frame + p->ts_cframe, &err);
	w.frame = cframe && !err ? read_u64(cframe + p->cf_frame, &err) : 0;
	if (err) {
		py_error(PY_ERR_READ);
		goto native;
	}
	bpf_loop(PY_MAX_FRAMES, walk_one, &w, 0);
	if (w.err)
		py_error(w.err);
	else if (w.frame)
		py_error(PY_ERR_TRUNCATED);
native:
	native_walk(ctx, s, w.words);
	return sonde_sample_emit(s);
}
