/* SPDX-License-Identifier: MIT */
/*
 * One ELF image read through libelf: its build-id, PT_LOAD headers,
 * .gnu_debuglink and function symbols. The symbolizer builds on this; no
 * caching or lookups of other files happen here.
 *
 * Files are mapped (not read) and their descriptor is closed once open
 * returns, so many images cost address space but few fds. Strings returned
 * (build-id, symbol names, debuglink) live as long as the sonde_elf.
 * Threading: one thread at a time per object. No logging.
 */
#ifndef SONDE_ELF_IMAGE_H
#define SONDE_ELF_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libelf.h>

struct sonde_elf;

/*
 * Opens path. NULL and errno on failure: ENOEXEC when the file is not ELF,
 * otherwise what open/mmap said.
 */
struct sonde_elf *sonde_elf__open(const char *path);
/* The same for an image in memory, which is copied. */
struct sonde_elf *sonde_elf__open_memory(const void *image, size_t size);
void sonde_elf__free(struct sonde_elf *elf);

/* The libelf handle, owned by elf. */
Elf *sonde_elf__handle(const struct sonde_elf *elf);
/* Lowercase hex of the NT_GNU_BUILD_ID note, "" when there is none. */
const char *sonde_elf__build_id(const struct sonde_elf *elf);
/* True when the image has a section named name (".symtab", ".debug_info"). */
bool sonde_elf__has_section(const struct sonde_elf *elf, const char *name);
/* The .gnu_debuglink file name and its CRC, or NULL when there is none. */
const char *sonde_elf__debuglink(const struct sonde_elf *elf, uint32_t *crc);
/* CRC-32 of the whole file, as .gnu_debuglink records it. */
uint32_t sonde_elf__crc32(const struct sonde_elf *elf);

/*
 * File offset to vaddr through the PT_LOAD holding it in its file bytes
 * (or, failing that, in its memory size). -ENOENT when none does.
 */
int sonde_elf__offset_to_vaddr(const struct sonde_elf *elf, uint64_t offset, uint64_t *vaddr);

/* One function symbol: [addr, end). name belongs to the sonde_elf read. */
struct sonde_elf_sym {
	uint64_t addr;
	uint64_t end;
	const char *name;
	uint8_t rank; /* internal: which of several aliases wins */
};

/* Function symbols of one or more images, sorted, searched by address. */
struct sonde_elf_symtab {
	struct sonde_elf_sym *syms;
	size_t count;
	size_t cap;
};

/*
 * Adds the STT_FUNC/STT_GNU_IFUNC symbols of elf's .symtab (and of .dynsym
 * when dynsym is true). The symtab keeps pointers into elf, which must
 * outlive it. 0 or -ENOMEM.
 */
int sonde_elf_symtab__add(struct sonde_elf_symtab *tab, const struct sonde_elf *elf, bool dynsym);
/* Sorts and merges aliases; call once after the last add. */
void sonde_elf_symtab__finish(struct sonde_elf_symtab *tab);
/* The symbol covering vaddr, or NULL. */
const struct sonde_elf_sym *sonde_elf_symtab__find(const struct sonde_elf_symtab *tab,
						   uint64_t vaddr);
void sonde_elf_symtab__release(struct sonde_elf_symtab *tab);

#endif /* SONDE_ELF_IMAGE_H */
