// SPDX-License-Identifier: MIT
#include "plugin_util.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct plugin_string {
	struct plugin_string *next;
	char s[];
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return h;
}

const char *plugin_strings_intern(struct plugin_strings *ps, const char *s)
{
	struct plugin_string **head = &ps->buckets[hash_str(s) % PLUGIN_STRINGS_BUCKETS], *e;
	size_t len = strlen(s);

	for (e = *head; e; e = e->next)
		if (strcmp(e->s, s) == 0)
			return e->s;
	e = malloc(sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	memcpy(e->s, s, len + 1);
	e->next = *head;
	*head = e;
	return e->s;
}

void plugin_strings_release(struct plugin_strings *ps)
{
	struct plugin_string *e;
	size_t b;

	for (b = 0; b < PLUGIN_STRINGS_BUCKETS; b++) {
		while ((e = ps->buckets[b])) {
			ps->buckets[b] = e->next;
			free(e);
		}
	}
}

int plugin_reuse_core_maps(const struct sonde_host_api *api, struct sonde_host *host,
			   struct bpf_object *obj)
{
	static const char *const shared[] = {
		"scratch", "stats", "events", "unwinders", "handover", "unwind_state",
	};
	struct bpf_map *map;
	size_t i;
	int fd, err;

	for (i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
		map = bpf_object__find_map_by_name(obj, shared[i]);
		if (!map)
			continue;
		fd = api->map_fd(host, shared[i]);
		if (fd < 0)
			return fd;
		err = bpf_map__reuse_fd(map, fd);
		if (err)
			return err;
	}
	return 0;
}

/* The first 4 bytes of sym's data, where the file holds them. */
static void read_value(Elf *elf, const GElf_Sym *sym, struct plugin_dynsym *w)
{
	Elf_Scn *scn = elf_getscn(elf, sym->st_shndx);
	Elf_Data *d = scn ? elf_getdata(scn, NULL) : NULL;
	GElf_Shdr sh;

	if (!d || !d->d_buf || !gelf_getshdr(scn, &sh) || sh.sh_type == SHT_NOBITS)
		return;
	if (sym->st_value < sh.sh_addr || sym->st_value + 4 > sh.sh_addr + d->d_size)
		return;
	memcpy(&w->value, (const char *)d->d_buf + (sym->st_value - sh.sh_addr), 4);
	w->has_value = true;
	w->words[0] = w->value;
	w->nwords = 1;
	while (w->nwords < 3 && sym->st_value + 4 * (w->nwords + 1) <= sh.sh_addr + d->d_size) {
		memcpy(&w->words[w->nwords],
		       (const char *)d->d_buf + (sym->st_value - sh.sh_addr) + 4 * w->nwords, 4);
		w->nwords++;
	}
}

int plugin_elf_dynsyms(const char *file, struct plugin_dynsym *want, size_t n,
		       uint64_t *base_vaddr)
{
	Elf *elf = NULL;
	Elf_Scn *scn = NULL;
	GElf_Shdr sh;
	size_t i, k, nph;
	int fd, ret = -ENOENT;

	for (k = 0; k < n; k++) {
		want[k].addr = 0;
		want[k].has_value = false;
		want[k].nwords = 0;
	}
	*base_vaddr = 0;
	elf_version(EV_CURRENT);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	elf = elf_begin(fd, ELF_C_READ, NULL);
	if (!elf || elf_getphdrnum(elf, &nph))
		goto cleanup;
	for (i = 0; i < nph; i++) {
		GElf_Phdr ph;

		if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_LOAD) {
			*base_vaddr = ph.p_vaddr - ph.p_offset;
			break;
		}
	}
	while ((scn = elf_nextscn(elf, scn))) {
		Elf_Data *d;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_DYNSYM || !sh.sh_entsize)
			continue;
		d = elf_getdata(scn, NULL);
		for (i = 0; d && i < sh.sh_size / sh.sh_entsize; i++) {
			GElf_Sym sym;
			const char *name;

			if (!gelf_getsym(d, (int)i, &sym) || sym.st_shndx == SHN_UNDEF)
				continue;
			name = elf_strptr(elf, sh.sh_link, sym.st_name);
			for (k = 0; name && k < n; k++) {
				if (strcmp(name, want[k].name) != 0)
					continue;
				want[k].addr = sym.st_value;
				want[k].size = sym.st_size;
				read_value(elf, &sym, &want[k]);
			}
		}
		ret = 0;
	}
cleanup:
	elf_end(elf);
	close(fd);
	return ret;
}

int plugin_percpu_sums(int map_fd, uint32_t nkeys, uint64_t *out)
{
	int ncpu = libbpf_num_possible_cpus(), c;
	uint64_t *vals;
	uint32_t key;

	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return -ENOMEM;
	for (key = 0; key < nkeys; key++) {
		out[key] = 0;
		if (bpf_map_lookup_elem(map_fd, &key, vals))
			continue;
		for (c = 0; c < ncpu; c++)
			out[key] += vals[c];
	}
	free(vals);
	return 0;
}
