// SPDX-License-Identifier: MIT
#include "hash.h"
#include "profile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pprof.h"
#include "strbuf.h"
#include "symbolize.h"

#define MAX_INLINE 16

struct labelset {
	uint64_t hash;
	uint32_t pid;
	char *comm, *exe, *container_id;
	char *extra;       /* "key\0value\0key\0value\0": nextra pairs */
	size_t extra_len;
	uint32_t nextra;
};

struct stack {
	uint64_t hash;
	uint64_t count;
	uint32_t labels; /* index into labelsets */
	uint32_t first;  /* index into frames */
	uint32_t n;
};

/*
 * An open-addressing index of ids (stored as id + 1, 0 = empty) over an
 * array the caller owns. Power-of-two capacity, kept under 50% full.
 */
struct index {
	uint32_t *slots;
	uint32_t mask;
};

struct sonde_profile {
	uint64_t period_ns;
	uint32_t pid_filter;
	char *comm_filter;
	struct sonde_profile_label match[SONDE_PROFILE_MAX_MATCH]; /* strings owned */
	uint32_t nmatch;
	int64_t start_wall_ns;
	int64_t end_wall_ns; /* 0 while open */
	uint64_t samples;

	struct labelset *labelsets;
	uint32_t nlabelsets, labelsets_cap;
	struct index labelset_index;

	struct stack *stacks;
	uint32_t nstacks, stacks_cap;
	struct index stack_index;

	struct sonde_profile_frame *frames;
	uint32_t nframes, frames_cap;
};

static uint64_t mix_str(uint64_t h, const char *s)
{
	return sonde_hash_mix(h, s ? sonde_hash_str(s) : 0);
}

static int64_t wall_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int grow(void **array, uint32_t *cap, size_t elem, uint32_t need)
{
	uint32_t new_cap;
	void *p;

	if (need <= *cap)
		return 0;
	new_cap = *cap ? *cap : 64;
	while (new_cap < need)
		new_cap *= 2;
	p = realloc(*array, (size_t)new_cap * elem);
	if (!p)
		return -ENOMEM;
	*array = p;
	*cap = new_cap;
	return 0;
}

/* Rehashes into twice the room when count + 1 would pass half full. */
static int index_reserve(struct index *idx, uint32_t count, const void *items, size_t elem)
{
	uint32_t cap = idx->slots ? idx->mask + 1 : 0, new_cap, i, j;
	uint32_t *slots;

	if ((count + 1) * 2 <= cap)
		return 0;
	new_cap = cap ? cap * 2 : 256;
	slots = calloc(new_cap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (i = 0; i < count; i++) {
		/* every item struct starts with its 64-bit hash */
		uint64_t h = *(const uint64_t *)((const char *)items + (size_t)i * elem);

		for (j = h & (new_cap - 1); slots[j]; j = (j + 1) & (new_cap - 1))
			;
		slots[j] = i + 1;
	}
	free(idx->slots);
	idx->slots = slots;
	idx->mask = new_cap - 1;
	return 0;
}

static void free_match(struct sonde_profile *p)
{
	uint32_t i;

	for (i = 0; i < p->nmatch; i++) {
		free((char *)p->match[i].key);
		free((char *)p->match[i].value);
	}
	p->nmatch = 0;
}

struct sonde_profile *sonde_profile__new(const struct sonde_profile_opts *opts)
{
	struct sonde_profile *p;
	uint32_t i;

	if (opts->nmatch > SONDE_PROFILE_MAX_MATCH) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->period_ns = opts->period_ns;
	p->pid_filter = opts->pid;
	if (opts->comm && !(p->comm_filter = strdup(opts->comm)))
		goto nomem;
	for (i = 0; i < opts->nmatch; i++) {
		struct sonde_profile_label *m = &p->match[p->nmatch++];

		m->key = strdup(opts->match[i].key);
		m->value = strdup(opts->match[i].value);
		if (!m->key || !m->value)
			goto nomem;
	}
	p->start_wall_ns = wall_ns();
	return p;
nomem:
	free_match(p);
	free(p->comm_filter);
	free(p);
	errno = ENOMEM;
	return NULL;
}

static void free_labelsets(struct sonde_profile *p)
{
	uint32_t i;

	for (i = 0; i < p->nlabelsets; i++) {
		free(p->labelsets[i].comm);
		free(p->labelsets[i].exe);
		free(p->labelsets[i].container_id);
		free(p->labelsets[i].extra);
	}
	p->nlabelsets = 0;
}

void sonde_profile__free(struct sonde_profile *p)
{
	if (!p)
		return;
	free_labelsets(p);
	free(p->labelsets);
	free(p->labelset_index.slots);
	free(p->stacks);
	free(p->stack_index.slots);
	free(p->frames);
	free(p->comm_filter);
	free_match(p);
	free(p);
}

static bool has_label(const struct sonde_profile_labels *l, const struct sonde_profile_label *want)
{
	uint32_t i;

	for (i = 0; i < l->nextra; i++)
		if (!strcmp(l->extra[i].key, want->key) && !strcmp(l->extra[i].value, want->value))
			return true;
	return false;
}

bool sonde_profile__wants(const struct sonde_profile *p, const struct sonde_profile_labels *l)
{
	uint32_t i;

	if (p->pid_filter && l->pid != p->pid_filter)
		return false;
	if (p->comm_filter && (!l->comm || strcmp(l->comm, p->comm_filter) != 0))
		return false;
	for (i = 0; i < p->nmatch; i++)
		if (!has_label(l, &p->match[i]))
			return false;
	return true;
}

static bool str_eq(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static char *dup_or_null(const char *s, bool *failed)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		*failed = true;
	return d;
}

/* "" and NULL are the same absent label. */
static const char *present(const char *s)
{
	return s && *s ? s : NULL;
}

/* The extra labels as one blob of NUL-terminated keys and values. */
static size_t extra_blob(const struct sonde_profile_labels *l, char *buf, size_t size,
			 uint32_t *pairs)
{
	size_t len = 0, k, v;
	uint32_t i;

	for (i = 0; i < l->nextra && i < SONDE_PROFILE_MAX_EXTRA; i++, ++*pairs) {
		k = strlen(l->extra[i].key) + 1;
		v = strlen(l->extra[i].value) + 1;
		if (len + k + v > size)
			break;
		memcpy(buf + len, l->extra[i].key, k);
		memcpy(buf + len + k, l->extra[i].value, v);
		len += k + v;
	}
	return len;
}

/* The index of the label set, added if new; -1 on ENOMEM. */
static int64_t intern_labels(struct sonde_profile *p, const struct sonde_profile_labels *l)
{
	const char *comm = present(l->comm), *exe = present(l->exe);
	const char *cid = present(l->container_id);
	char blob[2048];
	uint32_t pairs = 0;
	size_t blob_len = l->nextra ? extra_blob(l, blob, sizeof(blob), &pairs) : 0;
	uint64_t h = mix_str(mix_str(mix_str(sonde_hash_mix(0, l->pid), comm), exe), cid);
	struct labelset *ls;
	bool failed = false;
	uint32_t i;

	h = sonde_hash_mix(h, blob_len ? sonde_hash_bytes(blob, blob_len) : 0);
	if (index_reserve(&p->labelset_index, p->nlabelsets, p->labelsets, sizeof(*ls)))
		return -1;
	for (i = h & p->labelset_index.mask; p->labelset_index.slots[i];
	     i = (i + 1) & p->labelset_index.mask) {
		ls = &p->labelsets[p->labelset_index.slots[i] - 1];
		if (ls->hash == h && ls->pid == l->pid && str_eq(ls->comm, comm) &&
		    str_eq(ls->exe, exe) && str_eq(ls->container_id, cid) &&
		    ls->extra_len == blob_len && memcmp(ls->extra ? ls->extra : "", blob, blob_len) == 0)
			return p->labelset_index.slots[i] - 1;
	}
	if (grow((void **)&p->labelsets, &p->labelsets_cap, sizeof(*ls), p->nlabelsets + 1))
		return -1;
	ls = &p->labelsets[p->nlabelsets];
	*ls = (struct labelset){ .hash = h, .pid = l->pid, .extra_len = blob_len, .nextra = pairs };
	ls->comm = dup_or_null(comm, &failed);
	ls->exe = dup_or_null(exe, &failed);
	ls->container_id = dup_or_null(cid, &failed);
	if (blob_len) {
		ls->extra = malloc(blob_len);
		if (ls->extra)
			memcpy(ls->extra, blob, blob_len);
		else
			failed = true;
	}
	if (failed) {
		free(ls->comm);
		free(ls->exe);
		free(ls->container_id);
		free(ls->extra);
		return -1;
	}
	p->labelset_index.slots[i] = ++p->nlabelsets;
	return p->nlabelsets - 1;
}

/* The labels of a label set, extras pointing into its blob. */
static void labels_of(const struct labelset *ls, struct sonde_profile_labels *out,
		      struct sonde_profile_label extra[SONDE_PROFILE_MAX_EXTRA])
{
	const char *p = ls->extra;
	uint32_t i;

	*out = (struct sonde_profile_labels){
		.pid = ls->pid,
		.comm = ls->comm,
		.exe = ls->exe,
		.container_id = ls->container_id,
		.extra = extra,
		.nextra = ls->nextra,
	};
	for (i = 0; i < ls->nextra; i++) {
		extra[i].key = p;
		p += strlen(p) + 1;
		extra[i].value = p;
		p += strlen(p) + 1;
	}
}

static bool frames_eq(const struct sonde_profile_frame *a, const struct sonde_profile_frame *b,
		      uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		if (a[i].obj != b[i].obj || a[i].vaddr != b[i].vaddr || a[i].flags != b[i].flags)
			return false;
	return true;
}

int sonde_profile__add(struct sonde_profile *p, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	int64_t ls = intern_labels(p, labels);
	uint64_t h;
	struct stack *s;
	uint32_t i;

	if (ls < 0)
		return -ENOMEM;
	h = sonde_hash_mix(0, (uint64_t)ls);
	for (i = 0; i < n; i++)
		h = sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(h, (uintptr_t)frames[i].obj), frames[i].vaddr), frames[i].flags);

	if (index_reserve(&p->stack_index, p->nstacks, p->stacks, sizeof(*s)))
		return -ENOMEM;
	for (i = h & p->stack_index.mask; p->stack_index.slots[i]; i = (i + 1) & p->stack_index.mask) {
		s = &p->stacks[p->stack_index.slots[i] - 1];
		if (s->hash == h && s->labels == ls && s->n == n &&
		    frames_eq(&p->frames[s->first], frames, n)) {
			s->count += count;
			p->samples += count;
			return 0;
		}
	}
	if (grow((void **)&p->stacks, &p->stacks_cap, sizeof(*s), p->nstacks + 1) ||
	    grow((void **)&p->frames, &p->frames_cap, sizeof(*frames), p->nframes + n))
		return -ENOMEM;
	s = &p->stacks[p->nstacks];
	*s = (struct stack){ .hash = h, .count = count, .labels = ls, .first = p->nframes, .n = n };
	memcpy(&p->frames[p->nframes], frames, (size_t)n * sizeof(*frames));
	p->nframes += n;
	p->stack_index.slots[i] = ++p->nstacks;
	p->samples += count;
	return 0;
}

uint64_t sonde_profile__samples(const struct sonde_profile *p)
{
	return p->samples;
}

size_t sonde_profile__bytes(const struct sonde_profile *p)
{
	return sizeof(*p) + (size_t)p->labelsets_cap * sizeof(*p->labelsets) +
	       (size_t)p->stacks_cap * sizeof(*p->stacks) +
	       (size_t)p->frames_cap * sizeof(*p->frames) +
	       ((size_t)p->stack_index.mask + 1 + p->labelset_index.mask + 1) * sizeof(uint32_t);
}

uint64_t sonde_profile__stacks(const struct sonde_profile *p)
{
	return p->nstacks;
}

void sonde_profile__reset(struct sonde_profile *p)
{
	free_labelsets(p);
	if (p->labelset_index.slots)
		memset(p->labelset_index.slots, 0,
		       ((size_t)p->labelset_index.mask + 1) * sizeof(uint32_t));
	if (p->stack_index.slots)
		memset(p->stack_index.slots, 0, ((size_t)p->stack_index.mask + 1) * sizeof(uint32_t));
	p->nstacks = 0;
	p->nframes = 0;
	p->samples = 0;
	p->start_wall_ns = wall_ns();
	p->end_wall_ns = 0;
}

int64_t sonde_profile__start_ns(const struct sonde_profile *p)
{
	return p->start_wall_ns;
}

int64_t sonde_profile__end_ns(const struct sonde_profile *p)
{
	return p->end_wall_ns ? p->end_wall_ns : wall_ns();
}

void sonde_profile__close(struct sonde_profile *p)
{
	p->end_wall_ns = wall_ns();
}

int sonde_profile__for_each_stack(const struct sonde_profile *p, sonde_profile_stack_fn fn,
				  void *ctx)
{
	struct sonde_profile_label extra[SONDE_PROFILE_MAX_EXTRA];
	struct sonde_profile_labels labels;
	uint32_t i;
	int rc;

	for (i = 0; i < p->nstacks; i++) {
		const struct stack *st = &p->stacks[i];

		labels_of(&p->labelsets[st->labels], &labels, extra);
		rc = fn(ctx, &labels, &p->frames[st->first], st->n, st->count);
		if (rc)
			return rc;
	}
	return 0;
}

static int merge_stack(void *ctx, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct sonde_profile *dst = ctx;

	if (!sonde_profile__wants(dst, labels))
		return 0;
	return sonde_profile__add(dst, labels, frames, n, count);
}

int sonde_profile__merge(struct sonde_profile *dst, const struct sonde_profile *src)
{
	return sonde_profile__for_each_stack(src, merge_stack, dst);
}

/* Encoding: distinct frames become pprof locations once each. */
struct location_cache {
	struct index index;
	struct {
		uint64_t hash;
		const struct sonde_profile_frame *frame;
		uint64_t location_id;
	} *items;
	uint32_t n, cap;
};

static const char *basename_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash && slash[1] ? slash + 1 : path;
}

int sonde_profile_frame_names(const struct sonde_profile_frame *f, struct sonde_symbol_frame *out,
			      int max, char *unnamed, size_t unnamed_len)
{
	uint64_t lookup = f->vaddr - (f->flags & SONDE_PROFILE_FRAME_RETURN ? 1 : 0);
	int n = sonde_object__symbolize(f->obj, lookup, out, max);

	if (n > 0)
		return n;
	snprintf(unnamed, unnamed_len, "%s+0x%llx", basename_of(sonde_object__name(f->obj)),
		 (unsigned long long)f->vaddr);
	out[0] = (struct sonde_symbol_frame){ .function = unnamed };
	return 1;
}

static uint64_t make_location(struct sonde_pprof *pp, const struct sonde_profile_frame *f)
{
	struct sonde_symbol_frame sym[MAX_INLINE];
	struct sonde_pprof_line lines[MAX_INLINE];
	char unnamed[320];
	uint64_t mapping;
	int n, i;

	mapping = sonde_pprof__mapping(pp, 0, UINT64_MAX, 0, sonde_object__name(f->obj),
				       sonde_object__build_id(f->obj));
	if (!mapping)
		return 0;
	n = sonde_profile_frame_names(f, sym, MAX_INLINE, unnamed, sizeof(unnamed));
	for (i = 0; i < n; i++) {
		lines[i].function_id = sonde_pprof__function(pp, sym[i].function, sym[i].file);
		lines[i].line = sym[i].line;
		if (!lines[i].function_id)
			return 0;
	}
	return sonde_pprof__location(pp, mapping, f->vaddr, lines, n);
}

static uint64_t location_of(struct location_cache *c, struct sonde_pprof *pp,
			    const struct sonde_profile_frame *f)
{
	uint64_t h = sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(0, (uintptr_t)f->obj), f->vaddr), f->flags);
	uint64_t id;
	uint32_t i;

	if (index_reserve(&c->index, c->n, c->items, sizeof(*c->items)))
		return 0;
	for (i = h & c->index.mask; c->index.slots[i]; i = (i + 1) & c->index.mask) {
		const struct sonde_profile_frame *g = c->items[c->index.slots[i] - 1].frame;

		if (g->obj == f->obj && g->vaddr == f->vaddr && g->flags == f->flags)
			return c->items[c->index.slots[i] - 1].location_id;
	}
	id = make_location(pp, f);
	if (!id || grow((void **)&c->items, &c->cap, sizeof(*c->items), c->n + 1))
		return 0;
	c->items[c->n].hash = h;
	c->items[c->n].frame = f;
	c->items[c->n].location_id = id;
	c->index.slots[i] = ++c->n;
	return id;
}

int sonde_profile__pprof(struct sonde_profile *p, uint8_t **out, size_t *len)
{
	struct sonde_pprof_opts opts = {
		.period_ns = (int64_t)p->period_ns,
		.time_ns = p->start_wall_ns,
		.duration_ns = sonde_profile__end_ns(p) - p->start_wall_ns,
	};
	struct location_cache cache = { 0 };
	struct sonde_pprof *pp;
	uint64_t *ids = NULL;
	uint32_t max_n = 0, i, j;
	int err = -ENOMEM;

	pp = sonde_pprof__new(&opts);
	if (!pp)
		return -errno;
	for (i = 0; i < p->nstacks; i++)
		if (p->stacks[i].n > max_n)
			max_n = p->stacks[i].n;
	ids = calloc(max_n ? max_n : 1, sizeof(*ids));
	if (!ids)
		goto cleanup;
	for (i = 0; i < p->nstacks; i++) {
		const struct stack *s = &p->stacks[i];
		const struct labelset *ls = &p->labelsets[s->labels];
		struct sonde_pprof_label labels[4 + SONDE_PROFILE_MAX_EXTRA];
		struct sonde_profile_label extra[SONDE_PROFILE_MAX_EXTRA];
		struct sonde_profile_labels all;
		size_t nl = 0, k;

		for (j = 0; j < s->n; j++) {
			ids[j] = location_of(&cache, pp, &p->frames[s->first + j]);
			if (!ids[j]) {
				err = -ENOMEM;
				goto cleanup;
			}
		}
		labels[nl++] = (struct sonde_pprof_label){ .key = "pid", .num = ls->pid };
		if (ls->comm)
			labels[nl++] = (struct sonde_pprof_label){ .key = "comm", .str = ls->comm };
		if (ls->exe)
			labels[nl++] = (struct sonde_pprof_label){ .key = "exe", .str = ls->exe };
		if (ls->container_id)
			labels[nl++] = (struct sonde_pprof_label){ .key = "container_id",
								   .str = ls->container_id };
		labels_of(ls, &all, extra);
		for (k = 0; k < all.nextra; k++)
			labels[nl++] = (struct sonde_pprof_label){ .key = extra[k].key,
								   .str = extra[k].value };
		err = sonde_pprof__sample(pp, ids, s->n, (int64_t)s->count, labels, nl);
		if (err)
			goto cleanup;
	}
	err = sonde_pprof__encode(pp, out, len);
cleanup:
	free(ids);
	free(cache.items);
	free(cache.index.slots);
	sonde_pprof__free(pp);
	return err;
}

/*
 * Folded lines: distinct stacks often name the same functions (addresses
 * differ within a function), so lines are merged by their text before they
 * are written.
 */
struct folded_line {
	uint64_t hash;
	size_t off, len; /* in text */
	uint64_t count;
};

struct folded_ctx {
	struct sonde_strbuf text; /* every distinct line, back to back */
	struct folded_line *lines;
	uint32_t n, cap;
	struct index index;
	char unnamed[320];
};

static int fold_line(struct folded_ctx *fc, size_t off, uint64_t count)
{
	size_t len = fc->text.len - off;
	uint64_t h = sonde_hash_bytes(fc->text.data + off, len);
	uint32_t i;

	if (index_reserve(&fc->index, fc->n, fc->lines, sizeof(*fc->lines)))
		return -ENOMEM;
	for (i = h & fc->index.mask; fc->index.slots[i]; i = (i + 1) & fc->index.mask) {
		struct folded_line *l = &fc->lines[fc->index.slots[i] - 1];

		if (l->hash == h && l->len == len &&
		    memcmp(fc->text.data + l->off, fc->text.data + off, len) == 0) {
			l->count += count;
			fc->text.len = off; /* forget the duplicate */
			return 0;
		}
	}
	if (grow((void **)&fc->lines, &fc->cap, sizeof(*fc->lines), fc->n + 1))
		return -ENOMEM;
	fc->lines[fc->n] = (struct folded_line){ .hash = h, .off = off, .len = len, .count = count };
	fc->index.slots[i] = ++fc->n;
	return 0;
}

static int fold_stack(void *ctx, const struct sonde_profile_labels *labels,
		      const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct folded_ctx *fc = ctx;
	struct sonde_symbol_frame sym[MAX_INLINE];
	size_t off = fc->text.len;
	uint32_t i;
	int j, k;

	sonde_strbuf__puts(&fc->text, labels->comm ? labels->comm : "[unknown]");
	/* root first: walk the stack from its outermost frame */
	for (i = n; i-- > 0;) {
		bool kernel = sonde_object__is_kernel(frames[i].obj);

		k = sonde_profile_frame_names(&frames[i], sym, MAX_INLINE, fc->unnamed,
					      sizeof(fc->unnamed));
		for (j = k; j-- > 0;) /* the containing function, then what it inlined */
			sonde_strbuf__printf(&fc->text, ";%s%s", sym[j].function,
					     kernel ? "_[k]" : "");
	}
	if (sonde_strbuf__error(&fc->text))
		return -ENOMEM;
	return fold_line(fc, off, count);
}

int sonde_profile__folded(const struct sonde_profile *p, struct sonde_strbuf *out)
{
	struct folded_ctx fc = { .text = SONDE_STRBUF_INIT };
	uint32_t i;
	int err;

	err = sonde_profile__for_each_stack(p, fold_stack, &fc);
	for (i = 0; !err && i < fc.n; i++) {
		sonde_strbuf__append(out, fc.text.data + fc.lines[i].off, fc.lines[i].len);
		sonde_strbuf__printf(out, " %llu\n", (unsigned long long)fc.lines[i].count);
	}
	if (!err)
		err = sonde_strbuf__error(out);
	sonde_strbuf__release(&fc.text);
	free(fc.lines);
	free(fc.index.slots);
	return err;
}
