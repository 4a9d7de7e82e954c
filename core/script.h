/* SPDX-License-Identifier: MIT */
/*
 * The Lua 5.4 scripting layer. The configuration is a script; the daemon
 * keeps it loaded for its whole life (one lua_State per script) and calls it
 * back: per new process (decide whether and how to profile it, and label it),
 * per window (build and publish exports), and for the plugins' hooks (e.g.
 * rename or drop an HTTP route, once per distinct route). docs/lua.md is
 * the Lua-side reference; this header is the C side.
 *
 * A script runs in a sandbox: only the base (without dofile, loadfile, load,
 * require, collectgarbage), table, string, math and utf8 libraries, text
 * chunks only, a memory cap enforced by the allocator and an instruction
 * budget per call (main chunk and each callback) that pcall cannot swallow.
 * print and log write to the daemon log. The operator's allow_unsafe opens
 * os, io, package (require) and load/loadfile/dofile on top.
 *
 * Every error a script makes is a message "FILE:LINE: message" (one line; the
 * traceback goes to the debug log). A script that fails to load is not
 * returned; a callback that fails leaves the state usable, is counted in the
 * stats, and the daemon gets the default answer.
 *
 * One sonde_script is used by one thread at a time. Two of them share
 * nothing, so a reload loads the new script next to the old one and swaps on
 * success.
 */
#ifndef SONDE_SCRIPT_H
#define SONDE_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sonde_script;

struct sonde_script_opts {
	bool allow_unsafe; /* the operator's --unsafe-script: os, io, package, load */
	size_t memory_cap; /* bytes the Lua state may hold; 0: 32 MiB */
	long budget;	   /* VM instructions per callback and for the main chunk; 0: 10 million */
};

/* One setting of a plugin, as text: booleans "true"/"false", numbers as Lua
 * writes them ("64", "0.5"), strings as they are. */
struct sonde_script_kv {
	const char *key, *value;
};

struct sonde_script_plugin {
	const char *name;		   /* "unwind-native" */
	bool required;			   /* the daemon must not start without it */
	const struct sonde_script_kv *kvs; /* sorted by key; never "required" */
	size_t nkvs;
};

/* What the main chunk set. Unset numbers are 0, unset strings NULL. */
struct sonde_script_config {
	unsigned int hz;	 /* sampling { hz = } */
	unsigned int window_s;	 /* sampling { window = } */
	bool http_set;		 /* http {} was called ... */
	const char *http_addr;	 /* ... with this address; NULL: listen = false, no HTTP */
	const char *output_dir;	 /* output { dir = } */
	const char *export_url;	 /* export { listen = "ipc:///run/sonde/export.ipc" } */
	const char *control_url; /* control { listen = } */
	const struct sonde_script_plugin *plugins; /* in declaration order */
	size_t nplugins;
	/* unwinders { "unwind-native", ... }: for processes on_process does not
	 * decide (no callback, `return true`, a table without unwinders, a
	 * failed callback). Not called: none. */
	const char *const *default_unwinders;
	size_t ndefault_unwinders;
};

/*
 * Loads the script at path and runs its main chunk. opts may be NULL (all
 * defaults). NULL with errno set (EINVAL: the script is at fault, the reason
 * is in err as "FILE:LINE: message": syntax, runtime error, budget, memory, a
 * bad option, a missing file; ENOMEM: no Lua state could be made).
 */
struct sonde_script *sonde_script__load(const char *path, const struct sonde_script_opts *opts,
					char *err, size_t errlen);
void sonde_script__free(struct sonde_script *s);
/* Valid until sonde_script__free; the script cannot change it after loading. */
const struct sonde_script_config *sonde_script__config(const struct sonde_script *s);
const char *sonde_script__path(const struct sonde_script *s);

/* A process as on_process sees it. Strings may be NULL (nil in Lua). */
struct sonde_script_process {
	uint32_t pid, ppid;
	const char *comm, *exe, *cmdline, *cgroup, *container_id;
};

struct sonde_script_label {
	const char *key, *value;
};

#define SONDE_SCRIPT_MAX_UNWINDERS 8
#define SONDE_SCRIPT_MAX_LABELS	   16

/* Strings are valid until the next call into this script (decide, window,
 * free). */
struct sonde_script_decision {
	bool profile; /* false: the process is not profiled at all */
	const char *unwinders[SONDE_SCRIPT_MAX_UNWINDERS]; /* names, in order */
	size_t nunwinders;
	/* other plugins that watch the process (red-metrics, ...), in order */
	const char *plugins[SONDE_SCRIPT_MAX_UNWINDERS];
	size_t nplugins;
	struct sonde_script_label labels[SONDE_SCRIPT_MAX_LABELS]; /* sorted by key */
	size_t nlabels;
};

/*
 * Asks on_process about a new process. Without a callback: profile, the
 * default unwinders, no labels. 0, or -EINVAL when the callback failed (an
 * error, the budget, the memory cap, a bad return value): the message is in
 * sonde_script__last_error, the failure is counted, and *out holds the
 * default decision (profiled with the default unwinders).
 */
int sonde_script__decide(struct sonde_script *s, const struct sonde_script_process *p,
			 struct sonde_script_decision *out);

struct sonde_script_stack {
	uint64_t count;
	const struct sonde_script_label *labels;
	size_t nlabels;
	const char *const *frames; /* function names, leaf first; NULL entries read "?" */
	size_t nframes;
};

struct sonde_script_window {
	double start;	 /* seconds since the epoch */
	double duration; /* seconds */
	uint64_t samples;
	const struct sonde_script_stack *stacks;
	size_t nstacks;
};

/* Called for each publish(topic, table) of on_window, with the table as
 * msgpack. 0, or -errno (the script's publish then returns nil and the
 * error's text, it does not fail). */
typedef int (*sonde_script_publish_fn)(void *ctx, const char *topic, const void *msgpack,
				       size_t len);

/* Whether the script has an on_window callback: only then does the daemon
 * need to build a sonde_script_window. */
bool sonde_script__wants_windows(const struct sonde_script *s);

/*
 * Calls on_window(w). w and everything it points to need only live for the
 * call: the script sees w.stacks built from it on first access, and an access
 * after the call is an error. publish may be NULL (the script's publish then
 * returns nil, "publishing is off"). 0 (also without a callback), or -EINVAL
 * as for sonde_script__decide.
 */
int sonde_script__window(struct sonde_script *s, const struct sonde_script_window *w,
			 sonde_script_publish_fn publish, void *ctx);

/* The last callback failure, "FILE:LINE: message"; "" if none yet. Valid
 * until the next call into this script. */
const char *sonde_script__last_error(const struct sonde_script *s);

/*
 * Hooks: callbacks a plugin asks through the core (plugin.h, script_hook)
 * on a miss of a cache of its own, never per event. One exists:
 * "http_route", on_http_route(function(r)), given a table of string fields
 * (red-metrics gives method, route, path, service, server_address). Its
 * answer: a string, the route to use instead (at most
 * SONDE_SCRIPT_ROUTE_MAX bytes, starting with '/' or "_OTHER", no control
 * characters); false, drop the event; nil, keep.
 */
#define SONDE_SCRIPT_HOOK_KEEP	  0
#define SONDE_SCRIPT_HOOK_REPLACE 1
#define SONDE_SCRIPT_HOOK_DROP	  2
#define SONDE_SCRIPT_ROUTE_MAX	  255

/*
 * Calls the callback of hook with a table of the nfields fields (a NULL
 * value is left out: nil). SONDE_SCRIPT_HOOK_KEEP, _DROP, or _REPLACE with
 * the replacement in out (NUL-terminated; outlen must be at least
 * SONDE_SCRIPT_ROUTE_MAX + 1). -ENOENT: no such hook, or the script set no
 * callback for it (it cannot set one later: only the main chunk can);
 * -ENOBUFS: out is too small; -EFAULT: fields is NULL; -EINVAL when the callback failed (an error,
 * the budget, the memory cap, a bad return value): the message is in
 * sonde_script__last_error and the failure is counted, as for
 * sonde_script__decide; the caller keeps what it had.
 */
int sonde_script__hook(struct sonde_script *s, const char *hook,
		       const struct sonde_script_label *fields, size_t nfields, char *out,
		       size_t outlen);

/* A number no other script loaded by this process has: what a plugin that
 * caches hook answers compares to know the script was reloaded. Never 0. */
uint64_t sonde_script__generation(const struct sonde_script *s);

struct sonde_script_stats {
	uint64_t errors;	  /* failed callbacks, whatever the cause */
	uint64_t budget_overruns; /* of those, the ones the instruction budget stopped */
	uint64_t memory_overruns; /* of those, the ones during which the memory cap refused */
	uint64_t http_route_calls; /* calls of on_http_route, failed ones included */
};
void sonde_script__stats(const struct sonde_script *s, struct sonde_script_stats *out);

#endif /* SONDE_SCRIPT_H */
