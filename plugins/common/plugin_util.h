/* SPDX-License-Identifier: MIT */
/*
 * Helpers the shipped plugins share, linked statically into each (plugins
 * never link against sonded). Only what several plugins need the same way.
 */
#ifndef SONDE_PLUGIN_UTIL_H
#define SONDE_PLUGIN_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include <sonde/plugin.h>

struct bpf_object;

#define PLUGIN_STRINGS_BUCKETS 1024

/*
 * Interned strings: the names a plugin hands the core (functions, files)
 * must live until its fini(), since a profile being written may still
 * point at them. Zero-initialize; not thread-safe (callers lock).
 */
struct plugin_string;
struct plugin_strings {
	struct plugin_string *buckets[PLUGIN_STRINGS_BUCKETS];
};

/* The one copy of s, or NULL on ENOMEM. */
const char *plugin_strings_intern(struct plugin_strings *ps, const char *s);
/* Frees every string; the struct can be used again. */
void plugin_strings_release(struct plugin_strings *ps);

/*
 * Before bpf_object__load(): makes the object's copies of the core's shared
 * maps ("scratch", "stats", "events", "unwinders", "handover",
 * "unwind_state": those it declares) the core's own, so an unwinder fills
 * the sample the sampler started, emits it into the core's ringbuf and can
 * hand the walk over to another unwinder and back. A core without one of
 * them (an older sonded) gets -ENOENT. 0 or -errno.
 */
int plugin_reuse_core_maps(const struct sonde_host_api *api, struct sonde_host *host,
			   struct bpf_object *obj);

/*
 * Sums each of the first nkeys slots of a BPF_MAP_TYPE_PERCPU_ARRAY of
 * u64 counters over the CPUs into out[key] (a slot that cannot be read
 * counts 0). 0 or -errno.
 */
int plugin_percpu_sums(int map_fd, uint32_t nkeys, uint64_t *out);

/* A symbol an interpreter plugin looks for in a runtime's .dynsym. */
struct plugin_dynsym {
	const char *name;
	uint64_t addr;   /* out: its file vaddr; 0 when missing */
	uint64_t size;   /* out: its st_size */
	uint32_t value;  /* out: the first 4 bytes of its data in the file ... */
	bool has_value;  /* ... when the file holds them (not .bss) */
	uint32_t words[3]; /* out: its first nwords 4-byte words (up to 12 bytes: */
	int nwords;	   /*      glibc's thread_db descriptors) */
};

/*
 * Reads the .dynsym of the ELF file for the n symbols in want, and
 * *base_vaddr = p_vaddr - p_offset of its first PT_LOAD (to turn a file
 * vaddr into a runtime address with the mapping's start). 0, or -errno
 * (-ENOENT: not ELF, or no .dynsym).
 */
int plugin_elf_dynsyms(const char *file, struct plugin_dynsym *want, size_t n,
		       uint64_t *base_vaddr);

#endif /* SONDE_PLUGIN_UTIL_H */
