/* SPDX-License-Identifier: MIT */
/*
 * The BPF<->userspace ABI of the red-metrics plugin: the record red.bpf.c
 * puts in the plugin's ringbuf and red_agg.c consumes. Kernel-free: both
 * sides include it.
 *
 * One connection is (tgid, fd, gen): gen is the ktime of the accept that
 * created it, so a reused fd never mixes two connections. Timestamps are
 * CLOCK_MONOTONIC ns (bpf_ktime_get_ns), taken at syscall exit.
 *
 * BPF frames the exchanges itself: it keeps the first RED_REQ_HEAD bytes of
 * a request head (method, target, the first headers), reads the status
 * line, Content-Length and Transfer-Encoding of the response head, counts
 * the bytes written after it, and sends ONE record per exchange, when the
 * response's last byte is written (RED_END_LENGTH) or, when its length is
 * unknown, when the next request or the close ends it. Userspace parses the
 * request head, builds the route and aggregates.
 *
 * Pipelining: request heads that follow one another in one read (or
 * arrive before the response of the one in flight) wait in a queue of up
 * to RED_PIPE heads per connection and are answered in order; each gets
 * its own record. A head that finds the queue full ends the oldest one as
 * RED_END_UNPAIRED.
 *
 * The client side is the mirror image: connections a watched process
 * connected (IPv4 or IPv6), the request head is the write, the response the
 * reads; lport is then the server's port. Durations run from the exit of
 * the request's write to the exit of the read of the response's last byte.
 */
#ifndef SONDE_RED_H
#define SONDE_RED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define RED_REQ_HEAD  192 /* bytes of a request head kept and sent; a multiple of 8 */
#define RED_TARGET_WORDS 65536 /* the targets bitmap: tgids below 64 * this (pid_max's max) */
#define RED_RESP_SCAN 512 /* bytes of a response head searched for its framing; a power of 2 */
#define RED_PIPE      4	  /* pipelined heads queued behind the one in flight; a power of 2 */
#define RED_PORT_WORDS 1024 /* the listen_ports bitmap: 64 * this ports */

/* struct red_event.family */
enum red_family {
	RED_FAMILY_INET = 4,
	RED_FAMILY_INET6 = 6,
};

/*
 * Request-scoped profiles: while a server thread handles an exchange, its
 * entry in the core's thread_tags map (bpf/thread_tags.bpf.h) is the id the
 * host gave the plugin in the top byte and the exchange's start below
 * (RED_TAG_MASK of red_event.start); userspace turns (red_event.tag_tgid,
 * tag) back into the exchange's method and route.
 */
#define RED_TAG_MASK ((1ULL << 56) - 1)

enum red_event_type {
	RED_EV_EXCHANGE = 1, /* struct red_event */
	RED_EV_PROC = 2,     /* struct red_proc_event */
};

/*
 * watch = "listeners": BPF watches, on its own, every process that accepts
 * a TCP connection on a port of the listen_ports bitmap (any port unless
 * userspace says otherwise), keeps it in its `listeners` map (userspace
 * adds the processes already listening when it starts), and stops at its
 * exit; each time it tells userspace, which names the service.
 */
enum red_proc {
	RED_PROC_LISTENER = 1, /* tgid is watched from now on: it accepted a connection */
	RED_PROC_EXIT = 2,     /* tgid, a process of `listeners`, exited: no longer watched */
};

struct red_proc_event {
	__u8 type; /* RED_EV_PROC */
	__u8 what; /* enum red_proc */
	__u16 pad;
	__u32 tgid;
};
_Static_assert(sizeof(struct red_proc_event) == 8, "red_proc_event is part of the BPF ABI");

/* How an exchange ended (struct red_event.end). */
enum red_end {
	RED_END_LENGTH = 1,   /* its response's last byte was written (Content-Length,
				 no-body status or HEAD, or chunked's last chunk) */
	RED_END_NEXT = 2,     /* the next request head, response length unknown */
	RED_END_CLOSE = 3,    /* the close, response length unknown (or short) */
	RED_END_ABORT = 4,    /* the close, before any response: no status */
	RED_END_UNPAIRED = 5, /* pushed out of a full pipeline queue before any response */
};

/* Connection state in BPF (struct red_conn.state). */
enum red_conn_state {
	RED_CONN_IDLE = 0,    /* no exchange in flight */
	RED_CONN_IN_REQ = 1,  /* a request head was read, no response yet */
	RED_CONN_IN_RESP = 2, /* a final response head was written */
};

/* Counters of the plugin's BPF side (a per-CPU array, summed by userspace). */
enum red_stat {
	RED_STAT_RINGBUF_FULL = 0, /* records lost: the ringbuf was full */
	RED_STAT_READ_FAULT,	   /* bpf_probe_read_user failed on a head */
	RED_STAT_CONNS,		   /* connections accepted by watched processes */
	RED_STAT_TAGS_FULL,	   /* a thread not tagged: no room for its task storage */
	RED_STAT__COUNT,
};

struct red_event {
	__u8 type;   /* enum red_event_type */
	__u8 end;    /* enum red_end */
	__u16 len;   /* bytes of the request head that follow, <= RED_REQ_HEAD */
	__u32 tgid;
	__u32 fd;
	__u16 lport;  /* the server's port, host order; 0 unknown */
	__u16 status; /* the final response's status; 0 with RED_END_ABORT/UNPAIRED */
	__u64 gen;    /* ktime of the accept */
	__u64 start;  /* ktime of the read that returned the request head */
	__u64 last;   /* ktime of the last response write (start if none) */
	__u64 resp_bytes;    /* bytes written for the response, its head included */
	__u32 resp_head_len; /* the response head's length; 0 not within RED_RESP_SCAN */
	__u8 chunked;	     /* the response was Transfer-Encoding: chunked */
	__u8 client;	     /* 1: the watched process was the client (it connected) */
	__u8 family;	     /* client side: RED_FAMILY_* of server_addr; 0 none */
	__u8 sampled;	     /* 1: a CPU sample may carry the exchange's thread tag */
	__s64 resp_clen;     /* the response's Content-Length; -1 none */
	__u8 server_addr[16]; /* client side: the server's address, network order (IPv4: the
				 first 4 bytes; a v4-mapped IPv6 peer is given as IPv4) */
	__u32 tag_tgid;	     /* the process whose thread carried the exchange's tag (tgid, or
				a forked child of it); 0 none */
	__u32 pad2;
			     /* followed by len bytes: the request head */
};
_Static_assert(sizeof(struct red_event) == 88, "red_event is part of the BPF ABI");

#endif /* SONDE_RED_H */
