/* SPDX-License-Identifier: MIT */
/*
 * A small HTTP/1.1 server on the core loop, for /metrics and
 * /debug/pprof/ pages: GET and HEAD only, no request bodies, keep-alive, one
 * request at a time per connection. A handler may answer at once or later
 * (a profile answers after ?seconds=N): the connection waits for
 * sonde_http_conn__respond(). A client that goes away before the answer is
 * reported through the on_close callback given with the deferral.
 *
 * Limits: request head 8 KiB (431 beyond), 64 connections (the oldest idle
 * one is closed beyond), idle connections closed after 60 s: one that sends
 * nothing (or only part of a head), or does not read its answer, for that
 * long is closed without an answer.
 *
 * Threading: loop thread only. Errors: NULL/errno, 0/-errno.
 */
#ifndef SONDE_HTTP_H
#define SONDE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sonde_loop;
struct sonde_http;
struct sonde_http_conn;

struct sonde_http_request {
	const char *method; /* "GET" or "HEAD" */
	const char *path;   /* percent-decoded, without the query */
	const char *query;  /* raw, without '?'; "" when none */
};

/*
 * Called once per request. The request's strings live until the answer.
 * Before returning, the handler answers (respond/error) or defers; if it
 * does neither, the server answers 500 and closes the connection.
 */
typedef void (*sonde_http_handler)(void *ctx, struct sonde_http_conn *conn,
				   const struct sonde_http_request *req);

/*
 * addr: "HOST:PORT", "[V6]:PORT" or ":PORT" (all interfaces: one dual-stack
 * [::] socket, 0.0.0.0 where IPv6 is off). errno EINVAL for a malformed
 * address, EADDRINUSE, ...
 */
struct sonde_http *sonde_http__new(struct sonde_loop *loop, const char *addr,
				   sonde_http_handler handler, void *ctx);
/*
 * Closes every connection; pending answers are dropped, and on_close runs
 * for each deferred one so its owner forgets it. Not from inside a handler
 * or on_close. Call it before freeing the loop. Accepts NULL.
 */
void sonde_http__free(struct sonde_http *http);
/* The bound address, "127.0.0.1:7470" (useful with port 0). */
const char *sonde_http__addr(const struct sonde_http *http);
/*
 * Replaces the 60 s idle timeout: a connection with no byte read or written
 * for ms milliseconds while it reads a request or writes an answer is
 * closed (a deferred answer has no timeout). Connections are checked every
 * min(ms / 4, 1000) ms, so one is closed between ms and 1.25 * ms idle.
 * 0, -EINVAL below 100 ms, or -errno (the old timeout stays).
 */
int sonde_http__set_idle_timeout(struct sonde_http *http, unsigned int ms);

/*
 * Answers the request on conn. content_type may be NULL (then
 * text/plain; charset=utf-8). body is copied. For HEAD the body is not
 * sent. 0 or -errno; conn must not be used after.
 */
int sonde_http_conn__respond(struct sonde_http_conn *conn, int status, const char *content_type,
			     const void *body, size_t len);
/* A plain text error body "msg\n" with that status. */
int sonde_http_conn__error(struct sonde_http_conn *conn, int status, const char *msg);

/*
 * Tells the server the answer comes later. If the client closes first,
 * on_close(ctx) runs once and conn must not be used after.
 */
void sonde_http_conn__defer(struct sonde_http_conn *conn, void (*on_close)(void *ctx), void *ctx);

/*
 * The value of key in a query string, percent-decoded into buf (size
 * bytes). 1 when found, 0 when absent, -ENAMETOOLONG when it does not fit,
 * -EINVAL on a malformed escape.
 */
int sonde_http_query_get(const char *query, const char *key, char *buf, size_t size);

/* What sonde_http_parse_head() made of one request head. */
struct sonde_http_head {
	/* status 0: the request; its strings point into the parsed buffer. */
	struct sonde_http_request req;
	bool keep_alive; /* status 0: the connection stays open after the answer */
	/* Else the status the server refuses it with (400, 405, 413, 505)... */
	int status;
	const char *error; /* ...and the one-line message of that answer (static) */
	size_t len;	   /* bytes of the head, leading empty lines included */
};

/*
 * The server's request-head parser on a plain buffer, for the fuzzer and
 * tests: each connection runs this same code. Finds the first complete head
 * in buf[0..len) (leading empty lines skipped; lines end in LF or CRLF, a
 * blank line ends the head) and parses it in place, writing into buf.
 * buf need not be NUL-terminated; nothing at or past buf[len] is read.
 * 0 with *head filled, or -EAGAIN when buf holds no complete head yet (the
 * server then waits for more, and answers 431 when 8 KiB hold none).
 */
int sonde_http_parse_head(char *buf, size_t len, struct sonde_http_head *head);

#endif /* SONDE_HTTP_H */
