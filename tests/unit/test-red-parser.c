// SPDX-License-Identifier: MIT
/*
 * red-metrics without a kernel: the HTTP/1.x head parser and the route
 * templating over byte sequences as syscalls return them (cut anywhere,
 * garbage, binary noise), and the aggregator fed recorded ringbuf records,
 * checked through the Prometheus text it writes, with a fake of the script's
 * route hook (on_http_route) for the route cache.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "red.h"
#include "red_agg.h"
#include "red_http.h"

#define S(lit) lit, sizeof(lit) - 1

static void test_request_methods(void **state)
{
	static const char *const known[] = {"GET",     "HEAD",	  "POST",  "PUT",  "DELETE",
					    "CONNECT", "OPTIONS", "TRACE", "PATCH"};
	struct sonde_red_request r;
	char buf[128];
	size_t i;
	int n;

	(void)state;
	for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		n = snprintf(buf, sizeof(buf), "%s /a HTTP/1.1\r\nHost: x\r\n\r\n", known[i]);
		assert_int_equal(sonde_red_parse_request(buf, (size_t)n, &r), 0);
		assert_string_equal(r.method, known[i]);
		assert_int_equal(r.is_head, !strcmp(known[i], "HEAD"));
		assert_string_equal(r.path, "/a");
		assert_int_equal(r.head_len, (size_t)n);
	}
	/* methods the conventions do not know: counted, as _OTHER */
	assert_int_equal(sonde_red_parse_request(S("PROPFIND /dav HTTP/1.1\r\n\r\n"), &r), 0);
	assert_string_equal(r.method, "_OTHER");
	assert_int_equal(sonde_red_parse_request(S("GETX / HTTP/1.0\r\n\r\n"), &r), 0);
	assert_string_equal(r.method, "_OTHER");
}

static void test_request_target(void **state)
{
	struct sonde_red_request r;

	(void)state;
	assert_int_equal(sonde_red_parse_request(S("GET /s?q=secret#frag HTTP/1.1\r\n\r\n"), &r),
			 0);
	assert_string_equal(r.path, "/s");
	assert_int_equal(sonde_red_parse_request(
				 S("GET http://example.com:8080/a/b?x=1 HTTP/1.1\r\n\r\n"), &r),
			 0);
	assert_string_equal(r.path, "/a/b");
	assert_int_equal(sonde_red_parse_request(S("GET http://example.com HTTP/1.1\r\n\r\n"), &r),
			 0);
	assert_string_equal(r.path, "");
	assert_int_equal(sonde_red_parse_request(S("OPTIONS * HTTP/1.1\r\n\r\n"), &r), 0);
	assert_string_equal(r.path, "*");
}

static void test_request_headers(void **state)
{
	struct sonde_red_request r;

	(void)state;
	assert_int_equal(sonde_red_parse_request(S("POST /u HTTP/1.1\r\nHost: h\r\n"
						   "content-LENGTH:  42 \r\n\r\nbody"),
						 &r),
			 0);
	assert_int_equal(r.content_length, 42);
	assert_int_equal(r.chunked, 0);
	assert_int_equal(r.head_len, 51);
	assert_int_equal(
		sonde_red_parse_request(
			S("POST /u HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"), &r),
		0);
	assert_int_equal(r.chunked, 1);
	assert_int_equal(r.content_length, -1);
	/* a bad length is no length */
	assert_int_equal(
		sonde_red_parse_request(S("POST /u HTTP/1.1\r\nContent-Length: 4x\r\n\r\n"), &r),
		0);
	assert_int_equal(r.content_length, -1);
	/* bare LF line ends */
	assert_int_equal(sonde_red_parse_request(S("GET /lf HTTP/1.0\nContent-Length: 3\n\n"), &r),
			 0);
	assert_int_equal(r.content_length, 3);
	assert_int_equal(r.head_len, 36);
}

/* server_address: the host the request names, without port or brackets. */
static void test_request_host(void **state)
{
	struct sonde_red_request r;

	(void)state;
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nHOST:  Api.Example.COM:8080 "
						   "\r\n\r\n"),
						 &r),
			 0);
	assert_string_equal(r.host, "api.example.com");
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nHost: [::1]:9\r\n\r\n"), &r),
			 0);
	assert_string_equal(r.host, "::1");
	/* the absolute target's authority comes first; the first Host counts */
	assert_int_equal(sonde_red_parse_request(S("GET http://a.test:81/x HTTP/1.1\r\nHost: b\r\n"
						   "Host: c\r\n\r\n"),
						 &r),
			 0);
	assert_string_equal(r.host, "a.test");
	/* not a host name: no label rather than arbitrary bytes */
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"), &r), 0);
	assert_string_equal(r.host, "");
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), &r), 0);
	assert_string_equal(r.host, "");
	/* a Host line cut by the end of the buffer is not used */
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nHost: exam"), &r), 0);
	assert_string_equal(r.host, "");
}

/* Heads cut by the end of what one read returned. */
static void test_request_split(void **state)
{
	static const char head[] = "GET /items/7?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
				   "\r\n";
	struct sonde_red_request r;
	size_t cut;

	(void)state;
	for (cut = 0; cut <= sizeof(head) - 1; cut++) {
		int rc = sonde_red_parse_request(head, cut, &r);

		if (cut < 4) { /* no "GET " yet */
			assert_int_equal(rc, -EINVAL);
			continue;
		}
		assert_int_equal(rc, 0);
		assert_string_equal(r.method, "GET");
		/* the path only once the whole target is there, never half */
		if (cut < 17)
			assert_string_equal(r.path, "");
		else
			assert_string_equal(r.path, "/items/7");
		assert_int_equal(r.line_complete, cut >= 26);
		/* the length only once its line ended; the end only at the end */
		assert_int_equal(r.content_length, cut >= 56 ? 12 : -1);
		assert_int_equal(r.head_len, cut == sizeof(head) - 1 ? cut : 0);
	}
	/* a CR at the very end may be followed by more of the same header */
	assert_int_equal(sonde_red_parse_request(S("GET / HTTP/1.1\r\nContent-Length: 1\r"), &r),
			 0);
	assert_int_equal(r.content_length, -1);
}

static void test_request_garbage(void **state)
{
	static const char *const bad[] = {
		"",
		"get / HTTP/1.1\r\n\r\n",  /* lower case */
		" GET / HTTP/1.1\r\n\r\n", /* leading space */
		"GET / HTTP/2.0\r\n\r\n",  /* not HTTP/1 */
		"GET /\r\n",		   /* HTTP/0.9 */
		"GET / HTTX\r\n",	   /* cut version that does not match */
		"GET / HTTP/1.1 extra\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\n",			/* a response */
		"ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n",		/* token too long */
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* TLS ClientHello */
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	};
	struct sonde_red_request r;
	unsigned char noise[512];
	unsigned int seed = 12345;
	size_t i, j;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(sonde_red_parse_request(bad[i], strlen(bad[i]), &r), -EINVAL);
	/* binary noise: never a crash, and never a request that does not
	 * start with an upper-case token and a space */
	for (i = 0; i < 2000; i++) {
		size_t n = (size_t)rand_r(&seed) % sizeof(noise);

		for (j = 0; j < n; j++)
			noise[j] = (unsigned char)rand_r(&seed);
		if (i % 3 == 0 && n > 4)
			memcpy(noise, "GET ", 4); /* noise after a method */
		if (sonde_red_parse_request(noise, n, &r) == 0) {
			assert_true(noise[0] >= 'A' && noise[0] <= 'Z');
			assert_true(strlen(r.path) < sizeof(r.path));
		}
		sonde_red_parse_response(noise, n, &(struct sonde_red_response){0});
	}
}

static void test_response(void **state)
{
	struct sonde_red_response r;
	static const char nginx[] = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
				    "Date: Sun, 22 Nov 2026 00:35:21 GMT\r\n"
				    "Content-Type: text/plain\r\nContent-Length: 6756\r\n"
				    "Connection: keep-alive\r\n\r\n";

	(void)state;
	assert_int_equal(sonde_red_parse_response(S(nginx), &r), 0);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.content_length, 6756);
	assert_int_equal(r.head_len, sizeof(nginx) - 1);
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.0 404 Not Found\r\n\r\n"), &r), 0);
	assert_int_equal(r.status, 404);
	assert_int_equal(r.content_length, -1);
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.1 204\r\n\r\n"), &r), 0);
	assert_int_equal(r.status, 204);
	assert_int_equal(
		sonde_red_parse_response(
			S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"), &r),
		0);
	assert_int_equal(r.chunked, 1);
	/* the status line alone, cut before its end */
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.1 503 Serv"), &r), 0);
	assert_int_equal(r.status, 503);
	assert_int_equal(r.head_len, 0);
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.1 20"), &r), -EINVAL);
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.1 099 x\r\n"), &r), -EINVAL);
	assert_int_equal(sonde_red_parse_response(S("HTTP/1.1 2000 x\r\n"), &r), -EINVAL);
	assert_int_equal(sonde_red_parse_response(S("HTTP/2 200 OK\r\n\r\n"), &r), -EINVAL);
	assert_int_equal(sonde_red_parse_response(S("GET / HTTP/1.1\r\n\r\n"), &r), -EINVAL);
}

static void check_route(const char *path, const char *want)
{
	char out[SONDE_RED_ROUTE_MAX];

	sonde_red_route(path, out, sizeof(out));
	if (strcmp(out, want))
		fail_msg("route of '%s' is '%s', wanted '%s'", path, out, want);
}

static void test_route(void **state)
{
	char out[24], long_path[600];
	size_t i;

	(void)state;
	check_route("", "/");
	check_route("/", "/");
	check_route("*", "*");
	check_route("/ok", "/ok");
	check_route("/users/42", "/users/*");
	check_route("/users/42/", "/users/*");
	check_route("/users//42/orders/7", "/users/*/orders/*");
	check_route("/v1/api2/items", "/v1/api2/items");
	check_route("/obj/123e4567-e89b-12d3-a456-426614174000", "/obj/*");
	check_route("/blob/9f86d081884c7d65", "/blob/*");
	check_route("/blob/deadbeef", "/blob/deadbeef"); /* hex but a word: no digit */
	check_route("/t/abcDEF123ghiJKL456", "/t/*");
	check_route("/static/app.min.js", "/static/app.min.js");
	check_route("/a%20b/c", "/*/c");
	check_route("/caf\xc3\xa9", "/*");
	check_route("/k=v/x", "/*/x");
	/* too long: cut at a segment, ending in slash-star, never past out */
	memset(out, 'x', sizeof(out));
	sonde_red_route("/alpha/beta/gamma/delta/epsilon", out, sizeof(out));
	assert_string_equal(out, "/alpha/beta/gamma/*");
	for (i = 0; i < sizeof(long_path) - 1; i++)
		long_path[i] = i % 10 == 0 ? '/' : 'a';
	long_path[sizeof(long_path) - 1] = '\0';
	sonde_red_route(long_path, out, sizeof(out));
	assert_string_equal(out, "/aaaaaaaaa/aaaaaaaaa/*");
	assert_int_equal(sonde_red_route("/a", out, 2), 0);
}

static void check_match(const struct sonde_red_patterns *p, const char *path, const char *want)
{
	const char *got = sonde_red_patterns_match(p, path);

	if (want ? !got || strcmp(got, want) : got != NULL)
		fail_msg("'%s' matches '%s', wanted '%s'", path, got ? got : "(none)",
			 want ? want : "(none)");
}

static void check_bad_patterns(const char *spec, const char *want)
{
	struct sonde_red_patterns p;
	char err[256] = "";

	assert_int_equal(sonde_red_patterns_parse(spec, &p, err, sizeof(err)), -EINVAL);
	if (strcmp(err, want))
		fail_msg("routes = \"%s\": error '%s', wanted '%s'", spec, err, want);
}

/* The script's route patterns: segment-wise, first match wins, as written. */
static void test_route_patterns(void **state)
{
	struct sonde_red_patterns p;
	char err[256] = "", spec[64 * 8 + 16], *o = spec;
	int i;

	(void)state;
	assert_int_equal(sonde_red_patterns_parse(
				 " /users/{id}/orders/{order} ,/users/{id},/static/*\t/users/me "
				 "/health",
				 &p, err, sizeof(err)),
			 0);
	assert_int_equal(p.count, 5);
	assert_string_equal(p.pattern[0], "/users/{id}/orders/{order}");
	assert_string_equal(p.pattern[4], "/health");
	check_match(&p, "/users/42", "/users/{id}");
	check_match(&p, "/users/42/", "/users/{id}");
	check_match(&p, "/users/alice/orders/7", "/users/{id}/orders/{order}");
	check_match(&p, "/users/me", "/users/{id}"); /* first match wins, not the best */
	check_match(&p, "/users/42/orders", NULL);
	check_match(&p, "/users/42/orders/7/items", NULL);
	check_match(&p, "/users", NULL);
	check_match(&p, "/static/css/app.css", "/static/*");
	check_match(&p, "/static", "/static/*"); /* the rest may be nothing */
	check_match(&p, "/staticx/a", NULL);
	check_match(&p, "/health", "/health");
	check_match(&p, "/Health", NULL);
	check_match(&p, "*", NULL);
	check_match(&p, "", NULL);
	/* none: nothing matches, "" and NULL alike */
	assert_int_equal(sonde_red_patterns_parse("", &p, err, sizeof(err)), 0);
	assert_int_equal(p.count, 0);
	check_match(&p, "/users/1", NULL);
	assert_int_equal(sonde_red_patterns_parse(NULL, &p, err, sizeof(err)), 0);
	assert_int_equal(sonde_red_patterns_parse("/", &p, err, sizeof(err)), 0);
	check_match(&p, "/", "/");
	check_match(&p, "/a", NULL);

	check_bad_patterns("/ok users/{id}",
			   "routes: bad pattern 'users/{id}': it does not start with '/'");
	check_bad_patterns("/users/{id", "routes: bad pattern '/users/{id': unbalanced braces");
	check_bad_patterns("/users/id}/x", "routes: bad pattern '/users/id}/x': unbalanced braces");
	check_bad_patterns("/a/{{id}}", "routes: bad pattern '/a/{{id}}': unbalanced braces");
	check_bad_patterns("/v{n}/x", "routes: bad pattern '/v{n}/x': a {name} must be a whole "
				      "segment, with a name");
	check_bad_patterns("/a/{}", "routes: bad pattern '/a/{}': a {name} must be a whole "
				    "segment, with a name");
	check_bad_patterns("/a/*/b", "routes: bad pattern '/a/*/b': '*' must be the last segment");
	check_bad_patterns("/a/b*", "routes: bad pattern '/a/b*': '*' must be a whole segment");
	memset(spec, 'a', 130);
	spec[0] = '/';
	spec[130] = '\0';
	check_bad_patterns(spec, "routes: bad pattern '/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				 "aaaaaaaaaaaa...': longer than 127 bytes");
	/* 127 bytes is the longest */
	spec[127] = '\0';
	assert_int_equal(sonde_red_patterns_parse(spec, &p, err, sizeof(err)), 0);
	for (i = 0; i < SONDE_RED_PATTERNS_MAX + 1; i++)
		o += sprintf(o, "/p%d ", i);
	check_bad_patterns(spec, "routes: too many patterns (at most 64) at '/p64'");
	o[-5] = '\0'; /* the 64 first */
	assert_int_equal(sonde_red_patterns_parse(spec, &p, err, sizeof(err)), 0);
	assert_int_equal(p.count, SONDE_RED_PATTERNS_MAX);
	assert_string_equal(p.pattern[63], "/p63");
}

/* Recorded records: what red.bpf.c emits, one per exchange. */
struct rec {
	struct red_event ev;
	char data[RED_REQ_HEAD];
};

static struct sonde_red_agg *agg;
static char *text;

/* One exchange on fd: request head req read at start_us, status written
 * until last_us, resp_bytes in all of which head_len of head. */
/* red_event.sampled of the records put(): a CPU sample may wait for them */
static uint8_t put_sampled = 1;

static void put(uint8_t end, uint32_t fd, uint64_t start_us, uint64_t last_us, const char *req,
		uint16_t status, uint64_t resp_bytes, uint32_t head_len, int64_t clen)
{
	struct rec r = {0};
	size_t len = req ? strlen(req) : 0;

	if (len > RED_REQ_HEAD)
		len = RED_REQ_HEAD; /* as BPF keeps it */
	r.ev.type = RED_EV_EXCHANGE;
	r.ev.end = end;
	r.ev.tgid = 100;
	r.ev.fd = fd;
	r.ev.lport = 8080;
	r.ev.gen = 1;
	r.ev.status = status;
	r.ev.start = start_us * 1000;
	r.ev.last = last_us * 1000;
	r.ev.resp_bytes = resp_bytes;
	r.ev.resp_head_len = head_len;
	r.ev.resp_clen = clen;
	r.ev.len = (uint16_t)len;
	r.ev.sampled = put_sampled;
	r.ev.tag_tgid = put_sampled ? 100 : 0; /* the server's own thread */
	memcpy(r.data, req, len);
	/* BPF always sends the whole record, len says what is meaningful */
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), 0);
}

static const char *written(void)
{
	size_t len;
	FILE *f;

	free(text);
	text = NULL;
	f = open_memstream(&text, &len);
	assert_non_null(f);
	assert_int_equal(sonde_red_agg__write(agg, f), 0);
	fclose(f);
	return text;
}

static void has_line(const char *line)
{
	const char *t = written();
	const char *p = strstr(t, line);

	if (!p || (p != t && p[-1] != '\n') || p[strlen(line)] != '\n')
		fail_msg("no line '%s' in:\n%s", line, t);
}

#define SERIES(method, status, route, extra)                                                       \
	"{service_name=\"web\",http_request_method=\"" method                                      \
	"\",http_response_status_code=\"" status "\",http_route=\"" route                          \
	"\",url_scheme=\"http\",server_port=\"8080\"" extra

static int setup(void **state)
{
	struct sonde_red_agg_opts opts = {.max_routes = 3};

	(void)state;
	agg = sonde_red_agg__new(&opts);
	assert_non_null(agg);
	assert_int_equal(sonde_red_agg__set_service(agg, 100, "web"), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	sonde_red_agg__free(agg);
	free(text);
	text = NULL;
	return 0;
}

static void test_agg_keepalive(void **state)
{
	(void)state;
	/* two exchanges of one connection, 60 ms and 1 ms */
	put(RED_END_LENGTH, 5, 1000, 61000, "GET /users/1?secret=1 HTTP/1.1\r\nAccept: */*\r\n\r\n",
	    200, 49, 39, 10);
	put(RED_END_LENGTH, 5, 70000, 71000, "GET /users/2 HTTP/1.1\r\n\r\n", 200, 49, 39, 10);
	assert_int_equal(sonde_red_agg__stats(agg)->requests, 2);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/users/*",
								     "}") " 2");
	has_line("http_server_request_duration_seconds_bucket" SERIES("GET", "200", "/users/*",
								      ",le=\"0.05\"}") " 1");
	has_line("http_server_request_duration_seconds_bucket" SERIES("GET", "200", "/users/*",
								      ",le=\"0.075\"}") " 2");
	has_line("http_server_request_duration_seconds_bucket" SERIES("GET", "200", "/users/*",
								      ",le=\"+Inf\"}") " 2");
	has_line("http_server_request_duration_seconds_sum" SERIES("GET", "200", "/users/*",
								   "}") " 0.061");
	has_line("http_server_response_body_size_bytes_sum" SERIES("GET", "200", "/users/*",
								   "}") " 20");
	has_line("http_server_response_body_size_bytes_bucket" SERIES("GET", "200", "/users/*",
								      ",le=\"0\"}") " 0");
	has_line("http_server_response_body_size_bytes_bucket" SERIES("GET", "200", "/users/*",
								      ",le=\"32\"}") " 2");
	assert_null(strstr(written(), "secret"));
	assert_non_null(
		strstr(written(), "# TYPE http_server_request_duration_seconds histogram\n"));
}

static void test_agg_no_body(void **state)
{
	(void)state;
	/* HEAD and 304 have no body whatever Content-Length says */
	put(RED_END_LENGTH, 6, 0, 500, "HEAD /a HTTP/1.1\r\n\r\n", 200, 39, 39, 10);
	put(RED_END_LENGTH, 6, 1000, 1200, "GET /a HTTP/1.1\r\n\r\n", 304, 29, 29, -1);
	/* the request body's size comes from the request head */
	put(RED_END_LENGTH, 6, 2000, 2400,
	    "POST /a HTTP/1.1\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n", 201, 43,
	    43, 0);
	/* close-delimited: the bytes after the head */
	put(RED_END_CLOSE, 6, 3000, 3100, "GET /b HTTP/1.0\r\n\r\n", 200, 1019, 19, -1);
	assert_int_equal(sonde_red_agg__stats(agg)->requests, 4);
	assert_int_equal(sonde_red_agg__stats(agg)->forced_close, 1);
	has_line(
		"http_server_request_duration_seconds_count" SERIES("HEAD", "200", "/a", "}") " 1");
	has_line("http_server_response_body_size_bytes_sum" SERIES("HEAD", "200", "/a", "}") " 0");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "304", "/a", "}") " 1");
	has_line("http_server_request_duration_seconds_sum" SERIES("POST", "201", "/a",
								   "}") " 0.0004");
	has_line("http_server_request_body_size_bytes_sum" SERIES("POST", "201", "/a", "}") " 100");
	has_line("http_server_response_body_size_bytes_sum" SERIES("GET", "200", "/b",
								   "}") " 1000");
}

static void test_agg_forced_and_aborted(void **state)
{
	const struct sonde_red_agg_stats *st = sonde_red_agg__stats(agg);

	(void)state;
	/* chunked with no last chunk seen: ended by the next request */
	put(RED_END_NEXT, 7, 0, 30000, "GET /c HTTP/1.1\r\n\r\n", 500, 55, 50, -1);
	assert_int_equal(st->requests, 1);
	assert_int_equal(st->forced_next, 1);
	has_line("http_server_request_duration_seconds_sum" SERIES("GET", "500", "/c",
								   ",error_type=\"500\"}") " 0.03");
	/* closed before any response: no series, no invented status */
	put(RED_END_ABORT, 7, 90000, 90000, "GET /c HTTP/1.1\r\n\r\n", 0, 0, 0, -1);
	assert_int_equal(st->aborted, 1);
	put(RED_END_UNPAIRED, 7, 90000, 90000, "GET /c HTTP/1.1\r\n\r\n", 0, 0, 0, -1);
	assert_int_equal(st->unpaired, 1);
	assert_int_equal(st->requests, 1);
	/* a head that is not HTTP/1.x, a status out of range */
	put(RED_END_LENGTH, 8, 0, 1, "GET /x HTTP/3\r\n\r\n", 200, 0, 0, 0);
	put(RED_END_LENGTH, 8, 0, 1, "GET /x HTTP/1.1\r\n\r\n", 42, 0, 0, 0);
	assert_int_equal(st->bad_heads, 2);
	/* a request line longer than what BPF keeps: no route to make */
	{
		char head[RED_REQ_HEAD + 32];

		memset(head, 'a', sizeof(head) - 1);
		memcpy(head, "GET /", 5);
		head[sizeof(head) - 1] = '\0';
		put(RED_END_LENGTH, 8, 0, 1, head, 200, 0, 0, 0);
		has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
									     "}") " 1");
	}
	assert_int_equal(st->requests, 2);
}

static void test_agg_route_cap(void **state)
{
	static const char *const paths[] = {"/a", "/b", "/c", "/d", "/e", "/a"};
	char head[64];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\n\r\n", paths[i]);
		put(RED_END_LENGTH, 9, i * 10, i * 10 + 1, head, 200, 49, 39, 10);
	}
	/* max_routes 3: /d and /e fold into _OTHER, /a stays itself */
	assert_int_equal(sonde_red_agg__stats(agg)->route_overflow, 2);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/a", "}") " 2");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
								     "}") " 2");
	assert_null(strstr(written(), "\"/d\""));
}

/* The memo of recent request shapes: the same shape again counts in the
 * same series, folded ones count as folded every time, and a renamed
 * service gets series of its new name. */
static void test_agg_memo(void **state)
{
	static const char *const paths[] = {"/a", "/b", "/c", "/d", "/d", "/d", "/a"};
	char head[64];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\n\r\n", paths[i]);
		put(RED_END_LENGTH, 9, i * 10, i * 10 + 1, head, 200, 49, 39, 10);
	}
	/* max_routes 3: each of the three /d folds into _OTHER, and is counted */
	assert_int_equal(sonde_red_agg__stats(agg)->route_overflow, 3);
	assert_int_equal(sonde_red_agg__stats(agg)->requests, 7);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/a", "}") " 2");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
								     "}") " 3");
	/* another status is another shape */
	put(RED_END_LENGTH, 9, 100, 101, "GET /a HTTP/1.1\r\n\r\n", 404, 49, 39, 10);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "404", "/a",
								     "}") " 1");
	/* a renamed service: the memo must not send /a to the old name's series */
	assert_int_equal(sonde_red_agg__set_service(agg, 100, "shop"), 0);
	put(RED_END_LENGTH, 9, 110, 111, "GET /a HTTP/1.1\r\n\r\n", 200, 49, 39, 10);
	has_line("http_server_request_duration_seconds_count{service_name=\"shop\","
		 "http_request_method=\"GET\",http_response_status_code=\"200\","
		 "http_route=\"/a\",url_scheme=\"http\",server_port=\"8080\"} 1");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/a", "}") " 2");
}

static void test_agg_bad_records(void **state)
{
	struct rec r = {.ev = {.type = RED_EV_EXCHANGE, .end = RED_END_LENGTH, .len = 100}};

	(void)state;
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r.ev) - 1), -EINVAL);
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r.ev) + 10), -EINVAL); /* len lies */
	r.ev.type = 99;
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), -EINVAL);
	r.ev.type = RED_EV_EXCHANGE;
	r.ev.end = 0;
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), -EINVAL);
	assert_int_equal(sonde_red_agg__stats(agg)->requests, 0);
	/* a process that is gone: its late exchanges go to unknown_service */
	sonde_red_agg__forget(agg, 100);
	put(RED_END_LENGTH, 10, 0, 10, "GET /z HTTP/1.1\r\n\r\n", 200, 39, 39, 0);
	assert_non_null(strstr(written(), "service_name=\"unknown_service\""));
}

/* The `red` topic's message: the window's series only, then a new window. */
static void test_agg_window(void **state)
{
	static const unsigned char series1[] = {0xa6, 's', 'e', 'r', 'i', 'e', 's', 0x91};
	static const unsigned char series0[] = {0xa6, 's', 'e', 'r', 'i', 'e', 's', 0x90};
	static const unsigned char route[] = {0xaa, 'h', 't', 't', 'p', '_', 'r', 'o', 'u', 't',
					      'e', 0xa2, '/', 'w'};
	unsigned char *buf;
	size_t len;

	(void)state;
	put(RED_END_LENGTH, 5, 0, 1000, "GET /w HTTP/1.1\r\n\r\n", 200, 39, 39, 0);
	put(RED_END_LENGTH, 5, 0, 1000, "GET /w HTTP/1.1\r\n\r\n", 200, 39, 39, 0);
	assert_int_equal(sonde_red_agg__window(agg, 1e9, 10, (void **)&buf, &len), 0);
	assert_int_equal(buf[0], 0x86); /* v, start, duration, two bounds, series */
	assert_non_null(memmem(buf, len, series1, sizeof(series1)));
	assert_non_null(memmem(buf, len, route, sizeof(route)));
	assert_non_null(memmem(buf, len, "\xa5" "count" "\x02", 7));
	free(buf);
	/* /metrics keeps counting; the next window starts empty */
	assert_int_equal(sonde_red_agg__window(agg, 1e9 + 10, 10, (void **)&buf, &len), 0);
	assert_non_null(memmem(buf, len, series0, sizeof(series0)));
	free(buf);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/w", "}") " 2");
}

/* The client side: its own families, the server's address, 4xx is an error. */
static void test_agg_client(void **state)
{
	struct rec r = {0};
	const char *req = "GET /users/7 HTTP/1.1\r\nAccept: */*\r\n\r\n";
	const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
	uint32_t v4 = htonl(0x7f000001);

	(void)state;
	r.ev.type = RED_EV_EXCHANGE;
	r.ev.end = RED_END_LENGTH;
	r.ev.client = 1;
	r.ev.tgid = 100;
	r.ev.lport = 8080;
	r.ev.status = 404;
	r.ev.start = 1000;
	r.ev.last = 2001000;
	r.ev.resp_bytes = 60;
	r.ev.resp_head_len = 40;
	r.ev.resp_clen = 20;
	r.ev.family = RED_FAMILY_INET;
	memcpy(r.ev.server_addr, &v4, sizeof(v4));
	r.ev.len = (uint16_t)strlen(req);
	memcpy(r.data, req, strlen(req));
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), 0);
	/* an IPv6 peer, then a Host header, which names the server instead */
	r.ev.family = RED_FAMILY_INET6;
	memcpy(r.ev.server_addr, v6, sizeof(v6));
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), 0);
	req = "GET /users/7 HTTP/1.1\r\nHost: api.test:8080\r\n\r\n";
	r.ev.len = (uint16_t)strlen(req);
	memcpy(r.data, req, strlen(req));
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r)), 0);
	has_line("http_client_request_duration_seconds_count{service_name=\"web\","
		 "http_request_method=\"GET\",http_response_status_code=\"404\","
		 "http_route=\"/users/*\",url_scheme=\"http\",server_address=\"2001:db8::1\","
		 "server_port=\"8080\",error_type=\"404\"} 1");
	has_line("http_client_request_duration_seconds_count{service_name=\"web\","
		 "http_request_method=\"GET\",http_response_status_code=\"404\","
		 "http_route=\"/users/*\",url_scheme=\"http\",server_address=\"api.test\","
		 "server_port=\"8080\",error_type=\"404\"} 1");
	has_line("http_client_request_duration_seconds_count{service_name=\"web\","
		 "http_request_method=\"GET\",http_response_status_code=\"404\","
		 "http_route=\"/users/*\",url_scheme=\"http\",server_address=\"127.0.0.1\","
		 "server_port=\"8080\",error_type=\"404\"} 1");
	has_line("http_client_response_body_size_bytes_sum{service_name=\"web\","
		 "http_request_method=\"GET\",http_response_status_code=\"404\","
		 "http_route=\"/users/*\",url_scheme=\"http\",server_address=\"127.0.0.1\","
		 "server_port=\"8080\",error_type=\"404\"} 20");
	/* no server series: the server families are there, empty */
	assert_null(strstr(written(), "http_server_request_duration_seconds_count"));
	assert_non_null(strstr(written(), "# TYPE http_client_request_duration_seconds histogram"));
}

static int setup_ttl(void **state)
{
	struct sonde_red_patterns pat;
	struct sonde_red_agg_opts opts = {
		.max_routes = 2, .patterns = &pat, .series_ttl_ns = 10ULL * 1000000000ULL};
	char err[128];

	(void)state;
	assert_int_equal(sonde_red_patterns_parse("/orders/{id}", &pat, err, sizeof(err)), 0);
	agg = sonde_red_agg__new(&opts);
	assert_non_null(agg);
	assert_int_equal(sonde_red_agg__set_service(agg, 100, "web"), 0);
	return 0;
}

#define SEC 1000000ULL /* put() takes microseconds */

static void window(void)
{
	void *buf;
	size_t len;

	assert_int_equal(sonde_red_agg__window(agg, 1e9, 10, &buf, &len), 0);
	free(buf);
}

static void get(uint64_t at_us, const char *path)
{
	char head[64];

	snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\n\r\n", path);
	put(RED_END_LENGTH, 5, at_us, at_us + 1000, head, 200, 39, 39, 0);
}

/*
 * Patterns and the series TTL (10 s here), on the records' own clock:
 * pattern routes are not capped; an expired series leaves /metrics and its
 * route's place under max_routes (2 here), but its route string stays for
 * the profiles' labels; a series with requests a window has not sent stays.
 */
static void test_agg_patterns_ttl(void **state)
{
	const struct sonde_red_agg_stats *st = sonde_red_agg__stats(agg);
	const char *method = NULL, *route = NULL;

	(void)state;
	get(1 * SEC, "/a");
	get(2 * SEC, "/orders/17");
	get(3 * SEC, "/b");
	get(4 * SEC, "/c"); /* max_routes: /a and /b */
	get(4 * SEC + SEC / 2, "/orders/18"); /* a pattern: never capped */
	assert_int_equal(st->route_overflow, 1);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
								     "}") " 1");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/orders/{id}",
								     "}") " 2");
	window();
	/* 11.5 s: /a's last request ended at 1.001 s, over 10 s ago */
	get(11 * SEC + SEC / 2, "/b");
	assert_int_equal(st->series_expired, 1);
	assert_null(strstr(written(), "http_route=\"/a\""));
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/b", "}") " 2");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/orders/{id}",
								     "}") " 2");
	/* the profiles may still ask about /a's exchange: its strings are there */
	assert_true(sonde_red_agg__exchange(agg, 100, 1 * SEC * 1000, &method, &route));
	assert_string_equal(route, "/a");
	assert_string_equal(method, "GET");
	/* /a's place under max_routes is free again: /c gets it */
	get(12 * SEC, "/c");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/c", "}") " 1");
	assert_int_equal(st->route_overflow, 1);
	/* a time behind the records' changes nothing */
	assert_int_equal(sonde_red_agg__expire(agg, 5 * SEC * 1000), 0);
	/* 100 s: all are old, but /b and /c have requests no window sent yet */
	assert_int_equal(sonde_red_agg__expire(agg, 100 * SEC * 1000), 2); /* /orders, _OTHER */
	assert_null(strstr(written(), "http_route=\"/orders/{id}\""));
	assert_null(strstr(written(), "http_route=\"_OTHER\""));
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/b", "}") " 2");
	window();
	assert_int_equal(sonde_red_agg__expire(agg, 100 * SEC * 1000), 2);
	assert_int_equal(st->series_expired, 5);
	assert_null(strstr(written(), "http_server_request_duration_seconds_count{"));
	/* every place is free: two new routes, no overflow */
	get(101 * SEC, "/x");
	get(101 * SEC, "/y");
	assert_int_equal(st->route_overflow, 1);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/y", "}") " 1");
	/* /b again, once expired: /x and /y hold the places now */
	get(101 * SEC, "/b");
	assert_int_equal(st->route_overflow, 2);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
								     "}") " 1");
	/* an exchange no sample can wait for is counted, not remembered */
	put_sampled = 0;
	get(102 * SEC, "/x");
	put_sampled = 1;
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/x", "}") " 2");
	assert_false(sonde_red_agg__exchange(agg, 100, 102 * SEC * 1000, &method, &route));
	assert_true(sonde_red_agg__exchange(agg, 100, 101 * SEC * 1000, &method, &route));
}

/* A fake on_http_route: renames /users/N (route /users/ and a star) to /users/{id}, drops /ok, fails
 * on /err, answers what is not a route for /bad, keeps the rest; or, with
 * absent, says there is no callback. Records every call. */
static struct {
	int calls;
	int absent;
	char last_key[256];
	char last_path[256];
	char last_addr[256]; /* "(nil)" for NULL */
	char users_path[256]; /* the path it was asked about /users/N with */
} hook;

static int fake_hook(void *ctx, const struct sonde_red_route_query *q, char *out, size_t outlen)
{
	assert_ptr_equal(ctx, &hook);
	assert_int_equal(outlen, SONDE_RED_HOOK_ROUTE_MAX + 1);
	hook.calls++;
	if (hook.absent)
		return -ENOENT;
	snprintf(hook.last_key, sizeof(hook.last_key), "%s %s %s", q->service, q->method,
		 q->route);
	snprintf(hook.last_path, sizeof(hook.last_path), "%s", q->path);
	snprintf(hook.last_addr, sizeof(hook.last_addr), "%s",
		 q->server_address ? q->server_address : "(nil)");
	if (!strcmp(q->route, "/users/*")) {
		snprintf(hook.users_path, sizeof(hook.users_path), "%s", q->path);
		snprintf(out, outlen, "/users/{id}");
		return SONDE_RED_HOOK_REPLACE;
	}
	if (!strcmp(q->route, "/ok"))
		return SONDE_RED_HOOK_DROP;
	if (!strcmp(q->route, "/err"))
		return -EINVAL;
	if (!strcmp(q->route, "/bad")) {
		snprintf(out, outlen, "bad");
		return SONDE_RED_HOOK_REPLACE;
	}
	return SONDE_RED_HOOK_KEEP;
}

static int setup_hook(void **state)
{
	struct sonde_red_agg_opts opts = {
		.max_routes = 100, .route_hook = fake_hook, .route_hook_ctx = &hook,
		.route_cache_max = 8};

	(void)state;
	memset(&hook, 0, sizeof(hook));
	agg = sonde_red_agg__new(&opts);
	assert_non_null(agg);
	assert_int_equal(sonde_red_agg__set_service(agg, 100, "web"), 0);
	return 0;
}

/* A request at start_us with a Host header when host is not NULL. */
static void get_host(uint64_t start_us, const char *method, const char *target, const char *host)
{
	char head[256];

	snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\n%s%s%s\r\n", method, target,
		 host ? "Host: " : "", host ? host : "", host ? "\r\n" : "");
	put(RED_END_LENGTH, 5, start_us, start_us + 1000, head, 200, 39, 39, 0);
}

/*
 * The route hook runs once per distinct (service, method, route), whatever
 * the number of requests: its rename applies to them all, its drop keeps
 * them out of every series and of the profiles' labels, a failure or a
 * non-route keeps the route, and a script change asks again.
 */
static void test_agg_route_hook(void **state)
{
	const struct sonde_red_agg_stats *st = sonde_red_agg__stats(agg);
	const char *method, *route;
	char target[64];
	int i;

	(void)state;
	for (i = 0; i < 50; i++) {
		snprintf(target, sizeof(target), "/users/%d?q=%d", 1000 + i, i);
		get_host((uint64_t)i * 10, "GET", target, i ? NULL : "Api.Test:8080");
	}
	assert_int_equal(hook.calls, 1);
	assert_string_equal(hook.last_key, "web GET /users/*");
	assert_string_equal(hook.users_path, "/users/1000"); /* the first one, no query */
	assert_string_equal(hook.last_addr, "api.test");
	for (i = 0; i < 30; i++)
		get_host(1000 + (uint64_t)i, "GET", "/ok", NULL);
	assert_int_equal(hook.calls, 2);
	assert_string_equal(hook.last_addr, "(nil)");
	for (i = 0; i < 5; i++) {
		get_host(2000 + (uint64_t)i, "GET", "/err", NULL);
		get_host(3000 + (uint64_t)i, "GET", "/bad", NULL);
		get_host(4000 + (uint64_t)i, "GET", "/a", NULL);
	}
	get_host(5000, "POST", "/users/7", NULL); /* another method: another key */
	assert_int_equal(hook.calls, 6);
	assert_string_equal(hook.last_key, "web POST /users/*");
	assert_int_equal(st->route_hook_calls, 6);

	assert_int_equal(st->dropped_by_script, 30);
	assert_int_equal(st->requests, 50 + 5 * 3 + 1);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/users/{id}",
								     "}") " 49");
	has_line("http_server_request_duration_seconds_count" SERIES("POST", "200", "/users/{id}",
								     "}") " 1");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/err", "}") " 5");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/bad", "}") " 5");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/a", "}") " 5");
	assert_null(strstr(written(), "http_route=\"/ok\""));
	assert_null(strstr(written(), "http_route=\"/users/*\""));
	assert_null(strstr(written(), "http_route=\"bad\""));

	/* the profiles: the renamed route; a dropped request has none */
	assert_true(sonde_red_agg__exchange(agg, 100, 20 * 1000, &method, &route));
	assert_string_equal(route, "/users/{id}");
	assert_true(sonde_red_agg__exchange(agg, 100, 1000 * 1000, &method, &route));
	assert_null(route);

	/* a reload: asked again, once */
	sonde_red_agg__script_changed(agg);
	get_host(6000, "GET", "/users/1", NULL);
	get_host(6001, "GET", "/users/2", NULL);
	assert_int_equal(hook.calls, 7);
	assert_string_equal(hook.users_path, "/users/1");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/users/{id}",
								     "}") " 51");

	/* the cache holds 8 keys: the 9th distinct one empties it first */
	for (i = 0; i < 9; i++) {
		snprintf(target, sizeof(target), "/r%d", i);
		get_host(7000 + (uint64_t)i, "GET", target, NULL);
	}
	assert_int_equal(hook.calls, 7 + 9);
	assert_int_equal(st->route_cache_resets, 1);
	get_host(7100, "GET", "/r8", NULL); /* in the cache since the reset */
	get_host(7101, "GET", "/users/3", NULL); /* emptied with it */
	assert_int_equal(hook.calls, 7 + 9 + 1);
	assert_int_equal(st->route_hook_calls, (uint64_t)hook.calls);
}

/* A script without on_http_route: asked once, then never until it changes. */
static void test_agg_route_hook_absent(void **state)
{
	const struct sonde_red_agg_stats *st = sonde_red_agg__stats(agg);
	int i;

	(void)state;
	hook.absent = 1;
	for (i = 0; i < 20; i++)
		get_host((uint64_t)i, "GET", i % 2 ? "/ok" : "/users/5", NULL);
	assert_int_equal(hook.calls, 1);
	assert_int_equal(st->route_hook_calls, 0);
	assert_int_equal(st->dropped_by_script, 0);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/ok", "}") " 10");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/users/*",
								     "}") " 10");
	/* a reload brings a callback */
	hook.absent = 0;
	sonde_red_agg__script_changed(agg);
	for (i = 0; i < 20; i++)
		get_host(100 + (uint64_t)i, "GET", i % 2 ? "/ok" : "/users/5", NULL);
	assert_int_equal(hook.calls, 3);
	assert_int_equal(st->dropped_by_script, 10);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/ok", "}") " 10");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/users/{id}",
								     "}") " 10");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_methods),
		cmocka_unit_test(test_request_target),
		cmocka_unit_test(test_request_headers),
		cmocka_unit_test(test_request_host),
		cmocka_unit_test(test_request_split),
		cmocka_unit_test(test_request_garbage),
		cmocka_unit_test(test_response),
		cmocka_unit_test(test_route),
		cmocka_unit_test(test_route_patterns),
		cmocka_unit_test_setup_teardown(test_agg_keepalive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_no_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_forced_and_aborted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_route_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_memo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_bad_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_window, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_patterns_ttl, setup_ttl, teardown),
		cmocka_unit_test_setup_teardown(test_agg_route_hook, setup_hook, teardown),
		cmocka_unit_test_setup_teardown(test_agg_route_hook_absent, setup_hook, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
