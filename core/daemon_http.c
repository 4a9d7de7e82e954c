// SPDX-License-Identifier: MIT
/* The daemon's HTTP pages: /metrics, /debug/pprof/profile and the index. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_priv.h"
#include "export.h"
#include "http.h"
#include "metrics.h"
#include "plugin.h"
#include "profile.h"
#include "script.h"
#include "store.h"
#include "strbuf.h"
#include "tagwait.h"

#define MAX_PROFILE_SECONDS 3600

static void answer_profile(struct pending_profile *p)
{
	uint8_t *data = NULL;
	size_t len = 0;

	if (sonde_profile__pprof(p->profile, &data, &len))
		sonde_http_conn__error(p->conn, 500, "cannot encode the profile");
	else
		sonde_http_conn__respond(p->conn, 200, "application/octet-stream", data, len);
	free(data);
}

static void on_client_gone(void *ctx)
{
	struct pending_profile *p = ctx;

	daemon_pending_forget(p->d, p);
}

static int query_uint(struct sonde_http_conn *conn, const char *query, const char *key,
		      unsigned long lo, unsigned long hi, unsigned long *out)
{
	char value[32], *end;
	int r = sonde_http_query_get(query, key, value, sizeof(value));

	if (r == 0)
		return 0;
	errno = 0;
	if (r == 1)
		*out = strtoul(value, &end, 10);
	if (r < 0 || errno || end == value || *end || *out < lo || *out > hi) {
		char msg[96];

		snprintf(msg, sizeof(msg), "%s must be a whole number from %lu to %lu", key, lo, hi);
		sonde_http_conn__error(conn, 400, msg);
		return -EINVAL;
	}
	return 1;
}

/* Query parameters that select samples by one of their labels: those a
 * plugin's thread tags add (red-metrics: the request being served). */
static const char *const label_params[] = { "http_route", "http_request_method" };
#define LABEL_VALUE_MAX 256

static void serve_profile(struct sonde_daemon *d, struct sonde_http_conn *conn, const char *query)
{
	struct sonde_profile_label match[SONDE_PROFILE_MAX_MATCH];
	char values[SONDE_PROFILE_MAX_MATCH][LABEL_VALUE_MAX];
	struct sonde_profile_opts filter = { .match = match };
	char comm[SONDE_COMM_LEN];
	size_t i;
	unsigned long seconds = 30, pid = 0;
	struct pending_profile *p;
	int r;

	if (query_uint(conn, query, "seconds", 1, MAX_PROFILE_SECONDS, &seconds) < 0 ||
	    query_uint(conn, query, "pid", 1, UINT32_MAX, &pid) < 0)
		return;
	filter.pid = pid;
	r = sonde_http_query_get(query, "comm", comm, sizeof(comm));
	if (r < 0) {
		sonde_http_conn__error(conn, 400, "comm must be a command name of at most 15 bytes");
		return;
	}
	if (r == 1)
		filter.comm = comm;
	for (i = 0; i < sizeof(label_params) / sizeof(label_params[0]); i++) {
		char *v = values[filter.nmatch];

		r = sonde_http_query_get(query, label_params[i], v, LABEL_VALUE_MAX);
		if (r < 0) {
			char msg[96];

			snprintf(msg, sizeof(msg), "%s must be percent-encoded text of at most %d bytes",
				 label_params[i], LABEL_VALUE_MAX - 1);
			sonde_http_conn__error(conn, 400, msg);
			return;
		}
		if (r == 1)
			match[filter.nmatch++] = (struct sonde_profile_label){ label_params[i], v };
	}
	p = daemon_pending_new(d, seconds, &filter, answer_profile);
	if (!p) {
		sonde_http_conn__error(conn, 503, "out of memory");
		return;
	}
	p->conn = conn;
	sonde_http_conn__defer(conn, on_client_gone, p);
}

static void script_metrics(struct sonde_daemon *d, struct sonde_strbuf *out)
{
	struct sonde_script_stats s = { 0 };

	if (d->script)
		sonde_script__stats(d->script, &s);
	sonde_strbuf__printf(out,
			     "# HELP sonde_script_errors_total Script callbacks that failed, by reason.\n"
			     "# TYPE sonde_script_errors_total counter\n"
			     "sonde_script_errors_total{reason=\"error\"} %llu\n"
			     "sonde_script_errors_total{reason=\"budget\"} %llu\n"
			     "sonde_script_errors_total{reason=\"memory\"} %llu\n"
			     "# HELP sonde_script_reloads_total Script reloads, by result.\n"
			     "# TYPE sonde_script_reloads_total counter\n"
			     "sonde_script_reloads_total{result=\"ok\"} %llu\n"
			     "sonde_script_reloads_total{result=\"failed\"} %llu\n",
			     (unsigned long long)s.errors, (unsigned long long)s.budget_overruns,
			     (unsigned long long)s.memory_overruns,
			     (unsigned long long)d->script_reloads,
			     (unsigned long long)d->script_reload_failures);
}

static void serve_metrics(struct sonde_daemon *d, struct sonde_http_conn *conn)
{
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	struct sonde_metrics_sources src = {
		.host = d->host,
		.sym = d->sym,
		.procs = d->procs,
		.sideband = d->sideband,
		.counters = &d->counters,
	};

	d->counters.samples_tag_waiting = sonde_tagwait__count(d->tagwait);
	sonde_metrics_write(&src, &sb);
	script_metrics(d, &sb);
	if (d->plugins)
		sonde_plugins__metrics(d->plugins, &sb);
	if (d->export)
		sonde_strbuf__printf(&sb,
				     "# HELP sonde_export_messages_total Messages on the export "
				     "socket, by result.\n"
				     "# TYPE sonde_export_messages_total counter\n"
				     "sonde_export_messages_total{result=\"sent\"} %llu\n"
				     "sonde_export_messages_total{result=\"dropped\"} %llu\n",
				     (unsigned long long)sonde_export__sent(d->export),
				     (unsigned long long)sonde_export__dropped(d->export));
	sonde_strbuf__printf(&sb,
			     "# HELP sonde_store_windows Profile windows kept in memory.\n"
			     "# TYPE sonde_store_windows gauge\n"
			     "sonde_store_windows %zu\n"
			     "# HELP sonde_store_bytes Memory the kept windows hold.\n"
			     "# TYPE sonde_store_bytes gauge\n"
			     "sonde_store_bytes %zu\n",
			     sonde_store__windows(d->store), sonde_store__bytes(d->store));
	if (sonde_strbuf__error(&sb))
		sonde_http_conn__error(conn, 503, "out of memory");
	else
		sonde_http_conn__respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
					 sb.data, sb.len);
	sonde_strbuf__release(&sb);
}

static const char index_page[] =
	"sonded " SONDE_VERSION "\n"
	"\n"
	"/metrics                 Prometheus self metrics\n"
	"/debug/pprof/profile     CPU profile of the node: ?seconds=N (default 30),\n"
	"                         &pid=N or &comm=NAME to narrow it, or\n"
	"                         &http_route=R, &http_request_method=M (samples taken\n"
	"                         while a thread served such a request; red-metrics);\n"
	"                         go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=10\n";

void daemon_on_http(void *ctx, struct sonde_http_conn *conn, const struct sonde_http_request *req)
{
	struct sonde_daemon *d = ctx;

	if (strcmp(req->path, "/metrics") == 0)
		serve_metrics(d, conn);
	else if (strcmp(req->path, "/debug/pprof/profile") == 0)
		serve_profile(d, conn, req->query);
	else if (strcmp(req->path, "/") == 0 || strcmp(req->path, "/debug/pprof/") == 0)
		sonde_http_conn__respond(conn, 200, NULL, index_page, sizeof(index_page) - 1);
	else
		sonde_http_conn__error(conn, 404, "not found: see / for what sonded serves");
}
