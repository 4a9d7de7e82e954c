/* SPDX-License-Identifier: MIT */
/*
 * unwind-native: what its BPF walker (native.bpf.c) and its userspace
 * (native.c, tables.c) both read. Kernel-free: BPF includes it after
 * vmlinux.h, userspace after <linux/types.h>.
 *
 * Userspace builds one table of rows per ELF file (keyed by build-id) from
 * its .eh_frame, copies it into a slice of the one big `unw_rows` array and
 * gives each process it unwinds a sorted list of its executable mappings,
 * each pointing at its table's slice.
 */
#ifndef SONDE_UNWIND_NATIVE_H
#define SONDE_UNWIND_NATIVE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* How a row computes the CFA (sonde_unw_row.type, low nibble). */
enum sonde_unw_cfa {
	SONDE_UNW_CFA_END = 0, /* no CFI from this address on: a gap after an FDE */
	SONDE_UNW_CFA_RSP,     /* CFA = rsp + cfa_off * 8 */
	SONDE_UNW_CFA_RBP,     /* CFA = rbp + cfa_off * 8 */
	SONDE_UNW_CFA_PLT,     /* lazy-binding .plt: CFA = rsp + 8, + 8 when (pc & 15) >= cfa_off */
	SONDE_UNW_CFA_OUTERMOST,   /* the return address is undefined: _start, thread entry */
	SONDE_UNW_CFA_SIGNAL,	   /* signal trampoline (__restore_rt): registers in the ucontext */
	SONDE_UNW_CFA_UNSUPPORTED, /* a rule the walker cannot follow (DWARF expression...) */
};

/* Where the caller's rbp is (sonde_unw_row.type, high nibble). */
enum sonde_unw_rbp {
	SONDE_UNW_RBP_SAME = 0, /* unchanged: the callee has not touched it (yet) */
	SONDE_UNW_RBP_CFA,	/* saved at CFA + rbp_off * 8 */
};

/*
 * One row: from ELF virtual address pc up to the next row's pc, the rule.
 * Offsets count 8-byte words, so a row is 8 bytes; a CFI rule whose offset
 * is not a multiple of 8 or does not fit becomes UNSUPPORTED.
 */
struct sonde_unw_row {
	__u32 pc;      /* ELF virtual address (files above 4 GiB are refused) */
	__s16 cfa_off; /* in words */
	__s8 rbp_off;  /* in words */
	__u8 type;     /* enum sonde_unw_cfa | enum sonde_unw_rbp << 4 */
};
_Static_assert(sizeof(struct sonde_unw_row) == 8, "struct sonde_unw_row layout");

#define SONDE_UNW_ROW_CFA(r) ((r)->type & 0xf)
#define SONDE_UNW_ROW_RBP(r) ((r)->type >> 4)

/*
 * A table's page index, so that the walker searches a handful of rows
 * instead of all of them: one entry per 2^SONDE_UNW_PAGE_SHIFT bytes of
 * ELF address space, from the page of the first row to the page of the
 * last. It sits in unw_rows right before the table's rows (a slice is
 * [pages][rows]) and is as big as a row.
 */
#define SONDE_UNW_PAGE_SHIFT 8
struct sonde_unw_page {
	__u32 row;   /* the row covering the page's first byte (0: none does) */
	__u32 count; /* rows from it on that may cover a byte of the page */
};
_Static_assert(sizeof(struct sonde_unw_page) == sizeof(struct sonde_unw_row),
	       "a page entry takes a row's place");

/* One executable mapping of a process. A mapping with rows == 0 has no
 * table (no .eh_frame, or the build failed): the walker tries rbp there. */
struct sonde_unw_mapping {
	__u64 start;   /* first address */
	__u64 end;     /* one past the last */
	__u64 bias;    /* runtime address - ELF virtual address */
	__u32 first;   /* the table's first row in unw_rows */
	__u32 rows;    /* how many */
	__u32 npages;  /* its page index: the npages entries before first */
	__u32 page_lo; /* the page of its first row: its pc >> SONDE_UNW_PAGE_SHIFT */
};
_Static_assert(sizeof(struct sonde_unw_mapping) == 40, "struct sonde_unw_mapping layout");

/* Value of unw_procs (key: tgid): the mappings sorted by start. */
#define SONDE_UNW_MAX_MAPPINGS 128 /* a power of two: the search masks with it */
struct sonde_unw_proc {
	__u32 nmappings;
	__u32 pad;
	struct sonde_unw_mapping mappings[SONDE_UNW_MAX_MAPPINGS];
};
_Static_assert(sizeof(struct sonde_unw_proc) == 8 + 40 * SONDE_UNW_MAX_MAPPINGS,
	       "struct sonde_unw_proc layout");

/*
 * Counters of the per-CPU unw_stats array. The first group says how each
 * walk ended (exactly one per sample the walker saw), exported as
 * sonde_unwind_native_stops_total{reason} for the early ones and
 * sonde_unwind_native_complete_total for the rest. Append only.
 */
enum sonde_unw_stat {
	/* complete walks */
	SONDE_UNW_END_OUTERMOST = 0, /* a row said the return address is undefined */
	SONDE_UNW_END_ZERO_RA,	     /* the return address read was 0 */
	SONDE_UNW_END_KTHREAD,	     /* a kernel thread: no user stack at all */
	/* early stops */
	SONDE_UNW_STOP_NO_PROC,	      /* no table for the process: frame pointers used instead */
	SONDE_UNW_STOP_NO_MAPPING,    /* pc in no known executable mapping (rbp failed too) */
	SONDE_UNW_STOP_NO_CFI,	      /* pc in a mapping, but no row covers it (rbp failed too) */
	SONDE_UNW_STOP_UNSUPPORTED,   /* the row's rule is not one the walker follows */
	SONDE_UNW_STOP_READ_FAILED,   /* reading the return address or rbp from the stack failed */
	SONDE_UNW_STOP_NOT_ADVANCING, /* the CFA was not above the stack pointer */
	SONDE_UNW_STOP_FRAME_LIMIT,   /* SONDE_MAX_USTACK frames (or the sample is full) */
	SONDE_UNW_STOP__LAST = SONDE_UNW_STOP_FRAME_LIMIT,
	/* frame counts */
	SONDE_UNW_FRAMES_CFI,	   /* frames stepped with a table row */
	SONDE_UNW_FRAMES_FP,	   /* frames stepped with rbp, where no row applied */
	SONDE_UNW_RESCAN_REQUESTS, /* unknown mappings reported to userspace */
	SONDE_UNW_WALK_NS,	   /* ns spent in walks with a table (the emit excluded) */
	SONDE_UNW_HANDOVERS,	   /* frames handed to an interpreter's unwinder (abi.h) */
	SONDE_UNW_STOP_HANDOVER_FAILED, /* an early stop: the hand-over could not be made
					   (too many in one sample, or an empty slot) */
	SONDE_UNW_STAT__COUNT,
};

#endif /* SONDE_UNWIND_NATIVE_H */
