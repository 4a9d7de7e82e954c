// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Process lifecycle for the registry: exec (with filename and argv), fork
 * of a new process, exit of a process's last thread. Events share the
 * events ringbuf with samples, so userspace sees them in order.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The exec record is too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sonde_exec_event);
} exec_scratch SEC(".maps");

static __always_inline void send(void *event, __u64 size)
{
	if (bpf_ringbuf_output(&events, event, size, 0))
		sonde_stat_inc(SONDE_STAT_PROC_EVENT_DROPS);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	__u64 arg_start, arg_end, len;
	struct sonde_exec_event *e = bpf_map_lookup_elem(&exec_scratch, &zero);

	if (!e)
		return 0;
	e->hdr.type = SONDE_EV_EXEC;
	e->hdr.pid = task->tgid;
	e->hdr.time_ns = bpf_ktime_get_ns();
	e->ppid = task->real_parent->tgid;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->filename) < 0)
		e->filename[0] = '\0';

	arg_start = task->mm->arg_start;
	arg_end = task->mm->arg_end;
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > SONDE_ARGS_LEN)
		len = SONDE_ARGS_LEN;
	e->args_len = 0;
	if (len && bpf_probe_read_user(e->args, len, (void *)arg_start) == 0)
		e->args_len = len;
	send(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	struct sonde_fork_event e = {};

	if (child->pid != child->tgid) /* a new thread, not a new process */
		return 0;
	e.hdr.type = SONDE_EV_FORK;
	e.hdr.pid = child->tgid;
	e.hdr.time_ns = bpf_ktime_get_ns();
	e.ppid = parent->tgid;
	e.cgroup_id = bpf_get_current_cgroup_id();
	bpf_probe_read_kernel_str(e.comm, sizeof(e.comm), child->comm);
	send(&e, sizeof(e));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *task)
{
	struct sonde_exit_event e = {};

	/* signal->live reaches zero when the last thread of the group exits. */
	if (task->signal->live.counter != 0)
		return 0;
	e.hdr.type = SONDE_EV_EXIT;
	e.hdr.pid = task->tgid;
	e.hdr.time_ns = bpf_ktime_get_ns();
	send(&e, sizeof(e));
	return 0;
}
