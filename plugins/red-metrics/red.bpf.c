// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * HTTP/1.x server exchanges seen from syscall tracepoints (no kprobes, no
 * fentry: neither exists on every kernel sonde runs on). Only processes in
 * `targets` are looked at; for everyone else each hook costs one hash
 * lookup. Only accepted connections are tracked: an fd of a watched process
 * that is not in `conns` costs a second lookup and nothing more.
 *
 * BPF recognises a request head by its method token and a response head by
 * "HTTP/1."; it copies the first RED_HEAD_MAX bytes of both and counts the
 * bytes of the writes that follow. Userspace (red_agg.c) parses and pairs.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "red.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The tgids the script gave the plugin (value unused), filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} targets SEC(".maps");

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct red_conn {
	__u64 gen;
	__u16 lport;
	__u8 state; /* enum red_conn_state */
	__u8 pad[5];
};

/* Accepted connections of watched processes; LRU so a missed close cannot
 * fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct red_conn);
} conns SEC(".maps");

enum io_op {
	IO_RX = 1,   /* read, recvfrom: buf is the data */
	IO_TX = 2,   /* write, sendto: buf is the data */
	IO_TXV = 3,  /* writev: buf is the iovec array */
	IO_FILE = 4, /* sendfile: no user buffer */
};

struct io_args {
	__u64 buf;
	__u32 fd;
	__u32 op; /* enum io_op */
};

/* A syscall of a tracked connection between its enter and exit, by thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct io_args);
} io SEC(".maps");

struct event_buf {
	struct red_event ev;
	__u8 data[RED_HEAD_MAX];
};

/* The record being built (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_buf);
} scratch SEC(".maps");

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

static __always_inline int watched(__u32 tgid)
{
	return bpf_map_lookup_elem(&targets, &tgid) != NULL;
}

/* Userspace is woken only once this much waits in the ringbuf (a wake-up
 * per record costs more than the record); it also drains on a timer and
 * before every scrape. 0: wake on every record. */
const volatile __u64 wakeup_bytes = 0;

static __always_inline void emit(struct event_buf *b, __u32 len)
{
	__u64 flags = 0;

	if (len > RED_HEAD_MAX)
		len = RED_HEAD_MAX;
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(&red_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
				? BPF_RB_FORCE_WAKEUP
				: BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&red_events, b, sizeof(b->ev) + len, flags))
		stat_inc(RED_STAT_RINGBUF_FULL);
}

/* The local port of the socket behind fd, through the task's file table:
 * works on every kernel with BTF, no sock_* tracepoint needed. */
static __always_inline __u16 local_port(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	struct socket *sock;
	struct sock *sk;

	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	return BPF_CORE_READ(sk, __sk_common.skc_num);
}

static __always_inline int on_accept_exit(long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct conn_key key = {.tgid = tgid, .fd = (__u32)ret};
	struct red_conn c = {};

	if (ret < 0 || !watched(tgid))
		return 0;
	c.gen = bpf_ktime_get_ns();
	c.lport = local_port((__u32)ret);
	c.state = RED_CONN_IDLE;
	bpf_map_update_elem(&conns, &key, &c, BPF_ANY);
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

static __always_inline int on_io_enter(__u64 fd, __u64 buf, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct conn_key key = {.tgid = id >> 32, .fd = (__u32)fd};
	struct io_args a = {.buf = buf, .fd = (__u32)fd, .op = op};

	if (!watched(key.tgid) || !bpf_map_lookup_elem(&conns, &key))
		return 0;
	bpf_map_update_elem(&io, &id, &a, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int sys_enter_read(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], ctx->args[1], IO_RX);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int sys_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], ctx->args[1], IO_RX);
}

SEC("tracepoint/syscalls/sys_enter_write")
int sys_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], ctx->args[1], IO_TX);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int sys_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], ctx->args[1], IO_TX);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int sys_enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], ctx->args[1], IO_TXV);
}

SEC("tracepoint/syscalls/sys_enter_sendfile64")
int sys_enter_sendfile64(struct trace_event_raw_sys_enter *ctx)
{
	return on_io_enter(ctx->args[0], 0, IO_FILE); /* out_fd */
}

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
	       p[5] == '1' && p[6] == '.';
}

/* Copies the head at buf (at most avail bytes) into b->data; its length. */
static __always_inline __u32 copy_head(struct event_buf *b, __u64 buf, __u64 avail)
{
	__u32 len = avail < RED_HEAD_MAX ? (__u32)avail : RED_HEAD_MAX;

	if (bpf_probe_read_user(b->data, len & (2 * RED_HEAD_MAX - 1), (const void *)buf)) {
		stat_inc(RED_STAT_READ_FAULT);
		return 0;
	}
	return len;
}

static __always_inline int on_io_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct io_args *a = bpf_map_lookup_elem(&io, &id);
	struct conn_key key = {.tgid = id >> 32};
	struct event_buf *b;
	struct red_conn *c;
	__u64 data, avail = ret;
	__u32 zero = 0, len = 0, op;
	__u8 type = 0;

	if (!a)
		return 0;
	key.fd = a->fd;
	data = a->buf;
	op = a->op;
	bpf_map_delete_elem(&io, &id);
	if (ret <= 0)
		return 0;
	c = bpf_map_lookup_elem(&conns, &key);
	b = bpf_map_lookup_elem(&scratch, &zero);
	if (!c || !b)
		return 0;
	if (op == IO_TXV) {
		struct iovec iov;

		if (bpf_probe_read_user(&iov, sizeof(iov), (const void *)data))
			return 0;
		data = (__u64)iov.iov_base;
		if ((__u64)iov.iov_len < avail)
			avail = iov.iov_len;
	}
	if (op != IO_FILE) {
		__builtin_memset(b->data, 0, 16);
		if (bpf_probe_read_user(b->data, avail < 16 ? avail : 16, (const void *)data))
			return 0;
	}
	if (op == IO_RX) {
		if (!is_request(b->data))
			return 0; /* a body, or bytes of a head already seen */
		type = RED_EV_REQ;
		len = copy_head(b, data, avail);
	} else if (op != IO_FILE && c->state != RED_CONN_IDLE && is_response(b->data)) {
		type = RED_EV_RESP;
		len = copy_head(b, data, avail);
	} else if (c->state == RED_CONN_IN_RESP) {
		type = RED_EV_DATA;
	} else {
		return 0;
	}
	b->ev.type = type;
	b->ev.state = c->state;
	b->ev.len = len;
	b->ev.tgid = key.tgid;
	b->ev.fd = key.fd;
	b->ev.lport = c->lport;
	b->ev.pad = 0;
	b->ev.gen = c->gen;
	b->ev.ts = bpf_ktime_get_ns();
	b->ev.bytes = ret;
	c->state = type == RED_EV_REQ ? RED_CONN_IN_REQ : RED_CONN_IN_RESP;
	emit(b, len);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int sys_exit_read(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int sys_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_write")
int sys_exit_write(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int sys_exit_sendto(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int sys_exit_writev(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int sys_exit_sendfile64(struct trace_event_raw_sys_exit *ctx)
{
	return on_io_exit(ctx->ret);
}

/* The close of a tracked connection: userspace ends what is in flight. */
SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct conn_key key = {.tgid = id >> 32, .fd = (__u32)ctx->args[0]};
	struct event_buf *b;
	struct red_conn *c;
	__u32 zero = 0;

	if (!watched(key.tgid))
		return 0;
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return 0;
	b = bpf_map_lookup_elem(&scratch, &zero);
	if (b && c->state != RED_CONN_IDLE) {
		b->ev.type = RED_EV_CLOSE;
		b->ev.state = c->state;
		b->ev.len = 0;
		b->ev.tgid = key.tgid;
		b->ev.fd = key.fd;
		b->ev.lport = c->lport;
		b->ev.pad = 0;
		b->ev.gen = c->gen;
		b->ev.ts = bpf_ktime_get_ns();
		b->ev.bytes = 0;
		emit(b, 0);
	}
	bpf_map_delete_elem(&conns, &key);
	return 0;
}
