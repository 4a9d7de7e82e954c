// SPDX-License-Identifier: MIT
/*
 * Exchanges in flight are keyed by (tgid, fd) and carry the connection's
 * gen: a record of another gen means the fd was reused without a close we
 * saw, so what was in flight ends there. Series live for the daemon's
 * lifetime (no TTL yet); the route cap bounds how many a service can make.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "red.h"
#include "red_agg.h"
#include "red_http.h"

#define OVERFLOW_ROUTE "_OTHER"

static const double duration_bounds[] = {0,   0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
					 0.5, 0.75,  1,	   2.5,	  5,	7.5,   10};
#define N_DURATION (sizeof(duration_bounds) / sizeof(duration_bounds[0]))
static const double size_bounds[] = {0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
#define N_SIZE (sizeof(size_bounds) / sizeof(size_bounds[0]))

/* A byte-keyed chained hash table; values are the caller's. */
struct map_entry {
	struct map_entry *next;
	uint64_t hash;
	void *value;
	size_t keylen;
	char key[];
};

struct map {
	struct map_entry **buckets;
	size_t nbuckets, count;
};

static uint64_t hash_bytes(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	h ^= h >> 31;
	return h * 0x9e3779b97f4a7c15ULL;
}

static struct map_entry **map_slot(const struct map *m, const void *key, size_t keylen, uint64_t h)
{
	struct map_entry **e = &m->buckets[h & (m->nbuckets - 1)];

	for (; *e; e = &(*e)->next)
		if ((*e)->hash == h && (*e)->keylen == keylen && !memcmp((*e)->key, key, keylen))
			return e;
	return e;
}

static void *map_get(const struct map *m, const void *key, size_t keylen)
{
	struct map_entry **e;

	if (!m->nbuckets)
		return NULL;
	e = map_slot(m, key, keylen, hash_bytes(key, keylen));
	return *e ? (*e)->value : NULL;
}

static int map_grow(struct map *m)
{
	size_t n = m->nbuckets ? m->nbuckets * 2 : 64, i;
	struct map_entry **b = calloc(n, sizeof(*b)), *e, *next;

	if (!b)
		return -ENOMEM;
	for (i = 0; i < m->nbuckets; i++) {
		for (e = m->buckets[i]; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
	return 0;
}

/* Sets key to value (a new entry; the key must not be there). */
static int map_put(struct map *m, const void *key, size_t keylen, void *value)
{
	uint64_t h = hash_bytes(key, keylen);
	struct map_entry **slot, *e;

	if (m->count >= m->nbuckets && map_grow(m))
		return -ENOMEM;
	slot = map_slot(m, key, keylen, h);
	e = malloc(sizeof(*e) + keylen);
	if (!e)
		return -ENOMEM;
	e->next = NULL;
	e->hash = h;
	e->value = value;
	e->keylen = keylen;
	memcpy(e->key, key, keylen);
	*slot = e;
	m->count++;
	return 0;
}

/* Removes key; its value, or NULL. */
static void *map_del(struct map *m, const void *key, size_t keylen)
{
	struct map_entry **slot, *e;
	void *v;

	if (!m->nbuckets)
		return NULL;
	slot = map_slot(m, key, keylen, hash_bytes(key, keylen));
	e = *slot;
	if (!e)
		return NULL;
	*slot = e->next;
	v = e->value;
	free(e);
	m->count--;
	return v;
}

static void map_clear(struct map *m, void (*free_value)(void *))
{
	struct map_entry *e, *next;
	size_t i;

	for (i = 0; i < m->nbuckets; i++) {
		for (e = m->buckets[i]; e; e = next) {
			next = e->next;
			if (free_value)
				free_value(e->value);
			free(e);
		}
	}
	free(m->buckets);
	memset(m, 0, sizeof(*m));
}

struct series {
	struct series *next;		   /* in creation order, for stable output */
	char *labels;			   /* the label set, Prometheus text, without braces */
	uint64_t duration[N_DURATION + 1]; /* per bound, +Inf last; not cumulative */
	double duration_sum;
	uint64_t req_size[N_SIZE + 1], resp_size[N_SIZE + 1];
	double req_size_sum, resp_size_sum;
	uint64_t count;
};

/* An exchange in flight on one connection. */
struct pending {
	uint32_t tgid, fd;
	uint64_t gen;
	uint16_t port;
	bool has_resp;
	const char *method;
	char route[SONDE_RED_ROUTE_MAX];
	bool is_head;
	int64_t req_clen;
	uint64_t start_ns, last_ns;
	int status;
	int64_t resp_clen;   /* -1 unknown */
	int64_t resp_expect; /* head + body bytes; -1 unknown */
	size_t resp_head_len;
	uint64_t resp_written;
};

struct service_routes {
	unsigned int count;
};

static char route_present; /* the value of every routes entry */

struct sonde_red_agg {
	struct sonde_red_agg_opts opts;
	struct sonde_red_agg_stats stats;
	struct map services;	 /* tgid -> char *name */
	struct map routes;	 /* "name\0route" -> &route_present */
	struct map route_counts; /* "name" -> struct service_routes */
	struct map series;	 /* labels -> struct series */
	struct map pending;	 /* (tgid, fd) -> struct pending */
	struct series *first, **tail;
};

struct sonde_red_agg *sonde_red_agg__new(const struct sonde_red_agg_opts *opts)
{
	struct sonde_red_agg *agg = calloc(1, sizeof(*agg));

	if (!agg)
		return NULL;
	agg->opts.max_routes = opts && opts->max_routes ? opts->max_routes : 100;
	agg->opts.max_pending = opts && opts->max_pending ? opts->max_pending : 65536;
	agg->tail = &agg->first;
	return agg;
}

static void free_series(void *v)
{
	struct series *s = v;

	if (s)
		free(s->labels);
	free(s);
}

void sonde_red_agg__free(struct sonde_red_agg *agg)
{
	if (!agg)
		return;
	map_clear(&agg->services, free);
	map_clear(&agg->routes, NULL);
	map_clear(&agg->route_counts, free);
	map_clear(&agg->series, free_series);
	map_clear(&agg->pending, free);
	free(agg);
}

int sonde_red_agg__set_service(struct sonde_red_agg *agg, uint32_t tgid, const char *name)
{
	char *copy = strdup(name), *old;

	if (!copy)
		return -ENOMEM;
	old = map_del(&agg->services, &tgid, sizeof(tgid));
	free(old);
	if (map_put(&agg->services, &tgid, sizeof(tgid), copy)) {
		free(copy);
		return -ENOMEM;
	}
	return 0;
}

void sonde_red_agg__forget(struct sonde_red_agg *agg, uint32_t tgid)
{
	struct map_entry *e, *next;
	size_t i;

	free(map_del(&agg->services, &tgid, sizeof(tgid)));
	for (i = 0; i < agg->pending.nbuckets; i++) {
		for (e = agg->pending.buckets[i]; e; e = next) {
			next = e->next;
			if (((struct pending *)e->value)->tgid == tgid)
				free(map_del(&agg->pending, e->key, e->keylen));
		}
	}
}

const struct sonde_red_agg_stats *sonde_red_agg__stats(const struct sonde_red_agg *agg)
{
	return &agg->stats;
}

/* Label values are ours or templated, but a comm can hold anything. */
static void put_label(char **p, const char *start, char *end, const char *name, const char *value)
{
	int n = snprintf(*p, (size_t)(end - *p), "%s%s=\"", *p > start ? "," : "", name);

	if (n < 0 || n >= end - *p)
		return;
	*p += n;
	for (; *value && *p + 3 < end; value++) {
		if (*value == '\\' || *value == '"' || *value == '\n') {
			*(*p)++ = '\\';
			*(*p)++ = *value == '\n' ? 'n' : *value;
		} else {
			*(*p)++ = *value;
		}
	}
	if (*p + 1 < end)
		*(*p)++ = '"';
	**p = '\0';
}

/* The route as exported: the templated one, or _OTHER once the service
 * has max_routes others. */
static const char *cap_route(struct sonde_red_agg *agg, const char *service, const char *route)
{
	size_t sl = strlen(service), rl = strlen(route);
	char key[512];
	struct service_routes *sr;

	if (sl + 1 + rl > sizeof(key))
		return OVERFLOW_ROUTE;
	memcpy(key, service, sl + 1);
	memcpy(key + sl + 1, route, rl);
	if (map_get(&agg->routes, key, sl + 1 + rl))
		return route;
	sr = map_get(&agg->route_counts, service, sl);
	if (!sr) {
		sr = calloc(1, sizeof(*sr));
		if (!sr || map_put(&agg->route_counts, service, sl, sr)) {
			free(sr);
			return OVERFLOW_ROUTE;
		}
	}
	if (sr->count >= agg->opts.max_routes) {
		agg->stats.route_overflow++;
		return OVERFLOW_ROUTE;
	}
	if (map_put(&agg->routes, key, sl + 1 + rl, &route_present))
		return OVERFLOW_ROUTE;
	sr->count++;
	return route;
}

static struct series *get_series(struct sonde_red_agg *agg, const struct pending *x)
{
	const char *service = map_get(&agg->services, &x->tgid, sizeof(x->tgid));
	char labels[1024] = "", *p = labels, *end = labels + sizeof(labels);
	char status[16], port[16];
	struct series *s;
	size_t len;

	if (!service)
		service = "unknown_service";
	snprintf(status, sizeof(status), "%d", x->status);
	snprintf(port, sizeof(port), "%u", x->port);
	put_label(&p, labels, end, "service_name", service);
	put_label(&p, labels, end, "http_request_method", x->method);
	put_label(&p, labels, end, "http_response_status_code", status);
	put_label(&p, labels, end, "http_route", cap_route(agg, service, x->route));
	put_label(&p, labels, end, "url_scheme", "http");
	put_label(&p, labels, end, "server_port", port);
	if (x->status >= 500)
		put_label(&p, labels, end, "error_type", status); /* semconv: the status for 5xx */
	len = (size_t)(p - labels);
	s = map_get(&agg->series, labels, len);
	if (s)
		return s;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->labels = strdup(labels);
	if (!s->labels || map_put(&agg->series, labels, len, s)) {
		free_series(s);
		return NULL;
	}
	*agg->tail = s;
	agg->tail = &s->next;
	return s;
}

static void observe(uint64_t *buckets, const double *bounds, size_t n, double v)
{
	size_t i;

	for (i = 0; i < n && v > bounds[i]; i++)
		;
	buckets[i]++;
}

/* The exchange is over: into its series, and out of the pending table. */
static void finish(struct sonde_red_agg *agg, struct pending *x)
{
	struct series *s = get_series(agg, x);
	double d = (double)(x->last_ns - x->start_ns) / 1e9, req, resp;

	if (!s)
		goto out;
	req = x->req_clen > 0 ? (double)x->req_clen : 0;
	if (x->resp_clen >= 0)
		resp = (double)x->resp_clen;
	else if (x->resp_head_len && x->resp_written >= x->resp_head_len)
		resp = (double)(x->resp_written - x->resp_head_len);
	else
		resp = (double)x->resp_written;
	if (x->is_head || x->status == 204 || x->status == 304)
		resp = 0;
	observe(s->duration, duration_bounds, N_DURATION, d);
	observe(s->req_size, size_bounds, N_SIZE, req);
	observe(s->resp_size, size_bounds, N_SIZE, resp);
	s->duration_sum += d;
	s->req_size_sum += req;
	s->resp_size_sum += resp;
	s->count++;
	agg->stats.requests++;
out:
	free(map_del(&agg->pending, &x->tgid, 2 * sizeof(uint32_t)));
}

/* Ends what is in flight on x's connection for a reason other than its
 * length: the next request (close false) or the close. */
static void end_early(struct sonde_red_agg *agg, struct pending *x, bool close)
{
	if (x->has_resp) {
		if (close)
			agg->stats.forced_close++;
		else
			agg->stats.forced_next++;
		finish(agg, x);
		return;
	}
	if (close)
		agg->stats.aborted++;
	else
		agg->stats.unpaired++;
	free(map_del(&agg->pending, &x->tgid, 2 * sizeof(uint32_t)));
}

static void maybe_complete(struct sonde_red_agg *agg, struct pending *x)
{
	if (x->resp_expect >= 0 && x->resp_written >= (uint64_t)x->resp_expect)
		finish(agg, x);
}

static void on_request(struct sonde_red_agg *agg, const struct red_event *ev, struct pending *x)
{
	struct sonde_red_request req;

	if (sonde_red_parse_request(ev + 1, ev->len, &req)) {
		agg->stats.bad_heads++;
		return;
	}
	if (x)
		end_early(agg, x, false);
	if (agg->pending.count >= agg->opts.max_pending) {
		agg->stats.pending_full++;
		return;
	}
	x = calloc(1, sizeof(*x));
	if (!x)
		return;
	x->tgid = ev->tgid;
	x->fd = ev->fd;
	x->gen = ev->gen;
	x->port = ev->lport;
	x->method = req.method;
	x->is_head = req.is_head;
	if (req.line_complete && req.path[0])
		sonde_red_route(req.path, x->route, sizeof(x->route));
	else
		snprintf(x->route, sizeof(x->route), "%s", OVERFLOW_ROUTE); /* target cut */
	x->req_clen = req.content_length;
	x->start_ns = ev->ts;
	x->last_ns = ev->ts;
	x->resp_clen = -1;
	x->resp_expect = -1;
	if (map_put(&agg->pending, &x->tgid, 2 * sizeof(uint32_t), x))
		free(x);
}

static void on_response(struct sonde_red_agg *agg, const struct red_event *ev, struct pending *x)
{
	struct sonde_red_response resp;
	int64_t body;

	if (!x) {
		agg->stats.unpaired++;
		return;
	}
	if (x->has_resp) {
		/* "HTTP/1." at the start of a write of the body */
		x->resp_written += (uint64_t)ev->bytes;
		x->last_ns = ev->ts;
		maybe_complete(agg, x);
		return;
	}
	if (sonde_red_parse_response(ev + 1, ev->len, &resp)) {
		agg->stats.bad_heads++;
		return;
	}
	if (resp.status < 200 && resp.status != 101)
		return; /* interim (100 Continue): the real one follows */
	x->has_resp = true;
	x->status = resp.status;
	x->resp_written = (uint64_t)ev->bytes;
	x->resp_head_len = resp.head_len;
	x->last_ns = ev->ts;
	if (x->is_head || resp.status == 204 || resp.status == 304 || resp.status == 101)
		body = 0;
	else if (!resp.chunked)
		body = resp.content_length;
	else
		body = -1;
	x->resp_clen = resp.chunked ? -1 : resp.content_length;
	if (resp.head_len && body >= 0)
		x->resp_expect = (int64_t)resp.head_len + body;
	maybe_complete(agg, x);
}

int sonde_red_agg__event(struct sonde_red_agg *agg, const void *rec, size_t size)
{
	const struct red_event *ev = rec;
	uint32_t key[2];
	struct pending *x;

	if (size < sizeof(*ev) || size < sizeof(*ev) + ev->len)
		return -EINVAL;
	key[0] = ev->tgid;
	key[1] = ev->fd;
	x = map_get(&agg->pending, key, sizeof(key));
	if (x && x->gen != ev->gen) {
		/* the fd was reused under us: its old exchange ended unseen */
		end_early(agg, x, true);
		x = NULL;
	}
	switch (ev->type) {
	case RED_EV_REQ:
		on_request(agg, ev, x);
		return 0;
	case RED_EV_RESP:
		on_response(agg, ev, x);
		return 0;
	case RED_EV_DATA:
		if (x && x->has_resp) {
			x->resp_written += (uint64_t)ev->bytes;
			x->last_ns = ev->ts;
			maybe_complete(agg, x);
		}
		return 0;
	case RED_EV_CLOSE:
		if (x)
			end_early(agg, x, true);
		return 0;
	default:
		return -EINVAL;
	}
}

static void write_histogram(FILE *out, const char *name, const struct series *s,
			    const uint64_t *buckets, const double *bounds, size_t n, double sum)
{
	uint64_t cum = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		cum += buckets[i];
		fprintf(out, "%s_bucket{%s,le=\"%g\"} %llu\n", name, s->labels, bounds[i],
			(unsigned long long)cum);
	}
	cum += buckets[n];
	fprintf(out, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, s->labels, (unsigned long long)cum);
	fprintf(out, "%s_sum{%s} %.9g\n", name, s->labels, sum);
	fprintf(out, "%s_count{%s} %llu\n", name, s->labels, (unsigned long long)s->count);
}

int sonde_red_agg__write(const struct sonde_red_agg *agg, FILE *out)
{
	const struct series *s;

	fputs("# HELP http_server_request_duration_seconds Duration of HTTP service calls from "
	      "the server side, in seconds.\n"
	      "# TYPE http_server_request_duration_seconds histogram\n",
	      out);
	for (s = agg->first; s; s = s->next)
		write_histogram(out, "http_server_request_duration_seconds", s, s->duration,
				duration_bounds, N_DURATION, s->duration_sum);
	fputs("# HELP http_server_request_body_size_bytes Size, in bytes, of the HTTP request "
	      "body as received at the server side.\n"
	      "# TYPE http_server_request_body_size_bytes histogram\n",
	      out);
	for (s = agg->first; s; s = s->next)
		write_histogram(out, "http_server_request_body_size_bytes", s, s->req_size,
				size_bounds, N_SIZE, s->req_size_sum);
	fputs("# HELP http_server_response_body_size_bytes Size, in bytes, of the HTTP response "
	      "body as sent by the server side.\n"
	      "# TYPE http_server_response_body_size_bytes histogram\n",
	      out);
	for (s = agg->first; s; s = s->next)
		write_histogram(out, "http_server_response_body_size_bytes", s, s->resp_size,
				size_bounds, N_SIZE, s->resp_size_sum);
	return ferror(out) ? -EIO : 0;
}
