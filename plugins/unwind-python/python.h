/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What the unwind-python plugin's userspace and BPF halves share: the
 * per-process offsets (filled by userspace, from the interpreter's binary
 * and a small per-version table, so the BPF walker never branches on
 * versions) and the error reasons. Included by
 * python.bpf.c after vmlinux.h and by python.c after <linux/types.h>.
 *
 * Frame emitted per Python function: word = kind << 56 | firstlineno (24
 * bits) << 32 | byte offset of the frame's instruction pointer from its code
 * object (32 bits); payload = the code object's address. firstlineno lets
 * userspace notice a code object freed and replaced at the same address.
 *
 * Two ways to run: as a process's first unwinder, the walker writes every
 * Python frame of the thread, then the frame-pointer walk of the native
 * stack. Handed a frame of _PyEval_EvalFrameDefault by a native walker
 * (unwind-native; abi.h, the interpreter hand-over), it writes the Python
 * frames that eval call runs (down to its entry frame) and hands the walk
 * back, so the Python frames sit in place among the native ones.
 */
#ifndef SONDE_UNWIND_PYTHON_H
#define SONDE_UNWIND_PYTHON_H

#define PY_MAX_FRAMES 48 /* Python frames per sample: 96 of the 127 user words */
#define PY_MAX_PROCS  4096
/* The walker reads the head of each interpreter frame in one read of this
 * many bytes: fr_code, fr_previous and fr_instr are 8-aligned and below it,
 * and so is the byte fr_entry (3.11: 68; 3.12, 3.13: 70). A power of two. */
#define PY_FRAME_HEAD 128

/* Loop bound of a walk: Python frames plus the shim frames between eval
 * calls (3.12+), which take a step and emit nothing. */
#define PY_MAX_STEPS (PY_MAX_FRAMES + 16)

/*
 * Value of py_procs (key: tgid). Every layout fact of the interpreter the
 * walker needs; filled by userspace per process, from the binary where it
 * can (python.c says which), so that the walker has no version in it.
 *
 * The thread's current frame: ts_frame, then (frame_hops 2) cf_frame of the
 * struct it points to: 3.11, 3.12 tstate->cframe->current_frame; 3.13
 * tstate->current_frame (frame_hops 1).
 *
 * Where one _PyEval_EvalFrameDefault call's frames end, as data: the byte
 * at fr_entry equals entry_val in a marked frame. entry_shim 0: the marked
 * frame is the call's first Python frame, emitted (3.11: is_entry == 1);
 * entry_shim 1: the marked frame is a shim the call pushed below its first
 * frame, not a Python function, never emitted (3.12, 3.13: owner ==
 * FRAME_OWNED_BY_CSTACK).
 */
struct py_proc {
	__u64 tss_key;	    /* address of the pthread key of the thread state, 0: none */
	__u64 gil_tstate;   /* address of gilstate.tstate_current, 0: none */
	__u32 tsd_base;	    /* libc: thread pointer + tsd_base + key * tsd_stride */
	__u32 tsd_stride;   /*       holds the key's value */
	__u32 tsd_keys;	    /* keys below this live in the static block */
	__u32 ts_frame;	    /* PyThreadState.cframe, or .current_frame (frame_hops 1) */
	__u32 ts_thread_id; /* PyThreadState.native_thread_id */
	__u32 cf_frame;	    /* _PyCFrame.current_frame (frame_hops 2) */
	__u32 fr_code;	    /* _PyInterpreterFrame.f_code (3.13: f_executable) */
	__u32 fr_previous;  /* _PyInterpreterFrame.previous */
	__u32 fr_instr;	    /* _PyInterpreterFrame.prev_instr (3.13: instr_ptr) */
	__u32 co_firstlineno;
	__u32 fr_entry;	    /* the byte that marks an eval call's end (above) */
	__u8 entry_val;
	__u8 entry_shim;
	__u8 frame_hops;    /* 1 or 2 */
	__u8 pad;
};
_Static_assert(sizeof(struct py_proc) == 64, "py_proc is shared with BPF");

enum py_error {
	PY_ERR_NO_TSTATE = 0,	    /* no thread state for the thread on CPU (not Python's) */
	PY_ERR_READ,		    /* a frame or code read faulted */
	PY_ERR_TRUNCATED,	    /* more Python frames than PY_MAX_FRAMES */
	PY_ERR_NO_PROC,		    /* a sample of a process without offsets */
	PY_ERR__BPF,		    /* reasons counted in BPF end here */
	PY_ERR_STALE = PY_ERR__BPF, /* symbolize: not a code object (freed, reused) */
	PY_ERR_SYMBOL_READ,	    /* symbolize: the code object could not be read */
	PY_ERR__COUNT,
};

/* Keys of py_walk (per-CPU u64 sums): what the walker does and costs, timed
 * by itself (bpf_ktime_get_ns around the Python part of a sample of a
 * process with offsets), free of the rest of the sampler. */
enum py_walk_stat {
	PY_WALK_NS = 0, /* time in Python walks */
	PY_WALK_RUNS,	/* Python walks */
	PY_WALK_FRAMES, /* Python frames they emitted */
	PY_WALK_CODE_HITS, /* frames whose code object's first line came from the cache */
	PY_WALK__COUNT,
};

#endif /* SONDE_UNWIND_PYTHON_H */
