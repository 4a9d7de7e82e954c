// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Empty programs on the hooks red-metrics attaches (plugins/red-metrics/
 * red.bpf.c): what hooking them costs before any work is done, the floor
 * bench/red-overhead compares the plugin with. The I/O is seen through
 * the sock tracepoints or through the syscall exits, as the plugin's
 * capture setting chooses; hook-floor.c loads one set or the other.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Always there. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(proc_fork, struct task_struct *parent, struct task_struct *child) { return 0; }
SEC("tp_btf/sched_process_exit")
int BPF_PROG(proc_exit, struct task_struct *task) { return 0; }
SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_accept4(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_accept")
int sys_accept(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_connect")
int sys_connect(void *ctx) { return 0; }
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, const struct sock *sk, const int oldstate, const int newstate) { return 0; }

/* capture "sock". */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send, struct sock *sk, int ret, int flags) { return 0; }

/* capture "syscalls". */
SEC("tracepoint/syscalls/sys_exit_read")
int sys_read(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int sys_recvfrom(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_readv")
int sys_readv(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int sys_recvmsg(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_write")
int sys_write(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_sendto")
int sys_sendto(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int sys_sendmsg(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_writev")
int sys_writev(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_sendfile64")
int sys_sendfile64(void *ctx) { return 0; }
