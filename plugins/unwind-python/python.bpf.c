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

/* The current thread's id as its own pid namespace numbers it: what
 * CPython keeps in PyThreadState.native_thread_id (gettid() in a container
 * is not the id the sample carries). */
static __always_inline __u32 ns_tid(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};

	if (bpf_core_read(&up, sizeof(up), &pid->numbers[level & 31]))
		return 0;
	return (__u32)up.nr;
}

/* The thread state of the current thread: its pthread key slot (exact), or
 * else the GIL holder; either must name this thread (tid: in its own pid
 * namespace). */
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

/* Where a walk is; no pointers in it, so that walk_one() can be global. */
struct walk_at {
	__u64 now;
	__u64 win_base; /* user address of win->bytes[0]; 0: empty */
	__u64 win_len;
	__u64 frame;
	__u32 hits;  /* first lines from py_code */
	__u32 base;  /* where the Python words go in s->frames */
	__u32 words; /* Python words written from there */
	__u32 err;
	__u32 one_call; /* stop after the entry frame of the innermost eval call */
	__u32 pad;
};

struct walk {
	struct sonde_sample *s;
	const struct py_proc *p;
	struct py_window *win;
	struct walk_at at;
};

/* The word at off in a frame head; off is 8-aligned and below
 * PY_FRAME_HEAD (userspace checks), the mask shows the verifier so. */
static __always_inline __u64 head_word(const __u8 *head, __u32 off)
{
	return *(const __u64 *)(head + (off & (PY_FRAME_HEAD - 8)));
}

/*
 * One Python frame: 0 to go on, 1 at the end (or on an error, in w->err).
 * Global, so that the verifier checks it once: inlined, 6.1's verifier
 * went through it again in each of the walk's PY_MAX_FRAMES iterations.
 */
__noinline long walk_one(struct sonde_sample *s, const struct py_proc *p, struct py_window *win,
			 struct walk_at *w)
{
	__u64 code, instr, word, off, lo;
	__u32 first = 0, idx, slot;
	struct py_code_slot *c;
	const __u8 *head;
	bool mark;

	if (!s || !p || !win || !w || !w->frame)
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
		if (bpf_probe_read_user(win->bytes, PY_WINDOW, (const void *)lo)) {
			w->err = PY_ERR_READ;
			return 1;
		}
		w->win_base = lo;
		off = w->frame - lo;
	}
	head = win->bytes + (off & (PY_WINDOW - 1));
	mark = head[p->fr_entry & (PY_FRAME_HEAD - 1)] == p->entry_val;
	if (mark && p->entry_shim) {
		/* the shim an eval call put below its first frame (3.12+): not
		 * a function; the frames below it run in an outer call */
		w->frame = head_word(head, p->fr_previous);
		return w->one_call;
	}
	code = head_word(head, p->fr_code);
	instr = head_word(head, p->fr_instr);
	if (!code) {
		w->err = PY_ERR_READ;
		return 1;
	}
	slot = (__u32)((code >> 4) ^ (code >> 14)) & (PY_CODE_SLOTS - 1);
	c = bpf_map_lookup_elem(&py_code, &slot);
	if (c && c->code == code && c->tgid == s->hdr.pid && w->now < c->expires) {
		first = c->first;
		w->hits++;
	} else if (bpf_probe_read_user(&first, sizeof(first),
				       (const void *)(code + p->co_firstlineno))) {
		w->err = PY_ERR_READ;
		return 1;
	} else if (c) {
		c->code = code;
		c->tgid = s->hdr.pid;
		c->first = first;
		c->expires = w->now + PY_CODE_TTL_NS;
	}
	idx = w->base + w->words;
	if (w->words + 2 > SONDE_MAX_USTACK || w->words >= 2 * PY_MAX_FRAMES)
		return 1;
	word = (py_kind << SONDE_FRAME_KIND_SHIFT) | ((__u64)(first & 0xffffff) << 32) |
	       (__u32)(instr - code);
	if (sonde_put_frame(s, idx, word) || sonde_put_frame(s, idx + 1, code))
		return 1;
	w->words += 2;
	w->frame = head_word(head, p->fr_previous);
	/* the frame an eval call started with (3.11): the ones below run in
	 * another call, further down the native stack */
	if (w->one_call && mark)
		return 1;
	return 0;
}

/* Writes the Python frames from w->at.frame down (all of them, or those
 * of one eval call), timed and counted. */
static __always_inline void walk_frames(struct walk *w)
{
	__u64 t0 = bpf_ktime_get_ns();

	w->at.now = t0;
	/* A bounded loop, not bpf_loop(): no call per frame (10% of a frame's
	 * time in bench/unwind-python). */
	for (__u32 i = 0; i < PY_MAX_STEPS; i++)
		if (walk_one(w->s, w->p, w->win, &w->at))
			break;
	if (w->at.err)
		py_error(w->at.err);
	else if (w->at.frame && !w->at.one_call)
		py_error(PY_ERR_TRUNCATED);
	py_walk_add(PY_WALK_NS, bpf_ktime_get_ns() - t0);
	py_walk_add(PY_WALK_RUNS, 1);
	py_walk_add(PY_WALK_FRAMES, w->at.words / 2);
	py_walk_add(PY_WALK_CODE_HITS, w->at.hits);
}

/* The thread's innermost interpreter frame, or 0 (counted). */
static __always_inline __u64 current_frame(const struct py_proc *p)
{
	__u64 tstate = py_tstate(p, ns_tid()), frame;
	int err = 0;

	if (!tstate) {
		py_error(PY_ERR_NO_TSTATE);
		return 0;
	}
	/* tstate->cframe->current_frame (3.11, 3.12) or ->current_frame */
	frame = read_u64(tstate + p->ts_frame, &err);
	if (p->frame_hops > 1 && frame && !err)
		frame = read_u64(frame + p->cf_frame, &err);
	if (err) {
		py_error(PY_ERR_READ);
		return 0;
	}
	return frame;
}

SEC("perf_event")
int unwind_python(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	struct sonde_unwind_state *st;
	struct walk w = {};
	__u32 zero = 0;

	if (!s)
		return 0;
	w.s = s;
	w.p = bpf_map_lookup_elem(&py_procs, &s->hdr.pid);
	w.win = bpf_map_lookup_elem(&py_window, &zero);
	/*
	 * Handed a frame of _PyEval_EvalFrameDefault by a native walker: the
	 * Python frames of that eval call go here, then the walk goes back.
	 * st->interp[0] is where the next eval call's frames start (0: at the
	 * thread's current frame; 1: none left). Otherwise every Python frame,
	 * then the frame-pointer walk. One walk_frames() call site: 6.1's
	 * verifier checks its bounded loop once per site.
	 */
	st = sonde_handed_over(s);
	if (!w.p)
		py_error(PY_ERR_NO_PROC);
	if (st) {
		w.at.base = s->kstack_len + s->ustack_len;
		w.at.one_call = 1;
		if (st->interp[0] > 1)
			w.at.frame = st->interp[0];
		else if (!st->interp[0] && w.p)
			w.at.frame = current_frame(w.p);
	} else if (w.p) {
		w.at.base = s->kstack_len;
		w.at.frame = current_frame(w.p);
	}
	if (w.at.frame && w.p && w.win)
		walk_frames(&w);
	if (!st) {
		sonde_walk_fp(ctx, s, w.at.words); /* the native frames after them */
		return sonde_sample_emit(s);
	}
	st->interp[0] = w.at.frame && !w.at.err ? w.at.frame : 1;
	s->ustack_len += w.at.words;
	sonde_hand_back(ctx, st);
	/* the native walker could not be called back: send what there is */
	s->flags |= SONDE_SAMPLE_USTACK_ERROR;
	return sonde_sample_emit(s);
}
