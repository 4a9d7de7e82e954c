// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Runs red-metrics' BPF framing (plugins/red-metrics/red_frame.bpf.h) on
 * the bytes BPF_PROG_TEST_RUN hands it, on the real kernel: an XDP program
 * only because XDP takes arbitrary bytes and a repeat count. The packet is
 * a struct frame_packet header, then the bytes; what the framing found goes
 * in `result`, read by tests/unit/test-red-frame.c and bench/red-framing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "red_frame.bpf.h"
#include "red_frame_test.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct resp_buf);
} resp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct req_bytes);
} req SEC(".maps");

struct frame_result result;

SEC("xdp")
int frame(struct xdp_md *ctx)
{
	__u64 size = bpf_xdp_get_buff_len(ctx), n;
	__u32 zero = 0, mode;
	struct head_frame f = {};
	struct req_bytes *rq;
	struct resp_buf *rb;

	if (size <= sizeof(struct frame_packet) || size > 4096 ||
	    bpf_xdp_load_bytes(ctx, 0, &mode, sizeof(mode)))
		return XDP_ABORTED;
	n = size - sizeof(struct frame_packet);
	rb = bpf_map_lookup_elem(&resp, &zero);
	rq = bpf_map_lookup_elem(&req, &zero);
	if (!rb || !rq)
		return XDP_ABORTED;
	if (mode == FRAME_NOTHING || mode == FRAME_RESPONSE) {
		if (n > RED_RESP_SCAN)
			n = RED_RESP_SCAN;
		if (bpf_xdp_load_bytes(ctx, sizeof(struct frame_packet), rb->b, n))
			return XDP_ABORTED;
		if (mode == FRAME_NOTHING)
			return XDP_PASS;
		result.response = frame_response(rb, n, &f);
		result.status = f.status;
		result.head_len = f.head_len;
		result.clen = f.clen;
		result.chunked = f.chunked;
		return XDP_PASS;
	}
	if (mode == FRAME_REQUEST) {
		if (n > RED_REQ_HEAD)
			n = RED_REQ_HEAD;
		/* as the plugin reads a head's start: zeros after short bytes */
		__builtin_memset(rq->b, 0, 16);
		if (bpf_xdp_load_bytes(ctx, sizeof(struct frame_packet), rq->b, n))
			return XDP_ABORTED;
		result.is_request = is_request(rq->b);
		result.head_end = head_end(rq, n);
		result.line_ok = request_line_ok(rq, n);
		return XDP_PASS;
	}
	return XDP_ABORTED;
}
