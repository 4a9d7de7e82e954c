// SPDX-License-Identifier: MIT
/*
 * red-metrics without a kernel: the HTTP/1.x head parser and the route
 * templating over byte sequences as syscalls return them (cut anywhere,
 * garbage, binary noise), and the aggregator fed recorded ringbuf records,
 * checked through the Prometheus text it writes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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

/* Recorded records: what red.bpf.c emits for one connection. */
struct rec {
	struct red_event ev;
	char data[RED_HEAD_MAX];
};

static struct sonde_red_agg *agg;
static char *text;

static void put(uint8_t type, uint32_t fd, uint64_t gen, uint64_t ts_us, int64_t bytes,
		const char *head)
{
	struct rec r = {0};
	size_t len = head ? strlen(head) : 0;

	r.ev.type = type;
	r.ev.tgid = 100;
	r.ev.fd = fd;
	r.ev.lport = 8080;
	r.ev.gen = gen;
	r.ev.ts = ts_us * 1000;
	r.ev.bytes = bytes;
	r.ev.len = (uint16_t)len;
	memcpy(r.data, head, len);
	assert_int_equal(sonde_red_agg__event(agg, &r, sizeof(r.ev) + len), 0);
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

#define RESP_OK "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" /* 39 bytes */

static void test_agg_keepalive(void **state)
{
	(void)state;
	/* request, head, body in a second write: ends at the body's write */
	put(RED_EV_REQ, 5, 1, 1000, 40, "GET /users/1?secret=1 HTTP/1.1\r\nHost: h\r\n\r\n");
	put(RED_EV_RESP, 5, 1, 1100, 39, RESP_OK);
	put(RED_EV_DATA, 5, 1, 61000, 10, NULL); /* 60 ms after the request */
	/* the next on the same connection: head and body in one write */
	put(RED_EV_REQ, 5, 1, 70000, 30, "GET /users/2 HTTP/1.1\r\n\r\n");
	put(RED_EV_RESP, 5, 1, 71000, 49, RESP_OK "0123456789");
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
	/* HEAD and 304 end at their head whatever Content-Length says */
	put(RED_EV_REQ, 6, 1, 0, 20, "HEAD /a HTTP/1.1\r\n\r\n");
	put(RED_EV_RESP, 6, 1, 500, 39, RESP_OK);
	put(RED_EV_REQ, 6, 1, 1000, 20, "GET /a HTTP/1.1\r\n\r\n");
	put(RED_EV_RESP, 6, 1, 1200, 29, "HTTP/1.1 304 Not Modified\r\n\r\n");
	/* 100 Continue is interim: the 201 is the response */
	put(RED_EV_REQ, 6, 1, 2000, 60,
	    "POST /a HTTP/1.1\r\nContent-Length: 100\r\n"
	    "Expect: 100-continue\r\n\r\n");
	put(RED_EV_RESP, 6, 1, 2100, 25, "HTTP/1.1 100 Continue\r\n\r\n");
	put(RED_EV_RESP, 6, 1, 2400, 43, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
	assert_int_equal(sonde_red_agg__stats(agg)->requests, 3);
	has_line(
		"http_server_request_duration_seconds_count" SERIES("HEAD", "200", "/a", "}") " 1");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "304", "/a", "}") " 1");
	has_line("http_server_request_duration_seconds_sum" SERIES("POST", "201", "/a",
								   "}") " 0.0004");
	has_line("http_server_request_body_size_bytes_sum" SERIES("POST", "201", "/a", "}") " 100");
}

static void test_agg_forced_and_aborted(void **state)
{
	const struct sonde_red_agg_stats *st = sonde_red_agg__stats(agg);

	(void)state;
	/* chunked: the length is unknown, the next request ends it at the
	 * last write seen */
	put(RED_EV_REQ, 7, 1, 0, 20, "GET /c HTTP/1.1\r\n\r\n");
	put(RED_EV_RESP, 7, 1, 100, 50, "HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n");
	put(RED_EV_DATA, 7, 1, 30000, 5, NULL);
	assert_int_equal(st->requests, 0);
	put(RED_EV_REQ, 7, 1, 90000, 20, "GET /c HTTP/1.1\r\n\r\n");
	assert_int_equal(st->requests, 1);
	assert_int_equal(st->forced_next, 1);
	has_line("http_server_request_duration_seconds_sum" SERIES("GET", "500", "/c",
								   ",error_type=\"500\"}") " 0.03");
	/* closed before any response: no series, no invented status */
	put(RED_EV_CLOSE, 7, 1, 95000, 0, NULL);
	assert_int_equal(st->aborted, 1);
	assert_int_equal(st->requests, 1);
	/* fd 7 reused by a new connection (gen 2) whose close we never saw */
	put(RED_EV_REQ, 7, 2, 100000, 20, "GET /c HTTP/1.1\r\n\r\n");
	put(RED_EV_RESP, 7, 2, 100100, 20, "HTTP/1.0 200 OK\r\n\r\n");
	put(RED_EV_DATA, 7, 3, 100200, 20, NULL); /* gen 3: gen 2 ended unseen */
	assert_int_equal(st->forced_close, 1);
	assert_int_equal(st->requests, 2);
	/* a response nobody asked for, and a head that is not HTTP */
	put(RED_EV_RESP, 8, 1, 0, 20, RESP_OK);
	assert_int_equal(st->unpaired, 1);
	put(RED_EV_REQ, 8, 1, 0, 20, "GET /x HTTP/3\r\n\r\n");
	assert_int_equal(st->bad_heads, 1);
}

static void test_agg_route_cap(void **state)
{
	static const char *const paths[] = {"/a", "/b", "/c", "/d", "/e", "/a"};
	char head[64];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\n\r\n", paths[i]);
		put(RED_EV_REQ, 9, 1, i * 10, 20, head);
		put(RED_EV_RESP, 9, 1, i * 10 + 1, 39 + 10, RESP_OK "0123456789");
	}
	/* max_routes 3: /d and /e fold into _OTHER, /a stays itself */
	assert_int_equal(sonde_red_agg__stats(agg)->route_overflow, 2);
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "/a", "}") " 2");
	has_line("http_server_request_duration_seconds_count" SERIES("GET", "200", "_OTHER",
								     "}") " 2");
	assert_null(strstr(written(), "\"/d\""));
}

static void test_agg_bad_records(void **state)
{
	struct red_event ev = {.type = RED_EV_REQ, .len = 100};

	(void)state;
	assert_int_equal(sonde_red_agg__event(agg, &ev, sizeof(ev) - 1), -EINVAL);
	assert_int_equal(sonde_red_agg__event(agg, &ev, sizeof(ev) + 10), -EINVAL); /* len lies */
	ev.type = 99;
	ev.len = 0;
	assert_int_equal(sonde_red_agg__event(agg, &ev, sizeof(ev)), -EINVAL);
	/* a process that is gone takes its exchanges with it */
	put(RED_EV_REQ, 10, 1, 0, 20, "GET /z HTTP/1.1\r\n\r\n");
	sonde_red_agg__forget(agg, 100);
	put(RED_EV_RESP, 10, 1, 10, 39, RESP_OK);
	assert_int_equal(sonde_red_agg__stats(agg)->unpaired, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_methods),
		cmocka_unit_test(test_request_target),
		cmocka_unit_test(test_request_headers),
		cmocka_unit_test(test_request_split),
		cmocka_unit_test(test_request_garbage),
		cmocka_unit_test(test_response),
		cmocka_unit_test(test_route),
		cmocka_unit_test_setup_teardown(test_agg_keepalive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_no_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_forced_and_aborted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_route_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agg_bad_records, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
