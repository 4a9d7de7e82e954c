// SPDX-License-Identifier: MIT
/*
 * A well-formed test plugin: three kinds of settings, a counter, a frame
 * kind, a log line; it attaches every process but comm "nope" (declined)
 * and "fail" (an error).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "good.h"

static struct good_view view;
static int alive; /* the state init() hands back */

const struct good_view *sonde_good_view(void)
{
	return alive ? &view : NULL;
}

static const struct sonde_plugin_frame good_frames[] = {
	{.function = "good_leaf", .file = "good.py"},
	{.function = "good_inner", .file = "good.py"},
	{.function = "good_outer", .file = "good.py"},
};

/* payload 1: one frame (good_leaf); 2: good_inner called from good_outer.
 * The line numbers are the word's aux bits, so the test sees the word came
 * through. */
static int good_symbolize(void *state, uint32_t pid, uint64_t word, uint64_t payload,
			  struct sonde_plugin_frame *frames, int max)
{
	uint32_t aux = (uint32_t)(word & 0xffffffffu);
	int first, n, i;

	(void)state;
	(void)pid;
	if (payload == 1) {
		first = 0;
		n = 1;
	} else if (payload == 2) {
		first = 1;
		n = 2;
	} else {
		return 0;
	}
	for (i = 0; i < n && i < max; i++) {
		frames[i] = good_frames[first + i];
		frames[i].line = aux + (uint32_t)i;
	}
	return n;
}

static void *good_init(const struct sonde_host_api *api, struct sonde_host *host,
		       const void *settings, char *err, size_t errlen)
{
	const struct good_settings *s = settings;

	memset(&view, 0, sizeof(view));
	view.api = api;
	view.host = host;
	view.settings = s;
	view.map_fd = api->map_fd(host, "events");
	view.unwinder = api->register_unwinder(host, "good", -1);
	view.frame_kind = api->register_frame_kind(host, "good", good_symbolize);
	view.attached =
		api->counter(host, "processes-attached", "Processes the good plugin attached.");
	if (view.frame_kind < 0 || !view.attached) {
		snprintf(err, errlen, "cannot register: frame kind %d", view.frame_kind);
		return NULL;
	}
	api->log(host, SONDE_PLUGIN_LOG_INFO, "up: verbose=%d depth=%lld label=%s\n", s->verbose,
		 (long long)s->depth, s->label ? s->label : "(null)");
	alive = 1;
	return &alive;
}

static void good_fini(void *state)
{
	FILE *f;

	if (view.settings->fini_file) {
		f = fopen(view.settings->fini_file, "w");
		if (f) {
			fprintf(f, "fini good attached=%llu\n", (unsigned long long)*view.attached);
			fclose(f);
		}
	}
	*(int *)state = 0;
}

static int good_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		       size_t reasonlen)
{
	(void)state;
	if (proc->size < sizeof(*proc))
		return -EINVAL;
	if (proc->comm && !strcmp(proc->comm, "nope")) {
		snprintf(reason, reasonlen, "comm is %s", proc->comm);
		return SONDE_DECLINE;
	}
	if (proc->comm && !strcmp(proc->comm, "fail")) {
		snprintf(reason, reasonlen, "frobnicator jammed");
		return -EIO;
	}
	/* ABI 1.2: a status of its own, after (here: while) attaching */
	if (proc->comm && !strcmp(proc->comm, "pending"))
		view.api->process_status(view.host, proc->pid, 1, "waiting for the frobnicator");
	if (proc->comm && !strcmp(proc->comm, "dropme"))
		view.api->process_status(view.host, proc->pid, 0, "dropped after attach");
	(*view.attached)++;
	return 0;
}

static void good_detach(void *state, uint32_t pid)
{
	(void)state;
	view.detach_calls++;
	view.last_detached = pid;
}

static const struct sonde_plugin_setting good_settings_table[] = {
	{SONDE_SETTING_BOOL, "verbose", "false", offsetof(struct good_settings, verbose),
	 "say more"},
	{SONDE_SETTING_INT, "depth", "8", offsetof(struct good_settings, depth), "frames to walk"},
	{SONDE_SETTING_STRING, "label", "plain", offsetof(struct good_settings, label), "a label"},
	{SONDE_SETTING_STRING, "fini-file", NULL, offsetof(struct good_settings, fini_file),
	 "where fini() writes a line"},
	{SONDE_SETTING_END},
};

/* ABI 1.1: a labeled family of its own on /metrics. */
static int good_metrics(void *state, FILE *out)
{
	(void)state;
	fprintf(out, "# HELP good_widgets Widgets the good plugin holds, by color.\n"
		     "# TYPE good_widgets gauge\n"
		     "good_widgets{color=\"blue\"} 3\n");
	return 0;
}

extern const struct sonde_plugin sonde_plugin;
const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "good",
	.version = "1.2.3",
	.description = "a test plugin that works",
	.settings = good_settings_table,
	.settings_size = sizeof(struct good_settings),
	.init = good_init,
	.fini = good_fini,
	.attach_process = good_attach,
	.detach_process = good_detach,
	.write_metrics = good_metrics,
};
