// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The JVM walker. Two paths, chosen per process by userspace (jvm_proc.mode):
 *
 * vmstructs: a walk of our own over the user stack. A pc in the template
 * interpreter is an interpreted frame: the interpreter always keeps rbp as
 * its frame pointer, with the Method* and the bytecode pointer at fixed
 * slots below it. Any other pc in the code cache is looked up in its code
 * heap's segment map to find the CodeBlob; a compiled method (nmethod) is
 * stepped over by its frame size, as HotSpot itself does, so no
 * -XX:+PreserveFramePointer is needed; other blobs (stubs, adapters) by their
 * frame size, or by rbp when they have none. Native frames (libjvm.so, libc)
 * are followed by rbp, as the kernel's walk does; but native code called
 * from Java (a JNI method in a library built without frame pointers, such
 * as zlib) often leaves rbp unusable, so when the thread has left Java its
 * last Java frame is taken from the frame anchor HotSpot keeps in the
 * thread (JavaFrameAnchor: sp, pc, fp), found through jvm_threads.
 *
 * perfmap: the kernel's frame-pointer walk (which follows a JVM run with
 * -XX:+PreserveFramePointer through all its frames), with every pc in the
 * code cache rewritten as a frame of the plugin's kind for userspace to
 * name from the JVM's perf map. The fallback where the walker's structures
 * cannot be read.
 *
 * Every offset comes from jvm_procs, filled by userspace from the JVM's
 * VMStructs: this code has no JVM version in it.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JVM_MAX_THREADS);
	__type(key, __u32);
	__type(value, struct jvm_thread);
} jvm_threads SEC(".maps");

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

/*
 * What the walker learnt of the code blob holding a code heap segment,
 * kept per CPU in a direct-mapped cache keyed by process and segment: a hot
 * stack runs in and returns to the same segments sample after sample, and
 * the segment map walk and the blob's fields cost a read each. A segment
 * belongs to one block at a time; an entry is taken again only if its
 * check still holds: an nmethod's compile id (never reused, so a freed or
 * replaced one fails), another blob's name pointer.
 */
#define JVM_BLOB_SLOTS 1024

struct blob_slot {
	__u64 seg; /* pc >> segment_shift */
	__u64 blob;
	__u64 code_begin;
	__u64 check;
	__u32 pid;
	__u32 frame_size; /* words */
	__s32 complete;	  /* CodeBlob::_frame_complete_offset */
	__u32 is_nmethod;
};
_Static_assert(sizeof(struct blob_slot) == 48, "struct blob_slot layout");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JVM_BLOB_SLOTS);
	__type(key, __u32);
	__type(value, struct blob_slot);
} jvm_blobs SEC(".maps");

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

/* ---- the vmstructs walker ------------------------------------------------------------------ */

#define PF_KTHREAD   0x00200000		 /* include/linux/sched.h */
#define NMETHOD_NAME 0x646f6874656d6eULL /* "nmethod\0", little-endian */
#define ADDR_MASK    0xffffffffffffULL
/* An interpreter frame's slots are read at once: JVM_INTERP_BELOW bytes
 * below rbp (the bcp slot is at most 112 below: frame_x86.hpp's layout,
 * interpreter_frame_last_sp_offset >= -8, checked by userspace), then the
 * saved rbp and the return address. */
#define JVM_INTERP_BELOW 112
#define JVM_INTERP_WORDS 16

struct walk {
	struct sonde_sample *s;
	const struct jvm_proc *p;
	__u64 pc, sp, fp, r13;
	__u64 asp, apc, afp; /* the thread's last Java frame, asp 0: none (or used) */
	__u32 base;  /* first user word of the sample */
	__u32 words; /* user words written */
	__u32 top;   /* at the interrupted frame: pc is exact, r13 is live */
	__u32 err;   /* JVM_ERR_* + 1 when the walk stopped early */
	__u32 truncated;
	__u32 handed; /* handed over by a native walker: stop at the first native pc */
};

static __always_inline __u64 rd64(__u64 addr, int *err)
{
	__u64 v = 0;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*err = 1;
	return v;
}

static __always_inline __u32 rd32(__u64 addr, int *err)
{
	__u32 v = 0;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		*err = 1;
	return v;
}

/* Appends n (1 or 2) words; -1 when the sample is full. */
static __always_inline int put(struct walk *w, __u64 a, __u64 b, __u32 n)
{
	__u64 to = (__u64)w->base + w->words;

	/* Keep the bound checks on the register the stores use. */
	asm volatile("" : "+r"(to));
	if (w->words + n > SONDE_MAX_USTACK || to > SONDE_MAX_FRAMES - 2) {
		w->truncated = 1;
		return -1;
	}
	w->s->frames[to] = a;
	if (n == 2)
		w->s->frames[to + 1] = b;
	w->words += n;
	return 0;
}

static __always_inline long stop(struct walk *w, __u32 reason)
{
	w->err = reason + 1;
	return 1;
}

/* The CodeBlob holding pc: its code heap's segment map, walked back to the
 * start of the block (0 marks it, 0xff a free segment, any other value is
 * how far back to look); the blob follows the block's header. 0 with
 * *reason set if not found. */
static __always_inline __u64 find_blob(struct walk *w, __u32 *reason)
{
	const struct jvm_proc *p = w->p;
	__u64 lo = 0, segmap = 0, idx, shift = p->segment_shift & 31;
	__u32 i;

	for (i = 0; i < JVM_MAX_HEAPS; i++) {
		if (i < p->nheaps && w->pc >= p->heaps[i].lo && w->pc < p->heaps[i].hi) {
			lo = p->heaps[i].lo;
			segmap = p->heaps[i].segmap;
			break;
		}
	}
	if (!segmap) {
		*reason = JVM_ERR_NO_HEAP;
		return 0;
	}
	idx = (w->pc - lo) >> shift;
	for (i = 0; i < JVM_MAX_HOPS; i++) {
		__u8 tag;

		if (bpf_probe_read_user(&tag, 1, (const void *)(segmap + idx))) {
			*reason = JVM_ERR_READ;
			return 0;
		}
		if (tag == 0)
			return lo + (idx << shift) + p->heapblock_size;
		if (tag == 0xff || tag > idx)
			break;
		idx -= tag;
	}
	*reason = JVM_ERR_SEGMAP;
	return 0;
}

/* An interpreted frame: Method* and bcp from their slots below rbp (the
 * bcp of the running frame lives in r13 until it calls out; the slot is
 * written only then). The caller: return address above rbp, its sp saved
 * in the frame (before the interpreter grew it for locals), its rbp at rbp. */
/* The index in the window of a slot at off from rbp. */
static __always_inline __u32 slot(__s32 off)
{
	return ((__u32)(off + JVM_INTERP_BELOW) >> 3) & (JVM_INTERP_WORDS - 1);
}

static __always_inline long interp_frame(struct walk *w)
{
	const struct jvm_proc *p = w->p;
	__u64 fp = w->fp, method, bcp, d, win[JVM_INTERP_WORDS];

	if (!fp || (fp & 7) || fp < w->sp)
		return stop(w, JVM_ERR_NO_FRAME);
	/* One read for the frame's slots: [fp - 112, fp + 16), where
	 * userspace checked that the offsets fall. */
	if (bpf_probe_read_user(win, sizeof(win), (const void *)(fp - JVM_INTERP_BELOW)))
		return stop(w, JVM_ERR_READ);
	method = win[slot(p->fp_method)];
	bcp = win[slot(p->fp_bcp)];
	/* r13 holds the bcp only once the method runs: a value within a
	 * method's 64 KiB of bytecode of the saved one is taken. */
	d = w->r13 > bcp ? w->r13 - bcp : bcp - w->r13;
	if (w->top && d < 65536)
		bcp = w->r13;
	if (put(w,
		(jvm_kind << SONDE_FRAME_KIND_SHIFT) | (JVM_FRAME_INTERP << JVM_FRAME_TYPE_SHIFT) |
			(w->top ? 0 : JVM_FRAME_RET) | (bcp & ADDR_MASK),
		method, 2))
		return 1;
	w->pc = win[JVM_INTERP_BELOW / 8 + 1];
	w->sp = win[slot(p->fp_sender_sp)];
	w->fp = win[JVM_INTERP_BELOW / 8];
	if (w->sp < fp + 16)
		return stop(w, JVM_ERR_NO_FRAME);
	w->top = 0;
	return 0;
}

/* A frame whose code keeps rbp as its frame pointer. */
static __always_inline long fp_step(struct walk *w)
{
	__u64 fp = w->fp, saved[2];

	if (!fp || (fp & 7) || fp < w->sp) {
		w->pc = 0; /* the end of the chain, as for the kernel's walk */
		return 1;
	}
	/* the saved rbp and the return address, in one read */
	if (bpf_probe_read_user(saved, sizeof(saved), (const void *)fp)) {
		w->pc = 0;
		return 1;
	}
	w->fp = saved[0];
	w->pc = saved[1];
	w->sp = fp + 16;
	w->top = 0;
	return 0;
}

/* A native frame below the thread's last Java frame: rbp while it leads to
 * a frame below that one, then the last Java frame itself. */
static __always_inline long native_step(struct walk *w)
{
	__u64 fp = w->fp;
	int err = 0;

	if (fp >= w->sp && !(fp & 7) && fp + 16 <= w->asp && !fp_step(w) && w->pc &&
	    w->sp < w->asp)
		return 0;
	w->sp = w->asp;
	w->pc = w->apc ? w->apc : rd64(w->asp - 8, &err);
	if (w->afp)
		w->fp = w->afp;
	w->asp = 0;
	w->top = 0;
	if (err)
		return stop(w, JVM_ERR_READ);
	return 0;
}

/* The blob at w->pc from the cache, or from the segment map and the blob
 * itself (then cached). 0, or the reason to stop. */
static __always_inline __u32 blob_at(struct walk *w, struct blob_slot *out)
{
	const struct jvm_proc *p = w->p;
	__u32 pid = w->s->hdr.pid, reason = 0, key;
	__u64 name = 0, name_ptr, check, seg = w->pc >> (p->segment_shift & 31);
	struct blob_slot *c;
	int err = 0;

	key = (__u32)(seg ^ (seg >> 10) ^ ((__u64)pid * 0x9e3779b1ULL)) & (JVM_BLOB_SLOTS - 1);
	c = bpf_map_lookup_elem(&jvm_blobs, &key);
	if (c && c->seg == seg && c->pid == pid && c->blob) {
		*out = *c;
		check = out->is_nmethod ? rd32(out->blob + p->nm_compile_id, &err)
					: rd64(out->blob + p->blob_name, &err);
		if (!err && check == out->check)
			return 0;
		err = 0;
	}
	out->blob = find_blob(w, &reason);
	if (!out->blob)
		return reason;
	name_ptr = rd64(out->blob + p->blob_name, &err);
	out->frame_size = rd32(out->blob + p->blob_frame_size, &err);
	out->complete = (__s32)rd32(out->blob + p->blob_frame_complete, &err);
	out->code_begin = rd64(out->blob + p->blob_code_begin, &err);
	if (!err && bpf_probe_read_user(&name, sizeof(name), (const void *)name_ptr))
		err = 1;
	out->is_nmethod = name == NMETHOD_NAME;
	out->check = out->is_nmethod ? rd32(out->blob + p->nm_compile_id, &err) : name_ptr;
	if (err)
		return JVM_ERR_READ;
	out->seg = seg;
	out->pid = pid;
	if (c)
		*c = *out;
	return 0;
}

static long step(__u32 i, void *data)
{
	struct walk *w = data;
	__u64 csp, aux, ra[2];
	struct blob_slot b;
	__u32 reason, fs;
	const struct jvm_proc *p = w->p;

	(void)i;
	if (!w->pc)
		return 1;
	if (w->pc < p->code_lo || w->pc >= p->code_hi) {
		if (w->handed) /* native again: the native walker's, from here */
			return 1;
		if (put(w, w->pc, 0, 1))
			return 1;
		if (w->asp && w->sp < w->asp)
			return native_step(w);
		return fp_step(w);
	}
	if (w->pc >= p->interp_lo && w->pc < p->interp_hi)
		return interp_frame(w);
	reason = blob_at(w, &b);
	if (reason)
		return stop(w, reason);
	if (b.is_nmethod)
		aux = (JVM_FRAME_NMETHOD << JVM_FRAME_TYPE_SHIFT) |
		      ((b.check & JVM_CID_MASK) << 32) | (__u32)(w->pc - b.code_begin) |
		      (w->top ? 0 : JVM_FRAME_RET);
	else
		aux = (JVM_FRAME_BLOB << JVM_FRAME_TYPE_SHIFT) | (__u32)(w->pc - b.blob);
	if (put(w, (jvm_kind << SONDE_FRAME_KIND_SHIFT) | aux, b.blob, 2))
		return 1;
	fs = b.frame_size;
	if (w->top && w->pc < b.code_begin + b.complete) {
		/* The prologue: the frame is not all there yet. */
		if (b.is_nmethod || fs)
			return stop(w, JVM_ERR_PROLOGUE);
	}
	if (!fs || fs > 0x100000)
		return fp_step(w); /* stubs with a frame pointer of their own */
	/* HotSpot's own step: the caller's sp is the frame's size above ours,
	 * with the saved rbp and the return address just below it. */
	csp = w->sp + (__u64)fs * 8;
	if (bpf_probe_read_user(ra, sizeof(ra), (const void *)(csp - 16)))
		return stop(w, JVM_ERR_READ);
	w->fp = ra[0];
	w->pc = ra[1];
	w->sp = csp;
	w->top = 0;
	return 0;
}

/* The thread's last Java frame, if it has left Java code (its anchor's sp
 * is 0 while it runs Java) and the sample's sp is on its stack. */
static __always_inline void read_anchor(struct walk *w, __u32 tid)
{
	const struct jvm_thread *t = bpf_map_lookup_elem(&jvm_threads, &tid);
	const struct jvm_proc *p = w->p;
	__u64 asp;
	int err = 0;

	if (!t || w->sp < t->stack_lo || w->sp >= t->stack_hi)
		return;
	asp = rd64(t->anchor + p->anchor_sp, &err);
	if (err || !asp || (asp & 7) || asp <= w->sp || asp > t->stack_hi)
		return;
	w->apc = rd64(t->anchor + p->anchor_pc, &err);
	w->afp = rd64(t->anchor + p->anchor_fp, &err);
	if (!err)
		w->asp = asp;
}

/*
 * The vmstructs path: from the registers at the sample, or, handed a frame
 * in the code cache by a native walker (st: unwind-native, abi.h), from
 * that frame; then the walk. Handed over, the walk ends at the first
 * native frame, which goes back to the native walker with its registers.
 * One bpf_loop call site: 6.1's verifier checks the callback per site.
 */
static __always_inline int walk_vmstructs(struct bpf_perf_event_data *ctx, struct sonde_sample *s,
					  const struct jvm_proc *p, struct sonde_unwind_state *st)
{
	struct walk w = {.s = s, .p = p, .base = s->kstack_len, .top = 1};

	if (st) {
		w.handed = 1;
		w.base = s->kstack_len + s->ustack_len;
		w.pc = st->pc;
		w.sp = st->sp;
		w.fp = st->bp;
		w.top = st->flags & SONDE_UNWIND_EXACT ? 1 : 0;
		if (w.top && (s->flags & SONDE_SAMPLE_USER_MODE))
			w.r13 = ctx->regs.r13;
	} else if (s->flags & SONDE_SAMPLE_USER_MODE) {
		w.pc = ctx->regs.ip;
		w.sp = ctx->regs.sp;
		w.fp = ctx->regs.bp;
		w.r13 = ctx->regs.r13;
	} else {
		struct task_struct *task = bpf_get_current_task_btf();
		struct pt_regs *regs;

		if (task->flags & PF_KTHREAD)
			return sonde_sample_emit(s);
		/* field by field, through the helper: a pt_regs copy on the stack
		 * took 6.1's verifier past 512 bytes with the walk's callback, and
		 * plain loads would be merged with the ctx ones above into a moved
		 * ctx pointer, which the verifier refuses */
		regs = (struct pt_regs *)bpf_task_pt_regs(task);
		w.pc = BPF_CORE_READ(regs, ip);
		w.sp = BPF_CORE_READ(regs, sp);
		w.fp = BPF_CORE_READ(regs, bp);
		w.r13 = BPF_CORE_READ(regs, r13);
		if (!w.pc) {
			jvm_error(JVM_ERR_READ);
			return sonde_sample_emit(s);
		}
	}
	if (p->has_anchors && !w.handed)
		read_anchor(&w, s->tid);
	bpf_loop(SONDE_MAX_USTACK, step, &w, 0);
	s->ustack_len = w.base - s->kstack_len + w.words;
	if (w.handed && w.pc && !w.err && !w.truncated) {
		st->pc = w.pc;
		st->sp = w.sp;
		st->bp = w.fp;
		st->flags &= ~SONDE_UNWIND_EXACT;
		sonde_hand_back(ctx, st);
		/* the native walker could not be called back: send what there is */
	}
	if (w.truncated || (w.pc && !w.err && s->ustack_len >= SONDE_MAX_USTACK - 1)) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
		jvm_error(JVM_ERR_TRUNCATED);
	} else if (w.err) {
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
		jvm_error(w.err - 1);
	}
	return sonde_sample_emit(s);
}

SEC("perf_event")
int unwind_jvm(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	struct sonde_unwind_state *st;
	const struct jvm_proc *p;
	struct native_buf *nb;
	struct copy c = {};
	__u32 zero = 0;
	long got;

	if (!s)
		return 0;
	p = bpf_map_lookup_elem(&jvm_procs, &s->hdr.pid);
	nb = bpf_map_lookup_elem(&jvm_native, &zero);
	st = sonde_handed_over(s);
	if (st && (!p || p->mode != JVM_MODE_VMSTRUCTS)) {
		/* handed a frame this walker cannot read (no longer): give it
		 * back unread */
		sonde_hand_back(ctx, st);
		return sonde_sample_emit(s);
	}
	if (!p || !nb) {
		jvm_error(JVM_ERR_NO_PROC);
		return sonde_unwind_fp(ctx, s);
	}
	if (!st)
		s->ustack_len = 0;
	if (s->kstack_len > SONDE_MAX_KSTACK)
		return sonde_sample_emit(s);
	if (p->mode == JVM_MODE_VMSTRUCTS)
		return walk_vmstructs(ctx, s, p, st);
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
