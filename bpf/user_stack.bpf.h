/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every user stack walker needs: the user registers at the sample,
 * and the stack's words, read a window at a time. A bpf_probe_read_user()
 * costs about as much for 8 bytes as for a few hundred (83 ns a read on
 * the 2-vCPU VM, bench/unwind-native), and a walk goes upward through
 * mostly small frames, so one read serves several of them.
 */
#ifndef SONDE_USER_STACK_BPF_H
#define SONDE_USER_STACK_BPF_H

#include "sonde/abi.h"

#define SONDE_STACK_WINDOW 512 /* a power of two, at most a page */
#define SONDE_PAGE_SIZE 4096
#define SONDE_PF_KTHREAD 0x00200000 /* include/linux/sched.h */

#define SONDE_STACK_WINDOW_WORDS (SONDE_STACK_WINDOW / 8)

/* The per-CPU window: SONDE_STACK_WINDOW bytes of user stack from base (0:
 * empty), as words: only aligned words are read from it, and a word load
 * from a byte array is compiled into eight byte loads. */
struct sonde_stack_window {
	__u64 words[SONDE_STACK_WINDOW_WORDS];
	__u64 base;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_stack_window);
} stack_window SEC(".maps");

/* This CPU's window, emptied: the stack it held belongs to another sample. */
static __always_inline struct sonde_stack_window *sonde_stack_window(void)
{
	__u32 zero = 0;
	struct sonde_stack_window *win = bpf_map_lookup_elem(&stack_window, &zero);

	if (win)
		win->base = 0;
	return win;
}

/*
 * Whether the window holds the len bytes at addr, refilling it when it does
 * not with the SONDE_STACK_WINDOW bytes from addr, or those ending at the
 * end of addr's page when that comes first: the page above may not be
 * mapped, and a faulting read costs more than it saves. 0 when the bytes
 * cannot come from the window (they straddle a page end, or the window
 * could not be read): the caller reads them alone.
 */
static __always_inline int sonde_window_holds(struct sonde_stack_window *win, __u64 addr,
					      __u64 len)
{
	__u64 start;

	if (win->base && addr >= win->base && addr + len <= win->base + SONDE_STACK_WINDOW)
		return 1;
	start = (addr | (SONDE_PAGE_SIZE - 1)) + 1 - SONDE_STACK_WINDOW;
	if (start > addr)
		start = addr;
	if (start + SONDE_STACK_WINDOW < addr + len ||
	    bpf_probe_read_user(win->words, SONDE_STACK_WINDOW, (void *)start)) {
		win->base = 0;
		return 0;
	}
	win->base = start;
	return 1;
}

/* The index in win->words of the aligned word at addr, which the window
 * holds; masked for the verifier. Start and addr are both 8-aligned. */
static __always_inline __u64 sonde_window_word(const struct sonde_stack_window *win, __u64 addr)
{
	return ((addr - win->base) / 8) & (SONDE_STACK_WINDOW_WORDS - 1);
}

/*
 * The word of user stack at addr, into *out, from the window. 0, or -1
 * when addr cannot be read.
 *
 * Global, so the verifier checks it once: inlined into a walk, the masked
 * window offsets would be tracked precisely through every step and the
 * walk's states would no longer merge (the 1M instruction limit).
 */
__noinline int sonde_read_stack(struct sonde_stack_window *win, __u64 addr, __u64 *out)
{
	if (!win || !out)
		return -1;
	/* stack slots are aligned; an odd one is read alone */
	if ((addr & 7) || !sonde_window_holds(win, addr, sizeof(*out)))
		return bpf_probe_read_user(out, sizeof(*out), (void *)addr) ? -1 : 0;
	*out = win->words[sonde_window_word(win, addr)];
	return 0;
}

/* A frame record: the caller's rbp, then the return address. */
struct sonde_frame_record {
	__u64 bp, ra;
};

/* The frame record at addr, into *out, through the window. 0, or -1 when
 * addr cannot be read. Inlined into a bpf_loop callback (whose state
 * starts unknown at every step, so its masked offsets do not multiply the
 * states): a call per frame costs more than the read (bench/bpf-cost
 * --depths). */
static __always_inline int sonde_read_frame_record(struct sonde_stack_window *win, __u64 addr,
						   struct sonde_frame_record *out)
{
	__u64 i;

	if (!win || !out)
		return -1;
	if ((addr & 7) || !sonde_window_holds(win, addr, sizeof(*out)))
		return bpf_probe_read_user(out, sizeof(*out), (void *)addr) ? -1 : 0;
	i = sonde_window_word(win, addr);
	out->bp = win->words[i];
	out->ra = win->words[(i + 1) & (SONDE_STACK_WINDOW_WORDS - 1)];
	return 0;
}

struct sonde_user_regs {
	__u64 ip, sp, bp;
};

enum sonde_user_regs_result {
	SONDE_REGS_OK = 0,
	SONDE_REGS_KTHREAD,	/* a kernel thread: there is no user stack */
	SONDE_REGS_READ_FAILED, /* the saved user registers could not be read */
};

/* The user registers of the sampled thread: the interrupted ones when the
 * sample hit user mode, else those saved when it entered the kernel. */
static __always_inline int sonde_user_regs(struct bpf_perf_event_data *ctx,
					   const struct sonde_sample *s, struct sonde_user_regs *r)
{
	struct task_struct *task;
	struct pt_regs *regs;

	if (s->flags & SONDE_SAMPLE_USER_MODE) {
		__u64 ip = ctx->regs.ip, sp = ctx->regs.sp, bp = ctx->regs.bp;

		/* loaded here: merged with the loads from the copy below, they
		 * would go through a moved ctx pointer, which the verifier refuses */
		barrier_var(ip);
		barrier_var(sp);
		barrier_var(bp);
		r->ip = ip;
		r->sp = sp;
		r->bp = bp;
		return SONDE_REGS_OK;
	}
	task = bpf_get_current_task_btf();
	if (task->flags & SONDE_PF_KTHREAD)
		return SONDE_REGS_KTHREAD;
	/* field by field: a pt_regs copy would take 168 bytes of a stack the
	 * walkers' callbacks share (512 in all on 6.1) */
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (bpf_probe_read_kernel(&r->ip, sizeof(r->ip), &regs->ip) ||
	    bpf_probe_read_kernel(&r->sp, sizeof(r->sp), &regs->sp) ||
	    bpf_probe_read_kernel(&r->bp, sizeof(r->bp), &regs->bp))
		return SONDE_REGS_READ_FAILED;
	return SONDE_REGS_OK;
}

#endif /* SONDE_USER_STACK_BPF_H */
