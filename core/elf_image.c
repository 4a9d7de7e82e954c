// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <elfutils/libdwelf.h>
#include <zlib.h>

#include "elf_image.h"

struct load {
	uint64_t offset;
	uint64_t filesz;
	uint64_t memsz;
	uint64_t vaddr;
};

struct sonde_elf {
	Elf *elf;
	void *image; /* our copy for memory images, NULL for files */
	struct load *loads;
	size_t nloads;
	char build_id[2 * 64 + 1];
};

static int read_headers(struct sonde_elf *e)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *id;
	size_t i, n;
	ssize_t len;

	len = dwelf_elf_gnu_build_id(e->elf, (const void **)&id);
	/* Longer ids than anything real would overflow; treat them as none. */
	if (len > 0 && (size_t)len * 2 < sizeof(e->build_id)) {
		for (i = 0; i < (size_t)len; i++) {
			e->build_id[2 * i] = hex[id[i] >> 4];
			e->build_id[2 * i + 1] = hex[id[i] & 15];
		}
		e->build_id[2 * len] = '\0';
	}

	if (elf_getphdrnum(e->elf, &n) != 0 || n == 0)
		return 0;
	e->loads = calloc(n, sizeof(*e->loads));
	if (!e->loads)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		GElf_Phdr ph;

		if (!gelf_getphdr(e->elf, (int)i, &ph) || ph.p_type != PT_LOAD)
			continue;
		e->loads[e->nloads++] = (struct load){
			.offset = ph.p_offset,
			.filesz = ph.p_filesz,
			.memsz = ph.p_memsz,
			.vaddr = ph.p_vaddr,
		};
	}
	return 0;
}

static struct sonde_elf *finish_open(Elf *elf, void *image)
{
	struct sonde_elf *e;
	int err;

	if (elf_kind(elf) != ELF_K_ELF) {
		err = ENOEXEC;
		goto cleanup;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		err = ENOMEM;
		goto cleanup;
	}
	e->elf = elf;
	e->image = image;
	err = -read_headers(e);
	if (err) {
		sonde_elf__free(e);
		errno = err;
		return NULL;
	}
	return e;

cleanup:
	elf_end(elf);
	free(image);
	errno = err;
	return NULL;
}

struct sonde_elf *sonde_elf__open(const char *path)
{
	size_t size;
	Elf *elf;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	elf_version(EV_CURRENT);
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	/*
	 * elf_rawfile() makes the whole file present (mapped, or read when it
	 * cannot be mapped) so libelf never needs the descriptor again.
	 */
	if (!elf || elf_kind(elf) != ELF_K_ELF || !elf_rawfile(elf, &size)) {
		err = ENOEXEC;
		elf_end(elf);
		close(fd);
		errno = err;
		return NULL;
	}
	elf_cntl(elf, ELF_C_FDDONE);
	close(fd);
	return finish_open(elf, NULL);
}

struct sonde_elf *sonde_elf__open_memory(const void *image, size_t size)
{
	void *copy;
	Elf *elf;

	/* libelf may write into an image it is given; the vdso is read-only. */
	copy = malloc(size);
	if (!copy)
		return NULL;
	memcpy(copy, image, size);
	elf_version(EV_CURRENT);
	elf = elf_memory(copy, size);
	if (!elf) {
		free(copy);
		errno = ENOEXEC;
		return NULL;
	}
	return finish_open(elf, copy);
}

void sonde_elf__free(struct sonde_elf *e)
{
	if (!e)
		return;
	elf_end(e->elf);
	free(e->image);
	free(e->loads);
	free(e);
}

Elf *sonde_elf__handle(const struct sonde_elf *e)
{
	return e->elf;
}

const char *sonde_elf__build_id(const struct sonde_elf *e)
{
	return e->build_id;
}

bool sonde_elf__has_section(const struct sonde_elf *e, const char *name)
{
	Elf_Scn *scn = NULL;
	size_t shstrndx;

	if (elf_getshdrstrndx(e->elf, &shstrndx) != 0)
		return false;
	while ((scn = elf_nextscn(e->elf, scn))) {
		const char *s;
		GElf_Shdr sh;

		if (!gelf_getshdr(scn, &sh))
			continue;
		s = elf_strptr(e->elf, shstrndx, sh.sh_name);
		if (s && strcmp(s, name) == 0)
			return true;
	}
	return false;
}

const char *sonde_elf__debuglink(const struct sonde_elf *e, uint32_t *crc)
{
	GElf_Word w = 0;
	const char *link;

	link = dwelf_elf_gnu_debuglink(e->elf, &w);
	*crc = w;
	return link && *link ? link : NULL;
}

uint32_t sonde_elf__crc32(const struct sonde_elf *e)
{
	const unsigned char *p;
	uLong crc = crc32(0L, Z_NULL, 0);
	size_t size;

	p = (const unsigned char *)elf_rawfile(e->elf, &size);
	if (!p)
		return 0;
	while (size) {
		uInt n = size > (1u << 30) ? (1u << 30) : (uInt)size;

		crc = crc32(crc, p, n);
		p += n;
		size -= n;
	}
	return (uint32_t)crc;
}

int sonde_elf__offset_to_vaddr(const struct sonde_elf *e, uint64_t offset, uint64_t *vaddr)
{
	size_t i;

	for (i = 0; i < e->nloads; i++) {
		const struct load *l = &e->loads[i];

		if (offset >= l->offset && offset - l->offset < l->filesz) {
			*vaddr = offset - l->offset + l->vaddr;
			return 0;
		}
	}
	/* The zero-filled tail of the last page of a segment. */
	for (i = 0; i < e->nloads; i++) {
		const struct load *l = &e->loads[i];

		if (offset >= l->offset && offset - l->offset < l->memsz) {
			*vaddr = offset - l->offset + l->vaddr;
			return 0;
		}
	}
	return -ENOENT;
}

static int add_section(struct sonde_elf_symtab *tab, Elf *elf, Elf_Scn *scn, const GElf_Shdr *sh)
{
	Elf_Data *data = elf_getdata(scn, NULL);
	size_t i, n;

	if (!data || !sh->sh_entsize)
		return 0;
	n = sh->sh_size / sh->sh_entsize;
	for (i = 0; i < n; i++) {
		struct sonde_elf_sym *s;
		const char *name;
		GElf_Shdr target;
		Elf_Scn *tscn;
		GElf_Sym sym;
		int type, bind;

		if (!gelf_getsym(data, (int)i, &sym))
			continue;
		type = GELF_ST_TYPE(sym.st_info);
		bind = GELF_ST_BIND(sym.st_info);
		if ((type != STT_FUNC && type != STT_GNU_IFUNC) || sym.st_value == 0 ||
		    sym.st_shndx == SHN_UNDEF || sym.st_shndx >= SHN_LORESERVE)
			continue;
		name = elf_strptr(elf, sh->sh_link, sym.st_name);
		if (!name || !*name)
			continue;
		tscn = elf_getscn(elf, sym.st_shndx);
		if (!tscn || !gelf_getshdr(tscn, &target))
			continue;
		if (tab->count == tab->cap) {
			size_t cap = tab->cap ? tab->cap * 2 : 256;
			void *p = realloc(tab->syms, cap * sizeof(*tab->syms));

			if (!p)
				return -ENOMEM;
			tab->syms = p;
			tab->cap = cap;
		}
		s = &tab->syms[tab->count++];
		s->addr = sym.st_value;
		s->name = name;
		/*
		 * A sized symbol is exact; an unsized one ends at its section's
		 * end for now and at the next symbol once sorted.
		 */
		s->end = sym.st_size ? sym.st_value + sym.st_size : target.sh_addr + target.sh_size;
		s->rank = (sym.st_size ? 4 : 0) + (bind == STB_GLOBAL ? 2
						   : bind == STB_WEAK ? 1
								      : 0);
	}
	return 0;
}

int sonde_elf_symtab__add(struct sonde_elf_symtab *tab, const struct sonde_elf *e, bool dynsym)
{
	Elf_Scn *scn = NULL;
	int err;

	while ((scn = elf_nextscn(e->elf, scn))) {
		GElf_Shdr sh;

		if (!gelf_getshdr(scn, &sh))
			continue;
		if (sh.sh_type != SHT_SYMTAB && !(dynsym && sh.sh_type == SHT_DYNSYM))
			continue;
		err = add_section(tab, e->elf, scn, &sh);
		if (err)
			return err;
	}
	return 0;
}

static int cmp_sym(const void *a, const void *b)
{
	const struct sonde_elf_sym *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank > y->rank ? -1 : 1;
	/* Deterministic among equals, so two loads name an alias alike. */
	return strcmp(x->name, y->name);
}

void sonde_elf_symtab__finish(struct sonde_elf_symtab *tab)
{
	size_t i, n = 0;

	if (!tab->count)
		return;
	qsort(tab->syms, tab->count, sizeof(*tab->syms), cmp_sym);
	/* Aliases (and .symtab/.dynsym duplicates): the best ranked is first. */
	for (i = 0; i < tab->count; i++) {
		if (n && tab->syms[n - 1].addr == tab->syms[i].addr)
			continue;
		tab->syms[n++] = tab->syms[i];
	}
	tab->count = n;
	for (i = 0; i + 1 < n; i++) {
		struct sonde_elf_sym *s = &tab->syms[i];

		if (!(s->rank & 4) && s->end > tab->syms[i + 1].addr)
			s->end = tab->syms[i + 1].addr;
	}
}

const struct sonde_elf_sym *sonde_elf_symtab__find(const struct sonde_elf_symtab *tab,
						   uint64_t vaddr)
{
	size_t lo = 0, hi = tab->count;

	/* The last symbol starting at or below vaddr. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (tab->syms[mid].addr <= vaddr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!lo || vaddr >= tab->syms[lo - 1].end)
		return NULL;
	return &tab->syms[lo - 1];
}

void sonde_elf_symtab__release(struct sonde_elf_symtab *tab)
{
	free(tab->syms);
	*tab = (struct sonde_elf_symtab){0};
}
