/* SPDX-License-Identifier: MIT */
/*
 * What a thread was serving, for the profiles: red.bpf.c tags a server
 * thread (the core's thread_tags) with the start time of the request it
 * read, and the samples taken meanwhile carry that tag. When the request's
 * record arrives, its method and route are remembered here under (tgid,
 * start) for a few seconds, long enough for the core to ask about the
 * samples it holds (plugin.h, sonde_plugin_tag_fn).
 *
 * Strings are not copied: the caller keeps them alive as long as the table
 * (the aggregator interns them). Not thread-safe: the core's loop thread.
 */
#ifndef SONDE_RED_TAGS_H
#define SONDE_RED_TAGS_H

#include <stdbool.h>
#include <stdint.h>

struct red_tags;

/* NULL and errno. keep_ns: how long an entry is kept; max: entries kept
 * at most (the oldest go first; rounded up to a power of two, up to
 * 2^24), all allocated here. */
struct red_tags *red_tags__new(uint64_t keep_ns, uint32_t max);
void red_tags__free(struct red_tags *t);

/* Remembers the request of tgid that started at start (56 bits of ktime, as
 * in the tag), at now_ns (CLOCK_MONOTONIC, not going back). 0. */
int red_tags__put(struct red_tags *t, uint32_t tgid, uint64_t start, const char *method,
		  const char *route, uint64_t now_ns);

/* The request's method and route, if it is remembered. */
bool red_tags__get(const struct red_tags *t, uint32_t tgid, uint64_t start, const char **method,
		   const char **route);

/* Entries kept now. */
uint32_t red_tags__count(const struct red_tags *t);

#endif /* SONDE_RED_TAGS_H */
