// SPDX-License-Identifier: MIT
/* The daemon's answers on the control socket (docs/control.md). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bpf_host.h"
#include "control.h"
#include "daemon_priv.h"
#include "loop.h"
#include "plugin.h"
#include "policy.h"
#include "proc.h"
#include "profile.h"
#include "script.h"
#include "store.h"
#include "strbuf.h"

#define MAX_PROFILE_SECONDS 3600

static void pack_kv_str(msgpack_packer *pk, const char *key, const char *value)
{
	sonde_control__pack_str(pk, key);
	if (value)
		sonde_control__pack_str(pk, value);
	else
		msgpack_pack_nil(pk);
}

static void pack_kv_uint(msgpack_packer *pk, const char *key, uint64_t value)
{
	sonde_control__pack_str(pk, key);
	msgpack_pack_uint64(pk, value);
}

/* ---- status ----------------------------------------------------------- */

struct count {
	uint32_t n;
	msgpack_packer *pk;
};

static void count_plugin(void *ctx, const char *name, const char *version, const char *path)
{
	((struct count *)ctx)->n++;
}

static void pack_plugin(void *ctx, const char *name, const char *version, const char *path)
{
	msgpack_packer *pk = ctx;

	msgpack_pack_map(pk, 3);
	pack_kv_str(pk, "name", name);
	pack_kv_str(pk, "version", version);
	pack_kv_str(pk, "path", path);
}

static int fill_status(void *ctx, msgpack_packer *pk)
{
	struct sonde_daemon *d = ctx;
	uint64_t stats[SONDE_STAT__COUNT] = { 0 };
	struct sonde_procs_stats ps;
	struct count plugins = { 0 };

	sonde_bpf_host__stats(d->host, stats);
	sonde_procs__stats(d->procs, &ps);
	sonde_plugins__for_each(d->plugins, count_plugin, &plugins);
	pack_kv_str(pk, "version", SONDE_VERSION);
	pack_kv_uint(pk, "uptime", (sonde_now_ns() - d->started_ns) / 1000000000ULL);
	pack_kv_uint(pk, "hz", d->cfg.hz);
	pack_kv_uint(pk, "window", d->cfg.window_s);
	pack_kv_uint(pk, "cpus", sonde_bpf_host__cpus(d->host));
	pack_kv_str(pk, "script", d->opts->script);
	sonde_control__pack_str(pk, "plugins");
	msgpack_pack_array(pk, plugins.n);
	sonde_plugins__for_each(d->plugins, pack_plugin, pk);
	pack_kv_uint(pk, "samples", stats[SONDE_STAT_SAMPLES]);
	pack_kv_uint(pk, "dropped", stats[SONDE_STAT_RINGBUF_DROPS]);
	pack_kv_uint(pk, "processes", ps.processes);
	pack_kv_uint(pk, "windows_kept", sonde_store__windows(d->store));
	return 11;
}

/* ---- ps --------------------------------------------------------------- */

struct ps_ctx {
	struct sonde_daemon *d;
	msgpack_packer *pk;
	uint32_t n;
};

static void count_live(void *ctx, struct sonde_proc *proc)
{
	struct ps_ctx *c = ctx;

	if (!proc->exit_ns)
		c->n++;
}

/* The plugins' own word on a process (they may change it after attaching). */
struct verdicts {
	struct {
		const char *plugin, *reason;
		bool attached;
	} v[2 * SONDE_POLICY_MAX_UNWINDERS];
	uint32_t n;
};

static void collect_verdict(void *ctx, const char *plugin, bool attached, const char *reason)
{
	struct verdicts *vs = ctx;

	if (vs->n < sizeof(vs->v) / sizeof(vs->v[0])) {
		vs->v[vs->n].plugin = plugin;
		vs->v[vs->n].reason = reason;
		vs->v[vs->n].attached = attached;
		vs->n++;
	}
}

static bool still_attached(const struct verdicts *vs, const char *plugin)
{
	uint32_t i;

	for (i = 0; i < vs->n; i++)
		if (strcmp(vs->v[i].plugin, plugin) == 0)
			return vs->v[i].attached;
	return true;
}

/* Names in list that their plugin has not dropped since. */
static void pack_attached(msgpack_packer *pk, const char *key, char *const *list, uint32_t n,
			  const struct verdicts *vs)
{
	uint32_t i, k = 0;

	for (i = 0; i < n; i++)
		k += still_attached(vs, list[i]);
	sonde_control__pack_str(pk, key);
	msgpack_pack_array(pk, k);
	for (i = 0; i < n; i++)
		if (still_attached(vs, list[i]))
			sonde_control__pack_str(pk, list[i]);
}

static void pack_process(void *ctx, struct sonde_proc *proc)
{
	struct ps_ctx *c = ctx;
	const struct sonde_policy_entry *pe;
	struct verdicts vs = { .n = 0 };
	msgpack_packer *pk = c->pk;
	uint32_t i, ndeclined = 0, nnotes = 0;

	if (proc->exit_ns)
		return;
	pe = sonde_policy__get(c->d->policy, proc->pid);
	sonde_plugins__for_each_decision(c->d->plugins, proc->pid, collect_verdict, &vs);
	for (i = 0; i < vs.n; i++) {
		ndeclined += !vs.v[i].attached;
		nnotes += vs.v[i].attached && vs.v[i].reason[0];
	}
	for (i = 0; pe && i < pe->ndeclined; i++) /* plugins that never saw it */
		ndeclined += strcmp(pe->declined[i].reason, "plugin not loaded") == 0;
	msgpack_pack_map(pk, 10);
	pack_kv_uint(pk, "pid", proc->pid);
	pack_kv_str(pk, "comm", proc->comm);
	pack_kv_str(pk, "exe", proc->exe);
	pack_kv_str(pk, "container_id", proc->container_id[0] ? proc->container_id : NULL);
	sonde_control__pack_str(pk, "profiled");
	if (!pe || pe->profiled)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	pack_attached(pk, "unwinders", pe ? pe->unwinders : NULL, pe ? pe->nunwinders : 0, &vs);
	pack_attached(pk, "plugins", pe ? pe->plugins : NULL, pe ? pe->nplugins : 0, &vs);
	sonde_control__pack_str(pk, "declined");
	msgpack_pack_array(pk, ndeclined);
	for (i = 0; i < vs.n; i++) {
		if (vs.v[i].attached)
			continue;
		msgpack_pack_map(pk, 2);
		pack_kv_str(pk, "plugin", vs.v[i].plugin);
		pack_kv_str(pk, "reason", vs.v[i].reason);
	}
	for (i = 0; pe && i < pe->ndeclined; i++) {
		if (strcmp(pe->declined[i].reason, "plugin not loaded") != 0)
			continue;
		msgpack_pack_map(pk, 2);
		pack_kv_str(pk, "plugin", pe->declined[i].plugin);
		pack_kv_str(pk, "reason", pe->declined[i].reason);
	}
	sonde_control__pack_str(pk, "notes");
	msgpack_pack_array(pk, nnotes);
	for (i = 0; i < vs.n; i++) {
		if (!vs.v[i].attached || !vs.v[i].reason[0])
			continue;
		msgpack_pack_map(pk, 2);
		pack_kv_str(pk, "plugin", vs.v[i].plugin);
		pack_kv_str(pk, "note", vs.v[i].reason);
	}
	sonde_control__pack_str(pk, "labels");
	msgpack_pack_map(pk, pe ? pe->nlabels : 0);
	for (i = 0; pe && i < pe->nlabels; i++)
		pack_kv_str(pk, pe->labels[i].key, pe->labels[i].value);
}

static int fill_ps(void *ctx, msgpack_packer *pk)
{
	struct ps_ctx c = { .d = ctx, .pk = pk };

	sonde_procs__for_each(c.d->procs, count_live, &c);
	sonde_control__pack_str(pk, "processes");
	msgpack_pack_array(pk, c.n);
	sonde_procs__for_each(c.d->procs, pack_process, &c);
	return 1;
}

/* ---- profile ---------------------------------------------------------- */

struct encoded {
	bool folded;
	const void *data;
	size_t len;
};

static int fill_profile(void *ctx, msgpack_packer *pk)
{
	struct encoded *e = ctx;

	pack_kv_str(pk, "format", e->folded ? "folded" : "pprof");
	sonde_control__pack_str(pk, "data");
	msgpack_pack_bin(pk, e->len);
	msgpack_pack_bin_body(pk, e->data, e->len);
	return 2;
}

static void answer_profile(struct sonde_control_req *req, struct sonde_profile *p, bool folded)
{
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	struct encoded e = { .folded = folded };
	uint8_t *data = NULL;
	int err;

	if (folded) {
		err = sonde_profile__folded(p, &sb);
		e.data = sb.data ? sb.data : "";
		e.len = sb.len;
	} else {
		err = sonde_profile__pprof(p, &data, &e.len);
		e.data = data;
	}
	if (err || sonde_control_req__reply(req, fill_profile, &e))
		sonde_control_req__fail(req, "cannot encode the profile: %s", strerror(-err));
	free(data);
	sonde_strbuf__release(&sb);
}

static void on_pending_done(struct pending_profile *p)
{
	answer_profile(p->req, p->profile, p->folded);
}

static bool arg_int(const msgpack_object *args, const char *key, int64_t lo, int64_t hi,
		    int64_t *out, bool *bad)
{
	const msgpack_object *o = sonde_control__arg(args, key);

	if (!o)
		return false;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
		*out = (int64_t)o->via.u64;
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		*out = o->via.i64;
	else
		*bad = true;
	if (!*bad && (*out < lo || *out > hi))
		*bad = true;
	return true;
}

static void handle_profile(struct sonde_daemon *d, struct sonde_control_req *req,
			   const msgpack_object *args)
{
	struct sonde_profile_opts filter = { .period_ns = daemon_period_ns(d) };
	const msgpack_object *fmt = sonde_control__arg(args, "format");
	const msgpack_object *comm = sonde_control__arg(args, "comm");
	char comm_buf[SONDE_COMM_LEN];
	int64_t seconds = 0, since = 0, until = 0, pid = 0;
	bool bad = false, has_seconds, has_since, has_until, folded = false;
	struct pending_profile *pp;
	struct sonde_profile *p;
	int merged;

	has_seconds = arg_int(args, "seconds", 1, MAX_PROFILE_SECONDS, &seconds, &bad);
	has_since = arg_int(args, "since", 0, INT64_MAX / 1000000000LL, &since, &bad);
	has_until = arg_int(args, "until", 0, INT64_MAX / 1000000000LL, &until, &bad);
	arg_int(args, "pid", 1, UINT32_MAX, &pid, &bad);
	if (bad) {
		sonde_control_req__fail(req, "seconds (1..3600), since, until and pid must be "
					     "whole numbers");
		return;
	}
	if (fmt && fmt->type == MSGPACK_OBJECT_STR && fmt->via.str.size == 6 &&
	    memcmp(fmt->via.str.ptr, "folded", 6) == 0)
		folded = true;
	else if (fmt && !(fmt->type == MSGPACK_OBJECT_STR && fmt->via.str.size == 5 &&
			  memcmp(fmt->via.str.ptr, "pprof", 5) == 0)) {
		sonde_control_req__fail(req, "format must be \"pprof\" or \"folded\"");
		return;
	}
	if (comm) {
		if (comm->type != MSGPACK_OBJECT_STR || comm->via.str.size >= sizeof(comm_buf)) {
			sonde_control_req__fail(req, "comm must be a command name of at most 15 bytes");
			return;
		}
		memcpy(comm_buf, comm->via.str.ptr, comm->via.str.size);
		comm_buf[comm->via.str.size] = '\0';
		filter.comm = comm_buf;
	}
	filter.pid = (uint32_t)pid;
	if (has_seconds == (has_since || has_until) || has_since != has_until) {
		sonde_control_req__fail(req, "give either seconds, or since and until");
		return;
	}
	if (has_seconds) {
		pp = daemon_pending_new(d, (unsigned long)seconds, &filter, on_pending_done);
		if (!pp) {
			sonde_control_req__fail(req, "out of memory");
			return;
		}
		pp->req = req;
		pp->folded = folded;
		return;
	}
	/* A past range: the windows kept, and the current one. */
	p = sonde_profile__new(&filter);
	if (!p) {
		sonde_control_req__fail(req, "out of memory");
		return;
	}
	daemon_drain(d);
	merged = sonde_store__query(d->store, since * 1000000000LL, until * 1000000000LL, p);
	if (merged >= 0 && sonde_profile__start_ns(d->window) <= until * 1000000000LL)
		merged = sonde_profile__merge(p, d->window);
	if (merged < 0)
		sonde_control_req__fail(req, "out of memory");
	else
		answer_profile(req, p, folded);
	sonde_profile__free(p);
}

/* ---- reload ----------------------------------------------------------- */

static int fill_reload(void *ctx, msgpack_packer *pk)
{
	struct sonde_daemon *d = ctx;

	pack_kv_str(pk, "script", d->opts->script);
	return 1;
}

void daemon_on_control(void *ctx, struct sonde_control_req *req, const char *cmd,
		       const struct msgpack_object *args)
{
	struct sonde_daemon *d = ctx;
	char err[512];

	if (strcmp(cmd, "status") == 0) {
		daemon_drain(d);
		sonde_control_req__reply(req, fill_status, d);
	} else if (strcmp(cmd, "ps") == 0) {
		sonde_control_req__reply(req, fill_ps, d);
	} else if (strcmp(cmd, "profile") == 0) {
		handle_profile(d, req, args);
	} else if (strcmp(cmd, "reload") == 0) {
		if (daemon_reload(d, err, sizeof(err)))
			sonde_control_req__fail(req, "reload failed, the old script stays: %s", err);
		else
			sonde_control_req__reply(req, fill_reload, d);
	} else {
		sonde_control_req__fail(req, "unknown command \"%s\" (status, ps, profile, reload)",
					cmd);
	}
}
