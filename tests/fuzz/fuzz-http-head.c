// SPDX-License-Identifier: MIT
/*
 * sonded's HTTP request-head parser (sonde_http_parse_head, the code every
 * connection runs) and the query accessor the daemon reads ?seconds=,
 * ?pid= and ?comm= with, on arbitrary bytes. Anything a scraper sends gets
 * a request or a refusal, never a crash or a read past the bytes received;
 * what comes back points into the buffer and holds what the contracts in
 * core/http.h promise.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "fuzz.h"

static bool inside(const char *s, const char *buf, size_t len)
{
	return s >= buf && s + strlen(s) < buf + len;
}

/*
 * sonde_http_query_get's contract, checked against itself: a value that is
 * found fits exactly in strlen + 1 bytes and not in strlen, and the answer
 * does not depend on the buffer size otherwise.
 */
static void check_query_key(const char *query, const char *key)
{
	size_t qlen = strlen(query), vlen;
	char *big = malloc(qlen + 1), *exact;
	int r;

	CHECK(big);
	r = sonde_http_query_get(query, key, big, qlen + 1);
	/* A value never decodes longer than the query it came from. */
	CHECK(r == 0 || r == 1 || r == -EINVAL);
	if (r == 1) {
		vlen = strlen(big);
		CHECK(vlen <= qlen);
		exact = malloc(vlen + 1);
		CHECK(exact);
		CHECK(sonde_http_query_get(query, key, exact, vlen + 1) == 1);
		CHECK(!strcmp(exact, big));
		if (vlen)
			CHECK(sonde_http_query_get(query, key, exact, vlen) == -ENAMETOOLONG);
		free(exact);
	} else {
		char one[1];

		CHECK(sonde_http_query_get(query, key, one, sizeof(one)) == r);
	}
	free(big);
}

/* The keys sonded reads, with its buffer sizes, and the query's own first key. */
static void check_query(const char *query)
{
	const char *amp, *eq;
	char value[32], comm[16], *key;
	size_t klen;
	int r;

	r = sonde_http_query_get(query, "seconds", value, sizeof(value));
	CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG || (r == 1 && strlen(value) < 32));
	r = sonde_http_query_get(query, "comm", comm, sizeof(comm));
	CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG || (r == 1 && strlen(comm) < 16));
	check_query_key(query, "pid");

	if (!*query)
		return;
	amp = strchr(query, '&');
	klen = amp ? (size_t)(amp - query) : strlen(query);
	eq = memchr(query, '=', klen);
	if (eq)
		klen = (size_t)(eq - query);
	key = strndup(query, klen);
	CHECK(key);
	/* The first pair's name always finds that pair (or its bad escape). */
	r = sonde_http_query_get(query, key, value, sizeof(value));
	CHECK(r == 1 || r == -EINVAL || r == -ENAMETOOLONG);
	check_query_key(query, key);
	free(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Exactly size bytes, no NUL after them: an overread is ASan's to see. */
	char *buf = malloc(size ? size : 1), *str;
	struct sonde_http_head h;
	int r;

	CHECK(buf);
	memcpy(buf, data, size);
	r = sonde_http_parse_head(buf, size, &h);
	if (r == 0) {
		CHECK(h.len > 0 && h.len <= size);
		CHECK(data[h.len - 1] == '\n'); /* buf's own may be a NUL by now */
		if (h.status == 0) {
			CHECK(!strcmp(h.req.method, "GET") || !strcmp(h.req.method, "HEAD"));
			CHECK(inside(h.req.path, buf, h.len) && h.req.path[0] == '/');
			CHECK(inside(h.req.query, buf, h.len) && h.req.query > h.req.path);
			CHECK(!h.error);
			check_query(h.req.query);
		} else {
			CHECK(h.status == 400 || h.status == 405 || h.status == 413 ||
			      h.status == 505);
			CHECK(h.error && *h.error && !strchr(h.error, '\n'));
			CHECK(!h.req.method && !h.req.path && !h.req.query);
		}
	} else {
		CHECK(r == -EAGAIN);
		/* No complete head: nothing was written into the buffer. */
		CHECK(!memcmp(buf, data, size));
	}
	free(buf);

	/* The accessor on any string, not only what a valid head lets through. */
	str = strndup((const char *)data, size);
	CHECK(str);
	check_query(str);
	free(str);
	return 0;
}
