/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The HTTP framing red.bpf.c does in BPF, on bytes already copied out of
 * the process: is this a request line or a status line, where does a head
 * end, what length does a response head announce. Pure functions of
 * their buffers, apart so that tests/unit/test-red-frame.c runs the same
 * code on the real kernel (BPF_PROG_TEST_RUN) over recorded byte sequences
 * and bench/red-framing times it.
 */
#ifndef SONDE_RED_FRAME_BPF_H
#define SONDE_RED_FRAME_BPF_H

#include "red.h"

/* A response head being searched (too big for the BPF stack); the slack
 * lets a header name be compared at any offset without a bounds check. */
struct resp_buf {
	__u8 b[RED_RESP_SCAN + 32];
};

/* A request line starts with a method token (1..15 of A-Z, '-', '_') and a
 * space; userspace checks the rest and maps unknown methods to _OTHER. */
static __always_inline int is_request(const __u8 *p)
{
	int i;

	for (i = 0; i < 16; i++) {
		if (p[i] == ' ')
			return i > 0;
		if ((p[i] < 'A' || p[i] > 'Z') && p[i] != '-' && p[i] != '_')
			return 0;
	}
	return 0;
}

static __always_inline int is_response(const __u8 *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' &&
	       p[5] == '1' && p[6] == '.' && p[8] == ' ' && p[9] >= '1' && p[9] <= '9' &&
	       p[10] >= '0' && p[10] <= '9' && p[11] >= '0' && p[11] <= '9';
}

/* What the search of a response head found. */
struct scan {
	__u32 n;	/* bytes in the scratch buffer */
	__u32 head_len; /* through the blank line; 0 not found */
	__u32 clen_at;	/* where Content-Length's value starts; 0 none */
	__u32 chunked;
};

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define LOWER 0x2020202020202020ULL /* ASCII letters to lower case; '-' and ':' stay */

/* Looks at the header line starting at p: 1 at the blank line that ends
 * the head. A global function: verified once, not once per call site of
 * the loop below. */
__noinline int scan_line(struct scan *s, struct resp_buf *rb, __u32 p)
{
	__u64 a, b;

	if (!s || !rb)
		return 1;
	p &= RED_RESP_SCAN - 1;
	if (rb->b[p] == '\r' || rb->b[p] == '\n') {
		s->head_len = p + (rb->b[p] == '\r' ? 2 : 1);
		if (s->head_len > s->n)
			s->head_len = 0;
		return 1;
	}
	a = *(const __u64 *)(rb->b + p) | LOWER;
	b = *(const __u64 *)(rb->b + p + 8) | LOWER;
	if (a == 0x2d746e65746e6f63ULL /* "content-" */ &&
	    (b & 0xffffffffffffffULL) == 0x3a6874676e656cULL /* "length:" */)
		s->clen_at = p + 15; /* parsed once the loop is over */
	else if (a == 0x726566736e617274ULL /* "transfer" */ &&
		 b == 0x6e69646f636e652dULL /* "-encodin" */)
		s->chunked = 1; /* a response's only transfer coding is chunked, in practice */
	return 0;
}

/* Finds the header lines of the head in rb (s->n bytes), 8 bytes at a
 * time: most words of a head hold no '\n'. */
static __always_inline void scan_head(struct scan *s, struct resp_buf *rb)
{
	__u32 w, k, o;
	__u64 x, y;

	for (w = 0; w < RED_RESP_SCAN / 8; w++) {
		o = w * 8;
		if (o >= s->n)
			return;
		x = *(const __u64 *)(rb->b + o);
		y = x ^ (ONES * '\n');
		if (!((y - ONES) & ~y & HIGHS))
			continue;
		for (k = 0; k < 8; k++) {
			if (((x >> (8 * k)) & 0xff) != '\n')
				continue;
			if (o + k + 1 >= s->n || scan_line(s, rb, o + k + 1))
				return;
		}
	}
}

/* What a response head says. */
struct head_frame {
	__s64 clen;	/* its Content-Length; -1 none */
	__u32 head_len; /* through the blank line; 0 not within the bytes searched */
	__u16 status;
	__u8 chunked;	/* Transfer-Encoding (chunked, in practice) */
	__u8 pad;
};

/* Frames the response head in rb (n bytes, 12 <= n <= RED_RESP_SCAN): 1
 * and f filled when it is a final response, 0 when it is no response or
 * an interim one (1xx but 101: the final response follows). Writes zeros
 * after the n bytes. Global: verified once. */
__noinline int frame_response(struct resp_buf *rb, __u64 n, struct head_frame *f)
{
	struct scan s = {};
	__u32 i, at, digits = 0;
	__s64 clen = 0;
	__u16 status;

	/* n is 64 bits: a 32-bit one is bounds-checked in its subregister and
	 * then zero-extended into a register the verifier knows nothing of.
	 * The two bounds apart: folded into one test of n - 12, they leave n
	 * itself unbounded for 6.1's verifier. */
	if (!rb || !f || n > RED_RESP_SCAN)
		return 0;
	barrier_var(n);
	if (n < 12 || !is_response(rb->b))
		return 0;
	status = (rb->b[9] - '0') * 100 + (rb->b[10] - '0') * 10 + (rb->b[11] - '0');
	if (status < 200 && status != 101)
		return 0;
	/* zeros after the data, so a header cut by the end reads as cut */
	*(__u64 *)(rb->b + n) = 0;
	*(__u64 *)(rb->b + n + 8) = 0;
	*(__u64 *)(rb->b + n + 16) = 0;
	*(__u64 *)(rb->b + n + 24) = 0;
	s.n = (__u32)n;
	scan_head(&s, rb);
	at = s.clen_at & (RED_RESP_SCAN - 1);
	for (i = 0; s.clen_at && i < 20; i++) {
		__u8 c = rb->b[at + i];

		if (c == ' ' && !digits)
			continue;
		if (c < '0' || c > '9')
			break;
		clen = clen * 10 + (c - '0');
		digits++;
	}
	f->status = status;
	f->head_len = s.head_len;
	f->clen = digits ? clen : -1;
	f->chunked = s.chunked;
	return 1;
}

/* The first RED_REQ_HEAD bytes of a request head, as global functions take them. */
struct req_bytes {
	__u8 b[RED_REQ_HEAD];
};

/* Where the head in h (its first n bytes) ends: the offset after its
 * blank line, 0 when that is not within n. 8 bytes at a time, as
 * scan_head; global, so verified once. */
__noinline int head_end(const struct req_bytes *h, __u32 n)
{
	__u32 w, k, i;
	__u64 x, y;

	if (!h)
		return 0;
	for (w = 0; w < RED_REQ_HEAD / 8; w++) {
		if (w * 8 >= n)
			return 0;
		x = *(const __u64 *)(h->b + w * 8);
		y = x ^ (ONES * '\n');
		if (!((y - ONES) & ~y & HIGHS))
			continue;
		for (k = 0; k < 8; k++) {
			i = w * 8 + k;
			if (((x >> (8 * k)) & 0xff) != '\n' || i >= n || i < 3)
				continue;
			if (h->b[i - 1] == '\n' ||
			    (h->b[i - 1] == '\r' && h->b[i - 2] == '\n' && h->b[i - 3] == '\r'))
				return (int)i + 1;
		}
	}
	return 0;
}

/* Whether h (n bytes) starts with a whole request line ending in
 * " HTTP/1.x": asked of a head that is to wait in the pipeline queue, as
 * a body can start like a method token. */
__noinline int request_line_ok(const struct req_bytes *h, __u32 n)
{
	__u32 i, e;

	if (!h)
		return 0;
	for (i = 10; i < RED_REQ_HEAD; i++) {
		if (i >= n)
			return 0;
		if (h->b[i] != '\n')
			continue;
		e = i;
		if (h->b[i - 1] == '\r')
			e = i - 1;
		return h->b[e - 9] == ' ' && h->b[e - 8] == 'H' && h->b[e - 7] == 'T' &&
		       h->b[e - 6] == 'T' && h->b[e - 5] == 'P' && h->b[e - 4] == '/' &&
		       h->b[e - 3] == '1' && h->b[e - 2] == '.';
	}
	return 0;
}

#endif /* SONDE_RED_FRAME_BPF_H */
