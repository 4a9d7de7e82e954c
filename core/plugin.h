/* SPDX-License-Identifier: MIT */
/*
 * The plugin loader: opens sonde-<name>.so files, checks their descriptor
 * against the ABI of <sonde/plugin.h>, fills their declared settings, and
 * serves them the host API (log, BPF maps and unwinder slots, frame kinds,
 * counters, the loop, reading process memory). It keeps, per pid, which
 * plugins attached or declined a process, for `sondectl ps`.
 *
 * Failures are reported, never decided: the daemon chooses whether a plugin
 * that did not load is fatal. Every error text is one line naming the file.
 *
 * Lifetime: free the loader before the loop and the BPF host it was given;
 * the loop registrations a plugin left behind are removed at free.
 *
 * Threading: not thread-safe; call everything from the loop thread (the
 * plugins' callbacks run there too).
 */
#ifndef SONDE_CORE_PLUGIN_H
#define SONDE_CORE_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sonde/plugin.h>

struct sonde_loop;
struct sonde_bpf_host;
struct sonde_strbuf;
struct sonde_plugins;

/* What the daemon gives the loader. */
struct sonde_plugin_services {
	struct sonde_loop *loop;    /* required */
	struct sonde_bpf_host *bpf; /* NULL: map_fd gives -ENOENT, register_unwinder -ENOTSUP */
	const char *plugin_dir;	    /* where sonde-<name>.so live; NULL: /usr/lib/sonde */
	/* the export socket, for the host's publish service; NULL: exports off */
	int (*publish)(void *ctx, const char *topic, const void *msgpack, size_t len);
	void *publish_ctx;
	/* the script, for the host's script_hook and script_generation (same
	 * contract); NULL: -ENOENT and 0 */
	int (*script_hook)(void *ctx, const char *hook, const struct sonde_plugin_label *fields,
			   int nfields, char *out, size_t outlen);
	uint64_t (*script_generation)(void *ctx);
	void *script_ctx;
};

/* NULL and errno on failure (EINVAL without a loop). */
struct sonde_plugins *sonde_plugins__new(const struct sonde_plugin_services *svc);
/* Calls fini() of each plugin (last loaded first), removes what they left on
 * the loop, then dlclose()s them. Accepts NULL. */
void sonde_plugins__free(struct sonde_plugins *ps);

/* A setting from the script, both as text: ("depth", "42"), ("verbose", "true"). */
struct sonde_plugin_kv {
	const char *key;
	const char *value;
};

/*
 * Loads plugin name from <plugin_dir>/sonde-<name>.so (or, as in a build
 * tree, <plugin_dir>/<name>/sonde-<name>.so), or from the path
 * name when it contains a '/' (the plugin is then known by the name its
 * descriptor declares). A plugin loaded by name must declare that name.
 * Fills its settings (defaults, then kvs in order; the last of a repeated
 * key wins) and calls init().
 *
 * 0, or -errno with one line in err naming the file and the reason:
 *   -ENOENT   the file does not exist
 *   -ENOEXEC  not loadable, not a sonde plugin, or an incompatible ABI
 *   -EINVAL   a bad name, an unknown setting or a value of the wrong type
 *   -EEXIST   a plugin of that name is already loaded
 *   -ENOMEM
 *   init() failing: the errno it left, else -EIO ("init failed: <reason>")
 */
int sonde_plugins__load(struct sonde_plugins *ps, const char *name,
			const struct sonde_plugin_kv *kvs, size_t nkvs, char *err, size_t errlen);

/*
 * Offers a process to plugin name. 0 when it attached (*slot: the unwinder
 * slot the plugin registered, else -1), SONDE_DECLINE with reason when it
 * declined, -ENOENT when no such plugin is loaded, or the plugin's -errno
 * (reason then says why). A plugin without attach_process() attaches every
 * process. The decision is remembered for pid until detach_process().
 * slot, reason may be NULL.
 */
int sonde_plugins__attach_process(struct sonde_plugins *ps, const char *name,
				  const struct sonde_plugin_process *proc, int *slot, char *reason,
				  size_t reasonlen);
/* pid exited or the script dropped it: tells every plugin that attached
 * it, and forgets every decision about it. */
void sonde_plugins__detach_process(struct sonde_plugins *ps, uint32_t pid);
/* Calls fn for each decision about pid, in the order they were made;
 * reason is "" for an attach. */
void sonde_plugins__for_each_decision(struct sonde_plugins *ps, uint32_t pid,
				      void (*fn)(void *ctx, const char *plugin, bool attached,
						 const char *reason),
				      void *ctx);

/*
 * Names a frame of a plugin's kind (SONDE_FRAME_KIND(word)): how many
 * frames were filled (at most max), 0 when no plugin owns the kind or it
 * cannot name this frame.
 */
int sonde_plugins__symbolize(struct sonde_plugins *ps, uint32_t pid, uint64_t word,
			     uint64_t payload, struct sonde_plugin_frame *frames, int max);
/*
 * The labels of a sample's thread tag (SONDE_TAG_PROVIDER(tag) names the
 * plugin): how many were filled (at most max); 0 when the plugin does not
 * know the tag yet (ask again later); -ENOENT when no plugin owns it or
 * its plugin never will.
 */
int sonde_plugins__tag_labels(struct sonde_plugins *ps, uint32_t pid, uint64_t tag,
			      struct sonde_plugin_label *labels, int max);
/* The name a plugin registered kind under ("python"), or NULL. */
const char *sonde_plugins__frame_kind_name(const struct sonde_plugins *ps, unsigned int kind);

/*
 * Appends every plugin counter in the Prometheus text format, with HELP and
 * TYPE: sonde_plugin_<plugin>_<name>_total, any character of the names
 * outside [a-zA-Z0-9_] ('-' most of all) written as '_'.
 */
void sonde_plugins__metrics(const struct sonde_plugins *ps, struct sonde_strbuf *out);

/* Calls fn for each loaded plugin, in load order; version is "" when the
 * plugin declares none, path the file it was loaded from. */
void sonde_plugins__for_each(const struct sonde_plugins *ps,
			     void (*fn)(void *ctx, const char *name, const char *version,
					const char *path),
			     void *ctx);

#endif /* SONDE_CORE_PLUGIN_H */
