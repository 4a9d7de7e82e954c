// SPDX-License-Identifier: MIT
#include "interp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "plugin.h"
#include "sonde/abi.h"
#include "symbolize.h"

#define KINDS 256

struct entry {
	uint64_t hash;
	uint64_t word, payload;
	uint32_t pid;
};

struct kind {
	struct sonde_interp *in;
	struct sonde_object *obj; /* NULL until first seen */
};

struct sonde_interp {
	struct sonde_symbolizer *sym;
	struct sonde_plugins *plugins;
	struct kind kinds[KINDS];
	struct entry *entries; /* id = index + 1 */
	uint32_t n, cap;
	uint32_t *slots; /* open addressing: entry index + 1, 0 empty */
	uint32_t mask;
};

struct sonde_interp *sonde_interp__new(struct sonde_symbolizer *sym, struct sonde_plugins *plugins)
{
	struct sonde_interp *in = calloc(1, sizeof(*in));
	int k;

	if (!in)
		return NULL;
	in->sym = sym;
	in->plugins = plugins;
	for (k = 0; k < KINDS; k++)
		in->kinds[k].in = in;
	return in;
}

void sonde_interp__free(struct sonde_interp *in)
{
	if (!in)
		return;
	free(in->entries);
	free(in->slots);
	free(in);
}

/* The symbolizer asks the plugin that owns the kind to name id. */
static int name_frame(void *ctx, uint64_t id, struct sonde_symbol_frame *out, int max)
{
	struct kind *k = ctx;
	struct sonde_interp *in = k->in;
	struct sonde_plugin_frame pf[32];
	const struct entry *e;
	int n, i;

	if (id == 0 || id > in->n)
		return 0;
	e = &in->entries[id - 1];
	n = sonde_plugins__symbolize(in->plugins, e->pid, e->word, e->payload, pf,
				     max < 32 ? max : 32);
	for (i = 0; i < n; i++)
		out[i] = (struct sonde_symbol_frame){ .function = pf[i].function,
						      .file = pf[i].file,
						      .line = pf[i].line };
	return n;
}

static int grow_index(struct sonde_interp *in)
{
	uint32_t cap = in->slots ? (in->mask + 1) * 2 : 1024, i, j;
	uint32_t *slots;

	slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (i = 0; i < in->n; i++) {
		for (j = in->entries[i].hash & (cap - 1); slots[j]; j = (j + 1) & (cap - 1))
			;
		slots[j] = i + 1;
	}
	free(in->slots);
	in->slots = slots;
	in->mask = cap - 1;
	return 0;
}

static struct sonde_object *kind_object(struct sonde_interp *in, unsigned int kind)
{
	const char *name;
	char label[64];

	if (in->kinds[kind].obj)
		return in->kinds[kind].obj;
	name = in->plugins ? sonde_plugins__frame_kind_name(in->plugins, kind) : NULL;
	if (!name)
		return NULL;
	snprintf(label, sizeof(label), "[%s]", name);
	in->kinds[kind].obj = sonde_symbolizer__external(in->sym, label, name_frame, &in->kinds[kind]);
	return in->kinds[kind].obj;
}

int sonde_interp__frame(struct sonde_interp *in, uint32_t pid, uint64_t word, uint64_t payload,
			struct sonde_object **obj, uint64_t *id)
{
	unsigned int kind = SONDE_FRAME_KIND(word);
	uint64_t h = sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(0, pid), word), payload);
	struct entry *e;
	uint32_t i;

	*obj = kind ? kind_object(in, kind) : NULL;
	if (!*obj)
		return -ENOENT;
	if ((in->n + 1) * 2 > (in->slots ? in->mask + 1 : 0) && grow_index(in))
		return -ENOMEM;
	for (i = h & in->mask; in->slots[i]; i = (i + 1) & in->mask) {
		e = &in->entries[in->slots[i] - 1];
		if (e->hash == h && e->pid == pid && e->word == word && e->payload == payload) {
			*id = in->slots[i];
			return 0;
		}
	}
	if (in->n == SONDE_INTERP_MAX_FRAMES)
		return -ENOSPC;
	if (in->n == in->cap) {
		uint32_t cap = in->cap ? in->cap * 2 : 1024;
		struct entry *entries = realloc(in->entries, (size_t)cap * sizeof(*entries));

		if (!entries)
			return -ENOMEM;
		in->entries = entries;
		in->cap = cap;
	}
	in->entries[in->n] = (struct entry){ .hash = h, .word = word, .payload = payload, .pid = pid };
	in->slots[i] = ++in->n;
	*id = in->n;
	return 0;
}

uint64_t sonde_interp__frames(const struct sonde_interp *in)
{
	return in->n;
}
