// SPDX-License-Identifier: MIT
/*
 * The time red-metrics' BPF framing (plugins/red-metrics/red_frame.bpf.h)
 * takes on nginx's response head and on wrk's request, on the real kernel:
 * BPF_PROG_TEST_RUN repeats the harness (tests/unit/red_frame_test.bpf.c)
 * and reports its mean run time, beside the harness copying the bytes in
 * and framing nothing, which is subtracted.
 *
 * Run as root after building:  sudo build/bench/red-framing [REPEAT]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "red.h"
#include "red_frame_test.h"
#include "red_frame_test.skel.h"

#define ROUNDS 5

/* nginx 1.22's head for a 612-byte static file, as it writes it */
static const char nginx_head[] =
	"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 04:00:00 GMT\r\n"
	"Content-Type: text/html\r\nContent-Length: 612\r\n"
	"Last-Modified: Sun, 22 Nov 2026 03:00:00 GMT\r\nConnection: keep-alive\r\n"
	"ETag: \"6560f0a0-264\"\r\nAccept-Ranges: bytes\r\n\r\n";

/* wrk's request */
static const char wrk_request[] = "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/* The best of ROUNDS mean run times (ns) of the harness in mode on bytes. */
static int time_mode(int prog_fd, __u32 mode, const char *bytes, __u32 repeat, double *ns)
{
	unsigned char pkt[1024];
	struct frame_packet hdr = { .mode = mode };
	size_t len = strlen(bytes);
	int i;

	memcpy(pkt, &hdr, sizeof(hdr));
	memcpy(pkt + sizeof(hdr), bytes, len);
	*ns = 0;
	for (i = 0; i < ROUNDS; i++) {
		LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt,
			    .data_size_in = (__u32)(sizeof(hdr) + len), .repeat = repeat);

		if (bpf_prog_test_run_opts(prog_fd, &opts))
			return -errno;
		if (opts.retval != 2 /* XDP_PASS */)
			return -EINVAL;
		if (!i || opts.duration < *ns)
			*ns = opts.duration;
	}
	return 0;
}

int main(int argc, char **argv)
{
	__u32 repeat = argc > 1 ? (__u32)strtoul(argv[1], NULL, 10) : 1000000;
	struct red_frame_test_bpf *skel;
	double none, resp, req;
	int fd, err;

	if (geteuid() != 0) {
		fprintf(stderr, "red-framing: needs root (BPF)\n");
		return 1;
	}
	skel = red_frame_test_bpf__open_and_load();
	if (!skel) {
		fprintf(stderr, "red-framing: cannot load the harness: %s\n", strerror(errno));
		return 1;
	}
	fd = bpf_program__fd(skel->progs.frame);
	err = time_mode(fd, FRAME_NOTHING, nginx_head, repeat, &none);
	if (!err)
		err = time_mode(fd, FRAME_RESPONSE, nginx_head, repeat, &resp);
	if (!err && skel->bss->result.clen != 612)
		err = -EINVAL;
	if (!err)
		err = time_mode(fd, FRAME_REQUEST, wrk_request, repeat, &req);
	if (!err && skel->bss->result.head_end != (int)strlen(wrk_request))
		err = -EINVAL;
	red_frame_test_bpf__destroy(skel);
	if (err) {
		fprintf(stderr, "red-framing: test run failed: %s\n", strerror(-err));
		return 1;
	}
	printf("harness alone (the bytes copied in): %6.1f ns\n", none);
	printf("nginx's %zu-byte response head:    %6.1f ns framing (frame_response)\n",
	       strlen(nginx_head), resp - none);
	printf("wrk's %zu-byte request:             %6.1f ns (is_request, head_end, "
	       "request_line_ok)\n", strlen(wrk_request), req - none);
	return 0;
}
