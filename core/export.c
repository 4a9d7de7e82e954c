// SPDX-License-Identifier: MIT
/*
 * The pub socket is nng's pub0, which already has the behaviour the loop
 * needs: a send never waits for subscribers, each subscriber has its own
 * bounded queue, and a slow one loses its oldest messages rather than
 * slowing the others. So publish() is a non-blocking nng_sendmsg() and the
 * counters record what nng told us.
 *
 * The encoders write msgpack directly (no intermediate tree): messages go
 * out every window and profiles can hold thousands of stacks.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "export.h"
#include "nng_listen.h"
#include "hash.h"

struct sonde_export {
	nng_socket sock;
	bool open;
	nng_listener listener;
	char *url;
	uint64_t sent;
	uint64_t dropped;
};

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen,
							   const char *fmt, ...)
{
	va_list ap;

	if (!errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

struct sonde_export *sonde_export__new(const char *url, char *err, size_t errlen)
{
	struct sonde_export *ex;
	int rv, port, ret = 0;
	const char *sep;
	char why[256];

	ex = calloc(1, sizeof(*ex));
	if (!ex) {
		set_err(err, errlen, "export: out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if (!url) {
		set_err(err, errlen, "export: no URL");
		ret = -EINVAL;
		goto cleanup;
	}
	rv = nng_pub0_open(&ex->sock);
	if (rv) {
		set_err(err, errlen, "export: cannot open a pub socket: %s", nng_strerror(rv));
		ret = -sonde_nng_errno(rv);
		goto cleanup;
	}
	ex->open = true;
	/* Per-subscriber queue: a window's burst of messages fits, a stalled reader does not. */
	nng_socket_set_int(ex->sock, NNG_OPT_SENDBUF, SONDE_EXPORT_SENDBUF);

	ret = sonde_nng_listen(ex->sock, url, &ex->listener, why, sizeof(why));
	if (ret) {
		set_err(err, errlen, "export: %s", why);
		goto cleanup;
	}

	sep = strrchr(url, ':');
	if (!strncmp(url, "tcp", 3) && sep && !strcmp(sep, ":0") &&
	    !nng_listener_get_int(ex->listener, NNG_OPT_TCP_BOUND_PORT, &port)) {
		if (asprintf(&ex->url, "%.*s:%d", (int)(sep - url), url, port) < 0)
			ex->url = NULL;
	} else {
		ex->url = strdup(url);
	}
	if (!ex->url) {
		set_err(err, errlen, "export: out of memory");
		ret = -ENOMEM;
		goto cleanup;
	}
	set_err(err, errlen, "%s", "");
cleanup:
	if (ret) {
		sonde_export__free(ex);
		errno = -ret;
		return NULL;
	}
	return ex;
}

void sonde_export__free(struct sonde_export *ex)
{
	if (!ex)
		return;
	/* Closing the socket closes its listener and removes the ipc file. */
	if (ex->open)
		nng_close(ex->sock);
	free(ex->url);
	free(ex);
}

const char *sonde_export__url(const struct sonde_export *ex)
{
	return ex->url;
}

static bool topic_ok(const char *topic)
{
	size_t i;

	if (!topic || !*topic)
		return false;
	for (i = 0; topic[i]; i++) {
		char ch = topic[i];

		if (i >= SONDE_EXPORT_TOPIC_MAX)
			return false;
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
			return false;
	}
	return true;
}

int sonde_export__publish(struct sonde_export *ex, const char *topic, const void *msgpack,
			  size_t len)
{
	nng_msg *msg = NULL;
	int rv;

	if (!topic_ok(topic) || (!msgpack && len))
		return -EINVAL;
	rv = nng_msg_alloc(&msg, 0);
	if (!rv)
		rv = nng_msg_append(msg, topic, strlen(topic) + 1);
	if (!rv && len)
		rv = nng_msg_append(msg, msgpack, len);
	if (!rv)
		rv = nng_sendmsg(ex->sock, msg, NNG_FLAG_NONBLOCK);
	if (rv) {
		/* nng owns msg only once a send succeeded. */
		nng_msg_free(msg);
		ex->dropped++;
		return -sonde_nng_errno(rv);
	}
	ex->sent++;
	return 0;
}

uint64_t sonde_export__sent(const struct sonde_export *ex)
{
	return ex->sent;
}

uint64_t sonde_export__dropped(const struct sonde_export *ex)
{
	return ex->dropped;
}

/* ---- encoders ---- */

static int pack_str(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n) ? -ENOMEM : 0;
}

static int pack_kv_str(msgpack_packer *pk, const char *key, const char *value)
{
	return pack_str(pk, key) || pack_str(pk, value) ? -ENOMEM : 0;
}

/* Label keys must be distinct and must not reuse the names already sent in the map. */
static bool labels_ok(const struct sonde_export_label *l, size_t n, const char *const *reserved)
{
	size_t i, j;

	if (n && !l)
		return false;
	for (i = 0; i < n; i++) {
		if (!l[i].key || !l[i].value)
			return false;
		for (j = 0; reserved && reserved[j]; j++)
			if (!strcmp(l[i].key, reserved[j]))
				return false;
		for (j = 0; j < i; j++)
			if (!strcmp(l[i].key, l[j].key))
				return false;
	}
	return true;
}

int sonde_export_encode_proc(const struct sonde_export_proc *p, msgpack_sbuffer *out)
{
	static const char *const events[] = {
		[SONDE_EXPORT_PROC_START] = "start",
		[SONDE_EXPORT_PROC_EXIT] = "exit",
	};
	const struct {
		const char *key;
		const char *value;
	} strs[] = {
		{"comm", p->comm}, {"exe", p->exe}, {"cmdline", p->cmdline},
		{"cgroup", p->cgroup}, {"container_id", p->container_id},
	};
	msgpack_packer pk;
	size_t i, n = 4; /* v, event, time, pid */
	int ret = -ENOMEM;

	if ((unsigned)p->event >= sizeof(events) / sizeof(events[0]) ||
	    !labels_ok(p->labels, p->nr_labels, NULL))
		return -EINVAL;
	n += p->ppid >= 0;
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		n += strs[i].value != NULL;
	n += p->nr_labels > 0;

	msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
	if (msgpack_pack_map(&pk, n) || pack_str(&pk, "v") ||
	    msgpack_pack_int(&pk, SONDE_EXPORT_SCHEMA_VERSION) ||
	    pack_kv_str(&pk, "event", events[p->event]) || pack_str(&pk, "time") ||
	    msgpack_pack_double(&pk, p->time) || pack_str(&pk, "pid") ||
	    msgpack_pack_int32(&pk, p->pid))
		goto cleanup;
	if (p->ppid >= 0 && (pack_str(&pk, "ppid") || msgpack_pack_int32(&pk, p->ppid)))
		goto cleanup;
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		if (strs[i].value && pack_kv_str(&pk, strs[i].key, strs[i].value))
			goto cleanup;
	if (p->nr_labels) {
		if (pack_str(&pk, "labels") || msgpack_pack_map(&pk, p->nr_labels))
			goto cleanup;
		for (i = 0; i < p->nr_labels; i++)
			if (pack_kv_str(&pk, p->labels[i].key, p->labels[i].value))
				goto cleanup;
	}
	ret = 0;
cleanup:
	return ret;
}

/* ---- profile builder ---- */

struct stored_frame {
	char *function;
	char *file;
	char *module;
	char *kind;
	uint32_t line;
	uint64_t addr;
	uint64_t hash;
};

struct sonde_export_profile {
	bool begun;
	struct sonde_export_profile_info info;
	char *sample_type;
	uint64_t samples;

	struct stored_frame *frames;
	size_t nr_frames, cap_frames;
	uint32_t *slots; /* frame index + 1, 0 empty; open addressing */
	size_t nr_slots; /* a power of two, at least twice nr_frames */

	msgpack_sbuffer stacks; /* the stacks array's elements, packed as they come */
	size_t nr_stacks;
};

struct sonde_export_profile *sonde_export_profile__new(void)
{
	struct sonde_export_profile *b = calloc(1, sizeof(*b));

	if (!b) {
		errno = ENOMEM;
		return NULL;
	}
	msgpack_sbuffer_init(&b->stacks);
	return b;
}

static void drop_frames(struct sonde_export_profile *b)
{
	size_t i;

	for (i = 0; i < b->nr_frames; i++) {
		free(b->frames[i].function);
		free(b->frames[i].file);
		free(b->frames[i].module);
		free(b->frames[i].kind);
	}
	b->nr_frames = 0;
	if (b->slots)
		memset(b->slots, 0, b->nr_slots * sizeof(*b->slots));
}

static void reset(struct sonde_export_profile *b)
{
	drop_frames(b);
	msgpack_sbuffer_clear(&b->stacks);
	b->nr_stacks = 0;
	b->samples = 0;
	free(b->sample_type);
	b->sample_type = NULL;
	b->begun = false;
}

void sonde_export_profile__free(struct sonde_export_profile *b)
{
	if (!b)
		return;
	reset(b);
	free(b->frames);
	free(b->slots);
	msgpack_sbuffer_destroy(&b->stacks);
	free(b);
}

int sonde_export_profile__begin(struct sonde_export_profile *b,
				const struct sonde_export_profile_info *info)
{
	reset(b);
	b->info = *info;
	b->sample_type = strdup(info->sample_type ? info->sample_type : "cpu");
	if (!b->sample_type)
		return -ENOMEM;
	b->info.sample_type = b->sample_type;
	b->begun = true;
	return 0;
}

static bool str_eq(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

static uint64_t hash_opt(uint64_t h, const char *s)
{
	return sonde_hash_mix(h, s ? sonde_hash_str(s) : 0);
}

static uint64_t frame_hash(const struct sonde_export_frame *f)
{
	uint64_t h = sonde_hash_str(f->function);

	h = hash_opt(h, f->file);
	h = hash_opt(h, f->module);
	h = hash_opt(h, f->kind);
	h = sonde_hash_mix(h, f->line);
	return sonde_hash_mix(h, f->addr);
}

static bool frame_eq(const struct stored_frame *s, const struct sonde_export_frame *f)
{
	return s->line == f->line && s->addr == f->addr && str_eq(s->function, f->function) &&
	       str_eq(s->file, f->file) && str_eq(s->module, f->module) &&
	       str_eq(s->kind, f->kind);
}

static int grow_slots(struct sonde_export_profile *b)
{
	size_t n = b->nr_slots ? b->nr_slots * 2 : 256, i, j;
	uint32_t *slots = calloc(n, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (i = 0; i < b->nr_frames; i++) {
		for (j = b->frames[i].hash & (n - 1); slots[j]; j = (j + 1) & (n - 1))
			;
		slots[j] = (uint32_t)i + 1;
	}
	free(b->slots);
	b->slots = slots;
	b->nr_slots = n;
	return 0;
}

static char *dup_opt(const char *s, bool *failed)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		*failed = true;
	return d;
}

int sonde_export_profile__add_frame(struct sonde_export_profile *b,
				    const struct sonde_export_frame *f)
{
	struct stored_frame *s;
	bool failed = false;
	uint64_t h;
	size_t j;

	if (!b->begun || !f->function || !f->kind)
		return -EINVAL;
	if (b->nr_frames >= INT32_MAX)
		return -E2BIG;
	if ((b->nr_frames + 1) * 2 > b->nr_slots && grow_slots(b))
		return -ENOMEM;
	h = frame_hash(f);
	for (j = h & (b->nr_slots - 1); b->slots[j]; j = (j + 1) & (b->nr_slots - 1)) {
		s = &b->frames[b->slots[j] - 1];
		if (s->hash == h && frame_eq(s, f))
			return (int)(b->slots[j] - 1);
	}
	if (b->nr_frames == b->cap_frames) {
		size_t cap = b->cap_frames ? b->cap_frames * 2 : 256;
		void *p = realloc(b->frames, cap * sizeof(*b->frames));

		if (!p)
			return -ENOMEM;
		b->frames = p;
		b->cap_frames = cap;
	}
	s = &b->frames[b->nr_frames];
	*s = (struct stored_frame){
		.function = dup_opt(f->function, &failed),
		.file = dup_opt(f->file, &failed),
		.module = dup_opt(f->module, &failed),
		.kind = dup_opt(f->kind, &failed),
		.line = f->line,
		.addr = f->addr,
		.hash = h,
	};
	if (failed) {
		free(s->function);
		free(s->file);
		free(s->module);
		free(s->kind);
		return -ENOMEM;
	}
	b->slots[j] = (uint32_t)b->nr_frames + 1;
	return (int)b->nr_frames++;
}

int sonde_export_profile__add_stack(struct sonde_export_profile *b, uint64_t count,
				    const struct sonde_export_stack_labels *labels,
				    const uint32_t *frames, size_t n)
{
	static const char *const reserved[] = {"pid", "comm", "exe", "container_id", NULL};
	const struct {
		const char *key;
		const char *value;
	} strs[] = {
		{"comm", labels->comm}, {"exe", labels->exe},
		{"container_id", labels->container_id},
	};
	size_t i, nl = 0, mark = b->stacks.size;
	msgpack_packer pk;

	if (!b->begun || !count || (n && !frames) ||
	    !labels_ok(labels->extra, labels->nr_extra, reserved))
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (frames[i] >= b->nr_frames)
			return -EINVAL;
	nl = (labels->pid >= 0) + labels->nr_extra;
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		nl += strs[i].value != NULL;

	msgpack_packer_init(&pk, &b->stacks, msgpack_sbuffer_write);
	if (msgpack_pack_map(&pk, 3) || pack_str(&pk, "count") || msgpack_pack_uint64(&pk, count) ||
	    pack_str(&pk, "labels") || msgpack_pack_map(&pk, nl))
		goto nomem;
	if (labels->pid >= 0 && (pack_str(&pk, "pid") || msgpack_pack_int32(&pk, labels->pid)))
		goto nomem;
	for (i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		if (strs[i].value && pack_kv_str(&pk, strs[i].key, strs[i].value))
			goto nomem;
	for (i = 0; i < labels->nr_extra; i++)
		if (pack_kv_str(&pk, labels->extra[i].key, labels->extra[i].value))
			goto nomem;
	if (pack_str(&pk, "frames") || msgpack_pack_array(&pk, n))
		goto nomem;
	for (i = 0; i < n; i++)
		if (msgpack_pack_uint32(&pk, frames[i]))
			goto nomem;
	b->nr_stacks++;
	b->samples += count;
	return 0;
nomem:
	/* Drop the half-written stack; the ones before it stay valid. */
	b->stacks.size = mark;
	return -ENOMEM;
}

int sonde_export_profile__end(struct sonde_export_profile *b, msgpack_sbuffer *out)
{
	msgpack_packer pk;
	size_t i, mark = out->size;
	int ret = -ENOMEM;

	if (!b->begun)
		return -EINVAL;
	msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
	if (msgpack_pack_map(&pk, 8) || pack_str(&pk, "v") ||
	    msgpack_pack_int(&pk, SONDE_EXPORT_SCHEMA_VERSION) || pack_str(&pk, "start") ||
	    msgpack_pack_double(&pk, b->info.start) || pack_str(&pk, "duration") ||
	    msgpack_pack_double(&pk, b->info.duration) || pack_str(&pk, "period_ns") ||
	    msgpack_pack_uint64(&pk, b->info.period_ns) ||
	    pack_kv_str(&pk, "sample_type", b->info.sample_type) || pack_str(&pk, "samples") ||
	    msgpack_pack_uint64(&pk, b->samples) || pack_str(&pk, "stacks") ||
	    msgpack_pack_array(&pk, b->nr_stacks) ||
	    (b->stacks.size && msgpack_sbuffer_write(out, b->stacks.data, b->stacks.size)) ||
	    pack_str(&pk, "frames") || msgpack_pack_array(&pk, b->nr_frames))
		goto cleanup;
	for (i = 0; i < b->nr_frames; i++) {
		const struct stored_frame *s = &b->frames[i];
		size_t nf = 2 + !!s->file + !!s->line + !!s->module + !!s->addr;

		if (msgpack_pack_map(&pk, nf) || pack_kv_str(&pk, "function", s->function) ||
		    (s->file && pack_kv_str(&pk, "file", s->file)) ||
		    (s->line && (pack_str(&pk, "line") || msgpack_pack_uint32(&pk, s->line))) ||
		    (s->module && pack_kv_str(&pk, "module", s->module)) ||
		    pack_kv_str(&pk, "kind", s->kind) ||
		    (s->addr && (pack_str(&pk, "addr") || msgpack_pack_uint64(&pk, s->addr))))
			goto cleanup;
	}
	ret = 0;
cleanup:
	if (ret)
		out->size = mark;
	reset(b);
	return ret;
}
