/* SPDX-License-Identifier: MIT */
/*
 * Aggregates the records of red.bpf.c (struct red_event, red.h: one per
 * HTTP server exchange, already framed) into the OpenTelemetry HTTP server
 * histograms, written in the Prometheus text format. No BPF and no I/O
 * besides the FILE it writes to: the unit tests feed it recorded records.
 *
 * Duration of a request: from the exit of the read that returned its head
 * to the exit of the last write of its response (red.bpf.c finds it from
 * the response head: Content-Length, no body for HEAD, 101, 204, 304, the
 * last chunk of a chunked body). When it cannot (close-delimited, a head
 * longer than RED_RESP_SCAN) the next request or the close ends it, still
 * with the time of the last write seen, and it counts as forced. A
 * request whose connection closes before any response is counted as
 * aborted and gives no series: no status code is invented. Response body
 * size: Content-Length, else the bytes written after the head (for chunked
 * bodies, chunk framing included). server_address: the host the request
 * names (absolute target, else Host, without the port); on the client side
 * the address it connected to when the request names none.
 *
 * Not thread-safe: one caller (the plugin, on the core's loop thread).
 */
#ifndef SONDE_RED_AGG_H
#define SONDE_RED_AGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "red_http.h"

struct sonde_red_agg;

/*
 * The script's say on routes (on_http_route, through plugin.h's
 * script_hook). The aggregator asks once per distinct (service, method,
 * route) of the patterns and the heuristic, on a miss of its route cache,
 * never per request: path and server_address are those of the request
 * that missed, and the answer holds for the later ones of that key.
 * Requests whose target was cut (route _OTHER, no path) are not asked about.
 */
struct sonde_red_route_query {
	const char *service, *method, *route;
	const char *path;	    /* without the query string */
	const char *server_address; /* NULL: none */
};
#define SONDE_RED_HOOK_KEEP	 0
#define SONDE_RED_HOOK_REPLACE	 1 /* out holds the route to use instead */
#define SONDE_RED_HOOK_DROP	 2 /* counted in no series, no thread-tag labels */
#define SONDE_RED_HOOK_ROUTE_MAX 255
/* out has SONDE_RED_HOOK_ROUTE_MAX + 1 bytes. -ENOENT: there is no callback,
 * do not ask again until sonde_red_agg__script_changed(); another -errno:
 * keep (cached like an answer). A replacement that is not a route (not
 * starting with '/' and not "_OTHER") counts as keep. */
typedef int (*sonde_red_route_hook_fn)(void *ctx, const struct sonde_red_route_query *q,
				       char *out, size_t outlen);

struct sonde_red_agg_opts {
	unsigned int max_routes;  /* distinct routes per service; more fold into _OTHER */
	/* Route patterns tried before the heuristic (copied); NULL: none. A
	 * pattern's route is not capped by max_routes (they are few and the
	 * script's choice). */
	const struct sonde_red_patterns *patterns;
	/* A series that counted no request for this long (in the records'
	 * CLOCK_MONOTONIC time) is dropped, from the output and from its
	 * service's route count; 0: never. */
	uint64_t series_ttl_ns;
	/* NULL: no script routes. A route the script gives counts under
	 * max_routes, unless it replaces a pattern's. */
	sonde_red_route_hook_fn route_hook;
	void *route_hook_ctx;
	/* entries of the route cache; when full it is emptied (and counted);
	 * 0: 4096 */
	unsigned int route_cache_max;
};

/* Counters of what did not go into a histogram, and why. */
struct sonde_red_agg_stats {
	uint64_t requests;	 /* exchanges counted in the histograms */
	uint64_t forced_next;	 /* ended by the next request, length unknown */
	uint64_t forced_close;	 /* ended by the close, length unknown or short */
	uint64_t aborted;	 /* closed before any response: not counted */
	uint64_t unpaired;	 /* pushed out of a full pipeline queue (RED_PIPE heads
				    waiting) before any response: not counted */
	uint64_t bad_heads;	 /* heads that did not parse */
	uint64_t route_overflow; /* requests folded into http_route="_OTHER" */
	uint64_t series_expired; /* series dropped by series_ttl_ns */
	uint64_t dropped_by_script;  /* requests the route hook dropped: not counted */
	uint64_t route_hook_calls;   /* answers of the route hook (route cache misses) */
	uint64_t route_cache_resets; /* times the full route cache was emptied */
};

/* NULL and errno on failure; opts NULL: 100 routes. */
struct sonde_red_agg *sonde_red_agg__new(const struct sonde_red_agg_opts *opts);
void sonde_red_agg__free(struct sonde_red_agg *agg);

/* Names the service of tgid (service_name label; copied). 0 or -ENOMEM. */
int sonde_red_agg__set_service(struct sonde_red_agg *agg, uint32_t tgid, const char *name);
/* The process is gone: forgets its name. */
void sonde_red_agg__forget(struct sonde_red_agg *agg, uint32_t tgid);

/* Consumes one ringbuf record (size bytes). 0, -EINVAL for a record too
 * short or of an unknown type or end (counted nowhere: a plugin bug), or
 * -ENOMEM. */
int sonde_red_agg__event(struct sonde_red_agg *agg, const void *rec, size_t size);

/* Writes the HTTP server families (duration, request and response body
 * size), and the client ones once there are client series. 0 or -errno
 * from the stream. */
int sonde_red_agg__write(const struct sonde_red_agg *agg, FILE *out);

/*
 * The series that counted requests since the last call, as one msgpack map
 * of the export socket's `red` topic (docs/export.md): start (unix seconds)
 * and duration describe the window. Starts a new window. 0 with *buf (the
 * caller frees it) and *len, or -ENOMEM (the window is kept).
 */
int sonde_red_agg__window(struct sonde_red_agg *agg, double start, double duration, void **buf,
			  size_t *len);

/*
 * Drops the series that counted no request in the series_ttl_ns before
 * now_ns (CLOCK_MONOTONIC, as the records' times; the aggregator's clock
 * is the latest of these and of the records' times, so a now_ns behind it
 * changes nothing). A series with requests not yet sent in a window
 * (sonde_red_agg__window) stays until they are. The aggregator also does
 * this by itself, at most once a second of its clock, as records come.
 * Returns how many went.
 */
unsigned int sonde_red_agg__expire(struct sonde_red_agg *agg, uint64_t now_ns);

const struct sonde_red_agg_stats *sonde_red_agg__stats(const struct sonde_red_agg *agg);

/* The script changed (a reload): forgets the route cache's answers, and asks
 * the route hook again even after an -ENOENT. */
void sonde_red_agg__script_changed(struct sonde_red_agg *agg);

/*
 * The method and route of the server exchange tgid started at start
 * (RED_TAG_MASK of red_event.start: the value of its thread tag), among
 * those consumed in the last RED_AGG_TAG_KEEP_NS. The strings live as long
 * as agg (route strings are kept for agg's life, even once their series
 * expired). *route is NULL for an exchange the route hook dropped: it has
 * no labels. False when it is not (or no longer) known.
 */
#define RED_AGG_TAG_KEEP_NS (30ULL * 1000000000ULL)
bool sonde_red_agg__exchange(const struct sonde_red_agg *agg, uint32_t tgid, uint64_t start,
			     const char **method, const char **route);

#endif /* SONDE_RED_AGG_H */
