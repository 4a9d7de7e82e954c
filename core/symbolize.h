/* SPDX-License-Identifier: MIT */
/*
 * Naming addresses: objects (executables, shared libraries, the vdso, the
 * kernel) are opened once and their symbols cached by build-id (dev+inode
 * when a file has none), so every process that maps libc shares one table
 * and no ELF is parsed per sample.
 *
 * Addresses in an object are ELF virtual addresses ("vaddr", what nm and
 * addr2line print); sonde_object__to_vaddr() turns a runtime address in a
 * process into one. The kernel object takes absolute kernel addresses.
 *
 * Threading: one thread at a time. Ownership: objects and every string
 * returned belong to the symbolizer and live until sonde_symbolizer__free().
 * This module does not log above debug.
 */
#ifndef SONDE_SYMBOLIZE_H
#define SONDE_SYMBOLIZE_H

#include <stdbool.h>
#include <stdint.h>

struct sonde_symbolizer;
struct sonde_object;

struct sonde_symbolizer_opts {
	const char *debug_dir;    /* NULL: /usr/lib/debug */
	const char *kallsyms;     /* NULL: /proc/kallsyms */
	const char *kernel_notes; /* NULL: /sys/kernel/notes (kernel build-id) */
};

/* One named frame. Inlined calls give several, innermost first. */
struct sonde_symbol_frame {
	const char *function; /* never NULL when returned */
	const char *file;     /* source file, or NULL */
	uint32_t line;        /* 0 when unknown */
};

/* NULL and errno on failure. opts may be NULL. */
struct sonde_symbolizer *sonde_symbolizer__new(const struct sonde_symbolizer_opts *opts);
void sonde_symbolizer__free(struct sonde_symbolizer *sym);

/*
 * The object for a mapped file. open_path is what to open (for example
 * /proc/PID/root/usr/lib/x86_64-linux-gnu/libc.so.6, or /proc/PID/map_files/...
 * while the process lives); name is the path as the process sees it, for
 * display. dev/ino identify the file; the same (dev, ino) returns the same
 * object without opening anything. A file that cannot be opened or is not
 * ELF still gets an object (with no symbols), so its frames keep
 * name+offset. NULL only on ENOMEM.
 */
struct sonde_object *sonde_symbolizer__object(struct sonde_symbolizer *sym,
					      const char *open_path, const char *name,
					      uint64_t dev, uint64_t ino);
/* The running kernel (kallsyms, modules included). NULL only on ENOMEM. */
struct sonde_object *sonde_symbolizer__kernel(struct sonde_symbolizer *sym);
/* The vdso, read from sonded's own (the same kernel's) image. */
struct sonde_object *sonde_symbolizer__vdso(struct sonde_symbolizer *sym);
/* For frames whose mapping is unknown: one object, "[unknown]", no symbols. */
struct sonde_object *sonde_symbolizer__unknown(struct sonde_symbolizer *sym);

/*
 * An object whose "addresses" are ids that fn names: frames of an
 * interpreter, named by the plugin that unwinds it. fn fills at most max
 * frames (innermost first, strings valid until the symbolizer is freed)
 * and returns how many, 0 when it cannot name the id. Results are not
 * cached here. NULL only on ENOMEM.
 */
typedef int (*sonde_external_symbolize_fn)(void *ctx, uint64_t id,
					   struct sonde_symbol_frame *frames, int max);
struct sonde_object *sonde_symbolizer__external(struct sonde_symbolizer *sym, const char *name,
					       sonde_external_symbolize_fn fn, void *ctx);

/*
 * Runtime address addr, in a mapping that starts at map_start with file
 * offset map_pgoff, to the object's vaddr (through its PT_LOAD headers).
 * Where the headers cannot be read the file offset is used.
 */
uint64_t sonde_object__to_vaddr(const struct sonde_object *obj, uint64_t map_start,
				uint64_t map_pgoff, uint64_t addr);

/*
 * Names vaddr. Fills at most max frames, innermost inlined function first,
 * the function that really contains vaddr last, and returns how many (0:
 * no symbol covers vaddr; the caller keeps name+0xoffset). Function names
 * are demangled where that applies. Results are cached per object.
 */
int sonde_object__symbolize(struct sonde_object *obj, uint64_t vaddr,
			    struct sonde_symbol_frame *frames, int max);

const char *sonde_object__name(const struct sonde_object *obj);
/* Lowercase hex, "" when the object has none. */
const char *sonde_object__build_id(const struct sonde_object *obj);
bool sonde_object__is_kernel(const struct sonde_object *obj);

/* Counters for /metrics. */
struct sonde_symbolizer_stats {
	uint64_t objects;        /* objects known */
	uint64_t elf_errors;     /* files that could not be read as ELF */
	uint64_t lookups;        /* sonde_object__symbolize calls */
	uint64_t misses;         /* ... that named nothing */
};
void sonde_symbolizer__stats(const struct sonde_symbolizer *sym, struct sonde_symbolizer_stats *out);

#endif /* SONDE_SYMBOLIZE_H */
