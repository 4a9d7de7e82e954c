// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The DWARF CFI walker: tail-called from the core's sampler for processes
 * the script gave unwind-native. It walks the user stack with the rows
 * userspace built from each ELF's .eh_frame (native.h), writes the frames
 * after the kernel frames of the core's scratch sample, as the frame-pointer
 * walk does, and emits it. Each frame goes through bpf_loop's callback, so
 * the verifier checks one step, not SONDE_MAX_USTACK of them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sample.bpf.h"
#include "native.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Every table's rows, each table a slice [first, first + rows). Sized by
 * userspace (max_rows setting) and filled through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct sonde_unw_row);
} unw_rows SEC(".maps");

/* tgid -> the process's executable mappings (max_processes setting). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct sonde_unw_proc);
} unw_procs SEC(".maps");

/* tgid -> first time a pc fell in no known mapping; userspace rescans the
 * process's maps and deletes the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} unw_rescan SEC(".maps");

/* enum sonde_unw_stat counters, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SONDE_UNW_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} unw_stats SEC(".maps");

/* log2 of unw_rows' size, rounded up: the steps of the row search. Set
 * by userspace before load. */
const volatile __u32 row_search_steps = 24;

struct walk {
	struct sonde_sample *s;
	struct sonde_unw_proc *proc;
	struct sonde_unw_mapping *m; /* the last frame's: callers are often in it too */
	__u64 pc, sp, bp;
	__u32 k;   /* index of the next frame in s->frames */
	__u32 n;   /* user frames written */
	__u32 end; /* the enum sonde_unw_stat that ended the walk */
	__u32 tgid;
	__u32 cfi, fp; /* frames stepped each way, counted once at the end */
	struct sonde_stack_window *win;
	const struct sonde_handover *ho; /* the process's hand-over ranges, or NULL */
	__u32 handover;			 /* the slot the walk stopped for (0: none) */
	bool exact;			 /* pc is the interrupted pc, not a return address */
};

/* This program's slot in the core's unwinders array, set by userspace once
 * the host gave it: an interpreter's unwinder hands the walk back there. */
__u32 self_slot = 0;

static __always_inline void stat_add(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&unw_stats, &stat);

	if (v)
		*v += n;
}

static __always_inline void stat_inc(__u32 stat)
{
	stat_add(stat, 1);
}

/* Binary searches run as bpf_loop callbacks: the verifier checks one step
 * instead of every path through an unrolled search. Each finds the last
 * entry of [lo, hi) whose start is at or below key. */
struct search {
	struct sonde_unw_proc *proc; /* mappings; NULL: rows of unw_rows */
	__u64 key;
	__u32 base; /* rows: index of the table's first row */
	__u32 lo, hi;
};

static long search_cb(__u32 i, void *ctx)
{
	struct search *q = ctx;
	__u32 mid, idx;
	__u64 start;

	if (q->lo >= q->hi)
		return 1;
	mid = q->lo + (q->hi - q->lo) / 2;
	if (q->proc) {
		start = q->proc->mappings[mid & (SONDE_UNW_MAX_MAPPINGS - 1)].start;
	} else {
		struct sonde_unw_row *r;

		idx = q->base + mid;
		r = bpf_map_lookup_elem(&unw_rows, &idx);
		if (!r)
			return 1;
		start = r->pc;
	}
	if (start <= q->key)
		q->lo = mid + 1;
	else
		q->hi = mid;
	return 0;
}

/*
 * The two searches are global functions: the verifier checks each once.
 * Inlined, their bpf_loop callbacks were verified again for every state of
 * the walk's own loop, which took the walker near the 1M instruction limit.
 */

/* The index in proc->mappings of the mapping holding pc, or -1. */
__noinline int mapping_index(const struct sonde_unw_proc *proc, __u64 pc)
{
	struct search q = {.proc = (struct sonde_unw_proc *)proc, .key = pc};
	__u32 i;

	if (!proc)
		return -1;
	q.hi = proc->nmappings;
	if (q.hi > SONDE_UNW_MAX_MAPPINGS)
		q.hi = SONDE_UNW_MAX_MAPPINGS;
	bpf_loop(8, search_cb, &q, 0); /* 2^7 = SONDE_UNW_MAX_MAPPINGS */
	if (!q.lo || q.lo < q.hi)
		return -1;
	i = (q.lo - 1) & (SONDE_UNW_MAX_MAPPINGS - 1);
	return pc < proc->mappings[i].end ? (int)i : -1;
}

/* The index in unw_rows of the row of m's table covering ELF address addr,
 * or -1: the page index narrows the search to the few rows that start in
 * addr's page. */
__noinline long row_index(const struct sonde_unw_mapping *m, __u64 addr)
{
	struct search q = {.key = addr};
	struct sonde_unw_page *pg;
	__u64 page;
	__u32 key, lo;

	if (!m || !m->rows)
		return -1;
	q.base = m->first;
	page = addr >> SONDE_UNW_PAGE_SHIFT;
	if (page < m->page_lo)
		return -1;
	page -= m->page_lo;
	if (page >= m->npages) { /* past the last row's page: the last row */
		q.lo = m->rows - 1;
		q.hi = m->rows;
	} else {
		key = m->first - m->npages + (__u32)page;
		pg = (struct sonde_unw_page *)bpf_map_lookup_elem(&unw_rows, &key);
		if (!pg)
			return -1;
		q.lo = pg->row;
		q.hi = pg->row + pg->count;
	}
	lo = q.lo;
	bpf_loop(row_search_steps + 1, search_cb, &q, 0);
	if (q.lo == lo || q.lo < q.hi)
		return -1;
	return (long)(m->first + q.lo - 1);
}

/* Where no row applies: trust rbp as a frame pointer if it points into the
 * stack above sp. 0 when the frame was stepped. */
static __always_inline int step_fp(struct walk *w)
{
	__u64 next, ra;

	if (w->bp < w->sp || w->bp - w->sp > (8u << 20) || (w->bp & 7))
		return -1;
	if (sonde_read_stack(w->win, w->bp, &next) || sonde_read_stack(w->win, w->bp + 8, &ra))
		return -1;
	w->sp = w->bp + 16;
	w->bp = next;
	w->pc = ra;
	w->fp++;
	return 0;
}

/* The registers the kernel saved on the signal frame: rt_sigframe's
 * ucontext sits at sp once the handler returned into __restore_rt, its
 * uc_mcontext at +40, and in it rbp, rsp and rip at +80, +120, +128. */
static __always_inline int step_signal(struct walk *w)
{
	__u64 rbp, rsp, rip;

	if (bpf_probe_read_user(&rbp, 8, (void *)(w->sp + 40 + 80)) ||
	    bpf_probe_read_user(&rsp, 8, (void *)(w->sp + 40 + 120)) ||
	    bpf_probe_read_user(&rip, 8, (void *)(w->sp + 40 + 128)))
		return SONDE_UNW_STOP_READ_FAILED;
	w->bp = rbp;
	w->sp = rsp;
	w->pc = rip;
	return -1;
}

/* One frame: record pc, then find the caller's pc, sp and rbp. Returns -1
 * to go on, or the enum sonde_unw_stat that ends the walk. */
static __always_inline int step(struct walk *w, __u32 i)
{
	struct sonde_unw_mapping *m;
	struct sonde_unw_row *r;
	__u64 addr, cfa, ra;
	__s64 off;
	__u32 k = w->k, key;
	long row;

	if (w->ho) {
		w->handover = sonde_handover_slot(w->ho, w->pc, w->sp, w->s->hdr.time_ns);
		if (w->handover)
			return SONDE_UNW_HANDOVERS;
	}
	if (w->n >= SONDE_MAX_USTACK || sonde_put_frame(w->s, k, w->pc))
		return SONDE_UNW_STOP_FRAME_LIMIT;
	w->k = k + 1;
	w->n++;

	m = w->m;
	if (!m || w->pc < m->start || w->pc >= m->end) {
		int mi = mapping_index(w->proc, w->pc);

		m = mi < 0 ? NULL : &w->proc->mappings[mi & (SONDE_UNW_MAX_MAPPINGS - 1)];
		w->m = m;
	}
	if (!m) {
		__u64 now = bpf_ktime_get_ns();

		if (!bpf_map_update_elem(&unw_rescan, &w->tgid, &now, BPF_NOEXIST))
			stat_inc(SONDE_UNW_RESCAN_REQUESTS);
		return step_fp(w) ? SONDE_UNW_STOP_NO_MAPPING : -1;
	}
	/* A return address points after the call; the call is what ran. */
	addr = w->pc - m->bias - (w->exact ? 0 : 1);
	row = row_index(m, addr);
	key = (__u32)row;
	r = row < 0 ? NULL : bpf_map_lookup_elem(&unw_rows, &key);
	if (!r || SONDE_UNW_ROW_CFA(r) == SONDE_UNW_CFA_END)
		return step_fp(w) ? SONDE_UNW_STOP_NO_CFI : -1;

	switch (SONDE_UNW_ROW_CFA(r)) {
	case SONDE_UNW_CFA_RSP:
		cfa = w->sp + (__s64)r->cfa_off * 8;
		break;
	case SONDE_UNW_CFA_RBP:
		cfa = w->bp + (__s64)r->cfa_off * 8;
		break;
	case SONDE_UNW_CFA_PLT:
		cfa = w->sp + 8 + ((w->pc & 15) >= (__u64)r->cfa_off ? 8 : 0);
		break;
	case SONDE_UNW_CFA_OUTERMOST:
		return SONDE_UNW_END_OUTERMOST;
	case SONDE_UNW_CFA_SIGNAL:
		w->cfi++;
		return step_signal(w);
	default:
		return SONDE_UNW_STOP_UNSUPPORTED;
	}
	if (cfa <= w->sp)
		return SONDE_UNW_STOP_NOT_ADVANCING;
	/* the saved rbp first: it sits below the return address, so the
	 * window read for it usually holds the return address too */
	if (SONDE_UNW_ROW_RBP(r) == SONDE_UNW_RBP_CFA) {
		off = (__s64)r->rbp_off * 8;
		if (sonde_read_stack(w->win, cfa + off, &w->bp))
			return SONDE_UNW_STOP_READ_FAILED;
	}
	if (sonde_read_stack(w->win, cfa - 8, &ra))
		return SONDE_UNW_STOP_READ_FAILED;
	w->cfi++;
	if (!ra)
		return SONDE_UNW_END_ZERO_RA;
	w->pc = ra;
	w->sp = cfa;
	return -1;
}

static long step_cb(__u32 i, void *ctx)
{
	struct walk *w = ctx;
	int end = step(w, i);

	if (end < 0) {
		w->exact = false; /* every frame after the first: a return address */
		return 0;
	}
	w->end = end;
	return 1;
}

/* Counts how the walk ended and fills in the sample's user part. */
static __always_inline void finish(struct walk *w)
{
	struct sonde_sample *s = w->s;

	stat_inc(w->end);
	s->ustack_len = w->n;
	if (w->end == SONDE_UNW_STOP_FRAME_LIMIT) {
		s->flags |= SONDE_SAMPLE_USTACK_TRUNCATED;
		sonde_stat_inc(SONDE_STAT_USTACK_TRUNCATED);
	} else if (w->end > SONDE_UNW_END_KTHREAD) {
		s->flags |= SONDE_SAMPLE_USTACK_ERROR;
		sonde_stat_inc(SONDE_STAT_USTACK_ERRORS);
	}
}

/*
 * Where the walk starts: the sampled registers, or, when an interpreter's
 * unwinder handed the walk back, the frame it was handed (written after the
 * interpreter's frames, which ran in it, and not handed over again). 0, or
 * -1 when the sample is to be sent as it is.
 */
static __always_inline int start(struct bpf_perf_event_data *ctx, struct walk *w)
{
	struct sonde_sample *s = w->s;
	struct sonde_unwind_state *st = sonde_handed_back(s);
	struct sonde_user_regs regs;

	if (st) {
		st->flags &= ~SONDE_UNWIND_RESUME;
		w->pc = st->pc;
		w->sp = st->sp;
		w->bp = st->bp;
		w->exact = st->flags & SONDE_UNWIND_EXACT;
		w->n = s->ustack_len;
		w->k = s->kstack_len + s->ustack_len;
		return 0;
	}
	switch (sonde_user_regs(ctx, s, &regs)) {
	case SONDE_REGS_KTHREAD:
		stat_inc(SONDE_UNW_END_KTHREAD);
		s->ustack_len = 0;
		return -1;
	case SONDE_REGS_READ_FAILED:
		stat_inc(SONDE_UNW_STOP_READ_FAILED);
		s->ustack_len = 0;
		return -1;
	}
	w->pc = regs.ip;
	w->sp = regs.sp;
	w->bp = regs.bp;
	w->exact = true;
	w->k = s->kstack_len;
	return 0;
}

SEC("perf_event")
int unwind_native(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	struct walk w = {0};
	__u64 t0;

	if (!s)
		return 0;
	w.s = s;
	w.tgid = s->hdr.pid;
	if (start(ctx, &w))
		return sonde_sample_emit(s);
	w.win = sonde_stack_window();
	if (!w.win)
		return sonde_sample_emit(s);
	w.proc = bpf_map_lookup_elem(&unw_procs, &w.tgid);
	if (!w.proc) {
		stat_inc(SONDE_UNW_STOP_NO_PROC);
		return s->ustack_len ? sonde_sample_emit(s) : sonde_unwind_fp(ctx, s);
	}
	w.ho = bpf_map_lookup_elem(&handover, &w.tgid);
	w.end = SONDE_UNW_STOP_FRAME_LIMIT;
	/* the walk's own cost, for bench/unwind-native: bpf_stats only see
	 * the core's program, every process's samples mixed */
	t0 = bpf_ktime_get_ns();
	bpf_loop(SONDE_MAX_USTACK, step_cb, &w, 0);
	stat_add(SONDE_UNW_FRAMES_CFI, w.cfi);
	stat_add(SONDE_UNW_FRAMES_FP, w.fp);
	stat_add(SONDE_UNW_WALK_NS, bpf_ktime_get_ns() - t0);
	if (w.handover) {
		stat_inc(SONDE_UNW_HANDOVERS);
		s->ustack_len = w.n;
		sonde_hand_over(ctx, s, w.handover, self_slot, w.pc, w.sp, w.bp, w.exact);
		/* not taken (SONDE_MAX_HANDOVERS reached, an empty slot): the
		 * sample goes with the frames so far */
		w.end = SONDE_UNW_STOP_HANDOVER_FAILED;
	}
	finish(&w);
	return sonde_sample_emit(s);
}
