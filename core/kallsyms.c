// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kallsyms.h"

/* Names are packed into large blocks: 200k small mallocs would double the size. */
#define BLOCK_SIZE (256 * 1024)

struct block {
	struct block *next;
	size_t used;
	size_t size;
	char data[];
};

struct sonde_kallsyms {
	struct sonde_ksym *syms;
	size_t count;
	size_t cap;
	struct block *blocks;
};

static const char *store(struct sonde_kallsyms *ks, const char *s, size_t len)
{
	struct block *b = ks->blocks;
	char *p;

	if (!b || b->size - b->used < len + 1) {
		size_t size = len + 1 > BLOCK_SIZE ? len + 1 : BLOCK_SIZE;

		b = malloc(sizeof(*b) + size);
		if (!b)
			return NULL;
		b->next = ks->blocks;
		b->used = 0;
		b->size = size;
		ks->blocks = b;
	}
	p = b->data + b->used;
	memcpy(p, s, len);
	p[len] = '\0';
	b->used += len + 1;
	return p;
}

static int cmp_ksym(const void *a, const void *b)
{
	const struct sonde_ksym *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* One line: "ffffffff81000000 T _stext" or "... t fn\t[mod]". */
static int parse_line(struct sonde_kallsyms *ks, char *line, const char **last_mod)
{
	char *end, *name, *mod;
	struct sonde_ksym *s;
	unsigned long long addr;
	char type;
	size_t len;

	addr = strtoull(line, &end, 16);
	if (end == line || *end != ' ')
		return 0;
	type = end[1];
	if (type != 't' && type != 'T' && type != 'w' && type != 'W')
		return 0;
	if (end[2] != ' ' || !addr)
		return 0;
	name = end + 3;
	len = strcspn(name, " \t\n");
	if (!len)
		return 0;
	mod = name + len;
	*mod++ = '\0';
	mod += strspn(mod, " \t");
	if (*mod == '[') {
		size_t mlen = strcspn(mod + 1, "]");

		mod[1 + mlen] = '\0';
		mod++;
		/* Modules' symbols come together; store each name once. */
		if (!*last_mod || strcmp(*last_mod, mod) != 0) {
			*last_mod = store(ks, mod, mlen);
			if (!*last_mod)
				return -ENOMEM;
		}
		mod = (char *)*last_mod;
	} else {
		mod = NULL;
	}
	if (ks->count == ks->cap) {
		size_t cap = ks->cap ? ks->cap * 2 : 4096;
		void *p = realloc(ks->syms, cap * sizeof(*ks->syms));

		if (!p)
			return -ENOMEM;
		ks->syms = p;
		ks->cap = cap;
	}
	s = &ks->syms[ks->count];
	s->addr = addr;
	s->module = mod;
	s->name = store(ks, name, len);
	if (!s->name)
		return -ENOMEM;
	ks->count++;
	return 0;
}

struct sonde_kallsyms *sonde_kallsyms__load(const char *path)
{
	struct sonde_kallsyms *ks = NULL;
	const char *last_mod = NULL;
	char *line = NULL;
	size_t linecap = 0;
	FILE *f;
	int err = 0;

	f = fopen(path, "re");
	if (!f)
		return NULL;
	ks = calloc(1, sizeof(*ks));
	if (!ks) {
		err = -ENOMEM;
		goto cleanup;
	}
	while (getline(&line, &linecap, f) > 0) {
		err = parse_line(ks, line, &last_mod);
		if (err)
			goto cleanup;
	}
	if (ferror(f)) {
		err = -EIO;
		goto cleanup;
	}
	if (ks->count)
		qsort(ks->syms, ks->count, sizeof(*ks->syms), cmp_ksym);

cleanup:
	free(line);
	fclose(f);
	if (err) {
		sonde_kallsyms__free(ks);
		errno = -err;
		return NULL;
	}
	return ks;
}

void sonde_kallsyms__free(struct sonde_kallsyms *ks)
{
	struct block *b, *next;

	if (!ks)
		return;
	for (b = ks->blocks; b; b = next) {
		next = b->next;
		free(b);
	}
	free(ks->syms);
	free(ks);
}

size_t sonde_kallsyms__count(const struct sonde_kallsyms *ks)
{
	return ks->count;
}

const struct sonde_ksym *sonde_kallsyms__find(const struct sonde_kallsyms *ks, uint64_t addr)
{
	size_t lo = 0, hi = ks->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ks->syms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? &ks->syms[lo - 1] : NULL;
}

int sonde_kallsyms__build_id(const char *notes_path, char *hex, size_t size)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char buf[4096];
	size_t len = 0, off = 0;
	ssize_t n;
	int fd;

	fd = open(notes_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0)
		len += (size_t)n;
	close(fd);

	/* Elf{32,64}_Nhdr are the same: three 4-byte words, then padded name and desc. */
	while (off + 12 <= len) {
		uint32_t namesz, descsz, type;
		size_t name_off, desc_off, i;

		memcpy(&namesz, buf + off, 4);
		memcpy(&descsz, buf + off + 4, 4);
		memcpy(&type, buf + off + 8, 4);
		name_off = off + 12;
		desc_off = name_off + ((namesz + 3u) & ~3u);
		if (desc_off > len || descsz > len - desc_off)
			break;
		if (type == 3 /* NT_GNU_BUILD_ID */ && namesz == 4 &&
		    memcmp(buf + name_off, "GNU", 4) == 0) {
			if (size < 2 * (size_t)descsz + 1)
				return -ENOSPC;
			for (i = 0; i < descsz; i++) {
				hex[2 * i] = digits[buf[desc_off + i] >> 4];
				hex[2 * i + 1] = digits[buf[desc_off + i] & 15];
			}
			hex[2 * descsz] = '\0';
			return 0;
		}
		off = desc_off + ((descsz + 3u) & ~3u);
	}
	return -ENOENT;
}
