// SPDX-License-Identifier: MIT
/*
 * red-metrics' BPF framing (plugins/red-metrics/red_frame.bpf.h) run on the
 * real kernel through BPF_PROG_TEST_RUN (tests/unit/red_frame_test.bpf.c)
 * over recorded byte sequences: nginx's head, chunked, no-body statuses,
 * interim responses, heads cut or too long, pipelined and split requests,
 * garbage. Needs root (BPF); skips without it, but not under CI=true.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "red.h"
#include "red_frame_test.h"
#include "red_frame_test.skel.h"

static struct red_frame_test_bpf *skel;

/* Runs the framing in mode on the len bytes at data; the result. */
static struct frame_result run(__u32 mode, const void *data, size_t len)
{
	unsigned char pkt[4096];
	struct frame_packet hdr = { .mode = mode };
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt, .repeat = 1);

	assert_true(sizeof(hdr) + len <= sizeof(pkt));
	memcpy(pkt, &hdr, sizeof(hdr));
	memcpy(pkt + sizeof(hdr), data, len);
	opts.data_size_in = (__u32)(sizeof(hdr) + len);
	memset(&skel->bss->result, 0xee, sizeof(skel->bss->result));
	assert_int_equal(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.frame), &opts), 0);
	assert_int_equal(opts.retval, 2 /* XDP_PASS */);
	return skel->bss->result;
}

static struct frame_result response(const char *bytes)
{
	return run(FRAME_RESPONSE, bytes, strlen(bytes));
}

static struct frame_result request(const char *bytes)
{
	return run(FRAME_REQUEST, bytes, strlen(bytes));
}

#define NGINX_HEAD                                                                                 \
	"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 04:00:00 GMT\r\n"      \
	"Content-Type: text/html\r\nContent-Length: 612\r\n"                                       \
	"Last-Modified: Sun, 22 Nov 2026 03:00:00 GMT\r\nConnection: keep-alive\r\n"               \
	"ETag: \"6560f0a0-264\"\r\nAccept-Ranges: bytes\r\n\r\n"

static void expect_frame(const char *bytes, int status, size_t head_len, long long clen,
			 int chunked)
{
	struct frame_result r = response(bytes);

	if (!r.response || r.status != status || r.head_len != head_len || r.clen != clen ||
	    r.chunked != chunked)
		fail_msg("'%s': response %u status %u head_len %u clen %lld chunked %u; wanted "
			 "status %d head_len %zu clen %lld chunked %d", bytes, r.response, r.status,
			 r.head_len, (long long)r.clen, r.chunked, status, head_len, clen, chunked);
}

static void test_responses(void **state)
{
	char big[700];

	(void)state;
	expect_frame(NGINX_HEAD, 200, strlen(NGINX_HEAD), 612, 0);
	/* the body's first bytes in the same write: the head ends where it ends */
	expect_frame(NGINX_HEAD "xxxxxxxx", 200, strlen(NGINX_HEAD), 612, 0);
	expect_frame("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		     200, 47, -1, 1);
	/* header names in any case, spaces before the value */
	expect_frame("HTTP/1.1 404 Not Found\r\ncontent-length:   17\r\n\r\n", 404, 48, 17, 0);
	expect_frame("HTTP/1.1 503 x\r\nCONTENT-LENGTH: 0\r\n\r\n", 503, 37, 0, 0);
	expect_frame("HTTP/1.1 204 No Content\r\n\r\n", 204, 27, -1, 0);
	expect_frame("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 101, 56, -1,
		     0);
	/* no length: the close delimits the body */
	expect_frame("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody", 200, 45, -1, 0);
	/* bare LF line ends */
	expect_frame("HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", 200, 35, 3, 0);
	/* cut by the end of the bytes: no end of head, a cut header is no header */
	expect_frame("HTTP/1.1 200 OK\r\nContent-Len", 200, 0, -1, 0);
	expect_frame("HTTP/1.1 200", 200, 0, -1, 0);
	/* a head longer than RED_RESP_SCAN: its end is not seen, what came before is */
	snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Long: %0600d\r\n\r\n",
		 0);
	expect_frame(big, 200, 0, 5, 0);
}

static void test_not_final_responses(void **state)
{
	unsigned char noise[256];
	unsigned int i, seed = 1;
	struct frame_result r;

	(void)state;
	/* interim: the final response follows */
	assert_false(response("HTTP/1.1 100 Continue\r\n\r\n").response);
	assert_false(response("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n").response);
	/* not a status line */
	assert_false(response("HTTX/1.1 200 OK\r\n\r\n").response);
	assert_false(response("HTTP/2 200\r\n\r\n").response);
	assert_false(response("HTTP/1.1 2x0 OK\r\n\r\n").response);
	assert_false(response("HTTP/1.1 20").response);
	assert_false(response("GET / HTTP/1.1\r\n\r\n").response);
	for (i = 0; i < sizeof(noise); i++) {
		seed = seed * 1103515245u + 12345u;
		noise[i] = (unsigned char)(seed >> 16);
	}
	r = run(FRAME_RESPONSE, noise, sizeof(noise));
	assert_false(r.response);
}

static void expect_request(const char *bytes, int is_request, int head_end, int line_ok)
{
	struct frame_result r = request(bytes);

	if (r.is_request != is_request || r.head_end != head_end || r.line_ok != line_ok)
		fail_msg("'%s': is_request %u head_end %d line_ok %u; wanted %d %d %d", bytes,
			 r.is_request, r.head_end, r.line_ok, is_request, head_end, line_ok);
}

static void test_requests(void **state)
{
	char big[400];

	(void)state;
	expect_request("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1, 27, 1);
	/* pipelined: the first head ends where the second starts */
	expect_request("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1, 19, 1);
	expect_request("GET / HTTP/1.0\n\n", 1, 16, 1);
	expect_request("M-SEARCH * HTTP/1.1\r\n\r\n", 1, 23, 1);
	/* split: the line is whole, the head is not */
	expect_request("GET /users/1 HTTP/1.1\r\nHo", 1, 0, 1);
	expect_request("POST /upload HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 1, 44, 1);
	/* a body, lower case, no space, another protocol */
	expect_request("hello world\r\n\r\n", 0, 15, 0);
	expect_request("GET\r\n\r\n", 0, 7, 0);
	expect_request("GET /x HTTP/2.0\r\n\r\n", 1, 19, 0);
	/* longer than RED_REQ_HEAD: neither its end nor its line's end is seen */
	snprintf(big, sizeof(big), "GET /%0300d HTTP/1.1\r\n\r\n", 0);
	expect_request(big, 1, 0, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_responses),
		cmocka_unit_test(test_not_final_responses),
		cmocka_unit_test(test_requests),
	};
	int rc;

	if (geteuid() != 0) {
		const char *ci = getenv("CI");

		fprintf(stderr, "test-red-frame: needs root to load BPF programs: %s\n",
			ci && !strcmp(ci, "true") ? "failing (CI=true)" : "skipped");
		return ci && !strcmp(ci, "true") ? 1 : 77;
	}
	skel = red_frame_test_bpf__open_and_load();
	if (!skel) {
		fprintf(stderr, "test-red-frame: cannot load the BPF harness: %s\n", strerror(errno));
		return 1;
	}
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	red_frame_test_bpf__destroy(skel);
	return rc;
}
