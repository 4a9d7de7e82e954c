/* SPDX-License-Identifier: MIT */
/*
 * Samples held until the plugin that tagged their thread can name the tag
 * (an HTTP request's route is known only once its record arrives, after
 * the samples taken while it was served). A FIFO of copied sample records,
 * bounded in count; the daemon retries the held ones after every drain and
 * lets each go, labeled or not, after a deadline.
 *
 * Threading: loop thread only. Errors: NULL/errno, 0/-errno; no logging.
 */
#ifndef SONDE_TAGWAIT_H
#define SONDE_TAGWAIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sonde_tagwait;

/* NULL and errno. max: samples held at most. */
struct sonde_tagwait *sonde_tagwait__new(size_t max);
void sonde_tagwait__free(struct sonde_tagwait *w);

/* Holds a copy of the size bytes of the record at sample, from now_ns
 * (CLOCK_MONOTONIC). 0, -ENOSPC when max are held, -ENOMEM. */
int sonde_tagwait__hold(struct sonde_tagwait *w, const void *sample, size_t size, uint64_t now_ns);

/*
 * Offers every held sample to fn, oldest first, with the time it has been
 * held; fn returns true when it took the sample (then it is freed), false
 * to keep holding it. Returns how many fn took.
 */
typedef bool (*sonde_tagwait_fn)(void *ctx, const void *sample, size_t size, uint64_t held_ns);
size_t sonde_tagwait__retry(struct sonde_tagwait *w, uint64_t now_ns, sonde_tagwait_fn fn,
			    void *ctx);

/* Samples held now. */
size_t sonde_tagwait__count(const struct sonde_tagwait *w);

#endif /* SONDE_TAGWAIT_H */
