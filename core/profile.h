/* SPDX-License-Identifier: MIT */
/*
 * A profile: CPU samples aggregated as interned stacks with counts per
 * label set, turned into pprof on demand. The daemon keeps one per window
 * and one per pending /debug/pprof/profile request; each resolved sample
 * is added to all of them that match.
 *
 * Frames are (object, vaddr) pairs, so adding costs no symbol lookup;
 * names are looked up once per distinct frame at encode time, through the
 * symbolizer's caches. A frame no symbol covers is named "module+0xoffset".
 *
 * Threading: loop thread only. Errors: NULL/errno, 0/-errno; no logging.
 */
#ifndef SONDE_PROFILE_H
#define SONDE_PROFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sonde_object;
struct sonde_profile;

/* Frame flags. */
#define SONDE_PROFILE_FRAME_RETURN 1U /* a return address: named at vaddr - 1 */

struct sonde_profile_frame {
	struct sonde_object *obj;
	uint64_t vaddr;
	uint32_t flags;
};

/* Strings are copied by sonde_profile__add(). NULL means absent. */
struct sonde_profile_labels {
	uint32_t pid;
	const char *comm;
	const char *exe;
	const char *container_id;
};

struct sonde_profile_opts {
	uint64_t period_ns;     /* CPU time one sample stands for: 1e9 / Hz */
	uint32_t pid;           /* keep only this process (0: all) */
	const char *comm;       /* keep only this comm (NULL: all) */
};

/* NULL and errno. Starts now (wall clock). */
struct sonde_profile *sonde_profile__new(const struct sonde_profile_opts *opts);
void sonde_profile__free(struct sonde_profile *p);

/* Whether samples with these labels belong in p (its filter). */
bool sonde_profile__wants(const struct sonde_profile *p, const struct sonde_profile_labels *l);

/* Adds count samples of the stack frames[0..n) (leaf first). 0 or -ENOMEM. */
int sonde_profile__add(struct sonde_profile *p, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count);

/* Samples added since the start. */
uint64_t sonde_profile__samples(const struct sonde_profile *p);
/* Distinct stacks (per label set). */
uint64_t sonde_profile__stacks(const struct sonde_profile *p);

/* Gzip'd pprof of everything added; *out malloc'd. duration ends now. */
int sonde_profile__pprof(struct sonde_profile *p, uint8_t **out, size_t *len);

/* Forgets every sample and restarts the clock; keeps the memory. */
void sonde_profile__reset(struct sonde_profile *p);

#endif /* SONDE_PROFILE_H */
