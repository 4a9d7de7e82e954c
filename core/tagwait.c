// SPDX-License-Identifier: MIT
#include "tagwait.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct held {
	struct held *next;
	uint64_t since_ns;
	size_t size;
	unsigned char record[];
};

struct sonde_tagwait {
	struct held *head, **tail;
	size_t count, max;
};

struct sonde_tagwait *sonde_tagwait__new(size_t max)
{
	struct sonde_tagwait *w = calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	w->tail = &w->head;
	w->max = max;
	return w;
}

void sonde_tagwait__free(struct sonde_tagwait *w)
{
	struct held *h, *next;

	if (!w)
		return;
	for (h = w->head; h; h = next) {
		next = h->next;
		free(h);
	}
	free(w);
}

int sonde_tagwait__hold(struct sonde_tagwait *w, const void *sample, size_t size, uint64_t now_ns)
{
	struct held *h;

	if (w->count >= w->max)
		return -ENOSPC;
	h = malloc(sizeof(*h) + size);
	if (!h)
		return -ENOMEM;
	h->next = NULL;
	h->since_ns = now_ns;
	h->size = size;
	memcpy(h->record, sample, size);
	*w->tail = h;
	w->tail = &h->next;
	w->count++;
	return 0;
}

size_t sonde_tagwait__retry(struct sonde_tagwait *w, uint64_t now_ns, sonde_tagwait_fn fn,
			    void *ctx)
{
	struct held **link = &w->head, *h;
	size_t taken = 0;

	while ((h = *link)) {
		uint64_t held = now_ns > h->since_ns ? now_ns - h->since_ns : 0;

		if (!fn(ctx, h->record, h->size, held)) {
			link = &h->next;
			continue;
		}
		*link = h->next;
		if (w->tail == &h->next)
			w->tail = link;
		free(h);
		w->count--;
		taken++;
	}
	return taken;
}

size_t sonde_tagwait__count(const struct sonde_tagwait *w)
{
	return w->count;
}
