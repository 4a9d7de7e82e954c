/* SPDX-License-Identifier: MIT */
/*
 * Recent profile windows kept in memory, so a profile can be asked for a
 * time range that has passed (sondectl, the control socket). Bounded by
 * age and by memory: the oldest windows go first.
 *
 * Threading: loop thread only. Errors: NULL/errno, 0/-errno; no logging.
 */
#ifndef SONDE_STORE_H
#define SONDE_STORE_H

#include <stddef.h>
#include <stdint.h>

struct sonde_profile;
struct sonde_store;

/* retention_ns: how long windows are kept; max_bytes: memory cap. */
struct sonde_store *sonde_store__new(uint64_t retention_ns, size_t max_bytes);
void sonde_store__free(struct sonde_store *st);

/*
 * Keeps a closed window (sonde_profile__close() called); the store owns
 * it from now on. Windows that fall out of retention or the memory cap are
 * freed. 0 or -ENOMEM (then the window is freed too).
 */
int sonde_store__push(struct sonde_store *st, struct sonde_profile *window);

/*
 * Adds to into (through its filter) every kept window that overlaps
 * [since_ns, until_ns] (Unix nanoseconds). The number of windows merged,
 * or -ENOMEM.
 */
int sonde_store__query(const struct sonde_store *st, int64_t since_ns, int64_t until_ns,
		       struct sonde_profile *into);

size_t sonde_store__windows(const struct sonde_store *st);
size_t sonde_store__bytes(const struct sonde_store *st);
/* Start of the oldest window kept (Unix ns), 0 when empty. */
int64_t sonde_store__oldest_ns(const struct sonde_store *st);

#endif /* SONDE_STORE_H */
