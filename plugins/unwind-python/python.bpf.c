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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PY_WALK__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} py_walk SEC(".maps");

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

static __always_inline void py_walk_add(__u32 key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&py_walk, &key);

	if (v)
		*v += n;
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

/* Frames below the current one, read at once: a thread's interpreter frames
 * sit one above the other in its data stack, the caller below the callee,
 * a few dozen to a few hundred bytes each, so one read serves several. */
#define PY_WINDOW 1024 /* a power of two, at most a page */
#define PY_PAGE	  4096

struct py_window {
	__u8 bytes[PY_WINDOW + PY_FRAME_HEAD]; /* the tail lets a masked offset read a head */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_window);
} py_window SEC(".maps");

/*
 * The first lines of the code objects seen lately, per CPU, so that a hot
 * stack does not read every code object in every sample. The first line
 * only guards against an address reused by another code object between
 * the sample and its symbolization (userspace reads the name from the
 * object then there and compares); a slot older than PY_CODE_TTL_NS is read
 * again. A reuse within that time can make userspace count a frame stale
 * (the cached line is the old object's); it opens no new way to a wrong
 * name, since the name always comes from the object at symbolization.
 */
#define PY_CODE_SLOTS  1024 /* a power of two */
#define PY_CODE_TTL_NS 1000000000ULL

struct py_code_slot {
	__u64 code;
	__u64 expires; /* bpf_ktime_get_ns() */
	__u32 tgid;
	__u32 first;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PY_CODE_SLOTS);
	__type(key, __u32);
	__type(value, struct py_code_slot);
} py_code SEC(".maps");

struct walk {
	struct sonde_sample *s;
	const struct py_proc *p;
	struct py_window *win;
	__u64 now;
	__u32 hits; /* first lines from py_code */
	__u64 win_base; /* user address of win->bytes[0]; 0: empty */
	__u64 win_len;
	__u64 frame;
	__u32 words; /* Python words written after the kernel part */
	__u32 err;
};

/* The word at off in a frame head; off is 8-aligned and below
 * PY_FRAME_HEAD (userspace checks), the mask shows the verifier so. */
static __always_inline __u64 head_word(const __u8 *head, __u32 off)
{
	return *(const __u64 *)(head + (off & (PY_FRAME_HEAD - 8)));
}

/* One Python frame: 0 to go on, 1 at the end (or on an error, in w->err). */
static __always_inline long walk_one(struct walk *w)
{
	const struct py_proc *p = w->p;
	__u64 code, instr, word, *f, off, lo;
	__u32 first = 0, idx, slot;
	struct py_code_slot *c;
	const __u8 *head;

	if (!w->frame)
		return 1;
	/* Reads are most of a frame's cost: the frame's head (code, previous,
	 * instruction) comes from the window, read again only when the frame
	 * is not in it, from up to PY_WINDOW bytes below the frame's head's
	 * end, not below its page (which is mapped: the frame is); the code
	 * object's first line from py_code, or else one read. */
	off = w->frame - w->win_base;
	if (!w->win_base || w->frame < w->win_base || off + PY_FRAME_HEAD > w->win_len) {
		lo = w->frame + PY_FRAME_HEAD - PY_WINDOW;
		if (lo > w->frame || lo < (w->frame & ~(__u64)(PY_PAGE - 1)))
			lo = w->frame & ~(__u64)(PY_PAGE - 1);
		/* always PY_WINDOW bytes: from lo they stay in the frame's page, or
		 * end at the head's end (mapped: the frame is); a constant size
		 * also keeps 6.1's verifier, which refused the masked one, happy */
		w->win_len = PY_WINDOW;
		w->win_base = 0;
		if (bpf_probe_read_user(w->win->bytes, PY_WINDOW, (const void *)lo)) {
			w->err = PY_ERR_READ;
			return 1;
		}
		w->win_base = lo;
		off = w->frame - lo;
	}
	head = w->win->bytes + (off & (PY_WINDOW - 1));
	code = head_word(head, p->fr_code);
	instr = head_word(head, p->fr_instr);
	if (!code) {
		w->err = PY_ERR_READ;
		return 1;
	}
	slot = (__u32)((code >> 4) ^ (code >> 14)) & (PY_CODE_SLOTS - 1);
	c = bpf_map_lookup_elem(&py_code, &slot);
	if (c && c->code == code && c->tgid == w->s->hdr.pid && w->now < c->expires) {
		first = c->first;
		w->hits++;
	} else if (bpf_probe_read_user(&first, sizeof(first),
				       (const void *)(code + p->co_firstlineno))) {
		w->err = PY_ERR_READ;
		return 1;
	} else if (c) {
		c->code = code;
		c->tgid = w->s->hdr.pid;
		c->first = first;
		c->expires = w->now + PY_CODE_TTL_NS;
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
	w->frame = head_word(head, p->fr_previous);
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
	__u64 cframe, t0;
	__u32 zero = 0;
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
	w.win = bpf_map_lookup_elem(&py_window, &zero);
	if (!w.win)
		goto native;
	t0 = bpf_ktime_get_ns();
	w.now = t0;
	w.frame = py_tstate(p, s->tid);
	if (!w.frame) {
		py_error(PY_ERR_NO_TSTATE);
		goto timed;
	}
	cframe = read_u64(w.frame + p->ts_cframe, &err);
	w.frame = cframe && !err ? read_u64(cframe + p->cf_frame, &err) : 0;
	if (err) {
		py_error(PY_ERR_READ);
		goto timed;
	}
	/* A bounded loop, not bpf_loop(): no call per frame (10% of a frame's
	 * time in bench/unwind-python). */
	for (__u32 i = 0; i < PY_MAX_FRAMES; i++)
		if (walk_one(&w))
			break;
	if (w.err)
		py_error(w.err);
	else if (w.frame)
		py_error(PY_ERR_TRUNCATED);
timed:
	py_walk_add(PY_WALK_NS, bpf_ktime_get_ns() - t0);
	py_walk_add(PY_WALK_RUNS, 1);
	py_walk_add(PY_WALK_FRAMES, w.words / 2);
	py_walk_add(PY_WALK_CODE_HITS, w.hits);
native:
	native_walk(ctx, s, w.words);
	return sonde_sample_emit(s);
}
