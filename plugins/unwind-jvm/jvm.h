/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What the unwind-jvm plugin's userspace and BPF halves share. Included by
 * jvm.bpf.c after vmlinux.h and by jvm.c after <linux/types.h>.
 *
 * This increment's walker is the frame-pointer walk of a JVM run with
 * -XX:+PreserveFramePointer: every pc inside the code cache becomes a frame
 * of the plugin's kind, word = kind << 56 | JVM_FRAME_RETURN when the pc is
 * a return address (every frame but the interrupted one), payload = the pc.
 * Userspace names it from the JVM's perf map.
 */
#ifndef SONDE_UNWIND_JVM_H
#define SONDE_UNWIND_JVM_H

#define JVM_MAX_PROCS	 4096
#define JVM_FRAME_RETURN 1ULL /* the payload is a return address: name pc - 1 */

/* Value of jvm_procs (key: tgid): the code cache, [lo, hi). */
struct jvm_proc {
	__u64 code_lo;
	__u64 code_hi;
};

enum jvm_error {
	JVM_ERR_NO_PROC = 0,		/* a sample of a process without a code cache yet */
	JVM_ERR_USTACK,			/* the frame-pointer walk failed */
	JVM_ERR_TRUNCATED,		/* JIT frames pushed native ones past the frame limit */
	JVM_ERR__BPF,			/* reasons counted in BPF end here */
	JVM_ERR_UNNAMED = JVM_ERR__BPF, /* symbolize: no perf map entry covers the pc */
	JVM_ERR_ATTACH,			/* the attach interface failed (jcmd Compiler.perfmap) */
	JVM_ERR_PERFMAP,		/* the perf map could not be read */
	JVM_ERR__COUNT,
};

#endif /* SONDE_UNWIND_JVM_H */
