// SPDX-License-Identifier: MIT
#include "store.h"

#include <errno.h>
#include <stdlib.h>

#include "profile.h"

struct window {
	struct sonde_profile *profile;
	size_t bytes;
};

/* A FIFO of windows, oldest first. */
struct sonde_store {
	uint64_t retention_ns;
	size_t max_bytes;
	size_t bytes;
	struct window *windows;
	size_t n, cap;
};

struct sonde_store *sonde_store__new(uint64_t retention_ns, size_t max_bytes)
{
	struct sonde_store *st = calloc(1, sizeof(*st));

	if (!st)
		return NULL;
	st->retention_ns = retention_ns;
	st->max_bytes = max_bytes;
	return st;
}

void sonde_store__free(struct sonde_store *st)
{
	size_t i;

	if (!st)
		return;
	for (i = 0; i < st->n; i++)
		sonde_profile__free(st->windows[i].profile);
	free(st->windows);
	free(st);
}

static void drop_oldest(struct sonde_store *st)
{
	size_t i;

	st->bytes -= st->windows[0].bytes;
	sonde_profile__free(st->windows[0].profile);
	for (i = 1; i < st->n; i++)
		st->windows[i - 1] = st->windows[i];
	st->n--;
}

int sonde_store__push(struct sonde_store *st, struct sonde_profile *window)
{
	int64_t horizon = sonde_profile__end_ns(window) - (int64_t)st->retention_ns;

	if (st->n == st->cap) {
		size_t cap = st->cap ? st->cap * 2 : 16;
		struct window *w = realloc(st->windows, cap * sizeof(*w));

		if (!w) {
			sonde_profile__free(window);
			return -ENOMEM;
		}
		st->windows = w;
		st->cap = cap;
	}
	st->windows[st->n].profile = window;
	st->windows[st->n].bytes = sonde_profile__bytes(window);
	st->bytes += st->windows[st->n].bytes;
	st->n++;
	/* The newest window always stays, even alone over the cap. */
	while (st->n > 1 && (st->bytes > st->max_bytes ||
			     sonde_profile__end_ns(st->windows[0].profile) < horizon))
		drop_oldest(st);
	return 0;
}

int sonde_store__query(const struct sonde_store *st, int64_t since_ns, int64_t until_ns,
		       struct sonde_profile *into)
{
	int merged = 0, err;
	size_t i;

	for (i = 0; i < st->n; i++) {
		const struct sonde_profile *w = st->windows[i].profile;

		if (sonde_profile__end_ns(w) < since_ns || sonde_profile__start_ns(w) > until_ns)
			continue;
		err = sonde_profile__merge(into, w);
		if (err)
			return err;
		merged++;
	}
	return merged;
}

size_t sonde_store__windows(const struct sonde_store *st)
{
	return st->n;
}

size_t sonde_store__bytes(const struct sonde_store *st)
{
	return st->bytes;
}

int64_t sonde_store__oldest_ns(const struct sonde_store *st)
{
	return st->n ? sonde_profile__start_ns(st->windows[0].profile) : 0;
}
