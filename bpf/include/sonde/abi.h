/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The BPF <-> userspace ABI: every record that crosses the events ringbuf
 * and every map value that both sides read. Kernel-free on purpose: BPF code
 * includes it after vmlinux.h, userspace after <linux/types.h>.
 *
 * Bump SONDE_ABI_VERSION on any change to a layout below; tests hold the
 * sizes to their written form (tests/unit/test-abi.c).
 */
#ifndef SONDE_ABI_H
#define SONDE_ABI_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define SONDE_ABI_VERSION 2

#define SONDE_COMM_LEN 16
#define SONDE_MAX_KSTACK 127 /* kernel.perf_event_max_stack default */
#define SONDE_MAX_USTACK 127
#define SONDE_MAX_FRAMES (SONDE_MAX_KSTACK + SONDE_MAX_USTACK)
#define SONDE_PATH_LEN 256
#define SONDE_ARGS_LEN 512

/* Slots of the `unwinders` PROG_ARRAY. The core owns slot 0 (frame pointers);
 * plugins register the others through the host API. */
#define SONDE_UNWINDER_FP 0
#define SONDE_MAX_UNWINDERS 8

enum sonde_event_type {
	SONDE_EV_SAMPLE = 1,
	SONDE_EV_EXEC = 2,
	SONDE_EV_FORK = 3,
	SONDE_EV_EXIT = 4,
};

/* First member of every ringbuf record. time_ns is CLOCK_MONOTONIC. */
struct sonde_event_hdr {
	__u32 type; /* enum sonde_event_type */
	__u32 pid;  /* thread group id */
	__u64 time_ns;
};

/* sonde_sample.flags */
#define SONDE_SAMPLE_KSTACK_ERROR (1U << 0)     /* bpf_get_stack failed for the kernel */
#define SONDE_SAMPLE_USTACK_ERROR (1U << 1)     /* the user walk failed */
#define SONDE_SAMPLE_USTACK_TRUNCATED (1U << 2) /* the user walk hit its frame limit */
#define SONDE_SAMPLE_KSTACK_TRUNCATED (1U << 3)
#define SONDE_SAMPLE_USER_MODE (1U << 4) /* the CPU was in user mode */

/*
 * A frame word. Kind 0 (native) is a plain instruction address: the kernel
 * part holds kernel addresses, the user part return addresses as walked
 * (the innermost one is the interrupted pc). A non-zero kind in the top byte
 * marks an interpreter frame of two words: this one (kind | 56-bit aux) and
 * a 64-bit payload; its plugin names it.
 */
#define SONDE_FRAME_KIND_SHIFT 56
#define SONDE_FRAME_NATIVE 0
#define SONDE_FRAME_KIND(w) ((__u32)((w) >> SONDE_FRAME_KIND_SHIFT))

/*
 * One CPU sample. Only the used part of frames[] travels: kstack_len kernel
 * words, then ustack_len user words, innermost first.
 */
struct sonde_sample {
	struct sonde_event_hdr hdr;
	__u32 tid;
	__u32 cpu;
	__u64 cgroup_id;
	__u16 kstack_len;
	__u16 ustack_len;
	__u32 flags; /* SONDE_SAMPLE_* */
	char comm[SONDE_COMM_LEN];
	__u64 tag; /* the thread's tag (SONDE_TAG_*) when sampled; 0: none */
	__u64 frames[SONDE_MAX_FRAMES];
};
#define SONDE_SAMPLE_HDR_SIZE 64
_Static_assert(sizeof(struct sonde_sample) == SONDE_SAMPLE_HDR_SIZE + 8 * SONDE_MAX_FRAMES,
	       "struct sonde_sample layout");

/*
 * Thread tags: while a thread works for something a plugin tracks (an HTTP
 * request), the plugin's BPF code puts a tag in the core's `thread_tags`
 * map (the thread's task storage, bpf/thread_tags.bpf.h) and the sampler
 * copies it into the thread's samples; the plugin's userspace later turns
 * it into labels (e.g. http_route). The top
 * byte names the plugin that set it (the id the host gave it), the other
 * 56 bits are the plugin's own.
 */
#define SONDE_TAG_PROVIDER_SHIFT 56
#define SONDE_TAG_PROVIDER(t) ((__u32)((t) >> SONDE_TAG_PROVIDER_SHIFT))
#define SONDE_TAG_VALUE_MASK ((1ULL << SONDE_TAG_PROVIDER_SHIFT) - 1)
#define SONDE_MAX_THREAD_TAGS 16384 /* tags ended by another thread, remembered at once */

/*
 * Interpreter hand-over: the native walker (a plugin's, e.g. unwind-native)
 * walks a process's stack; where a frame's pc lies in a range an
 * interpreter plugin registered (its eval loop, its JIT code), it stops,
 * leaves where it was in the per-CPU `unwind_state`, and tail-calls that
 * plugin's slot, which writes its own frames (those that ran in that native
 * frame, which follows them) and tail-calls the native walker back
 * (`unwind_state.native_slot`). The
 * `handover` map (key: tgid) holds every range of the process, the core
 * keeps it from what the plugins set (host API set_handover).
 */
#define SONDE_MAX_HANDOVER_RANGES 8
#define SONDE_MAX_HANDOVERS 8 /* per sample: two tail calls each, 33 at most in all */

struct sonde_handover_range {
	__u64 start; /* first address */
	__u64 end;   /* one past the last */
	__u32 slot;  /* the unwinder slot that takes over there */
	__u32 pad;
};

struct sonde_handover {
	__u32 n; /* ranges used, from the first */
	__u32 pad;
	struct sonde_handover_range ranges[SONDE_MAX_HANDOVER_RANGES];
};
_Static_assert(sizeof(struct sonde_handover) == 8 + 24 * SONDE_MAX_HANDOVER_RANGES,
	       "struct sonde_handover layout");

/* unwind_state.flags */
#define SONDE_UNWIND_RESUME (1U << 0) /* the native walker takes back at pc, sp, bp */
#define SONDE_UNWIND_EXACT (1U << 1)  /* pc is the interrupted pc, not a return address */

/*
 * Where a walk is, across tail calls (per CPU). It belongs to the sample
 * whose hdr.time_ns and tid it holds; anything else is a stale state. The
 * frame handed over is written by the native walker when it takes the walk
 * back, below the interpreter's frames that ran in it.
 */
struct sonde_unwind_state {
	__u64 time_ns; /* the sample's hdr.time_ns */
	__u32 tid;     /* and its tid */
	__u32 flags;   /* SONDE_UNWIND_* */
	__u64 pc, sp, bp;    /* the native frame handed over */
	__u32 native_slot;   /* the walker to hand back to */
	__u32 handovers;     /* so far in this sample */
	__u64 interp[2];     /* the interpreter walker's own cursor (0: start) */
};
_Static_assert(sizeof(struct sonde_unwind_state) == 64, "struct sonde_unwind_state layout");

/* sched_process_exec. filename as the tracepoint gives it; args is the
 * NUL-separated argv, args_len bytes of it (it may be cut). */
struct sonde_exec_event {
	struct sonde_event_hdr hdr;
	__u32 ppid;
	__u32 args_len;
	__u64 cgroup_id;
	char comm[SONDE_COMM_LEN];
	char filename[SONDE_PATH_LEN];
	char args[SONDE_ARGS_LEN];
};
_Static_assert(sizeof(struct sonde_exec_event) == 816, "struct sonde_exec_event layout");

/* sched_process_fork of a new process (threads are not reported). */
struct sonde_fork_event {
	struct sonde_event_hdr hdr; /* pid: the child */
	__u32 ppid;
	__u32 pad;
	__u64 cgroup_id;
	char comm[SONDE_COMM_LEN];
};
_Static_assert(sizeof(struct sonde_fork_event) == 48, "struct sonde_fork_event layout");

/* sched_process_exit of the last thread of a process. */
struct sonde_exit_event {
	struct sonde_event_hdr hdr;
};
_Static_assert(sizeof(struct sonde_exit_event) == 16, "struct sonde_exit_event layout");

/* sonde_proc_info.flags */
#define SONDE_PROC_SKIP (1U << 0) /* not profiled: the sampler drops it at once */

/* Value of the `procs` map (key: tgid), written by userspace: which unwinder
 * a process starts with, or that it is not profiled. A process absent from
 * the map is profiled with frame pointers. */
struct sonde_proc_info {
	__u32 unwinder; /* a SONDE_UNWINDER_* slot */
	__u32 flags;    /* SONDE_PROC_* */
};
_Static_assert(sizeof(struct sonde_proc_info) == 8, "struct sonde_proc_info layout");

#endif /* SONDE_ABI_H */
