/* SPDX-License-Identifier: MIT */
/*
 * The sonde plugin ABI: what a plugin (a shared object loaded with dlopen)
 * exports, and the services the core hands it. This is the one header a
 * plugin author needs; plugins never link against sonded's own symbols.
 *
 * A plugin exports one symbol, SONDE_PLUGIN_SYMBOL, a const struct
 * sonde_plugin. The core checks its magic, that its ABI major equals the
 * core's and its minor is not newer, and its size; it refuses a plugin
 * otherwise, naming the file and both versions.
 *
 * Structs here only grow at their end; each carries its size, so a plugin
 * built against an older minor keeps working. The two that travel as arrays,
 * struct sonde_plugin_setting and struct sonde_plugin_frame, carry no size
 * and cannot grow without a new major.
 *
 * Threading: every callback runs on the core's loop thread, never in the
 * sampling path, and must not block (hand slow work to a thread of the
 * plugin's own and come back through watch_fd).
 */
#ifndef SONDE_PLUGIN_H
#define SONDE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define SONDE_PLUGIN_MAGIC 0x736f6e64u /* "sond" */
#define SONDE_PLUGIN_ABI_MAJOR 1
#define SONDE_PLUGIN_ABI_MINOR 6
#define SONDE_PLUGIN_SYMBOL "sonde_plugin"

struct sonde_host; /* the core, opaque to plugins */

enum sonde_plugin_log_level {
	SONDE_PLUGIN_LOG_ERROR = 0,
	SONDE_PLUGIN_LOG_WARN,
	SONDE_PLUGIN_LOG_INFO,
	SONDE_PLUGIN_LOG_DEBUG,
};

/* What the core knows of a process when it offers it to a plugin. Strings
 * may be NULL; they live until the call returns. */
struct sonde_plugin_process {
	uint32_t size; /* sizeof(struct sonde_plugin_process) of the core */
	uint32_t pid;
	const char *comm;
	const char *exe;
	const char *cmdline;
	const char *cgroup;
	const char *container_id;
};

/*
 * Names a frame of a kind the plugin registered: fills at most max frames
 * (innermost first, as struct sonde_plugin_frame) and returns how many, 0
 * when it cannot name it (the core then shows "kind+0xpayload"). word is the
 * frame's first word (kind in the top byte, 56 bits of aux below), payload
 * its second.
 */
struct sonde_plugin_frame {
	const char *function; /* owned by the plugin, valid until its fini() */
	const char *file;     /* or NULL */
	uint32_t line;
};
typedef int (*sonde_plugin_symbolize_fn)(void *state, uint32_t pid, uint64_t word,
					 uint64_t payload, struct sonde_plugin_frame *frames,
					 int max);

/*
 * Labels for the samples of a thread the plugin tagged (ABI 1.3; abi.h,
 * SONDE_TAG_*): fills at most max labels and returns how many; 0 when the
 * plugin does not know the tag yet (the core holds the sample and asks
 * again, for up to a few seconds); -ENOENT when it never will (the sample
 * then goes without). Keys and values are owned by the plugin and valid
 * until its fini(); keys look like Prometheus label names ("http_route").
 */
struct sonde_plugin_label {
	const char *key;
	const char *value;
};
typedef int (*sonde_plugin_tag_fn)(void *state, uint32_t pid, uint64_t tag,
				   struct sonde_plugin_label *labels, int max);

/* What script_hook (ABI 1.5) answers when the script's callback ran. */
#define SONDE_HOOK_KEEP	   0 /* keep what the plugin had (the callback returned nil) */
#define SONDE_HOOK_REPLACE 1 /* out holds the replacement */
#define SONDE_HOOK_DROP	   2 /* drop the event (the callback returned false) */
#define SONDE_HOOK_OUT_MIN 256 /* bytes out must have: a replacement is at most 255 */

/* The services of the core; the table lives as long as the plugin. */
struct sonde_host_api {
	uint32_t size; /* sizeof(struct sonde_host_api) of the core */
	uint32_t abi_major;
	uint32_t abi_minor;

	/* One line in the daemon's log, prefixed with the plugin's name. */
	void (*log)(struct sonde_host *host, enum sonde_plugin_log_level level, const char *fmt, ...)
		__attribute__((format(printf, 3, 4)));

	/*
	 * The fd of one of the core's shared BPF maps, for
	 * bpf_map__reuse_fd() before the plugin loads its object: "events"
	 * (ringbuf), "stats", "scratch" (the per-CPU sample being built),
	 * "procs" (pid -> first unwinder), "unwinders" (PROG_ARRAY),
	 * "thread_tags" and "thread_tags_ended" (bpf/thread_tags.bpf.h;
	 * ABI 1.6: task storage and its LRU of tags ended by another
	 * thread; from 1.3 to 1.5 thread_tags was a tid -> tag hash),
	 * "handover" and "unwind_state" (the interpreter hand-over,
	 * abi.h and bpf/sample.bpf.h; ABI 1.4).
	 * -ENOENT for another name.
	 */
	int (*map_fd)(struct sonde_host *host, const char *name);

	/*
	 * Puts prog_fd (a perf_event program) in a free slot of the
	 * unwinders PROG_ARRAY, for the sampler to tail-call. Returns the
	 * slot (>= 1; 0 is the core's frame-pointer walker) or -errno
	 * (-ENOSPC when every slot is taken).
	 */
	int (*register_unwinder)(struct sonde_host *host, const char *name, int prog_fd);

	/*
	 * Claims a frame kind for interpreter frames (see bpf/include/sonde/
	 * abi.h, SONDE_FRAME_KIND): returns the kind (1..255) the plugin's
	 * BPF code must put in the top byte, or -errno.
	 */
	int (*register_frame_kind)(struct sonde_host *host, const char *name,
				   sonde_plugin_symbolize_fn symbolize);

	/*
	 * A counter the plugin increments, exported on /metrics as
	 * sonde_plugin_<plugin>_<name>_total with help as its HELP text.
	 * NULL on ENOMEM. Valid until the plugin's fini().
	 */
	uint64_t *(*counter)(struct sonde_host *host, const char *name, const char *help);

	/* The core's loop: watch an fd (epoll events), or run a timer. */
	int (*watch_fd)(struct sonde_host *host, int fd, uint32_t events,
			void (*cb)(void *ctx, int fd, uint32_t revents), void *ctx);
	int (*unwatch_fd)(struct sonde_host *host, int fd);
	void *(*add_timer)(struct sonde_host *host, uint64_t first_ms, uint64_t interval_ms,
			   void (*cb)(void *ctx), void *ctx);
	void (*cancel_timer)(struct sonde_host *host, void *timer);

	/* Reads len bytes at addr of process pid. Bytes read, or -errno. */
	ssize_t (*read_memory)(struct sonde_host *host, uint32_t pid, uint64_t addr, void *buf,
			       size_t len);

	/* ABI 1.1 (check size before use): */

	/*
	 * Sends one msgpack map on the export socket under topic (see
	 * docs/export.md; e.g. "red"). 0, or -errno (-ENOTCONN: exports are
	 * off).
	 */
	int (*publish)(struct sonde_host *host, const char *topic, const void *msgpack, size_t len);

	/* ABI 1.2 (check size before use): */

	/*
	 * Changes what `sondectl ps` shows for pid after attach_process
	 * returned: attached with a note (e.g. "waiting for tables"; "" for
	 * none), or no longer attached with the reason (e.g. a JVM whose
	 * structures could not be read once it had loaded). The plugin still
	 * gets detach_process when the process goes.
	 */
	void (*process_status)(struct sonde_host *host, uint32_t pid, int attached,
			       const char *reason);

	/* ABI 1.3 (check size before use): */

	/*
	 * Makes the plugin a tagger of threads: from now on the sampler
	 * copies each thread's entry of the "thread_tags" map into its
	 * samples, and a sample whose tag has the returned id in its top byte
	 * (SONDE_TAG_PROVIDER) gets the labels fn gives for it, on top of the
	 * process's own. Returns the id (1..255), or -errno (-EEXIST: the
	 * plugin already has one; -ENOSPC: none left).
	 */
	int (*register_sample_tags)(struct sonde_host *host, const char *name,
				    sonde_plugin_tag_fn fn);

	/* ABI 1.4 (check size before use): */

	/*
	 * Where the plugin's unwinder takes over from a native walker in pid
	 * (bpf/include/sonde/abi.h, the interpreter hand-over): n address
	 * ranges [ranges[2i], ranges[2i + 1]), its eval loop or its JIT code;
	 * they replace the plugin's earlier ones for pid, n 0 clears them. The
	 * core clears them when the process goes or the plugin is detached
	 * from it. 0, or -errno (-ENOENT: the plugin registered no unwinder;
	 * -ENOSPC: the process has too many ranges).
	 */
	int (*set_handover)(struct sonde_host *host, uint32_t pid, const uint64_t *ranges, int n);

	/* ABI 1.5 (check size before use): */

	/*
	 * Calls the script's callback for hook with a table of the nfields
	 * fields ({ key = value }, a NULL value is nil). One hook exists:
	 * "http_route" (on_http_route, docs/lua.md; fields method, route,
	 * path, service, server_address). The callback is Lua under the
	 * script's instruction budget: call it on a miss of a cache the
	 * plugin keeps, never per event. Returns SONDE_HOOK_KEEP,
	 * SONDE_HOOK_DROP, or SONDE_HOOK_REPLACE with the replacement in out
	 * (NUL-terminated; outlen at least SONDE_HOOK_OUT_MIN); -ENOENT when
	 * the script has no callback for hook (or sonded runs without a
	 * script): do not call again until script_generation() changes;
	 * -EINVAL when the callback failed (an error, the budget, the memory
	 * cap, a bad answer), which the core logs and counts
	 * (sonde_script_errors_total): keep what the plugin had; or another
	 * -errno (-ENOBUFS: outlen too small; -E2BIG: nfields not in 0..16;
	 * -EFAULT: hook or fields NULL).
	 */
	int (*script_hook)(struct sonde_host *host, const char *hook,
			   const struct sonde_plugin_label *fields, int nfields, char *out,
			   size_t outlen);

	/*
	 * A number that changes when the script does (a reload): what a
	 * plugin compares to drop the answers of script_hook it cached, and
	 * to call again a hook that gave -ENOENT. 0 without a script.
	 */
	uint64_t (*script_generation)(struct sonde_host *host);
};

/* A plugin setting, declared by the plugin and filled from the script. */
enum sonde_plugin_setting_type {
	SONDE_SETTING_END = 0, /* ends the table */
	SONDE_SETTING_BOOL,    /* int: 0 or 1 */
	SONDE_SETTING_INT,     /* int64_t */
	SONDE_SETTING_STRING,  /* const char *, owned by the core */
};

struct sonde_plugin_setting {
	enum sonde_plugin_setting_type type;
	const char *key;
	const char *default_value; /* as text: "true", "42", "text" */
	size_t offset;             /* where in the plugin's settings struct */
	const char *description;
};

struct sonde_plugin {
	uint32_t magic;     /* SONDE_PLUGIN_MAGIC */
	uint32_t abi_major; /* SONDE_PLUGIN_ABI_MAJOR */
	uint32_t abi_minor; /* SONDE_PLUGIN_ABI_MINOR */
	uint32_t size;      /* sizeof(struct sonde_plugin) */
	const char *name;   /* [a-z0-9-]+, e.g. "unwind-native" */
	const char *version;
	const char *description;

	/* Settings: a table ended by SONDE_SETTING_END, and the size of the
	 * struct the core fills and hands to init(). Both may be NULL/0. */
	const struct sonde_plugin_setting *settings;
	size_t settings_size;

	/*
	 * Starts the plugin; returns its state (opaque to the core; any
	 * non-NULL pointer if it keeps none), or NULL with a one-line reason
	 * in err. Required.
	 */
	void *(*init)(const struct sonde_host_api *api, struct sonde_host *host,
		      const void *settings, char *err, size_t errlen);
	/* Stops it and frees everything. Required. */
	void (*fini)(void *state);

	/*
	 * The script chose this plugin for a process: set up what the
	 * plugin needs (e.g. its per-process BPF state). 0 when it applies,
	 * or a positive SONDE_DECLINE with a one-line reason (shown by
	 * `sondectl ps`), or -errno. Optional.
	 */
	int (*attach_process)(void *state, const struct sonde_plugin_process *proc, char *reason,
			      size_t reasonlen);
	/* The process exited or the script dropped it. Optional. */
	void (*detach_process)(void *state, uint32_t pid);

	/* ABI 1.1: */

	/*
	 * Writes the plugin's own metric families to out in the Prometheus
	 * text format (HELP and TYPE lines included), for /metrics: histograms
	 * and labeled series the counter service cannot express. Names should
	 * start with the plugin's domain (e.g. http_server_...). 0 or -errno.
	 * Optional.
	 */
	int (*write_metrics)(void *state, FILE *out);
};

#define SONDE_DECLINE 1

#endif /* SONDE_PLUGIN_H */
