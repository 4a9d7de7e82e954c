/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What the unwind-jvm plugin's userspace and BPF halves share. Included by
 * jvm.bpf.c after vmlinux.h and by jvm.c after <linux/types.h>.
 *
 * A JVM frame takes two words: kind << 56 | aux, then a payload. The frame
 * type sits in aux bits 53-55:
 *
 *   JVM_FRAME_PC      perfmap path (a JVM run with -XX:+PreserveFramePointer,
 *                     walked by the kernel): payload = the pc, aux bit 0 =
 *                     JVM_FRAME_RETURN when it is a return address. Named
 *                     from the JVM's perf map.
 *   JVM_FRAME_INTERP  an interpreted frame: payload = Method*, aux bits 0-47 =
 *                     the bytecode pointer (user addresses fit in 47 bits), bit
 *                     52 = JVM_FRAME_RET when it is a caller's frame (then the
 *                     bytecode pointer must lie in the method's bytecode: one
 *                     that does not means the Method* was freed and reused,
 *                     and the frame is not named).
 *   JVM_FRAME_NMETHOD a compiled frame: payload = the nmethod, aux bits 0-31 =
 *                     pc - code_begin, bits 32-51 = the low 20 bits of its
 *                     compile id (a freed or reused blob is not named), bit 52
 *                     = JVM_FRAME_RET when the pc is a return address.
 *   JVM_FRAME_BLOB    any other code blob (stubs, adapters): payload = the
 *                     blob, aux bits 0-31 = pc - blob.
 *
 * Every offset the BPF walker uses comes from the JVM's VMStructs through
 * jvm_proc, so new JDKs need new data, not new BPF code.
 */
#ifndef SONDE_UNWIND_JVM_H
#define SONDE_UNWIND_JVM_H

#define JVM_MAX_PROCS	 4096
#define JVM_MAX_THREADS	 16384 /* Java threads with a frame anchor known, node-wide */
#define JVM_MAX_HEAPS	 4
#define JVM_MAX_HOPS	 32   /* segment map steps back to a block start */
#define JVM_FRAME_RETURN 1ULL /* JVM_FRAME_PC: the payload is a return address */

#define JVM_FRAME_TYPE_SHIFT 53
#define JVM_FRAME_TYPE(aux)  (((aux) >> JVM_FRAME_TYPE_SHIFT) & 7)
#define JVM_FRAME_RET	     (1ULL << 52) /* JVM_FRAME_NMETHOD: pc is a return address */
#define JVM_FRAME_PC	     0ULL
#define JVM_FRAME_INTERP     1ULL
#define JVM_FRAME_NMETHOD    2ULL
#define JVM_FRAME_BLOB	     3ULL
#define JVM_CID_MASK	     0xfffffULL /* compile id bits kept in aux */

enum jvm_mode {
	JVM_MODE_PERFMAP = 0, /* the kernel's frame-pointer walk, pcs named from a perf map */
	JVM_MODE_VMSTRUCTS,   /* the walker below, frames named from the JVM's memory */
};

/* One code heap: its memory [lo, hi) and its segment map. */
struct jvm_heap {
	__u64 lo;
	__u64 hi;
	__u64 segmap;
};

/* Value of jvm_procs (key: tgid). Offsets are bytes; fp_* are signed
 * offsets from an interpreter frame's rbp. */
struct jvm_proc {
	__u64 code_lo; /* the code cache, [lo, hi) */
	__u64 code_hi;
	__u64 interp_lo; /* the template interpreter's code, [lo, hi) */
	__u64 interp_hi;
	struct jvm_heap heaps[JVM_MAX_HEAPS];
	__u32 mode;
	__u32 nheaps;
	__u32 segment_shift;	   /* CodeHeap::_log2_segment_size */
	__u32 heapblock_size;	   /* sizeof(HeapBlock): the blob follows it */
	__u32 blob_name;	   /* CodeBlob::_name */
	__u32 blob_frame_size;	   /* CodeBlob::_frame_size, in words */
	__u32 blob_frame_complete; /* CodeBlob::_frame_complete_offset */
	__u32 blob_code_begin;	   /* CodeBlob::_code_begin */
	__u32 nm_compile_id;	   /* nmethod::_compile_id */
	__s32 fp_sender_sp;	   /* interpreter frame: the caller's unextended sp */
	__s32 fp_method;	   /* interpreter frame: Method* */
	__s32 fp_bcp;		   /* interpreter frame: the bytecode pointer (saved) */
	__u32 anchor_sp;	   /* JavaFrameAnchor::_last_Java_sp */
	__u32 anchor_pc;	   /* JavaFrameAnchor::_last_Java_pc */
	__u32 anchor_fp;	   /* JavaFrameAnchor::_last_Java_fp */
	__u32 has_anchors;	   /* jvm_threads holds this JVM's threads */
};
_Static_assert(sizeof(struct jvm_proc) == 192, "struct jvm_proc layout");

/*
 * Value of jvm_threads (key: tid): where a Java thread's frame anchor is.
 * A thread that left Java code (a native method, a call into the VM) has
 * its last Java frame there; the walker goes on from it when the native
 * frames above cannot be followed by frame pointer. Used only for a stack
 * pointer inside [stack_lo, stack_hi), the thread's own stack.
 */
struct jvm_thread {
	__u64 anchor; /* &JavaThread::_anchor */
	__u64 stack_lo;
	__u64 stack_hi;
};
_Static_assert(sizeof(struct jvm_thread) == 24, "struct jvm_thread layout");

enum jvm_error {
	JVM_ERR_NO_PROC = 0, /* a sample of a process without a code cache yet */
	JVM_ERR_USTACK,	     /* the frame-pointer walk failed */
	JVM_ERR_TRUNCATED,   /* the stack did not fit in the sample */
	JVM_ERR_READ,	     /* a read of the stack or of a code blob faulted */
	JVM_ERR_NO_HEAP,     /* a code-cache pc in none of the code heaps */
	JVM_ERR_SEGMAP,	     /* the segment map led to no block (free, or too many hops) */
	JVM_ERR_PROLOGUE,    /* a compiled frame sampled before its frame was built */
	JVM_ERR_NO_FRAME,    /* a frame whose caller cannot be found (bad sp, fp) */
	JVM_ERR__BPF,	     /* reasons counted in BPF end here */
	JVM_ERR_UNNAMED = JVM_ERR__BPF, /* symbolize: no perf map entry covers the pc */
	JVM_ERR_ATTACH,			/* the attach interface failed (jcmd Compiler.perfmap) */
	JVM_ERR_PERFMAP,		/* the perf map could not be read */
	JVM_ERR_STALE,			/* symbolize: the nmethod was freed or recompiled, or the
					   Method* of a caller frame reused */
	JVM_ERR_SYMBOL_READ,		/* symbolize: a Method or its metadata was unreadable */
	JVM_ERR__COUNT,
};

#endif /* SONDE_UNWIND_JVM_H */
