// SPDX-License-Identifier: MIT
/*
 * A chained hash of entries that are also a FIFO by insertion time: puts
 * come in time order, so the oldest entries are always at the FIFO's head
 * and expiring them costs nothing per lookup.
 */
#include "red_tags.h"

#include <errno.h>
#include <stdlib.h>

#define BUCKETS 4096 /* a power of two */

struct entry {
	struct entry *chain;	/* next in the bucket */
	struct entry *next;	/* next newer */
	uint64_t start, at_ns;
	uint32_t tgid;
	const char *method, *route;
};

struct red_tags {
	struct entry *buckets[BUCKETS];
	struct entry *oldest, *newest;
	uint64_t keep_ns;
	uint32_t count, max;
};

static uint32_t bucket_of(uint32_t tgid, uint64_t start)
{
	uint64_t h = (start ^ ((uint64_t)tgid << 32)) * 0x9e3779b97f4a7c15ULL;

	return (uint32_t)(h >> 32) & (BUCKETS - 1);
}

struct red_tags *red_tags__new(uint64_t keep_ns, uint32_t max)
{
	struct red_tags *t;

	if (!max) {
		errno = EINVAL;
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->keep_ns = keep_ns;
	t->max = max;
	return t;
}

void red_tags__free(struct red_tags *t)
{
	struct entry *e, *next;

	if (!t)
		return;
	for (e = t->oldest; e; e = next) {
		next = e->next;
		free(e);
	}
	free(t);
}

/* Unlinks and frees the oldest entry (from its bucket too). */
static void drop_oldest(struct red_tags *t)
{
	struct entry *e = t->oldest, **link = &t->buckets[bucket_of(e->tgid, e->start)];

	while (*link != e)
		link = &(*link)->chain;
	*link = e->chain;
	t->oldest = e->next;
	if (!t->oldest)
		t->newest = NULL;
	t->count--;
	free(e);
}

int red_tags__put(struct red_tags *t, uint32_t tgid, uint64_t start, const char *method,
		  const char *route, uint64_t now_ns)
{
	uint32_t b = bucket_of(tgid, start);
	struct entry *e;

	while (t->oldest && (t->count >= t->max || now_ns - t->oldest->at_ns > t->keep_ns))
		drop_oldest(t);
	e = malloc(sizeof(*e));
	if (!e)
		return -ENOMEM;
	*e = (struct entry){ .chain = t->buckets[b], .start = start, .at_ns = now_ns,
			     .tgid = tgid, .method = method, .route = route };
	t->buckets[b] = e;
	if (t->newest)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
	t->count++;
	return 0;
}

bool red_tags__get(const struct red_tags *t, uint32_t tgid, uint64_t start, const char **method,
		   const char **route)
{
	const struct entry *e;

	for (e = t->buckets[bucket_of(tgid, start)]; e; e = e->chain) {
		if (e->tgid == tgid && e->start == start) {
			*method = e->method;
			*route = e->route;
			return true;
		}
	}
	return false;
}

uint32_t red_tags__count(const struct red_tags *t)
{
	return t->count;
}
