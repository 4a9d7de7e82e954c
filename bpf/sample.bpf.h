/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every user stack unwinder shares: the per-CPU scratch sample and the
 * emit step. Plugins include this and reuse the core's maps
 * (bpf_map__reuse_fd) so that all of them point at one scratch record.
 */
#ifndef SONDE_SAMPLE_BPF_H
#define SONDE_SAMPLE_BPF_H

#include "common.bpf.h"
#include "user_stack.bpf.h"

/* One sample under construction per CPU, carried across tail calls. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_sample);
} scratch SEC(".maps");

/* Unwinder programs by slot; slot SONDE_UNWINDER_FP is the core's
 * frame-pointer walk (sample.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SONDE_MAX_UNWINDERS);
	__type(key, __u32);
	__type(value, __u32);
} unwinders SEC(".maps");

/* tgid -> where an interpreter's unwinder takes over (abi.h); kept by the
 * core from what the plugins set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct sonde_handover);
} handover SEC(".maps");

/* Where the walk is, across hand-over tail calls (abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_unwind_state);
} unwind_state SEC(".maps");

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

/*
 * Writes the frame word v at s->frames[k]; -1 when k is past the end.
 * Global on purpose: a walk that indexes frames[] itself makes the verifier
 * track its frame index precisely, so no two iterations of its loop look
 * alike and every one is verified again.
 */
__noinline int sonde_put_frame(struct sonde_sample *s, __u32 k, __u64 v)
{
	if (!s || k >= SONDE_MAX_FRAMES)
		return -1;
	s->frames[k] = v;
	return 0;
}

/* The slot that takes over the frame at (pc, sp) of the sample taken at
 * time_ns: 0 for none, or for the frame an interpreter just handed back.
 * Global, so the verifier checks its loop once, not in every step. */
__noinline __u32 sonde_handover_slot(const struct sonde_handover *ho, __u64 pc, __u64 sp,
				     __u64 time_ns)
{
	__u32 i, zero = 0;
	struct sonde_unwind_state *st;

	if (!ho)
		return 0;
	st = bpf_map_lookup_elem(&unwind_state, &zero);
	if (st && st->time_ns == time_ns && st->pc == pc && st->sp == sp)
		return 0;
	for (i = 0; i < SONDE_MAX_HANDOVER_RANGES && i < ho->n; i++)
		if (pc >= ho->ranges[i].start && pc < ho->ranges[i].end)
			return ho->ranges[i].slot;
	return 0;
}

/* The walk state of sample s, when a hand-over left one for it; else
 * NULL (the walk starts from the sampled registers). */
static __always_inline struct sonde_unwind_state *sonde_unwind_state_of(const struct sonde_sample *s)
{
	__u32 zero = 0;
	struct sonde_unwind_state *st = bpf_map_lookup_elem(&unwind_state, &zero);

	if (!st || st->time_ns != s->hdr.time_ns || st->tid != s->tid)
		return NULL;
	return st;
}

/* For an interpreter's walker: the state a native walker left when it
 * handed this sample's frame at st->pc over; NULL when the walker runs as
 * the process's first unwinder. */
static __always_inline struct sonde_unwind_state *sonde_handed_over(const struct sonde_sample *s)
{
	struct sonde_unwind_state *st = sonde_unwind_state_of(s);

	return st && st->native_slot && !(st->flags & SONDE_UNWIND_RESUME) ? st : NULL;
}

/* For the native walker: the state an interpreter's walker left when it
 * gave this sample's walk back; NULL when the walk starts afresh. */
static __always_inline struct sonde_unwind_state *sonde_handed_back(const struct sonde_sample *s)
{
	struct sonde_unwind_state *st = sonde_unwind_state_of(s);

	return st && (st->flags & SONDE_UNWIND_RESUME) ? st : NULL;
}

/*
 * A native walker hands the frame at (pc, sp, bp) to the unwinder in slot,
 * saying it takes the walk back in self_slot; exact: pc is the interrupted
 * pc, not a return address. Returns only when it could not (no state,
 * SONDE_MAX_HANDOVERS reached, an empty slot): the caller goes on alone.
 */
static __always_inline void sonde_hand_over(void *ctx, struct sonde_sample *s, __u32 slot,
					    __u32 self_slot, __u64 pc, __u64 sp, __u64 bp,
					    bool exact)
{
	__u32 zero = 0;
	struct sonde_unwind_state *st = bpf_map_lookup_elem(&unwind_state, &zero);

	if (!st || !self_slot)
		return;
	if (st->time_ns != s->hdr.time_ns || st->tid != s->tid) {
		st->time_ns = s->hdr.time_ns;
		st->tid = s->tid;
		st->handovers = 0;
		st->interp[0] = st->interp[1] = 0;
	}
	if (st->handovers >= SONDE_MAX_HANDOVERS)
		return;
	st->handovers++;
	st->flags = exact ? SONDE_UNWIND_EXACT : 0;
	st->pc = pc;
	st->sp = sp;
	st->bp = bp;
	st->native_slot = self_slot;
	bpf_tail_call(ctx, &unwinders, slot);
	st->handovers--;
}

/* An interpreter's unwinder gives the walk back to the native walker, which
 * goes on from the frame it handed over (written below the interpreter's
 * frames). Returns only when it could not. */
static __always_inline void sonde_hand_back(void *ctx, struct sonde_unwind_state *st)
{
	st->flags |= SONDE_UNWIND_RESUME;
	bpf_tail_call(ctx, &unwinders, st->native_slot);
	st->flags &= ~SONDE_UNWIND_RESUME;
}

struct sonde_fp_walk {
	struct sonde_sample *s;
	struct sonde_stack_window *win;
	__u64 sp, bp;
	__u64 end; /* the index past the last the user stack may take */
	/* Index of the next frame in s->frames. 32 bits: the verifier keeps
	 * no value for a 4-byte stack slot, so every step starts from an
	 * unknown k and the steps' states merge; a 64-bit k would be tracked
	 * exactly and each step verified anew (the 1M instruction limit). */
	__u32 k;
	__u32 truncated;
};

#define SONDE_FP_FRAMES_PER_STEP 8

/*
 * SONDE_FP_FRAMES_PER_STEP frame records per bpf_loop step (a step's call
 * costs about what a frame does, bench/bpf-cost --depths); 1 when the walk
 * ends. A record is [rbp]: the caller's rbp, then the return address. The
 * walk ends where rbp stops pointing up the stack (a record may sit right
 * where the last one ended: rbp == sp).
 *
 * The walk's state stays in locals for the step: through w, every store
 * to s->frames would make the compiler reload all of it.
 */
static long sonde_fp_step(__u32 i, void *ctx)
{
	struct sonde_fp_walk *w = ctx;
	struct sonde_sample *s = w->s;
	struct sonde_stack_window *win = w->win;
	__u64 sp = w->sp, bp = w->bp, k = w->k, end = w->end;
	struct sonde_frame_record rec;
	long done = 1;
	int j;

	for (j = 0; j < SONDE_FP_FRAMES_PER_STEP; j++) {
		if (bp < sp || (bp & 7))
			goto out;
		if (sonde_read_frame_record(win, bp, &rec) || !rec.ra)
			goto out;
		if (k >= end) {
			w->truncated = 1;
			goto out;
		}
		/* inline (k is unknown here at every step), indexed by the k
		 * just checked, not by an offset worked out before the check */
		barrier_var(k);
		if (!s || k >= SONDE_MAX_FRAMES)
			goto out;
		s->frames[k] = rec.ra;
		k++;
		sp = bp + 16;
		bp = rec.bp;
	}
	done = 0;
out:
	w->sp = sp;
	w->bp = bp;
	w->k = k;
	return done;
}

/*
 * The frame-pointer walk of the user stack, written after the kernel frames
 * and the first `after` user words (an interpreter's frames, say); sets
 * s->ustack_len. Done here rather than by bpf_get_stack(BPF_F_USER_STACK),
 * whose walk reads each 16-byte frame record with its own user copy:
 * through the stack window the same walk costs a fraction (bench/overhead).
 */
static __always_inline void sonde_walk_fp(struct bpf_perf_event_data *ctx, struct sonde_sample *s,
					  __u32 after)
{
	struct sonde_fp_walk w = { .s = s };
	struct sonde_user_regs regs;
	__u32 k = s->kstack_len + after;

	s->ustack_len = after;
	if (k >= SONDE_MAX_FRAMES || after >= SONDE_MAX_USTACK)
		return;
	switch (sonde_user_regs(ctx, s, &regs)) {
	case SONDE_REGS_KTHREAD:
		return;
	case SONDE_REGS_READ_FAILED:
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
		return;
	}
	w.win = sonde_stack_window();
	if (!w.win || sonde_put_frame(s, k, regs.ip))
		return;
	w.k = k + 1;
	w.end = s->kstack_len + SONDE_MAX_USTACK;
	if (w.end > SONDE_MAX_FRAMES)
		w.end = SONDE_MAX_FRAMES;
	w.sp = regs.sp;
	w.bp = regs.bp;
	bpf_loop((SONDE_MAX_USTACK + SONDE_FP_FRAMES_PER_STEP - 1) / SONDE_FP_FRAMES_PER_STEP,
		 sonde_fp_step, &w, 0);
	s->ustack_len = w.k - s->kstack_len;
	if (w.truncated) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
	}
}

/* The frame-pointer walk of the whole user stack, then the emit. */
static __always_inline int sonde_unwind_fp(struct bpf_perf_event_data *ctx, struct sonde_sample *s)
{
	sonde_walk_fp(ctx, s, 0);
	return sonde_sample_emit(s);
}

#endif /* SONDE_SAMPLE_BPF_H */
