// SPDX-License-Identifier: MIT
/*
 * A ring of entries in insertion order (puts come in time order, so the
 * oldest is always next to go) with a chained hash over it. Everything is
 * allocated once and linked by index, both ways, so a put or an eviction
 * touches a handful of cache lines: at tens of thousands of requests a
 * second the table is megabytes, and a malloc'd singly linked version
 * spent half of sonded's time walking chains to unlink the oldest entry
 * (perf, bench/red-overhead).
 */
#include "red_tags.h"

#include <errno.h>
#include <stdlib.h>

#define NONE UINT32_MAX

struct entry {
	uint64_t start, at_ns;
	const char *method, *route;
	uint32_t tgid;
	uint32_t next, prev; /* in the bucket's chain; prev NONE: the bucket's head */
};

struct red_tags {
	struct entry *ring; /* max entries, a power of two */
	uint32_t *buckets;  /* max heads, NONE: empty */
	uint32_t max, first, count; /* ring[first] is the oldest of count */
	uint64_t keep_ns;
};

static uint32_t bucket_of(const struct red_tags *t, uint32_t tgid, uint64_t start)
{
	uint64_t h = (start ^ ((uint64_t)tgid << 32)) * 0x9e3779b97f4a7c15ULL;

	return (uint32_t)(h >> 32) & (t->max - 1);
}

struct red_tags *red_tags__new(uint64_t keep_ns, uint32_t max)
{
	struct red_tags *t;
	uint32_t size = 1, i;

	if (!max || max > (1u << 24)) {
		errno = EINVAL;
		return NULL;
	}
	while (size < max)
		size <<= 1;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->ring = calloc(size, sizeof(*t->ring));
	t->buckets = malloc(size * sizeof(*t->buckets));
	if (!t->ring || !t->buckets) {
		red_tags__free(t);
		errno = ENOMEM;
		return NULL;
	}
	for (i = 0; i < size; i++)
		t->buckets[i] = NONE;
	t->max = size;
	t->keep_ns = keep_ns;
	return t;
}

void red_tags__free(struct red_tags *t)
{
	if (!t)
		return;
	free(t->ring);
	free(t->buckets);
	free(t);
}

static void unlink_entry(struct red_tags *t, uint32_t i)
{
	struct entry *e = &t->ring[i];

	if (e->prev == NONE)
		t->buckets[bucket_of(t, e->tgid, e->start)] = e->next;
	else
		t->ring[e->prev].next = e->next;
	if (e->next != NONE)
		t->ring[e->next].prev = e->prev;
}

static void drop_oldest(struct red_tags *t)
{
	unlink_entry(t, t->first);
	t->first = (t->first + 1) & (t->max - 1);
	t->count--;
}

int red_tags__put(struct red_tags *t, uint32_t tgid, uint64_t start, const char *method,
		  const char *route, uint64_t now_ns)
{
	uint32_t i, b;
	struct entry *e;

	while (t->count && (t->count == t->max || now_ns - t->ring[t->first].at_ns > t->keep_ns))
		drop_oldest(t);
	i = (t->first + t->count) & (t->max - 1);
	b = bucket_of(t, tgid, start);
	e = &t->ring[i];
	*e = (struct entry){ .start = start, .at_ns = now_ns, .method = method, .route = route,
			     .tgid = tgid, .next = t->buckets[b], .prev = NONE };
	if (e->next != NONE)
		t->ring[e->next].prev = i;
	t->buckets[b] = i;
	t->count++;
	return 0;
}

bool red_tags__get(const struct red_tags *t, uint32_t tgid, uint64_t start, const char **method,
		   const char **route)
{
	uint32_t i;

	for (i = t->buckets[bucket_of(t, tgid, start)]; i != NONE; i = t->ring[i].next) {
		const struct entry *e = &t->ring[i];

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
