/* SPDX-License-Identifier: MIT */
/*
 * What leaves sonded at the end of a window and when processes come and
 * go: the export topics "profile" and "proc" (docs/export.md), and the
 * window handed to the script's on_window callback, whose publish() calls
 * go out on the same socket. Frames are named here, through the
 * symbolizer's caches.
 *
 * Threading: loop thread only. Errors: 0/-errno; the caller logs.
 */
#ifndef SONDE_PUBLISH_H
#define SONDE_PUBLISH_H

#include <stdbool.h>
#include <stdint.h>

struct sonde_export;
struct sonde_policy_entry;
struct sonde_proc;
struct sonde_profile;
struct sonde_script;
struct sonde_publisher;

/* ex may be NULL (no export socket): then only the script is served. */
struct sonde_publisher *sonde_publisher__new(struct sonde_export *ex);
void sonde_publisher__free(struct sonde_publisher *pub);

/*
 * A finished window: the "profile" message, then the script's on_window
 * (when script wants windows). A script failure is counted by the script
 * module and returned as -EINVAL after the export went out.
 */
int sonde_publisher__window(struct sonde_publisher *pub, const struct sonde_profile *window,
			    uint64_t period_ns, struct sonde_script *script);

/* A "proc" message: start (exit_ns == 0) or exit. pe may be NULL. */
int sonde_publisher__proc(struct sonde_publisher *pub, const struct sonde_proc *proc,
			  const struct sonde_policy_entry *pe, bool exited);

#endif /* SONDE_PUBLISH_H */
