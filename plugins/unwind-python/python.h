/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What the unwind-python plugin's userspace and BPF halves share: the
 * per-process offsets (filled by userspace from a per-version table, so the
 * BPF walker never branches on versions) and the error reasons. Included by
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
 * and so is the byte fr_is_entry (3.11: 68). A power of two. */
#define PY_FRAME_HEAD 128

/* Value of py_procs (key: tgid). */
struct py_proc {
	__u64 tss_key;	    /* address of the pthread key of the thread state, 0: none */
	__u64 gil_tstate;   /* address of gilstate.tstate_current, 0: none */
	__u32 tsd_base;	    /* libc: thread pointer + tsd_base + key * tsd_stride */
	__u32 tsd_stride;   /*       holds the key's value */
	__u32 tsd_keys;	    /* keys below this live in the static block */
	__u32 ts_cframe;    /* PyThreadState.cframe */
	__u32 ts_thread_id; /* PyThreadState.native_thread_id */
	__u32 cf_frame;	    /* _PyCFrame.current_frame */
	__u32 fr_code;	    /* _PyInterpreterFrame.f_code */
	__u32 fr_previous;  /* _PyInterpreterFrame.previous */
	__u32 fr_instr;	    /* _PyInterpreterFrame.prev_instr */
	__u32 co_firstlineno;
	__u32 fr_is_entry;  /* _PyInterpreterFrame.is_entry (a byte): the first frame
			       of an _PyEval_EvalFrameDefault call (3.11) */
	__u32 pad;
};

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
