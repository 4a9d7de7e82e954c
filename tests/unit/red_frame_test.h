/* SPDX-License-Identifier: MIT */
/*
 * The packet and result of tests/unit/red_frame_test.bpf.c, shared with
 * its userspace (test-red-frame.c, bench/red-framing.c).
 */
#ifndef SONDE_RED_FRAME_TEST_H
#define SONDE_RED_FRAME_TEST_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum frame_mode {
	FRAME_NOTHING = 0,  /* the bytes copied in, no framing: the bench's baseline */
	FRAME_RESPONSE = 1, /* frame_response() on the bytes */
	FRAME_REQUEST = 2,  /* is_request(), head_end(), request_line_ok() */
};

/* Before the bytes in the packet (XDP test runs need at least 14 bytes). */
struct frame_packet {
	__u32 mode; /* enum frame_mode */
	__u32 pad[3];
};

struct frame_result {
	__s64 clen;
	__u32 head_len;
	__u16 status;
	__u8 chunked;
	__u8 response; /* frame_response()'s answer */
	__s32 head_end;
	__u8 is_request;
	__u8 line_ok;
	__u8 pad[2];
};

#endif /* SONDE_RED_FRAME_TEST_H */
