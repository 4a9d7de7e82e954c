// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * HTTP/1.x server exchanges seen from syscall tracepoints (no kprobes, no
 * fentry: neither exists on every kernel sonde runs on). Only processes in
 * `targets` are looked at: for everyone else a hook costs one hash lookup.
 *
 * The framing happens here, so that userspace gets one record per exchange
 * rather than one per write: a request head is recognised by its method
 * token and its first RED_REQ_HEAD bytes are kept in the connection; the
 * response head gives the status, Content-Length and Transfer-Encoding;
 * the bytes written after it are counted until the last one, and only then
 * is the record sent (red.h says when else an exchange ends).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "red.h"
#include "red_frame.bpf.h"
#include "thread_tags.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The tgids watched, a bitmap (bit tgid % 64 of word tgid / 64): those the
 * script gave the plugin, their forked children and (watch = "listeners")
 * the processes that accept TCP connections. An array lookup is inlined by
 * the verifier, so the common path (a process nobody asked about) costs a
 * few loads. Userspace maps it to flip its bits atomically, as BPF does. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, RED_TARGET_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} targets SEC(".maps");

/* watch = "listeners": the processes watched because they accept TCP
 * connections (found at accept, or by userspace at start); their bit goes
 * at their exit. One entry when the plugin does not watch listeners. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} listeners SEC(".maps");

/* The ports of listen_ports, a bitmap like targets; unused with listen_any. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RED_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} listen_ports SEC(".maps");

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct red_conn {
	__u64 gen;
	__u64 sk; /* the socket's address: its close is recognised by it */
	__u64 start;
	__u64 last;
	__u64 resp_bytes;
	__s64 resp_expect; /* head + body bytes of the response; -1 unknown */
	__s64 resp_clen;
	__u32 resp_head_len;
	__u16 lport;
	__u16 status;
	__u16 req_len;
	__u8 state; /* enum red_conn_state */
	__u8 chunked;
	__u32 svc;	/* the watched process whose service this is (a forked child's parent) */
	__u8 client;	/* the watched process connected (it sends the requests) */
	__u8 family;	/* client side: enum red_family of daddr */
	__u8 q_head;	/* pipelined heads waiting: slots q_head.. of pipeq, */
	__u8 q_len;	/* q_len of them (<= RED_PIPE) */
	__u8 daddr[16]; /* client side: the server's address */
	__u32 tag_tid;	/* server side: the thread tagged with the exchange (0: none) */
	__u8 req[RED_REQ_HEAD];
};

/* Accepted connections of watched processes; LRU so a missed close cannot
 * fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct conn_key);
	__type(value, struct red_conn);
} conns SEC(".maps");

/* The entry of each tracked socket, by the socket's address: a socket
 * reset by its peer closes in a softirq, outside its process, where only
 * the socket is known. LRU as conns; an entry is checked against the
 * connection's own sk before use. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct conn_key);
} conn_of_sock SEC(".maps");

/* Starts tracking the connection c on key: its entry, and its socket's. */
static __always_inline int track(const struct conn_key *key, const struct red_conn *c,
				 __u64 flags)
{
	if (bpf_map_update_elem(&conns, key, c, flags))
		return -1;
	bpf_map_update_elem(&conn_of_sock, &c->sk, key, BPF_ANY);
	return 0;
}

/* A child a watched process forked (servers that fork per connection, like
 * busybox's httpd, which also moves the connection to fds 0 and 1). Its bit
 * in targets is set while it lives. */
struct child {
	__u32 svc;     /* the watched tgid whose service it serves */
	__s32 conn_fd; /* the fd its request came on; -1 none yet */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct child);
} forked SEC(".maps");

/* The tgids of forked, a bitmap like targets: the I/O hooks of every other
 * watched process skip the forked lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RED_TARGET_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} children SEC(".maps");

/* A pipelined request head waiting behind the one in flight (red_conn.q_*),
 * apart from the connection so that connections that never pipeline (all
 * but a few) do not carry room for RED_PIPE heads. gen keeps a reused fd's
 * connection from finding its predecessor's heads. */
struct pipe_key {
	__u32 tgid;
	__u32 fd;
	__u32 gen;
	__u32 slot;
};

struct pipe_head {
	__u64 start; /* ktime of the read that returned it */
	__u32 len;
	__u32 pad;
	__u8 req[RED_REQ_HEAD];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pipe_key);
	__type(value, struct pipe_head);
} pipeq SEC(".maps");

/* A pipe_head being built (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pipe_head);
} pipe_scratch SEC(".maps");

enum io_op {
	IO_RX = 1,   /* read: buf is the data */
	IO_TX = 2,   /* write, sendto: buf is the data */
	IO_TXV = 3,  /* writev: buf is the iovec array */
	IO_FILE = 4, /* sendfile: no user buffer */
	IO_RXF = 5,  /* recvfrom: buf is the data, flags the fourth argument */
	IO_RXV = 6,  /* readv: buf is the iovec array */
	IO_RXM = 7,  /* recvmsg: buf is a struct user_msghdr, flags the third argument */
	IO_TXM = 8,  /* sendmsg: buf is a struct user_msghdr */
};

/* Also where adopt() builds a connection. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct resp_buf);
} scratch SEC(".maps");
_Static_assert(sizeof(struct red_conn) <= sizeof(struct resp_buf), "adopt() builds one in scratch");

/* enum red_stat counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RED_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} red_stats SEC(".maps");

/* Records for userspace; sized by userspace before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} red_events SEC(".maps");

static __always_inline void stat_inc(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&red_stats, &stat);

	if (v)
		*v += 1;
}

/* Bit tgid of the bitmap map (targets, children). */
static __always_inline int bit_test(void *map, __u32 tgid)
{
	__u32 word = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(map, &word);

	return bits && (*bits >> (tgid % 64)) & 1;
}

static __always_inline int watched(__u32 tgid)
{
	return bit_test(&targets, tgid);
}

/* Userspace is woken only once this much waits in the ringbuf (a wake-up
 * per record costs more than the record); it also drains on a timer and
 * before every scrape. 0: wake on every record. */
const volatile __u64 wakeup_bytes = 0;

/* The id the host gave the plugin for thread tags; 0: it tags none.
 * Set before load. */
const volatile __u64 tag_provider = 0;

/* watch = "listeners": watch processes that accept TCP connections. */
const volatile __u8 watch_listeners = 0;
/* With watch_listeners: any local port, or only those of listen_ports. */
const volatile __u8 listen_any = 1;
/* sonded itself, never watched as a listener. */
const volatile __u32 self_tgid = 0;

static __always_inline __u64 exchange_tag(const struct red_conn *c)
{
	return tag_provider << SONDE_TAG_PROVIDER_SHIFT | (c->start & RED_TAG_MASK);
}

/* The current thread works on c's exchange from now on: its samples carry
 * the exchange's tag. Server side only; in a forked child too (the record
 * names the child in tag_tgid, as its samples do). */
static __always_inline void tag_thread(struct red_conn *c, const struct conn_key *key)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	c->tag_tid = 0;
	if (!tag_provider || c->client)
		return;
	if (!sonde_thread_tag_set(exchange_tag(c)))
		c->tag_tid = tid;
	else
		stat_inc(RED_STAT_TAGS_FULL);
}

/* Sends the exchange in flight on c, ended for reason end. */
static __always_inline void emit(struct red_conn *c, const struct conn_key *key, __u8 end)
{
	struct red_event *ev;
	__u64 flags = 0;
	__u32 tag_tgid = 0;
	__u8 sampled = 0;

	if (c->tag_tid) {
		sampled = sonde_thread_tag_end(c->tag_tid, exchange_tag(c));
		tag_tgid = key->tgid;
		c->tag_tid = 0;
	}
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(&red_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
				? BPF_RB_FORCE_WAKEUP
				: BPF_RB_NO_WAKEUP;
	ev = bpf_ringbuf_reserve(&red_events, sizeof(*ev) + RED_REQ_HEAD, 0);
	if (!ev) {
		stat_inc(RED_STAT_RINGBUF_FULL);
		return;
	}
	ev->type = RED_EV_EXCHANGE;
	ev->end = end;
	ev->len = c->req_len;
	ev->tgid = c->svc;
	ev->fd = key->fd;
	ev->lport = c->lport;
	ev->status = end == RED_END_ABORT || end == RED_END_UNPAIRED ? 0 : c->status;
	ev->gen = c->gen;
	ev->start = c->start;
	ev->last = c->last;
	ev->resp_bytes = c->resp_bytes;
	ev->resp_head_len = c->resp_head_len;
	ev->chunked = c->chunked;
	ev->client = c->client;
	ev->family = c->family;
	ev->sampled = sampled;
	ev->tag_tgid = tag_tgid;
	ev->pad2 = 0;
	ev->resp_clen = c->resp_clen;
	__builtin_memcpy(ev->server_addr, c->daddr, sizeof(ev->server_addr));
	__builtin_memcpy(ev + 1, c->req, RED_REQ_HEAD);
	bpf_ringbuf_submit(ev, flags);
}

/* An exchange starts: the head in c->req was read (server) or written
 * (client) at t. */
static __always_inline void begin(struct red_conn *c, const struct conn_key *key, __u64 t)
{
	c->start = c->last = t;
	c->state = RED_CONN_IN_REQ;
	c->status = 0;
	c->resp_bytes = 0;
	c->resp_head_len = 0;
	c->resp_clen = -1;
	c->resp_expect = -1;
	c->chunked = 0;
	tag_thread(c, key);
}

/* The exchange in flight on c is over: the oldest pipelined head, if any,
 * becomes the one in flight. */
static __always_inline void pop(struct red_conn *c, const struct conn_key *key)
{
	struct pipe_key pk = {.tgid = key->tgid, .fd = key->fd, .gen = (__u32)c->gen};
	struct pipe_head *ph;

	c->state = RED_CONN_IDLE;
	if (!c->q_len)
		return;
	pk.slot = c->q_head & (RED_PIPE - 1);
	c->q_head++;
	c->q_len--;
	ph = bpf_map_lookup_elem(&pipeq, &pk);
	if (!ph) {
		/* evicted: the rest would pair with the wrong responses */
		c->q_len = 0;
		return;
	}
	__builtin_memcpy(c->req, ph->req, RED_REQ_HEAD);
	c->req_len = ph->len < RED_REQ_HEAD ? ph->len : RED_REQ_HEAD;
	begin(c, key, ph->start);
	bpf_map_delete_elem(&pipeq, &pk);
}

/* The connection ends: what is in flight, then every pipelined head. */
static __always_inline void flush(struct red_conn *c, const struct conn_key *key)
{
	int i;

	if (c->state == RED_CONN_IN_REQ)
		emit(c, key, RED_END_ABORT);
	else if (c->state == RED_CONN_IN_RESP)
		emit(c, key, RED_END_CLOSE);
	for (i = 0; i < RED_PIPE && c->q_len; i++) {
		pop(c, key);
		if (c->state == RED_CONN_IN_REQ)
			emit(c, key, RED_END_ABORT);
	}
}

#define RED_S_IFMT   00170000
#define RED_S_IFSOCK 0140000

/* The user registers the current task's syscall entry saved, BTF-typed:
 * its arguments and number are plain loads (no probe read each). */
static __always_inline struct pt_regs *current_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* The file open at fd in the current task's file table; NULL none. */
static __always_inline struct file *file_of(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The socket behind fd, through the task's file table (works on every
 * kernel with BTF, no sock_* tracepoint needed); NULL when fd is not a
 * socket. */
static __always_inline struct sock *sock_of(__u32 fd)
{
	struct file *f = file_of(fd);
	struct socket *sock;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & RED_S_IFMT) != RED_S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* The local port of the socket behind fd; 0 when fd is not a socket. */
static __always_inline __u16 local_port(__u32 fd)
{
	struct sock *sk = sock_of(fd);

	return sk ? BPF_CORE_READ(sk, __sk_common.skc_num) : 0;
}

/* Tells userspace about a process of `listeners` (enum red_proc). */
static __always_inline void send_proc(__u32 tgid, __u8 what)
{
	struct red_proc_event ev = {.type = RED_EV_PROC, .what = what, .tgid = tgid};

	if (bpf_ringbuf_output(&red_events, &ev, sizeof(ev), 0))
		stat_inc(RED_STAT_RINGBUF_FULL);
}

static __always_inline struct child *child_of(__u32 tgid)
{
	return bit_test(&children, tgid) ? bpf_map_lookup_elem(&forked, &tgid) : NULL;
}

static __always_inline __u32 svc_of(__u32 tgid)
{
	struct child *ch = child_of(tgid);

	return ch ? ch->svc : tgid;
}

/* Sets or clears bit tgid of the bitmap map (atomically: userspace writes
 * whole words of targets, but only for tgids it attached, never for forked
 * children). */
static __always_inline void bit_set(void *map, __u32 tgid, int on)
{
	__u32 word = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(map, &word);

	if (!bits)
		return;
	if (on)
		__sync_fetch_and_or(bits, 1ULL << (tgid % 64));
	else
		__sync_fetch_and_and(bits, ~(1ULL << (tgid % 64)));
}

/* A watched process forked (not a thread): the child serves its service. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(red_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	struct child ch = {.conn_fd = -1};

	if (ptgid == ctgid || !watched(ptgid))
		return 0;
	ch.svc = svc_of(ptgid);
	if (!bpf_map_update_elem(&forked, &ctgid, &ch, BPF_ANY)) {
		bit_set(&children, ctgid, 1);
		bit_set(&targets, ctgid, 1);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(red_exit, struct task_struct *task)
{
	__u32 tgid = task->tgid;
	struct conn_key key = {.tgid = tgid};
	struct red_conn *c;
	struct child *ch;

	if (task->pid != tgid)
		return 0;
	if (watch_listeners && !bpf_map_delete_elem(&listeners, &tgid)) {
		bit_set(&targets, tgid, 0);
		send_proc(tgid, RED_PROC_EXIT);
	}
	ch = child_of(tgid);
	if (!ch)
		return 0;
	/* an exit closes without close(): end what is in flight (a response
	 * delimited by the close, typically) */
	key.fd = (__u32)ch->conn_fd;
	c = ch->conn_fd >= 0 ? bpf_map_lookup_elem(&conns, &key) : NULL;
	if (c) {
		flush(c, &key);
		bpf_map_delete_elem(&conns, &key);
	}
	bpf_map_delete_elem(&forked, &tgid);
	bit_set(&children, tgid, 0);
	bit_set(&targets, tgid, 0);
	return 0;
}

#define RED_AF_INET  2
#define RED_AF_INET6 10

/* watch = "listeners": a process nobody watches accepted fd. When fd is a
 * TCP connection to a port of listen_ports, the process is watched from
 * now on (and its exit ends that). 1 when it is. */
static __always_inline int watch_listener(__u32 tgid, __u32 fd)
{
	struct sock *sk;
	__u16 port, family;
	__u32 word;
	__u64 *bits;
	__u8 one = 1;
	long err;

	if (tgid == self_tgid)
		return 0;
	sk = sock_of(fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != RED_AF_INET && family != RED_AF_INET6)
		return 0;
	port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!listen_any) {
		word = port / 64;
		bits = bpf_map_lookup_elem(&listen_ports, &word);
		if (!bits || !((*bits >> (port % 64)) & 1))
			return 0;
	}
	/* EEXIST: watched before, then dropped by the script; watched again */
	err = bpf_map_update_elem(&listeners, &tgid, &one, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */)
		return 0; /* full: its exit could not be seen */
	bit_set(&targets, tgid, 1);
	send_proc(tgid, RED_PROC_LISTENER);
	return 1;
}

static __always_inline int on_accept_exit(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct conn_key key = {.tgid = tgid, .fd = (__u32)ret};
	struct red_conn c = {};
	struct sock *sk;

	if (ret < 0)
		return 0;
	if (!watched(tgid) && !(watch_listeners && watch_listener(tgid, (__u32)ret)))
		return 0;
	sk = sock_of((__u32)ret);
	if (!sk)
		return 0;
	c.sk = (__u64)sk;
	c.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	c.gen = bpf_ktime_get_ns();
	c.state = RED_CONN_IDLE;
	c.svc = svc_of(tgid);
	track(&key, &c, BPF_ANY);
	stat_inc(RED_STAT_CONNS);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

#define RED_EINPROGRESS 115

/* A watched process connected (or started to): the client side of what
 * goes over fd. A v4-mapped IPv6 peer is kept as the IPv4 address it is. */
SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct conn_key key = {.tgid = bpf_get_current_pid_tgid() >> 32};
	struct red_conn c = {};
	__u32 v4, v6[4];
	struct sock *sk;
	__u16 family;

	if ((ctx->ret && ctx->ret != -RED_EINPROGRESS) || !watched(key.tgid))
		return 0;
	key.fd = (__u32)PT_REGS_PARM1_SYSCALL(current_regs());
	sk = sock_of(key.fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == RED_AF_INET) {
		v4 = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(c.daddr, &v4, sizeof(v4));
		c.family = RED_FAMILY_INET;
	} else if (family == RED_AF_INET6) {
		BPF_CORE_READ_INTO(&v6, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
		if (!v6[0] && !v6[1] && v6[2] == bpf_htonl(0xffff)) {
			__builtin_memcpy(c.daddr, &v6[3], sizeof(v6[3]));
			c.family = RED_FAMILY_INET;
		} else {
			__builtin_memcpy(c.daddr, v6, sizeof(v6));
			c.family = RED_FAMILY_INET6;
		}
	} else {
		return 0;
	}
	c.lport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	c.sk = (__u64)sk;
	c.gen = bpf_ktime_get_ns();
	c.state = RED_CONN_IDLE;
	c.client = 1;
	c.svc = svc_of(key.tgid);
	track(&key, &c, BPF_ANY);
	stat_inc(RED_STAT_CONNS);
	return 0;
}

/* The head of a request (its first bytes) says HEAD: no response body. */
static __always_inline int is_head_req(const struct red_conn *c)
{
	return c->req[0] == 'H' && c->req[1] == 'E' && c->req[2] == 'A' && c->req[3] == 'D' &&
	       c->req[4] == ' ';
}

/* The write at data (avail bytes of the first buffer, ret in all) while a
 * request waits: frame its response head. 0 when it is not one, was
 * interim (1xx but 101) or could not be read. A global function: verified
 * once, though called for the first response of a write and for those of
 * pipelined requests written after it. */
__noinline int start_response(struct red_conn *c, __u64 data, __u64 avail, __u64 ret)
{
	struct head_frame f = {};
	struct resp_buf *rb;
	__u32 zero = 0, n;
	__s64 body;

	if (!c)
		return 0;
	rb = bpf_map_lookup_elem(&scratch, &zero);
	if (!rb)
		return 0;
	n = avail < RED_RESP_SCAN ? (__u32)avail : RED_RESP_SCAN;
	if (n < 12 || bpf_probe_read_user(rb->b, n, (const void *)data) ||
	    !frame_response(rb, n, &f))
		return 0;
	c->status = f.status;
	c->resp_head_len = f.head_len;
	c->resp_clen = f.clen;
	c->chunked = f.chunked;
	c->resp_bytes = ret;
	if (is_head_req(c) || f.status == 204 || f.status == 304 || f.status == 101)
		body = 0;
	else if (!f.chunked)
		body = f.clen; /* -1: delimited by the close */
	else
		body = -1;
	c->resp_expect = f.head_len && body >= 0 ? (__s64)f.head_len + body : -1;
	c->state = RED_CONN_IN_RESP;
	return 1;
}

/* A chunked body ends with a zero-size chunk and no trailer. */
static __always_inline int chunked_end(__u64 data, long ret)
{
	char t[5];

	if (ret < 5 || bpf_probe_read_user(t, sizeof(t), (const void *)(data + ret - 5)))
		return 0;
	return t[0] == '0' && t[1] == '\r' && t[2] == '\n' && t[3] == '\r' && t[4] == '\n';
}

/* A request head read from a socket we did not see accepted (accepted
 * before sonded started, or by the parent of this forked child): track
 * the connection from here. Only watched processes get here, for a read
 * on an fd that is not tracked. */
static __always_inline struct red_conn *adopt(const struct conn_key *key, __u64 data,
					      __u64 avail)
{
	struct child *ch;
	struct resp_buf *rb;
	struct red_conn *c;
	struct sock *sk;
	__u8 p[16] = {};
	__u32 zero = 0;

	if (bpf_probe_read_user(p, avail < 16 ? avail : 16, (const void *)data) || !is_request(p))
		return NULL;
	/* the new entry is built in the scratch buffer: the stack of the I/O
	 * hooks has no room for one */
	rb = bpf_map_lookup_elem(&scratch, &zero);
	if (!rb)
		return NULL;
	c = (struct red_conn *)rb->b;
	__builtin_memset(c, 0, __builtin_offsetof(struct red_conn, req));
	sk = sock_of(key->fd);
	if (!sk)
		return NULL;
	c->sk = (__u64)sk;
	c->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!c->lport)
		return NULL;
	c->gen = bpf_ktime_get_ns();
	c->state = RED_CONN_IDLE;
	ch = child_of(key->tgid);
	c->svc = ch ? ch->svc : key->tgid;
	if (track(key, c, BPF_NOEXIST))
		return NULL;
	if (ch)
		ch->conn_fd = (__s32)key->fd;
	stat_inc(RED_STAT_CONNS);
	return bpf_map_lookup_elem(&conns, key);
}

/* A forked child writing on another fd than it read its request from (a
 * dup of the socket, as busybox's httpd writes on 1 what it read on 0): its
 * one connection, when fd is a socket with the same local port. */
static __always_inline struct red_conn *child_conn(struct conn_key *key)
{
	struct child *ch = child_of(key->tgid);
	struct conn_key k = {.tgid = key->tgid};
	struct red_conn *c;

	if (!ch || ch->conn_fd < 0)
		return NULL;
	k.fd = (__u32)ch->conn_fd;
	c = bpf_map_lookup_elem(&conns, &k);
	if (!c || c->lport != local_port(key->fd))
		return NULL;
	key->fd = k.fd; /* the record names the connection's fd */
	return c;
}

/* Queues the request head at data (avail bytes there) behind the one in
 * flight: a pipelined request. A full queue pushes the oldest out
 * (RED_END_UNPAIRED). The copy kept (per-CPU scratch), or NULL. */
static __always_inline struct pipe_head *enqueue(struct red_conn *c, const struct conn_key *key,
						 __u64 data, __u64 avail, __u64 now)
{
	struct pipe_key pk = {.tgid = key->tgid, .fd = key->fd, .gen = (__u32)c->gen};
	__u32 zero = 0, len = avail < RED_REQ_HEAD ? (__u32)avail : RED_REQ_HEAD;
	struct pipe_head *ph;

	ph = bpf_map_lookup_elem(&pipe_scratch, &zero);
	if (!ph)
		return NULL;
	if (bpf_probe_read_user(ph->req, len, (const void *)data)) {
		stat_inc(RED_STAT_READ_FAULT);
		return NULL;
	}
	if (!request_line_ok((const struct req_bytes *)ph->req, len))
		return NULL;
	if (c->q_len >= RED_PIPE) {
		emit(c, key, RED_END_UNPAIRED);
		pop(c, key);
	}
	ph->start = now;
	ph->len = len;
	pk.slot = (c->q_head + c->q_len) & (RED_PIPE - 1);
	if (bpf_map_update_elem(&pipeq, &pk, ph, BPF_ANY))
		return NULL;
	c->q_len++;
	return ph;
}

/* Request heads after the one kept in h (n bytes) in the same read (data,
 * avail bytes in its first buffer): pipelined, they wait their turn. Heads
 * without a body only (a body's length is not looked at here), RED_PIPE
 * per read at most. */
static __always_inline void more_heads(struct red_conn *c, const struct conn_key *key,
				       const struct req_bytes *h, __u32 n, __u64 data, __u64 avail,
				       __u64 now)
{
	struct pipe_head *ph;
	__u64 off = 0;
	__u8 p[16];
	int i, e;

	for (i = 0; i < RED_PIPE; i++) {
		e = head_end(h, n);
		if (e <= 0)
			return;
		off += (__u32)e;
		if (off + sizeof(p) > avail)
			return; /* no room for another request line */
		if (bpf_probe_read_user(p, sizeof(p), (const void *)(data + off)) || !is_request(p))
			return;
		ph = enqueue(c, key, data + off, avail - off, now);
		if (!ph)
			return;
		h = (const struct req_bytes *)ph->req;
		n = ph->len;
	}
}

#define RED_MSG_PEEK 2

/* The first buffer of a vectored call (readv, writev, recvmsg, sendmsg):
 * *data becomes its base and *avail what of the bytes moved it holds.
 * Nothing to do for the others. 0, or -1 when it cannot be read. */
static __always_inline int first_buf(__u32 op, __u64 *data, __u64 *avail)
{
	struct iovec iov;
	__u64 p = *data;

	if (op == IO_RXM || op == IO_TXM) {
		p += __builtin_offsetof(struct user_msghdr, msg_iov);
		if (bpf_probe_read_user(&p, sizeof(p), (const void *)p))
			return -1;
	} else if (op != IO_TXV && op != IO_RXV) {
		return 0;
	}
	if (bpf_probe_read_user(&iov, sizeof(iov), (const void *)p))
		return -1;
	*data = (__u64)iov.iov_base;
	if ((__u64)iov.iov_len < *avail)
		*avail = iov.iov_len;
	return 0;
}

/* ret bytes moved by op, in watched process tgid. Every hooked syscall
 * has the fd first and, but sendfile, the buffer second: they are read
 * from the registers regs the syscall entry saved (untouched until the
 * return to user space), so there is no enter hook and nothing to keep
 * between the two. */
static __always_inline int on_io(long ret, __u32 op, __u32 tgid, struct pt_regs *regs)
{
	struct conn_key key = {.tgid = tgid};
	__u64 data = 0, avail = ret, now, over;
	const struct req_bytes *h;
	int rx, have_data, i;
	struct pipe_head *ph;
	struct red_conn *c;
	__u8 p[16] = {};
	__u32 len;

	key.fd = (__u32)PT_REGS_PARM1_SYSCALL(regs);
	if (op != IO_FILE)
		data = PT_REGS_PARM2_SYSCALL(regs);
	/* a peek leaves the bytes to the read that follows */
	if ((op == IO_RXF && (PT_REGS_PARM4_SYSCALL(regs) & RED_MSG_PEEK)) ||
	    (op == IO_RXM && (PT_REGS_PARM3_SYSCALL(regs) & RED_MSG_PEEK)))
		return 0;
	rx = op == IO_RX || op == IO_RXF || op == IO_RXV || op == IO_RXM;
	/* data points at the bytes (the first avail of ret) */
	have_data = op == IO_RX || op == IO_RXF || op == IO_TX;
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c && rx) {
		if (first_buf(op, &data, &avail))
			return 0;
		have_data = 1;
		c = adopt(&key, data, avail);
	} else if (!c) {
		c = child_conn(&key);
	}
	if (!c)
		return 0;
	/* a server reads requests and writes responses, a client the reverse */
	if (c->client ? !rx && op != IO_FILE : rx) {
		if (!have_data && first_buf(op, &data, &avail))
			return 0;
		len = avail < RED_REQ_HEAD ? (__u32)avail : RED_REQ_HEAD;
		now = bpf_ktime_get_ns();
		if (c->state == RED_CONN_IDLE) {
			/* nothing in flight to keep: one read, straight into place */
			if (bpf_probe_read_user(c->req, len, (const void *)data) ||
			    !is_request(c->req))
				return 0;
			c->req_len = len;
			begin(c, &key, now);
			h = (const struct req_bytes *)c->req;
		} else {
			if (bpf_probe_read_user(p, avail < 16 ? avail : 16, (const void *)data) ||
			    !is_request(p))
				return 0; /* a body, or bytes of a head already seen */
			if (c->state == RED_CONN_IN_RESP && !c->q_len) {
				/* keep-alive after a response of unknown length */
				emit(c, &key, RED_END_NEXT);
				if (bpf_probe_read_user(c->req, len, (const void *)data)) {
					stat_inc(RED_STAT_READ_FAULT);
					len = 0;
				}
				c->req_len = len;
				begin(c, &key, now);
				h = (const struct req_bytes *)c->req;
			} else {
				/* pipelined: before the response of the one in flight */
				ph = enqueue(c, &key, data, avail, now);
				if (!ph)
					return 0;
				h = (const struct req_bytes *)ph->req;
				len = ph->len;
			}
		}
		more_heads(c, &key, h, len, data, avail, now);
		return 0;
	}
	if ((c->client && op == IO_FILE) || c->state == RED_CONN_IDLE)
		return 0;
	if (!have_data && (c->state == RED_CONN_IN_REQ || c->chunked)) {
		if (first_buf(op, &data, &avail))
			return 0;
		have_data = op != IO_FILE;
	}
	if (c->state == RED_CONN_IN_REQ) {
		if (!have_data || !start_response(c, data, avail, ret))
			return 0;
	} else {
		c->resp_bytes += ret;
	}
	now = bpf_ktime_get_ns();
	c->last = now;
	/* the responses of pipelined requests can follow in the same write */
	for (i = 0; i < RED_PIPE; i++) {
		if (!(c->resp_expect >= 0 && c->resp_bytes >= (__u64)c->resp_expect) &&
		    !(c->chunked && have_data && avail == (__u64)ret && chunked_end(data, ret)))
			return 0;
		over = c->resp_expect >= 0 ? c->resp_bytes - (__u64)c->resp_expect : 0;
		emit(c, &key, RED_END_LENGTH);
		pop(c, &key);
		if (!over || over > (__u64)ret || c->state != RED_CONN_IN_REQ || !have_data ||
		    avail != (__u64)ret || !start_response(c, data + ret - over, over, over))
			return 0;
		c->last = now;
	}
	return 0;
}

/* A syscall exit of op that moved ret bytes. */
static __always_inline int on_io_exit(long ret, __u32 op)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ret <= 0 || !watched(tgid))
		return 0;
	return on_io(ret, op, tgid, current_regs());
}

SEC("tracepoint/syscalls/sys_exit_read")
int sys_exit_read(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_RX);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int sys_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_RXF);
}

SEC("tracepoint/syscalls/sys_exit_readv")
int sys_exit_readv(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_RXV);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int sys_exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_RXM);
}

SEC("tracepoint/syscalls/sys_exit_write")
int sys_exit_write(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_TX);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int sys_exit_sendto(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_TX);
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int sys_exit_sendmsg(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_TXM);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int sys_exit_writev(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_TXV);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int sys_exit_sendfile64(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret, IO_FILE);
}

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the
 * calls a sock tracepoint may fire in that on_io() knows. */
#define RED_NR_READ	0
#define RED_NR_WRITE	1
#define RED_NR_READV	19
#define RED_NR_WRITEV	20
#define RED_NR_SENDFILE 40
#define RED_NR_SENDTO	44
#define RED_NR_RECVFROM 45
#define RED_NR_SENDMSG	46
#define RED_NR_RECVMSG	47

/* The op of syscall nr for a socket receive (rx) or send; 0 for any other
 * (io_uring's, splice's, the kernel's own). */
static __always_inline __u32 io_op_of_syscall(__u64 nr, int rx)
{
	switch (nr) {
	case RED_NR_READ:
		return rx ? IO_RX : 0;
	case RED_NR_RECVFROM:
		return rx ? IO_RXF : 0;
	case RED_NR_READV:
		return rx ? IO_RXV : 0;
	case RED_NR_RECVMSG:
		return rx ? IO_RXM : 0;
	case RED_NR_WRITE:
	case RED_NR_SENDTO:
		return rx ? 0 : IO_TX;
	case RED_NR_WRITEV:
		return rx ? 0 : IO_TXV;
	case RED_NR_SENDMSG:
		return rx ? 0 : IO_TXM;
	case RED_NR_SENDFILE:
		return rx ? 0 : IO_FILE;
	}
	return 0;
}

/*
 * The same exchanges from the sock tracepoints, where the kernel has them
 * (6.18 does, 6.1 not; red.c picks one set of hooks or the other). They
 * fire for sockets only, inside the syscall, and are typed (tp_btf: no
 * perf trace buffer on the way), so a write to a file or a pipe costs
 * nothing and a socket I/O a fraction of a syscall event's dispatch. The
 * syscall's own arguments are read as at its exit. A sendfile may send in
 * several steps, each counted as it goes. Calls made otherwise (io_uring,
 * splice, the kernel's own) are not looked at, as with the syscall exits.
 */
static __always_inline int on_sock_io(int ret, int rx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, op;
	struct pt_regs *regs;

	if (ret <= 0 || !watched(tgid))
		return 0;
	regs = current_regs();
	op = io_op_of_syscall(regs->orig_ax, rx);
	return op ? on_io(ret, op, tgid, regs) : 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv_length, struct sock *sk, int ret, int flags)
{
	return on_sock_io(ret, 1);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send_length, struct sock *sk, int ret, int flags)
{
	return on_sock_io(ret, 0);
}

#define RED_NR_CLOSE 3

/* include/net/tcp_states.h */
#define RED_TCP_FIN_WAIT1 4
#define RED_TCP_CLOSE	  7
#define RED_TCP_LAST_ACK  9

/*
 * The close of a tracked connection ends what is in flight on it. When
 * close() lets go of a TCP socket's last reference, tcp_close() moves it
 * to FIN_WAIT1 (or LAST_ACK after the peer's FIN, or CLOSE with data left
 * unread), within that syscall; a socket the peer resets goes to CLOSE in
 * a softirq, and its close() stores no state again. Both end the
 * connection, found by the socket's address (conn_of_sock), its entry
 * checked to name this socket (the fd number may have gone to another
 * connection since). FIN_WAIT1 and LAST_ACK count only within close():
 * after shutdown() a process may still read. Watching state changes
 * rather than close()'s exit, a close of anything but a TCP socket runs no
 * program (nginx closes the file it sent after every request). A socket
 * still open elsewhere (a forked child's copy, a dup) closes when its last
 * reference goes, or the entry leaves with its process or the fd's reuse.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(red_tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 addr = (__u64)sk;
	struct conn_key *k, key;
	struct red_conn *c;

	if (newstate != RED_TCP_CLOSE &&
	    ((newstate != RED_TCP_FIN_WAIT1 && newstate != RED_TCP_LAST_ACK) ||
	     current_regs()->orig_ax != RED_NR_CLOSE))
		return 0;
	k = bpf_map_lookup_elem(&conn_of_sock, &addr);
	if (!k)
		return 0;
	key = *k;
	bpf_map_delete_elem(&conn_of_sock, &addr);
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c || c->sk != addr)
		return 0;
	flush(c, &key);
	bpf_map_delete_elem(&conns, &key);
	return 0;
}
