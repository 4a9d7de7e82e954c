// SPDX-License-Identifier: MIT
/*
 * BPF pairs and frames the exchanges (red.bpf.c); what is left here is
 * naming them: the request head gives method and route, the record the
 * rest. The route cap bounds how many series a service can make; the TTL
 * (series_ttl_ns) drops those that stopped counting, which frees their
 * route's place under the cap. The script's route hook is Lua under a
 * budget: its answers are cached by what it is asked about, so a service
 * with a handful of routes costs a handful of calls, whatever its rate.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "red.h"
#include "red_agg.h"
#include "red_http.h"
#include "red_tags.h"

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

/* The three histograms of a series. */
struct hists {
	uint64_t duration[N_DURATION + 1]; /* per bound, +Inf last; not cumulative */
	double duration_sum;
	uint64_t req_size[N_SIZE + 1], resp_size[N_SIZE + 1];
	double req_size_sum, resp_size_sum;
	uint64_t count;
};

struct series {
	struct series *next; /* in creation order, for stable output */
	char *labels;	     /* the label set, Prometheus text, without braces */
	char *service;
	const char *route;  /* interned: lives as long as the aggregator */
	const char *method; /* static */
	int capped;	    /* holds a place under its service's max_routes */
	uint64_t last_ns;   /* the end of its latest request (the record's time) */
	int status;
	int client;
	char addr[SONDE_RED_HOST_MAX]; /* server_address; "" none */
	uint16_t port;
	struct hists all; /* since the start, for /metrics */
	struct hists win; /* since the last sonde_red_agg__window() */
};

/* One exchange, as the series needs it. */
struct exchange {
	uint32_t tgid;
	int client;		       /* the watched process was the client */
	char addr[SONDE_RED_HOST_MAX]; /* server_address: Host, else the peer's; "" none */
	uint16_t port;
	int status;
	const char *method;
	const char *service;
	int pattern;	   /* route is one of the script's patterns (or replaces one) */
	const char *route; /* built, or the script's (interned) */
	char built[SONDE_RED_ROUTE_MAX]; /* by a pattern or the heuristic */
};

struct service_routes {
	unsigned int count; /* routes with series */
};

struct route_use {
	unsigned int series; /* series of the service with this route */
};

/* At least this many route strings are interned before new routes fold
 * into _OTHER (see intern()). */
#define INTERN_MIN 65536
#define ROUTE_CACHE_MAX 4096

/* Route cache values that are not a route string. */
static const char keep_mark, drop_mark, fold_mark;

/*
 * The series the last requests of a given shape went to, so that a hot
 * endpoint does not build its route, ask the route cache and print its
 * label set again for every request (perf: that was most of sonded's time
 * per request). Direct-mapped; emptied whenever what it summarizes may
 * change: series expired, a service renamed or forgotten, the script
 * changed.
 */
#define MEMO_SLOTS 256 /* a power of two */

struct memo {
	struct series *s; /* NULL: empty */
	uint32_t tgid;
	uint16_t port, status;
	int client;
	int folded;	    /* the cap folded its route into _OTHER: counted per request */
	const char *method; /* static */
	char path[SONDE_RED_PATH_MAX];
	char addr[SONDE_RED_HOST_MAX];
};

struct sonde_red_agg {
	struct sonde_red_agg_opts opts;
	struct sonde_red_agg_stats stats;
	struct sonde_red_patterns patterns;
	struct map services;	 /* tgid -> char *name */
	struct map routes;	 /* "name\0route" -> struct route_use */
	struct map route_counts; /* "name" -> struct service_routes */
	struct map series;	 /* side and labels -> struct series */
	struct map strings;	 /* route -> its interned copy (char *), see intern() */
	size_t strings_max;
	/* "service\0method\0route" -> an interned route, or one of the marks */
	struct map route_cache;
	int hook_off; /* no route hook, or it said -ENOENT */
	struct series *first, **tail;
	struct red_tags *tags;	 /* recent server exchanges, for thread tags */
	uint64_t now_ns;	 /* the latest time seen (records, expire()) */
	uint64_t swept_ns;	 /* when expired series were last looked for */
	struct memo *memo;	 /* MEMO_SLOTS */
};

static void memo_clear(struct sonde_red_agg *agg)
{
	size_t i;

	for (i = 0; i < MEMO_SLOTS; i++)
		agg->memo[i].s = NULL;
}

static struct memo *memo_slot(struct sonde_red_agg *agg, const struct exchange *x,
			      const char *path)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ x->tgid ^ ((uint64_t)x->status << 32) ^
		     ((uint64_t)x->port << 16);
	const unsigned char *c;

	for (c = (const unsigned char *)path; *c; c++)
		h = (h ^ *c) * 0x100000001b3ULL;
	return &agg->memo[(h ^ (h >> 29)) & (MEMO_SLOTS - 1)];
}

static bool memo_is(const struct memo *m, const struct exchange *x, const char *path)
{
	return m->s && m->tgid == x->tgid && m->port == x->port && m->status == x->status &&
	       m->client == x->client && m->method == x->method && !strcmp(m->path, path) &&
	       !strcmp(m->addr, x->addr);
}

/*
 * The route strings of series, kept until the aggregator is freed. A
 * series' method and route are handed out as const char * (red_tags
 * entries, and from them the core's sample labels, which plugin.h lets the
 * core keep until the plugin's fini()), so a series dropped by the TTL must
 * not take its route string with it: series point at the copy here, which
 * outlives them all. The table is bounded: a string is added only when a
 * series is made with it, that is for a pattern (at most
 * SONDE_RED_PATTERNS_MAX, added at start), _OTHER, or a heuristic route
 * admitted under its service's max_routes; without a TTL that is at most
 * max_routes per service, with one the same again per TTL at worst (a
 * heuristic route never holds an id, so real APIs have few); the route
 * hook's replacements add one per distinct answer (ask_hook); and never
 * more than strings_max: past it, new routes fold into _OTHER
 * (route_overflow).
 */
static const char *intern(struct sonde_red_agg *agg, const char *route)
{
	size_t len = strlen(route);
	char *copy = map_get(&agg->strings, route, len);

	if (copy)
		return copy;
	copy = strdup(route);
	if (!copy)
		return NULL;
	if (map_put(&agg->strings, route, len, copy)) {
		free(copy);
		return NULL;
	}
	return copy;
}

struct sonde_red_agg *sonde_red_agg__new(const struct sonde_red_agg_opts *opts)
{
	struct sonde_red_agg *agg = calloc(1, sizeof(*agg));

	if (!agg)
		return NULL;
	unsigned int i;

	agg->opts.max_routes = opts && opts->max_routes ? opts->max_routes : 100;
	agg->opts.series_ttl_ns = opts ? opts->series_ttl_ns : 0;
	agg->opts.route_hook = opts ? opts->route_hook : NULL;
	agg->opts.route_hook_ctx = opts ? opts->route_hook_ctx : NULL;
	agg->opts.route_cache_max =
		opts && opts->route_cache_max ? opts->route_cache_max : ROUTE_CACHE_MAX;
	agg->hook_off = !agg->opts.route_hook;
	if (opts && opts->patterns)
		agg->patterns = *opts->patterns;
	agg->strings_max = (size_t)agg->opts.max_routes * 4 > INTERN_MIN
				   ? (size_t)agg->opts.max_routes * 4
				   : INTERN_MIN;
	agg->tail = &agg->first;
	agg->tags = red_tags__new(RED_AGG_TAG_KEEP_NS, 65536);
	agg->memo = calloc(MEMO_SLOTS, sizeof(*agg->memo));
	if (!agg->tags || !agg->memo || !intern(agg, OVERFLOW_ROUTE))
		goto fail;
	for (i = 0; i < agg->patterns.count; i++)
		if (!intern(agg, agg->patterns.pattern[i]))
			goto fail;
	return agg;
fail:
	sonde_red_agg__free(agg);
	errno = ENOMEM;
	return NULL;
}

static void free_series(void *v)
{
	struct series *s = v;

	if (s) {
		free(s->labels);
		free(s->service);
	}
	free(s);
}

void sonde_red_agg__free(struct sonde_red_agg *agg)
{
	if (!agg)
		return;
	map_clear(&agg->services, free);
	map_clear(&agg->routes, free);
	map_clear(&agg->route_counts, free);
	map_clear(&agg->series, free_series);
	map_clear(&agg->route_cache, NULL); /* interned strings and marks */
	red_tags__free(agg->tags);
	free(agg->memo);
	map_clear(&agg->strings, free); /* last: everything above pointed into it */
	free(agg);
}

int sonde_red_agg__set_service(struct sonde_red_agg *agg, uint32_t tgid, const char *name)
{
	char *copy = strdup(name), *old;

	if (!copy)
		return -ENOMEM;
	memo_clear(agg); /* its series carry the name */
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
	memo_clear(agg);
	free(map_del(&agg->services, &tgid, sizeof(tgid)));
}

const struct sonde_red_agg_stats *sonde_red_agg__stats(const struct sonde_red_agg *agg)
{
	return &agg->stats;
}

void sonde_red_agg__script_changed(struct sonde_red_agg *agg)
{
	memo_clear(agg);
	map_clear(&agg->route_cache, NULL);
	agg->hook_off = !agg->opts.route_hook;
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

/* The routes map's key of (service, route) into key (512 bytes): its
 * length, 0 when it does not fit. */
static size_t route_key(char *key, const char *service, const char *route)
{
	size_t sl = strlen(service), rl = strlen(route);

	if (sl + 1 + rl > 512)
		return 0;
	memcpy(key, service, sl + 1);
	memcpy(key + sl + 1, route, rl);
	return sl + 1 + rl;
}

/* The route as exported: the templated one, or _OTHER once the service
 * has max_routes others with series (or the interned strings are full). */
static const char *cap_route(struct sonde_red_agg *agg, const char *service, const char *route)
{
	struct service_routes *sr;
	char key[512];
	size_t len;

	if (!strcmp(route, OVERFLOW_ROUTE))
		return OVERFLOW_ROUTE;
	len = route_key(key, service, route);
	if (!len)
		return OVERFLOW_ROUTE;
	if (map_get(&agg->routes, key, len))
		return route;
	sr = map_get(&agg->route_counts, service, strlen(service));
	if ((sr && sr->count >= agg->opts.max_routes) ||
	    (agg->strings.count >= agg->strings_max &&
	     !map_get(&agg->strings, route, strlen(route)))) {
		agg->stats.route_overflow++;
		return OVERFLOW_ROUTE;
	}
	return route;
}

/* A new series of service holds route's place under the cap. */
static int take_route(struct sonde_red_agg *agg, const char *service, const char *route)
{
	size_t sl = strlen(service), len;
	struct service_routes *sr;
	struct route_use *use;
	char key[512];

	len = route_key(key, service, route);
	use = map_get(&agg->routes, key, len);
	if (use) {
		use->series++;
		return 0;
	}
	sr = map_get(&agg->route_counts, service, sl);
	if (!sr) {
		sr = calloc(1, sizeof(*sr));
		if (!sr || map_put(&agg->route_counts, service, sl, sr)) {
			free(sr);
			return -ENOMEM;
		}
	}
	use = calloc(1, sizeof(*use));
	if (!use || map_put(&agg->routes, key, len, use)) {
		free(use);
		return -ENOMEM;
	}
	use->series = 1;
	sr->count++;
	return 0;
}

/* A series of service that held route's place is gone. */
static void drop_route(struct sonde_red_agg *agg, const char *service, const char *route)
{
	size_t sl = strlen(service), len;
	struct service_routes *sr;
	struct route_use *use;
	char key[512];

	len = route_key(key, service, route);
	use = map_get(&agg->routes, key, len);
	if (!use || --use->series)
		return;
	free(map_del(&agg->routes, key, len));
	sr = map_get(&agg->route_counts, service, sl);
	if (sr && !--sr->count)
		free(map_del(&agg->route_counts, service, sl));
}

static struct series *get_series(struct sonde_red_agg *agg, const struct exchange *x)
{
	const char *service = x->service;
	/* the key is the side, then the label set: a client's series can carry
	 * the same labels as a server's (server_address on both sides) */
	char key[1 + 1024] = "", *labels = key + 1, *p = labels, *end = key + sizeof(key);
	char status[16], port[16];
	const char *route;
	struct series *s;
	size_t len;

	snprintf(status, sizeof(status), "%d", x->status);
	snprintf(port, sizeof(port), "%u", x->port);
	put_label(&p, labels, end, "service_name", service);
	put_label(&p, labels, end, "http_request_method", x->method);
	put_label(&p, labels, end, "http_response_status_code", status);
	route = x->pattern ? x->route : cap_route(agg, service, x->route);
	put_label(&p, labels, end, "http_route", route);
	put_label(&p, labels, end, "url_scheme", "http");
	if (x->addr[0])
		put_label(&p, labels, end, "server_address", x->addr);
	put_label(&p, labels, end, "server_port", port);
	/* semconv: error.type is the status for 5xx (server), 4xx and 5xx (client) */
	if (x->status >= (x->client ? 400 : 500))
		put_label(&p, labels, end, "error_type", status);
	key[0] = x->client ? 'c' : 's';
	len = (size_t)(p - key);
	s = map_get(&agg->series, key, len);
	if (s)
		return s;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->labels = strdup(labels);
	s->service = strdup(service);
	s->route = intern(agg, route);
	s->method = x->method;
	s->status = x->status;
	s->client = x->client;
	memcpy(s->addr, x->addr, sizeof(s->addr));
	s->port = x->port;
	if (!s->labels || !s->service || !s->route)
		goto fail;
	s->capped = !x->pattern && strcmp(route, OVERFLOW_ROUTE);
	if (s->capped && take_route(agg, service, route))
		goto fail;
	if (map_put(&agg->series, key, len, s)) {
		if (s->capped)
			drop_route(agg, service, route);
		goto fail;
	}
	*agg->tail = s;
	agg->tail = &s->next;
	return s;
fail:
	free_series(s);
	return NULL;
}

/* Drops *link's series (a series map entry, an element of the list). */
static void drop_series(struct sonde_red_agg *agg, struct series **link)
{
	struct series *s = *link;
	char key[1 + 1024];
	size_t n = strlen(s->labels);

	*link = s->next;
	if (agg->tail == &s->next)
		agg->tail = link;
	key[0] = s->client ? 'c' : 's';
	memcpy(key + 1, s->labels, n);
	map_del(&agg->series, key, 1 + n);
	if (s->capped)
		drop_route(agg, s->service, s->route);
	free_series(s);
	agg->stats.series_expired++;
}

unsigned int sonde_red_agg__expire(struct sonde_red_agg *agg, uint64_t now_ns)
{
	struct series **link = &agg->first;
	unsigned int n = 0;

	if (now_ns > agg->now_ns)
		agg->now_ns = now_ns;
	agg->swept_ns = agg->now_ns;
	if (!agg->opts.series_ttl_ns || agg->now_ns < agg->opts.series_ttl_ns)
		return 0;
	while (*link) {
		if ((*link)->last_ns <= agg->now_ns - agg->opts.series_ttl_ns &&
		    !(*link)->win.count) {
			drop_series(agg, link);
			n++;
		} else {
			link = &(*link)->next;
		}
	}
	if (n)
		memo_clear(agg); /* it may point at them */
	return n;
}

/* What the hook answered, as a route cache value. Its replacement is
 * interned here, under the same bound as the routes of series: past it,
 * the route folds into _OTHER. */
static const char *ask_hook(struct sonde_red_agg *agg, const struct exchange *x, const char *path)
{
	struct sonde_red_route_query q = {
		.service = x->service,
		.method = x->method,
		.route = x->route,
		.path = path,
		.server_address = x->addr[0] ? x->addr : NULL,
	};
	char out[SONDE_RED_HOOK_ROUTE_MAX + 1] = "";
	const char *v;
	size_t len;
	int rc;

	rc = agg->opts.route_hook(agg->opts.route_hook_ctx, &q, out, sizeof(out));
	if (rc == -ENOENT) {
		agg->hook_off = 1;
		return NULL;
	}
	agg->stats.route_hook_calls++;
	if (rc == SONDE_RED_HOOK_DROP)
		return &drop_mark;
	out[sizeof(out) - 1] = '\0';
	if (rc != SONDE_RED_HOOK_REPLACE || (out[0] != '/' && strcmp(out, OVERFLOW_ROUTE)))
		return &keep_mark;
	len = strlen(out);
	v = map_get(&agg->strings, out, len);
	if (v)
		return v;
	if (agg->strings.count >= agg->strings_max)
		return &fold_mark;
	v = intern(agg, out);
	return v ? v : &keep_mark; /* ENOMEM: the route it had */
}

/*
 * The route cache: the hook's answer for x's (service, method, route), asked
 * on a miss. Applies a replacement to x; returns whether x is dropped.
 */
static bool script_route(struct sonde_red_agg *agg, struct exchange *x, const char *path)
{
	size_t sl = strlen(x->service), ml = strlen(x->method), rl = strlen(x->route);
	char key[SONDE_RED_HOST_MAX * 2 + SONDE_RED_ROUTE_MAX + 64];
	size_t len = sl + 1 + ml + 1 + rl;
	const char *v;

	if (len > sizeof(key))
		return false; /* a service name too long to key: keeps its route */
	memcpy(key, x->service, sl + 1);
	memcpy(key + sl + 1, x->method, ml + 1);
	memcpy(key + sl + 1 + ml + 1, x->route, rl);
	v = map_get(&agg->route_cache, key, len);
	if (!v) {
		v = ask_hook(agg, x, path);
		if (!v)
			return false; /* no callback: nothing to cache */
		if (agg->route_cache.count >= agg->opts.route_cache_max) {
			map_clear(&agg->route_cache, NULL);
			agg->stats.route_cache_resets++;
		}
		map_put(&agg->route_cache, key, len, (void *)v); /* ENOMEM: asked again */
	}
	if (v == &drop_mark)
		return true;
	if (v == &fold_mark) {
		agg->stats.route_overflow++;
		x->route = OVERFLOW_ROUTE;
	} else if (v != &keep_mark) {
		x->route = v;
	}
	return false;
}

static void observe_one(uint64_t *buckets, const double *bounds, size_t n, double v)
{
	size_t i;

	for (i = 0; i < n && v > bounds[i]; i++)
		;
	buckets[i]++;
}

static void observe(struct hists *h, double d, double req, double resp)
{
	observe_one(h->duration, duration_bounds, N_DURATION, d);
	observe_one(h->req_size, size_bounds, N_SIZE, req);
	observe_one(h->resp_size, size_bounds, N_SIZE, resp);
	h->duration_sum += d;
	h->req_size_sum += req;
	h->resp_size_sum += resp;
	h->count++;
}

int sonde_red_agg__event(struct sonde_red_agg *agg, const void *rec, size_t size)
{
	const struct red_event *ev = rec;
	struct sonde_red_request req;
	struct exchange x = {0};
	struct memo *memo;
	const char *route;
	struct series *s;
	double d, reqb, resp;
	bool has_path;

	if (size < sizeof(*ev) || size < sizeof(*ev) + ev->len || ev->type != RED_EV_EXCHANGE)
		return -EINVAL;
	switch (ev->end) {
	case RED_END_LENGTH:
		break;
	case RED_END_NEXT:
		agg->stats.forced_next++;
		break;
	case RED_END_CLOSE:
		agg->stats.forced_close++;
		break;
	case RED_END_ABORT:
		agg->stats.aborted++; /* no response: no status to invent */
		return 0;
	case RED_END_UNPAIRED:
		agg->stats.unpaired++;
		return 0;
	default:
		return -EINVAL;
	}
	if (sonde_red_parse_request(ev + 1, ev->len, &req) || ev->status < 100 ||
	    ev->status > 999) {
		agg->stats.bad_heads++;
		return 0;
	}
	x.tgid = ev->tgid;
	x.port = ev->lport;
	x.client = ev->client;
	/* semconv: server.address is the host the request names; the client
	 * side falls back to the address it connected to */
	if (req.host[0])
		memcpy(x.addr, req.host, sizeof(x.addr));
	else if (x.client && ev->family == RED_FAMILY_INET)
		inet_ntop(AF_INET, ev->server_addr, x.addr, sizeof(x.addr));
	else if (x.client && ev->family == RED_FAMILY_INET6)
		inet_ntop(AF_INET6, ev->server_addr, x.addr, sizeof(x.addr));
	x.status = ev->status;
	x.method = req.method;
	x.service = map_get(&agg->services, &x.tgid, sizeof(x.tgid));
	if (!x.service)
		x.service = "unknown_service";
	has_path = req.line_complete && req.path[0];
	memo = has_path ? memo_slot(agg, &x, req.path) : NULL;
	if (memo && memo_is(memo, &x, req.path)) {
		s = memo->s;
		agg->stats.route_overflow += (uint64_t)memo->folded;
		goto count;
	}
	route = has_path ? sonde_red_patterns_match(&agg->patterns, req.path) : NULL;
	x.route = x.built;
	if (route) {
		snprintf(x.built, sizeof(x.built), "%s", route); /* the script's, as written */
		x.pattern = 1;
	} else if (has_path) {
		sonde_red_route(req.path, x.built, sizeof(x.built));
	} else {
		snprintf(x.built, sizeof(x.built), "%s", OVERFLOW_ROUTE); /* target cut */
	}
	if (has_path && !agg->hook_off && script_route(agg, &x, req.path)) {
		agg->stats.dropped_by_script++;
		/* samples of its thread get no labels, and need not wait for them */
		if (ev->sampled)
			red_tags__put(agg->tags, ev->tag_tgid, ev->start & RED_TAG_MASK, x.method,
				      NULL, ev->last);
		if (ev->last > agg->now_ns)
			agg->now_ns = ev->last;
		return 0;
	}
	s = get_series(agg, &x);
	if (!s)
		return -ENOMEM;
	if (memo) {
		*memo = (struct memo){ .s = s, .tgid = x.tgid, .port = x.port,
				       .status = (uint16_t)x.status, .client = x.client,
				       .method = x.method,
				       .folded = !strcmp(s->route, OVERFLOW_ROUTE) &&
						 strcmp(x.route, OVERFLOW_ROUTE) };
		snprintf(memo->path, sizeof(memo->path), "%s", req.path);
		snprintf(memo->addr, sizeof(memo->addr), "%s", x.addr);
	}
count:
	d = ev->last > ev->start ? (double)(ev->last - ev->start) / 1e9 : 0;
	reqb = req.content_length > 0 ? (double)req.content_length : 0;
	if (ev->resp_clen >= 0 && !ev->chunked)
		resp = (double)ev->resp_clen;
	else if (ev->resp_head_len && ev->resp_bytes >= ev->resp_head_len)
		resp = (double)(ev->resp_bytes - ev->resp_head_len);
	else
		resp = (double)ev->resp_bytes;
	if (req.is_head || ev->status == 204 || ev->status == 304)
		resp = 0;
	observe(&s->all, d, reqb, resp);
	observe(&s->win, d, reqb, resp);
	agg->stats.requests++;
	if (ev->last > s->last_ns)
		s->last_ns = ev->last;
	/* the method is static and the route interned: both outlive the entry,
	 * and the series (TTL); ENOMEM only costs the samples their labels.
	 * Only exchanges a sample may wait for: most requests are never
	 * sampled, and a put per request was a quarter of sonded's time. */
	if (ev->sampled)
		red_tags__put(agg->tags, ev->tag_tgid, ev->start & RED_TAG_MASK, s->method,
			      s->route, ev->last);
	/* counted first, so a series that counts now is not dropped first */
	if (ev->last > agg->now_ns)
		agg->now_ns = ev->last;
	if (agg->opts.series_ttl_ns && agg->now_ns - agg->swept_ns >= 1000000000ULL)
		sonde_red_agg__expire(agg, agg->now_ns);
	return 0;
}

bool sonde_red_agg__exchange(const struct sonde_red_agg *agg, uint32_t tgid, uint64_t start,
			     const char **method, const char **route)
{
	return red_tags__get(agg->tags, tgid, start, method, route);
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
	fprintf(out, "%s_count{%s} %llu\n", name, s->labels, (unsigned long long)s->all.count);
}

/* The three families of one side; the client's only once it has series. */
static void write_side(const struct sonde_red_agg *agg, FILE *out, int client)
{
	static const char *const names[2][3] = {
		{"http_server_request_duration_seconds", "http_server_request_body_size_bytes",
		 "http_server_response_body_size_bytes"},
		{"http_client_request_duration_seconds", "http_client_request_body_size_bytes",
		 "http_client_response_body_size_bytes"},
	};
	static const char *const helps[2][3] = {
		{"Duration of HTTP service calls from the server side, in seconds.",
		 "Size, in bytes, of the HTTP request body as received at the server side.",
		 "Size, in bytes, of the HTTP response body as sent by the server side."},
		{"Duration of HTTP service calls from the client side, in seconds.",
		 "Size, in bytes, of the HTTP request body as sent by the client.",
		 "Size, in bytes, of the HTTP response body as received by the client."},
	};
	const struct series *s;
	int f;

	for (s = agg->first; s && s->client != client; s = s->next)
		;
	if (!s && client)
		return;
	for (f = 0; f < 3; f++) {
		fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", names[client][f],
			helps[client][f], names[client][f]);
		for (s = agg->first; s; s = s->next) {
			if (s->client != client)
				continue;
			if (f == 0)
				write_histogram(out, names[client][f], s, s->all.duration,
						duration_bounds, N_DURATION, s->all.duration_sum);
			else if (f == 1)
				write_histogram(out, names[client][f], s, s->all.req_size,
						size_bounds, N_SIZE, s->all.req_size_sum);
			else
				write_histogram(out, names[client][f], s, s->all.resp_size,
						size_bounds, N_SIZE, s->all.resp_size_sum);
		}
	}
}

int sonde_red_agg__write(const struct sonde_red_agg *agg, FILE *out)
{
	write_side(agg, out, 0);
	write_side(agg, out, 1);
	return ferror(out) ? -EIO : 0;
}

/* A msgpack writer into a growing buffer; the first error sticks. */
struct mp {
	unsigned char *buf;
	size_t len, cap;
	int err;
};

static void mp_put(struct mp *m, const void *data, size_t len)
{
	if (m->err)
		return;
	if (m->len + len > m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 4096;
		unsigned char *b;

		while (cap < m->len + len)
			cap *= 2;
		b = realloc(m->buf, cap);
		if (!b) {
			m->err = -ENOMEM;
			return;
		}
		m->buf = b;
		m->cap = cap;
	}
	memcpy(m->buf + m->len, data, len);
	m->len += len;
}

/* A type byte and n in size bytes, big-endian. */
static void mp_head(struct mp *m, unsigned char type, uint64_t n, int size)
{
	unsigned char b[9];
	int i;

	b[0] = type;
	for (i = 0; i < size; i++)
		b[1 + i] = (unsigned char)(n >> (8 * (size - 1 - i)));
	mp_put(m, b, 1 + (size_t)size);
}

static void mp_uint(struct mp *m, uint64_t v)
{
	if (v < 128)
		mp_head(m, (unsigned char)v, 0, 0);
	else if (v <= UINT8_MAX)
		mp_head(m, 0xcc, v, 1);
	else if (v <= UINT16_MAX)
		mp_head(m, 0xcd, v, 2);
	else if (v <= UINT32_MAX)
		mp_head(m, 0xce, v, 4);
	else
		mp_head(m, 0xcf, v, 8);
}

static void mp_float(struct mp *m, double v)
{
	uint64_t bits;

	memcpy(&bits, &v, sizeof(bits));
	mp_head(m, 0xcb, bits, 8);
}

static void mp_str(struct mp *m, const char *s)
{
	size_t len = strlen(s);

	if (len < 32)
		mp_head(m, (unsigned char)(0xa0 | len), 0, 0);
	else if (len <= UINT8_MAX)
		mp_head(m, 0xd9, len, 1);
	else
		mp_head(m, 0xda, len, 2); /* labels are far shorter than 64 KiB */
	mp_put(m, s, len);
}

static void mp_container(struct mp *m, unsigned char fix, unsigned char big16, size_t n)
{
	if (n < 16)
		mp_head(m, (unsigned char)(fix | n), 0, 0);
	else if (n <= UINT16_MAX)
		mp_head(m, big16, n, 2);
	else
		mp_head(m, (unsigned char)(big16 + 1), n, 4);
}

static void mp_map(struct mp *m, size_t n)
{
	mp_container(m, 0x80, 0xde, n);
}

static void mp_array(struct mp *m, size_t n)
{
	mp_container(m, 0x90, 0xdc, n);
}

static void mp_floats(struct mp *m, const double *v, size_t n)
{
	size_t i;

	mp_array(m, n);
	for (i = 0; i < n; i++)
		mp_float(m, v[i]);
}

static void mp_buckets(struct mp *m, const uint64_t *v, size_t n)
{
	size_t i;

	mp_array(m, n);
	for (i = 0; i < n; i++)
		mp_uint(m, v[i]);
}

static void mp_series(struct mp *m, const struct series *s)
{
	const struct hists *h = &s->win;

	int error = s->status >= (s->client ? 400 : 500);

	mp_map(m, 14 + (size_t)error + (s->addr[0] != '\0'));
	mp_str(m, "side");
	mp_str(m, s->client ? "client" : "server");
	mp_str(m, "service_name");
	mp_str(m, s->service);
	mp_str(m, "http_request_method");
	mp_str(m, s->method);
	mp_str(m, "http_response_status_code");
	mp_uint(m, (uint64_t)s->status);
	mp_str(m, "http_route");
	mp_str(m, s->route);
	mp_str(m, "url_scheme");
	mp_str(m, "http");
	if (s->addr[0]) {
		mp_str(m, "server_address");
		mp_str(m, s->addr);
	}
	mp_str(m, "server_port");
	mp_uint(m, s->port);
	if (error) {
		char status[16];

		snprintf(status, sizeof(status), "%d", s->status);
		mp_str(m, "error_type");
		mp_str(m, status);
	}
	mp_str(m, "count");
	mp_uint(m, h->count);
	mp_str(m, "duration_sum");
	mp_float(m, h->duration_sum);
	mp_str(m, "duration_buckets");
	mp_buckets(m, h->duration, N_DURATION + 1);
	mp_str(m, "request_size_sum");
	mp_float(m, h->req_size_sum);
	mp_str(m, "request_size_buckets");
	mp_buckets(m, h->req_size, N_SIZE + 1);
	mp_str(m, "response_size_sum");
	mp_float(m, h->resp_size_sum);
	mp_str(m, "response_size_buckets");
	mp_buckets(m, h->resp_size, N_SIZE + 1);
}

int sonde_red_agg__window(struct sonde_red_agg *agg, double start, double duration, void **buf,
			  size_t *len)
{
	struct mp m = {0};
	struct series *s;
	size_t n = 0;

	for (s = agg->first; s; s = s->next)
		n += s->win.count > 0;
	mp_map(&m, 6);
	mp_str(&m, "v");
	mp_uint(&m, 1);
	mp_str(&m, "start");
	mp_float(&m, start);
	mp_str(&m, "duration");
	mp_float(&m, duration);
	mp_str(&m, "duration_bounds");
	mp_floats(&m, duration_bounds, N_DURATION);
	mp_str(&m, "size_bounds");
	mp_floats(&m, size_bounds, N_SIZE);
	mp_str(&m, "series");
	mp_array(&m, n);
	for (s = agg->first; s; s = s->next)
		if (s->win.count)
			mp_series(&m, s);
	if (m.err) {
		free(m.buf);
		return m.err;
	}
	for (s = agg->first; s; s = s->next)
		memset(&s->win, 0, sizeof(s->win));
	*buf = m.buf;
	*len = m.len;
	return 0;
}
