/* SPDX-License-Identifier: MIT */
/*
 * A pprof (profile.proto) builder and encoder: gzip'd protobuf as
 * `go tool pprof`, Pyroscope and Parca read it. Callers add mappings,
 * functions and locations (each returns its pprof id, 1-based, interned so
 * that adding the same thing twice returns the same id), then samples, then
 * encode. The string table is built here.
 *
 * Every profile carries two sample types, samples/count and cpu/nanoseconds,
 * and the period type cpu/nanoseconds.
 *
 * Threading: one thread at a time. Errors: 0 or -errno; ids are 0 on error
 * (ENOMEM). This module does not log.
 */
#ifndef SONDE_PPROF_H
#define SONDE_PPROF_H

#include <stddef.h>
#include <stdint.h>

struct sonde_pprof;

struct sonde_pprof_opts {
	int64_t period_ns;   /* one sample stands for this much CPU time */
	int64_t time_ns;     /* start, Unix epoch nanoseconds */
	int64_t duration_ns;
};

/* NULL and errno on failure. */
struct sonde_pprof *sonde_pprof__new(const struct sonde_pprof_opts *opts);
void sonde_pprof__free(struct sonde_pprof *p);

/* Interned on all fields. build_id may be "" or NULL. */
uint64_t sonde_pprof__mapping(struct sonde_pprof *p, uint64_t start, uint64_t limit,
			      uint64_t file_offset, const char *filename, const char *build_id);

/* Interned on (name, filename). filename may be NULL. */
uint64_t sonde_pprof__function(struct sonde_pprof *p, const char *name, const char *filename);

struct sonde_pprof_line {
	uint64_t function_id;
	int64_t line; /* 0 when unknown */
};

/*
 * A location. lines[] innermost inlined function first, the function that
 * contains address last (pprof's order). nlines may be 0 for an unnamed
 * address. Interned on (mapping_id, address); the lines of the first call
 * win.
 */
uint64_t sonde_pprof__location(struct sonde_pprof *p, uint64_t mapping_id, uint64_t address,
			       const struct sonde_pprof_line *lines, size_t nlines);

/* A label: a string value (str != NULL) or a number (str == NULL). */
struct sonde_pprof_label {
	const char *key;
	const char *str;
	int64_t num;
};

/*
 * One sample: location ids leaf first, count samples (the cpu/nanoseconds
 * value is count * period). Samples are not merged here; the caller
 * aggregates.
 */
int sonde_pprof__sample(struct sonde_pprof *p, const uint64_t *location_ids, size_t nlocations,
			int64_t count, const struct sonde_pprof_label *labels, size_t nlabels);

/* Adds a comment string to the profile (shown by `pprof -comments`). */
int sonde_pprof__comment(struct sonde_pprof *p, const char *comment);

/*
 * The gzip'd protobuf. *out is malloc'd, the caller frees it. The builder
 * stays usable (encode again after more samples).
 */
int sonde_pprof__encode(struct sonde_pprof *p, uint8_t **out, size_t *len);

#endif /* SONDE_PPROF_H */
