/* SPDX-License-Identifier: MIT */
/*
 * Pairs the records of red.bpf.c (struct red_event, red.h) into HTTP
 * server exchanges and aggregates them into the OpenTelemetry HTTP server
 * histograms, written in the Prometheus text format. No BPF and no I/O
 * besides the FILE it writes to: the unit tests feed it recorded records.
 *
 * Duration of a request: from the exit of the read that returned its head
 * to the exit of the write (write, writev, sendto, sendfile) that carried
 * the last byte of its response. The last byte is known from the response
 * head (its length plus Content-Length; no body for HEAD, 1xx, 204, 304);
 * when it is not (chunked, close-delimited, a head longer than RED_HEAD_MAX)
 * the request ends at the next request on the connection or at its close,
 * still with the time of the last write seen, and counts as forced. A
 * request whose connection closes before any response is counted as
 * aborted and gives no series: no status code is invented.
 *
 * Not thread-safe: one caller (the plugin, on the core's loop thread).
 */
#ifndef SONDE_RED_AGG_H
#define SONDE_RED_AGG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct sonde_red_agg;

struct sonde_red_agg_opts {
	unsigned int max_routes;  /* distinct routes per service; more fold into _OTHER */
	unsigned int max_pending; /* connections with an exchange in flight */
};

/* Counters of what did not go into a histogram, and why. */
struct sonde_red_agg_stats {
	uint64_t requests;	 /* exchanges counted in the histograms */
	uint64_t forced_next;	 /* ended by the next request, length unknown */
	uint64_t forced_close;	 /* ended by the close, length unknown or short */
	uint64_t aborted;	 /* closed before any response: not counted */
	uint64_t unpaired;	 /* a request head while the previous had no response,
				    or a response with no request: not counted */
	uint64_t bad_heads;	 /* heads that did not parse */
	uint64_t pending_full;	 /* exchanges dropped: max_pending reached */
	uint64_t route_overflow; /* requests folded into http_route="_OTHER" */
};

/* NULL and errno on failure; opts NULL: 100 routes, 65536 pending. */
struct sonde_red_agg *sonde_red_agg__new(const struct sonde_red_agg_opts *opts);
void sonde_red_agg__free(struct sonde_red_agg *agg);

/* Names the service of tgid (service_name label; copied). 0 or -ENOMEM. */
int sonde_red_agg__set_service(struct sonde_red_agg *agg, uint32_t tgid, const char *name);
/* The process is gone: forgets its name and its exchanges in flight. */
void sonde_red_agg__forget(struct sonde_red_agg *agg, uint32_t tgid);

/* Consumes one ringbuf record (size bytes). 0, or -EINVAL for a record too
 * short or of an unknown type (counted nowhere: a plugin bug). */
int sonde_red_agg__event(struct sonde_red_agg *agg, const void *rec, size_t size);

/* Writes the HTTP server families (duration, request and response body
 * size). 0 or -errno from the stream. */
int sonde_red_agg__write(const struct sonde_red_agg *agg, FILE *out);

const struct sonde_red_agg_stats *sonde_red_agg__stats(const struct sonde_red_agg *agg);

#endif /* SONDE_RED_AGG_H */
