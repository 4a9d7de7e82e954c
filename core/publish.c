// SPDX-License-Identifier: MIT
#include "publish.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "export.h"
#include "policy.h"
#include "proc.h"
#include "profile.h"
#include "script.h"
#include "symbolize.h"

#define MAX_INLINE 16
#define MAX_EXPORT_FRAMES 512 /* names per stack, inlined ones included */

struct sonde_publisher {
	struct sonde_export *ex;
	struct sonde_export_profile *builder;
	msgpack_sbuffer buf;
};

struct sonde_publisher *sonde_publisher__new(struct sonde_export *ex)
{
	struct sonde_publisher *pub = calloc(1, sizeof(*pub));

	if (!pub)
		return NULL;
	pub->ex = ex;
	if (ex) {
		pub->builder = sonde_export_profile__new();
		if (!pub->builder) {
			free(pub);
			errno = ENOMEM;
			return NULL;
		}
	}
	msgpack_sbuffer_init(&pub->buf);
	return pub;
}

void sonde_publisher__free(struct sonde_publisher *pub)
{
	if (!pub)
		return;
	sonde_export_profile__free(pub->builder);
	msgpack_sbuffer_destroy(&pub->buf);
	free(pub);
}

/* ---- the script's window ---------------------------------------------- */

/*
 * Everything the script's window points at lives in one arena, freed when
 * on_window returns: stacks, their labels, frame name arrays and the names
 * that are not the symbolizer's (module+0xoffset, pids as text).
 */
struct arena {
	char **blocks;
	size_t n, cap;
	bool failed;
};

static void *arena_alloc(struct arena *a, size_t size)
{
	void *p;

	if (a->failed)
		return NULL;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **b = realloc(a->blocks, cap * sizeof(*b));

		if (!b) {
			a->failed = true;
			return NULL;
		}
		a->blocks = b;
		a->cap = cap;
	}
	p = malloc(size ? size : 1);
	if (!p) {
		a->failed = true;
		return NULL;
	}
	a->blocks[a->n++] = p;
	return p;
}

static char *arena_strdup(struct arena *a, const char *s)
{
	char *d = arena_alloc(a, strlen(s) + 1);

	return d ? strcpy(d, s) : NULL;
}

static void arena_free(struct arena *a)
{
	size_t i;

	for (i = 0; i < a->n; i++)
		free(a->blocks[i]);
	free(a->blocks);
}

struct window_ctx {
	struct sonde_publisher *pub;
	struct arena arena;
	struct sonde_script_stack *stacks;
	size_t nstacks, cap;
	bool export_ok;  /* building the "profile" message */
	bool for_script; /* building the script's window */
	int err;
};

static void name_frame_for_script(struct window_ctx *wc, const struct sonde_profile_frame *f,
				  const char **names, size_t *n, size_t max)
{
	struct sonde_symbol_frame sym[MAX_INLINE];
	char unnamed[320];
	int k, j;

	k = sonde_profile_frame_names(f, sym, MAX_INLINE, unnamed, sizeof(unnamed));
	for (j = 0; j < k && *n < max; j++)
		names[(*n)++] = sym[j].function == unnamed ? arena_strdup(&wc->arena, unnamed)
							    : sym[j].function;
}

static int add_script_stack(struct window_ctx *wc, const struct sonde_profile_labels *l,
			    const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct sonde_script_stack *st;
	struct sonde_script_label *labels;
	const char **names;
	size_t nl = 0, nn = 0, max = (size_t)n * MAX_INLINE;
	char pid[16];
	uint32_t i;

	if (wc->nstacks == wc->cap) {
		size_t cap = wc->cap ? wc->cap * 2 : 256;
		struct sonde_script_stack *s = realloc(wc->stacks, cap * sizeof(*s));

		if (!s)
			return -ENOMEM;
		wc->stacks = s;
		wc->cap = cap;
	}
	labels = arena_alloc(&wc->arena, (4 + l->nextra) * sizeof(*labels));
	names = arena_alloc(&wc->arena, max * sizeof(*names));
	if (!labels || !names)
		return -ENOMEM;
	snprintf(pid, sizeof(pid), "%u", l->pid);
	labels[nl++] = (struct sonde_script_label){ "pid", arena_strdup(&wc->arena, pid) };
	if (l->comm)
		labels[nl++] = (struct sonde_script_label){ "comm", l->comm };
	if (l->exe)
		labels[nl++] = (struct sonde_script_label){ "exe", l->exe };
	if (l->container_id)
		labels[nl++] = (struct sonde_script_label){ "container_id", l->container_id };
	for (i = 0; i < l->nextra; i++)
		labels[nl++] = (struct sonde_script_label){ l->extra[i].key, l->extra[i].value };
	for (i = 0; i < n; i++)
		name_frame_for_script(wc, &frames[i], names, &nn, max);
	/* the profile's strings die with it; copy what the window keeps */
	for (i = 0; i < nl; i++) {
		labels[i].value = arena_strdup(&wc->arena, labels[i].value);
		labels[i].key = arena_strdup(&wc->arena, labels[i].key);
	}
	if (wc->arena.failed)
		return -ENOMEM;
	st = &wc->stacks[wc->nstacks++];
	*st = (struct sonde_script_stack){ .count = count, .labels = labels, .nlabels = nl,
					   .frames = names, .nframes = nn };
	return 0;
}

/* ---- the "profile" message -------------------------------------------- */

static const char *kind_of(const struct sonde_profile_frame *f)
{
	return sonde_object__is_kernel(f->obj) ? "kernel" : "native";
}

static int add_export_stack(struct sonde_publisher *pub, const struct sonde_profile_labels *l,
			    const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct sonde_export_label extra[SONDE_PROFILE_MAX_EXTRA];
	struct sonde_export_stack_labels labels = {
		.pid = (int32_t)l->pid,
		.comm = l->comm,
		.exe = l->exe,
		.container_id = l->container_id,
		.extra = extra,
		.nr_extra = l->nextra,
	};
	struct sonde_symbol_frame sym[MAX_INLINE];
	uint32_t idx[MAX_EXPORT_FRAMES];
	char unnamed[320];
	size_t ni = 0;
	uint32_t i;
	int k, j, rc;

	for (i = 0; i < l->nextra; i++)
		extra[i] = (struct sonde_export_label){ l->extra[i].key, l->extra[i].value };
	for (i = 0; i < n; i++) {
		k = sonde_profile_frame_names(&frames[i], sym, MAX_INLINE, unnamed, sizeof(unnamed));
		for (j = 0; j < k && ni < MAX_EXPORT_FRAMES; j++) {
			struct sonde_export_frame ef = {
				.function = sym[j].function,
				.file = sym[j].file,
				.line = sym[j].line,
				.module = sonde_object__name(frames[i].obj),
				.kind = kind_of(&frames[i]),
				/* the address belongs to the containing function's frame */
				.addr = j == k - 1 ? frames[i].vaddr : 0,
			};

			rc = sonde_export_profile__add_frame(pub->builder, &ef);
			if (rc < 0)
				return rc;
			idx[ni++] = (uint32_t)rc;
		}
	}
	return sonde_export_profile__add_stack(pub->builder, count, &labels, idx, ni);
}

static int visit_stack(void *ctx, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct window_ctx *wc = ctx;
	int rc;

	if (wc->export_ok) {
		rc = add_export_stack(wc->pub, labels, frames, n, count);
		if (rc == -ENOMEM)
			return rc;
	}
	if (wc->for_script) {
		rc = add_script_stack(wc, labels, frames, n, count);
		if (rc)
			return rc;
	}
	return 0;
}

static int publish_to_export(void *ctx, const char *topic, const void *msgpack, size_t len)
{
	struct sonde_publisher *pub = ctx;

	return pub->ex ? sonde_export__publish(pub->ex, topic, msgpack, len) : 0;
}

int sonde_publisher__window(struct sonde_publisher *pub, const struct sonde_profile *window,
			    uint64_t period_ns, struct sonde_script *script)
{
	double start = sonde_profile__start_ns(window) / 1e9;
	double duration = (sonde_profile__end_ns(window) - sonde_profile__start_ns(window)) / 1e9;
	struct sonde_export_profile_info info = {
		.start = start,
		.duration = duration,
		.period_ns = period_ns,
	};
	bool for_script = script && sonde_script__wants_windows(script);
	struct window_ctx wc = { .pub = pub, .for_script = for_script };
	int err = 0;

	if (!pub->ex && !for_script)
		return 0;
	wc.export_ok = pub->ex && sonde_export_profile__begin(pub->builder, &info) == 0;
	err = sonde_profile__for_each_stack(window, visit_stack, &wc);
	if (wc.export_ok) {
		msgpack_sbuffer_clear(&pub->buf);
		if (sonde_export_profile__end(pub->builder, &pub->buf) == 0)
			sonde_export__publish(pub->ex, "profile", pub->buf.data, pub->buf.size);
	}
	if (!err && for_script) {
		struct sonde_script_window w = {
			.start = start,
			.duration = duration,
			.samples = sonde_profile__samples(window),
			.stacks = wc.stacks,
			.nstacks = wc.nstacks,
		};

		err = sonde_script__window(script, &w, publish_to_export, pub);
	}
	free(wc.stacks);
	arena_free(&wc.arena);
	return err;
}

int sonde_publisher__proc(struct sonde_publisher *pub, const struct sonde_proc *proc,
			  const struct sonde_policy_entry *pe, bool exited)
{
	struct sonde_export_label labels[SONDE_PROFILE_MAX_EXTRA];
	struct timespec now;
	struct sonde_export_proc p = {
		.event = exited ? SONDE_EXPORT_PROC_EXIT : SONDE_EXPORT_PROC_START,
		.pid = (int32_t)proc->pid,
		.ppid = (int32_t)proc->ppid,
		.comm = proc->comm,
		.exe = proc->exe,
		.cmdline = proc->cmdline,
		.cgroup = proc->cgroup,
		.container_id = proc->container_id[0] ? proc->container_id : NULL,
		.labels = labels,
	};
	uint32_t i;
	int err;

	if (!pub->ex)
		return 0;
	clock_gettime(CLOCK_REALTIME, &now);
	p.time = now.tv_sec + now.tv_nsec / 1e9;
	for (i = 0; pe && i < pe->nlabels; i++)
		labels[i] = (struct sonde_export_label){ pe->labels[i].key, pe->labels[i].value };
	p.nr_labels = i;
	msgpack_sbuffer_clear(&pub->buf);
	err = sonde_export_encode_proc(&p, &pub->buf);
	if (err)
		return err;
	return sonde_export__publish(pub->ex, "proc", pub->buf.data, pub->buf.size);
}
