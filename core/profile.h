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

/* An extra label (from the script), on top of the process's own. */
struct sonde_profile_label {
	const char *key;
	const char *value;
};

#define SONDE_PROFILE_MAX_EXTRA 16

/* Strings are copied by sonde_profile__add(). NULL means absent. */
struct sonde_profile_labels {
	uint32_t pid;
	const char *comm;
	const char *exe;
	const char *container_id;
	const struct sonde_profile_label *extra; /* at most SONDE_PROFILE_MAX_EXTRA */
	uint32_t nextra;
};

#define SONDE_PROFILE_MAX_MATCH 4

struct sonde_profile_opts {
	uint64_t period_ns;     /* CPU time one sample stands for: 1e9 / Hz */
	uint32_t pid;           /* keep only this process (0: all) */
	const char *comm;       /* keep only this comm (NULL: all) */
	/* keep only samples with each of these extra labels, value equal */
	const struct sonde_profile_label *match; /* at most SONDE_PROFILE_MAX_MATCH */
	uint32_t nmatch;
};

/* NULL and errno (EINVAL: too many matches). Starts now (wall clock). */
struct sonde_profile *sonde_profile__new(const struct sonde_profile_opts *opts);
void sonde_profile__free(struct sonde_profile *p);

/* Whether samples with these labels belong in p (its filter). */
bool sonde_profile__wants(const struct sonde_profile *p, const struct sonde_profile_labels *l);

/* Adds count samples of the stack frames[0..n) (leaf first). 0 or -ENOMEM. */
int sonde_profile__add(struct sonde_profile *p, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count);

/*
 * Calls fn for every stack with its labels (valid during the call) and
 * count; stops early and returns what fn returned if that is not 0.
 */
typedef int (*sonde_profile_stack_fn)(void *ctx, const struct sonde_profile_labels *labels,
				      const struct sonde_profile_frame *frames, uint32_t n,
				      uint64_t count);
int sonde_profile__for_each_stack(const struct sonde_profile *p, sonde_profile_stack_fn fn,
				  void *ctx);

/* Adds every stack of src that dst wants (its filter) to dst. 0 or -ENOMEM. */
int sonde_profile__merge(struct sonde_profile *dst, const struct sonde_profile *src);

/*
 * Names frame f: at most max names, innermost inlined function first (see
 * sonde_object__symbolize). When no symbol covers it, one name,
 * "module+0xoffset", written into unnamed. Returns how many (>= 1).
 */
struct sonde_symbol_frame;
int sonde_profile_frame_names(const struct sonde_profile_frame *f, struct sonde_symbol_frame *out,
			      int max, char *unnamed, size_t unnamed_len);

/*
 * Brendan Gregg's folded stacks: one line per stack and process, "comm;
 * root;...;leaf count", kernel functions marked "_[k]" as bcc does. For
 * flamegraph.pl and speedscope. 0 or -ENOMEM.
 */
struct sonde_strbuf;
int sonde_profile__folded(const struct sonde_profile *p, struct sonde_strbuf *out);

/* Wall-clock span covered: from the start (or last reset) to the last
 * sonde_profile__close() (or now, while open). Unix nanoseconds. */
int64_t sonde_profile__start_ns(const struct sonde_profile *p);
int64_t sonde_profile__end_ns(const struct sonde_profile *p);
/* Marks the end of the span now (a finished window). */
void sonde_profile__close(struct sonde_profile *p);

/* Memory the profile holds, roughly (for the store's cap). */
size_t sonde_profile__bytes(const struct sonde_profile *p);

/* Samples added since the start. */
uint64_t sonde_profile__samples(const struct sonde_profile *p);
/* Distinct stacks (per label set). */
uint64_t sonde_profile__stacks(const struct sonde_profile *p);

/* Gzip'd pprof of everything added; *out malloc'd. duration ends now. */
int sonde_profile__pprof(struct sonde_profile *p, uint8_t **out, size_t *len);

/* Forgets every sample and restarts the clock; keeps the memory. */
void sonde_profile__reset(struct sonde_profile *p);

#endif /* SONDE_PROFILE_H */
