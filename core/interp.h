/* SPDX-License-Identifier: MIT */
/*
 * Interpreter frames in samples (SONDE_FRAME_KIND != 0, two words: the
 * kind with 56 bits of aux, then a payload) become profile frames: one
 * symbolizer object per kind, named "[<kind name>]" after the plugin's
 * registration (so pprof readers see which frames are Python or Java), and
 * an id per distinct (pid, word, payload) that the owning plugin names
 * when a profile is encoded.
 *
 * Ids are never reused; the table is capped (SONDE_INTERP_MAX_FRAMES) and
 * frames beyond the cap are counted and kept unnamed.
 * Threading: loop thread only.
 */
#ifndef SONDE_INTERP_H
#define SONDE_INTERP_H

#include <stdint.h>

struct sonde_object;
struct sonde_plugins;
struct sonde_symbolizer;
struct sonde_interp;

#define SONDE_INTERP_MAX_FRAMES (1u << 20)

struct sonde_interp *sonde_interp__new(struct sonde_symbolizer *sym, struct sonde_plugins *plugins);
void sonde_interp__free(struct sonde_interp *in);

/*
 * The object and id of an interpreter frame of pid. 0, -ENOENT when no
 * plugin registered that kind, -ENOSPC past the cap, -ENOMEM.
 */
int sonde_interp__frame(struct sonde_interp *in, uint32_t pid, uint64_t word, uint64_t payload,
			struct sonde_object **obj, uint64_t *id);

uint64_t sonde_interp__frames(const struct sonde_interp *in);

#endif /* SONDE_INTERP_H */
