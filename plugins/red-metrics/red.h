/* SPDX-License-Identifier: MIT */
/*
 * The BPF<->userspace ABI of the red-metrics plugin: the records red.bpf.c
 * puts in the plugin's ringbuf and red_agg.c consumes. Kernel-free: both
 * sides include it.
 *
 * One connection is (tgid, fd, gen): gen is the ktime of the accept that
 * created it, so a reused fd never mixes two connections. Timestamps are
 * CLOCK_MONOTONIC ns (bpf_ktime_get_ns), taken at syscall exit.
 *
 * Per request the server side produces: one RED_EV_REQ (the read that
 * returned a request head, its first RED_HEAD_MAX bytes), one RED_EV_RESP
 * (the write that starts with "HTTP/1.", its first bytes), a RED_EV_DATA
 * for every further write/writev/sendto/sendfile while the response is
 * being written, and a RED_EV_CLOSE when the connection is closed with an
 * exchange in flight. BPF does not parse Content-Length: userspace does,
 * and ends the request at the write that carries the response's last byte.
 */
#ifndef SONDE_RED_H
#define SONDE_RED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define RED_HEAD_MAX 512 /* bytes of a head copied into a record; a power of 2 */

enum red_event_type {
	RED_EV_REQ = 1,
	RED_EV_RESP = 2,
	RED_EV_DATA = 3,
	RED_EV_CLOSE = 4,
};

/* Connection state in BPF (struct red_conn.state). */
enum red_conn_state {
	RED_CONN_IDLE = 0,    /* accepted, no request yet */
	RED_CONN_IN_REQ = 1,  /* a request head was read, no response yet */
	RED_CONN_IN_RESP = 2, /* a response head was written */
};

/* Counters of the plugin's BPF side (a per-CPU array, summed by userspace). */
enum red_stat {
	RED_STAT_RINGBUF_FULL = 0, /* records lost: the ringbuf was full */
	RED_STAT_READ_FAULT,	   /* bpf_probe_read_user failed on a head */
	RED_STAT_CONNS,		   /* connections accepted by watched processes */
	RED_STAT__COUNT,
};

struct red_event {
	__u8 type;  /* enum red_event_type */
	__u8 state; /* the connection's state before this event */
	__u16 len;  /* bytes of data[] that follow (heads only) */
	__u32 tgid;
	__u32 fd;
	__u16 lport; /* the listening socket's local port, host order; 0 unknown */
	__u16 pad;
	__u64 gen;   /* ktime of the accept */
	__u64 ts;    /* ktime of the syscall exit */
	__s64 bytes; /* the syscall's return value (bytes moved) */
		     /* followed by len bytes: the head */
};
_Static_assert(sizeof(struct red_event) == 40, "red_event is part of the BPF ABI");

#endif /* SONDE_RED_H */
