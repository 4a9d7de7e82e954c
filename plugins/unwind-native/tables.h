/* SPDX-License-Identifier: MIT */
/*
 * Unwind tables from an ELF file's .eh_frame (or .debug_frame), in the row
 * format the BPF walker reads (native.h). No BPF and no process here: the unit test drives
 * it on fixture files.
 *
 * Threading: every function works on its arguments alone; tables can be
 * built on any thread.
 */
#ifndef SONDE_UNWIND_TABLES_H
#define SONDE_UNWIND_TABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libelf.h>

#include "native.h"

/* What a build saw, for logs and metrics. */
struct sonde_unw_table_stats {
	size_t fdes;	    /* FDEs listed in .eh_frame_hdr (or found in .debug_frame) */
	size_t unsupported; /* rows marked SONDE_UNW_CFA_UNSUPPORTED */
	size_t plt;	    /* rows with the .plt expression */
	size_t outermost;   /* rows whose return address is undefined */
	size_t signal;	    /* signal trampoline rows */
	size_t gaps;	    /* END rows: address ranges between FDEs */
	uint64_t build_ns;  /* time the build took */
};

struct sonde_unw_table {
	struct sonde_unw_row *rows; /* sorted by pc, owned by the table */
	size_t nrows;
	struct sonde_unw_table_stats stats;
};

/*
 * Builds the table of elf (opened with ELF_C_READ_MMAP or ELF_C_READ, or an
 * image given to elf_memory() such as the vdso's) from its .eh_frame, found
 * through PT_GNU_EH_FRAME, or, when it has none, from its .debug_frame
 * section (a file built with -g but without unwind tables; the .debug_frame
 * of a separate debuginfo file is not looked for). Returns NULL and sets
 * errno: ENODATA when the file has neither, ENOTSUP for a file it cannot
 * read (not x86-64, an encoding it does not know), EFBIG when a row's
 * address does not fit 32 bits, ENOMEM. The caller frees it with
 * sonde_unw_table__free().
 */
struct sonde_unw_table *sonde_unw_table__build(Elf *elf);

/* Whether elf has CFI sonde_unw_table__build() reads (.eh_frame_hdr or
 * .debug_frame): a cheap look at the headers, no table built. */
bool sonde_unw_elf_has_cfi(Elf *elf);
void sonde_unw_table__free(struct sonde_unw_table *t);

/* The row that covers ELF virtual address pc (the walker's search), or
 * NULL when pc is below the first row. */
const struct sonde_unw_row *sonde_unw_table__find(const struct sonde_unw_table *t, uint64_t pc);

/*
 * The page index of t (native.h, struct sonde_unw_page): how many entries
 * it has (0 for a table with no rows), and the entries, written to out.
 */
size_t sonde_unw_table__npages(const struct sonde_unw_table *t);
void sonde_unw_table__pages(const struct sonde_unw_table *t, struct sonde_unw_page *out);

/*
 * The key tables are shared by: "b:" and the GNU build-id in hex, or when
 * the file has none, "f:" with the device, inode, size and mtime of fd.
 * 0 or -errno (-ENAMETOOLONG when len is too small).
 */
int sonde_unw_elf_key(Elf *elf, int fd, char *buf, size_t len);

/*
 * The load bias of an executable mapping of elf at start whose first byte
 * is file offset offset: runtime address - ELF virtual address, from the
 * executable PT_LOAD that holds offset. 0 or -ENOENT when none holds it.
 */
int sonde_unw_elf_bias(Elf *elf, uint64_t start, uint64_t offset, uint64_t *bias);

/*
 * The on-disk cache: one file per table, dir/b-<build-id>.unw, a versioned
 * header (magic, format version, row size, the key, the stats, a checksum
 * of the rows) then the rows. Only build-id keys ("b:...") are cached: an
 * "f:" key names one inode, not the file's contents.
 *
 * sonde_unw_cache__load() returns the table cached for key, or NULL with
 * errno: ENOENT when there is none, EBADMSG when the file is truncated,
 * corrupt, of another format version or for another key (the caller
 * rebuilds and saves over it), ENOTSUP for an "f:" key.
 * sonde_unw_cache__save() writes t for key atomically (a temporary file
 * renamed into place, mode 0600). 0 or -errno.
 */
struct sonde_unw_table *sonde_unw_cache__load(const char *dir, const char *key);
int sonde_unw_cache__save(const char *dir, const char *key, const struct sonde_unw_table *t);

/* The format version in the header; a file of another version is EBADMSG. */
#define SONDE_UNW_CACHE_VERSION 1

#endif /* SONDE_UNWIND_TABLES_H */
