/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1.x head parsing and route templating for red-metrics. Pure
 * functions over bytes captured from syscalls: the input is untrusted, may
 * be cut anywhere, and may not be HTTP at all. Nothing here allocates.
 */
#ifndef SONDE_RED_HTTP_H
#define SONDE_RED_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define SONDE_RED_PATH_MAX  256 /* bytes kept of a request target's path */
#define SONDE_RED_ROUTE_MAX 128
#define SONDE_RED_HOST_MAX  128 /* bytes kept of a host name, NUL included */

/* What a request head says. */
struct sonde_red_request {
	/* Canonical method (RFC 9110 ones and PATCH), or "_OTHER". */
	const char *method;
	int is_head;		       /* HEAD: the response has no body */
	int line_complete;	       /* the request line ended in this buffer */
	char path[SONDE_RED_PATH_MAX]; /* target without query or fragment; "" if cut */
	int64_t content_length;	       /* -1: none seen */
	int chunked;		       /* Transfer-Encoding ends in chunked */
	size_t head_len;	       /* through the blank line; 0 if not in the buffer */
	/* The host the request names, lower case, without port or IPv6 brackets:
	 * an absolute-form target's, else the Host header's; "" when neither is
	 * in the buffer or it is not a plain host name or address. */
	char host[SONDE_RED_HOST_MAX];
};

/* What a response head says. */
struct sonde_red_response {
	int status;		/* 100..999 */
	int64_t content_length; /* -1: none seen */
	int chunked;
	size_t head_len; /* through the blank line; 0 if not in the buffer */
};

/*
 * Parses the request head at buf (len bytes, the start of what one read
 * returned). 0 when buf starts with "TOKEN SP" and, if the request line is
 * complete, it ends in " HTTP/1.x"; -EINVAL when it is not a request.
 * Headers cut by the end of buf are ignored (content_length stays -1).
 */
int sonde_red_parse_request(const void *buf, size_t len, struct sonde_red_request *req);

/*
 * Parses the response head at buf: 0 when it starts with "HTTP/1.x DDD",
 * -EINVAL otherwise.
 */
int sonde_red_parse_response(const void *buf, size_t len, struct sonde_red_response *resp);

/*
 * Writes the route of path into out (outlen bytes, NUL-terminated): the
 * path with every segment that looks like an identifier (all digits, a
 * UUID, a hex string of 8 or more with a digit, a long mix of letters and
 * digits, or any byte outside [A-Za-z0-9._~-]) replaced by `*`. "" gives
 * "/"; a route too long for out is cut at a segment boundary and ends in
 * a slash and a star (so deep paths fold into one series).
 * Returns the length written.
 */
size_t sonde_red_route(const char *path, char *out, size_t outlen);

/*
 * Route patterns the script gives (the plugin's `routes` setting), tried
 * before the heuristic above. A pattern is a path whose segments are
 * literal, `{name}` (any one segment) or, as the last one only, `*` (the
 * rest of the path, nothing included). Matching is segment-wise over the
 * path as sonde_red_route sees it (empty segments and a trailing slash do
 * not count); the first pattern that matches, in the given order, is the
 * route, exactly as written.
 */
#define SONDE_RED_PATTERNS_MAX 64
struct sonde_red_patterns {
	unsigned int count;
	char pattern[SONDE_RED_PATTERNS_MAX][SONDE_RED_ROUTE_MAX];
};

/*
 * Parses spec (patterns separated by spaces or commas; NULL or "" gives
 * none) into out. 0, or -EINVAL with a one-line reason naming the pattern
 * in err (errlen bytes): not starting with '/', unbalanced or misplaced
 * braces, '*' other than as the last segment, longer than
 * SONDE_RED_ROUTE_MAX - 1 bytes, more than SONDE_RED_PATTERNS_MAX patterns.
 */
int sonde_red_patterns_parse(const char *spec, struct sonde_red_patterns *out, char *err,
			     size_t errlen);

/* The first pattern of p that path (a request target's path) matches, or
 * NULL. The string is p's. */
const char *sonde_red_patterns_match(const struct sonde_red_patterns *p, const char *path);

#endif /* SONDE_RED_HTTP_H */
