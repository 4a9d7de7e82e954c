// SPDX-License-Identifier: MIT
#include "bpf_host.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "sonde/abi.h"
#include "proc.skel.h"
#include "sample.skel.h"

struct sonde_bpf_host {
	struct sample_bpf *sample;
	struct proc_bpf *proc;
	struct ring_buffer *ring;
	struct bpf_link **links; /* one per sampled CPU */
	int *perf_fds;
	unsigned int ncpus;      /* slots in links/perf_fds */
	unsigned int cpus;       /* attached */
	unsigned int hooks;
	struct bpf_link *hook_links[3];
	unsigned int hz;
	int possible_cpus;
	uint32_t unwinders_used; /* bit per slot of the unwinders PROG_ARRAY */
};

static const char *const stat_names[SONDE_STAT__COUNT] = {
	[SONDE_STAT_SAMPLES] = "samples",
	[SONDE_STAT_SAMPLES_IDLE] = "samples_idle",
	[SONDE_STAT_RINGBUF_DROPS] = "ringbuf_full",
	[SONDE_STAT_KSTACK_ERRORS] = "kernel_stack_error",
	[SONDE_STAT_USTACK_ERRORS] = "user_stack_error",
	[SONDE_STAT_KSTACK_TRUNCATED] = "kernel_stack_truncated",
	[SONDE_STAT_USTACK_TRUNCATED] = "user_stack_truncated",
	[SONDE_STAT_TAIL_CALL_FAILED] = "unwinder_missing",
	[SONDE_STAT_PROC_EVENT_DROPS] = "proc_event_ringbuf_full",
	[SONDE_STAT_SCRATCH_MISSING] = "scratch_missing",
	[SONDE_STAT_SAMPLES_SKIPPED] = "not_profiled",
};

const char *sonde_stat_name(enum sonde_stat stat)
{
	return stat < SONDE_STAT__COUNT && stat_names[stat] ? stat_names[stat] : "unknown";
}

/* Lifecycle programs and the BTF typedef of the hook each needs. */
static const struct {
	const char *prog;
	const char *btf_hook;
} lifecycle_hooks[] = {
	{ "sched_process_exec", "btf_trace_sched_process_exec" },
	{ "sched_process_fork", "btf_trace_sched_process_fork" },
	{ "sched_process_exit", "btf_trace_sched_process_exit" },
};

static void explain_load_error(const char *what, int err)
{
	/* As root, EACCES comes from the verifier, not from a lack of rights. */
	if (err == -EPERM || (err == -EACCES && geteuid() != 0))
		sonde_err("loading the %s BPF programs was refused (%s): run sonded as root, or "
			  "give it CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE",
			  what, strerror(-err));
	else
		sonde_err("the kernel refused the %s BPF programs: %s (run with --verbose to see "
			  "the verifier's log)",
			  what, strerror(-err));
}

/* Switches off lifecycle programs whose tracepoint this kernel lacks. */
static void disable_missing_hooks(struct sonde_bpf_host *host)
{
	struct btf *vmlinux = btf__load_vmlinux_btf();
	size_t i;

	if (!vmlinux) {
		sonde_warn("cannot read the kernel's BTF (%s): process lifecycle events are off; "
			   "processes are found by /proc scans only",
			   strerror(errno));
		for (i = 0; i < sizeof(lifecycle_hooks) / sizeof(lifecycle_hooks[0]); i++)
			bpf_program__set_autoload(bpf_object__find_program_by_name(
							  host->proc->obj, lifecycle_hooks[i].prog),
						  false);
		return;
	}
	for (i = 0; i < sizeof(lifecycle_hooks) / sizeof(lifecycle_hooks[0]); i++) {
		struct bpf_program *p =
			bpf_object__find_program_by_name(host->proc->obj, lifecycle_hooks[i].prog);

		if (btf__find_by_name_kind(vmlinux, lifecycle_hooks[i].btf_hook, BTF_KIND_TYPEDEF) >= 0)
			continue;
		sonde_warn("this kernel has no %s tracepoint: %s is switched off",
			   lifecycle_hooks[i].prog + strlen("sched_"), lifecycle_hooks[i].prog);
		bpf_program__set_autoload(p, false);
	}
	btf__free(vmlinux);
}

/*
 * Room for a quarter second of full-size samples from every CPU: 2.5 times
 * the daemon's drain interval. The ring is mapped (and resident) whole, so
 * it is not made larger than that: 256 KiB at 19 Hz on 2 CPUs, 1 MiB at
 * 999 Hz.
 */
static size_t default_ring_size(unsigned int hz, int cpus)
{
	uint64_t want = (uint64_t)hz * (uint64_t)cpus * sizeof(struct sonde_sample) / 4;
	size_t size = 256u << 10;

	while (size < want && size < (64u << 20))
		size <<= 1;
	return size;
}

struct sonde_bpf_host *sonde_bpf_host__load(const struct sonde_bpf_host_opts *opts)
{
	struct sonde_bpf_host *host;
	size_t ring = opts->ringbuf_bytes, wakeup;
	int err, fp_fd;
	__u32 slot = SONDE_UNWINDER_FP;

	if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
		sonde_err("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): sonded needs "
			  "a kernel built with CONFIG_DEBUG_INFO_BTF=y");
		errno = ENOTSUP;
		return NULL;
	}
	host = calloc(1, sizeof(*host));
	if (!host)
		return NULL;
	host->hz = opts->hz;
	host->possible_cpus = libbpf_num_possible_cpus();
	if (host->possible_cpus <= 0) {
		err = host->possible_cpus ? host->possible_cpus : -EINVAL;
		sonde_err("cannot count the CPUs: %s", strerror(-err));
		goto fail;
	}

	if (!ring)
		ring = default_ring_size(opts->hz, host->possible_cpus);
	sonde_debug("events ringbuf: %zu KiB", ring >> 10);

	host->sample = sample_bpf__open();
	host->proc = proc_bpf__open();
	if (!host->sample || !host->proc) {
		err = -errno;
		sonde_err("cannot open the core BPF objects: %s", strerror(-err));
		goto fail;
	}
	bpf_map__set_max_entries(host->sample->maps.events, ring);
	wakeup = opts->wakeup_bytes && opts->wakeup_bytes < ring ? opts->wakeup_bytes : ring / 4;
	host->sample->rodata->sonde_wakeup_bytes = wakeup;
	host->proc->rodata->sonde_wakeup_bytes = wakeup;

	err = sample_bpf__load(host->sample);
	if (err) {
		explain_load_error("sampler", err);
		goto fail;
	}
	/* proc.bpf.c writes into the sampler's ringbuf and counters. */
	err = bpf_map__reuse_fd(host->proc->maps.events, bpf_map__fd(host->sample->maps.events));
	if (!err)
		err = bpf_map__reuse_fd(host->proc->maps.stats, bpf_map__fd(host->sample->maps.stats));
	if (err) {
		sonde_err("cannot share the events ringbuf with the lifecycle programs: %s",
			  strerror(-err));
		goto fail;
	}
	disable_missing_hooks(host);
	err = proc_bpf__load(host->proc);
	if (err) {
		explain_load_error("process lifecycle", err);
		goto fail;
	}

	host->unwinders_used = 1u << SONDE_UNWINDER_FP;
	fp_fd = bpf_program__fd(host->sample->progs.unwind_fp);
	err = bpf_map_update_elem(bpf_map__fd(host->sample->maps.unwinders), &slot, &fp_fd, BPF_ANY);
	if (err) {
		err = -errno;
		sonde_err("cannot install the frame-pointer unwinder: %s", strerror(-err));
		goto fail;
	}

	host->ring = ring_buffer__new(bpf_map__fd(host->sample->maps.events), opts->on_event,
				      opts->ctx, NULL);
	if (!host->ring) {
		err = -errno;
		sonde_err("cannot map the events ringbuf: %s", strerror(-err));
		goto fail;
	}
	return host;
fail:
	sonde_bpf_host__free(host);
	errno = -err;
	return NULL;
}

static int perf_event_open(struct perf_event_attr *attr, int cpu)
{
	return syscall(SYS_perf_event_open, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
}

static void explain_perf_error(int err, unsigned int hz)
{
	if (err == EACCES || err == EPERM)
		sonde_err("perf_event_open was refused (%s): run sonded as root, or give it "
			  "CAP_PERFMON (kernel.perf_event_paranoid applies otherwise)",
			  strerror(err));
	else if (err == EINVAL)
		sonde_err("perf_event_open refused %u Hz (%s): kernel.perf_event_max_sample_rate "
			  "may be lower; choose a smaller --hz",
			  hz, strerror(err));
	else
		sonde_err("this kernel cannot sample the cpu-clock event: perf_event_open: %s",
			  strerror(err));
}

/* /sys/devices/system/cpu/online ("0-3,6") into online[0..*n). */
static int parse_online_cpus(bool **online, int *n)
{
	char buf[1024], *p, *end;
	long lo, hi, cpu;
	ssize_t len;
	int fd, max = 0;

	fd = open("/sys/devices/system/cpu/online", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return len < 0 ? -errno : -EINVAL;
	buf[len] = '\0';
	*online = calloc(4096, sizeof(**online));
	if (!*online)
		return -ENOMEM;
	for (p = buf; *p && *p != '\n'; p = end) {
		lo = strtol(p, &end, 10);
		hi = lo;
		if (*end == '-')
			hi = strtol(end + 1, &end, 10);
		if (end == p || lo < 0 || hi < lo || hi >= 4096) {
			free(*online);
			*online = NULL;
			return -EINVAL;
		}
		for (cpu = lo; cpu <= hi; cpu++)
			(*online)[cpu] = true;
		if (hi + 1 > max)
			max = hi + 1;
		if (*end == ',')
			end++;
	}
	*n = max;
	return 0;
}

static int attach_sampler(struct sonde_bpf_host *host)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_SOFTWARE,
		.size = sizeof(attr),
		.config = PERF_COUNT_SW_CPU_CLOCK,
		.freq = 1,
		.sample_freq = host->hz,
	};
	bool *online = NULL;
	int n = 0, cpu, err;

	err = parse_online_cpus(&online, &n);
	if (err) {
		sonde_err("cannot read the online CPUs from /sys/devices/system/cpu/online: %s",
			  strerror(-err));
		return err;
	}
	host->links = calloc(n, sizeof(*host->links));
	host->perf_fds = malloc(n * sizeof(*host->perf_fds));
	if (!host->links || !host->perf_fds) {
		free(online);
		return -ENOMEM;
	}
	host->ncpus = n;
	for (cpu = 0; cpu < n; cpu++)
		host->perf_fds[cpu] = -1;
	for (cpu = 0; cpu < n; cpu++) {
		if (!online[cpu])
			continue;
		host->perf_fds[cpu] = perf_event_open(&attr, cpu);
		if (host->perf_fds[cpu] < 0) {
			err = errno;
			if (err == ENODEV) /* went offline since */
				continue;
			explain_perf_error(err, host->hz);
			free(online);
			return -err;
		}
		host->links[cpu] = bpf_program__attach_perf_event(host->sample->progs.sample,
								  host->perf_fds[cpu]);
		if (!host->links[cpu]) {
			err = errno;
			sonde_err("cannot attach the sampler to CPU %d: %s", cpu, strerror(err));
			free(online);
			return -err;
		}
		host->cpus++;
	}
	free(online);
	return 0;
}

int sonde_bpf_host__attach(struct sonde_bpf_host *host)
{
	size_t i;
	int err;

	err = attach_sampler(host);
	if (err)
		return err;
	for (i = 0; i < sizeof(lifecycle_hooks) / sizeof(lifecycle_hooks[0]); i++) {
		struct bpf_program *p =
			bpf_object__find_program_by_name(host->proc->obj, lifecycle_hooks[i].prog);
		struct bpf_link *link;

		if (!bpf_program__autoload(p))
			continue;
		link = bpf_program__attach(p);
		if (!link) {
			err = -errno;
			sonde_err("cannot attach %s: %s", lifecycle_hooks[i].prog, strerror(-err));
			return err;
		}
		host->hook_links[host->hooks++] = link;
	}
	return 0;
}

void sonde_bpf_host__free(struct sonde_bpf_host *host)
{
	unsigned int cpu;

	if (!host)
		return;
	ring_buffer__free(host->ring);
	for (cpu = 0; cpu < host->hooks; cpu++)
		bpf_link__destroy(host->hook_links[cpu]);
	for (cpu = 0; cpu < host->ncpus; cpu++) {
		bpf_link__destroy(host->links[cpu]);
		if (host->perf_fds[cpu] >= 0)
			close(host->perf_fds[cpu]);
	}
	free(host->links);
	free(host->perf_fds);
	proc_bpf__destroy(host->proc);
	sample_bpf__destroy(host->sample);
	free(host);
}

int sonde_bpf_host__ring_fd(const struct sonde_bpf_host *host)
{
	return ring_buffer__epoll_fd(host->ring);
}

int sonde_bpf_host__consume(struct sonde_bpf_host *host)
{
	return ring_buffer__consume(host->ring);
}

unsigned int sonde_bpf_host__cpus(const struct sonde_bpf_host *host)
{
	return host->cpus;
}

unsigned int sonde_bpf_host__hooks(const struct sonde_bpf_host *host)
{
	return host->hooks;
}

int sonde_bpf_host__stats(const struct sonde_bpf_host *host, uint64_t *out)
{
	int fd = bpf_map__fd(host->sample->maps.stats);
	uint64_t *values = calloc(host->possible_cpus, sizeof(*values));
	__u32 key;
	int cpu;

	if (!values)
		return -ENOMEM;
	for (key = 0; key < SONDE_STAT__COUNT; key++) {
		out[key] = 0;
		if (bpf_map_lookup_elem(fd, &key, values)) {
			int err = -errno;

			free(values);
			return err;
		}
		for (cpu = 0; cpu < host->possible_cpus; cpu++)
			out[key] += values[cpu];
	}
	free(values);
	return 0;
}

int sonde_bpf_host__map_fd(const struct sonde_bpf_host *host, const char *name)
{
	struct bpf_map *map = bpf_object__find_map_by_name(host->sample->obj, name);

	return map ? bpf_map__fd(map) : -ENOENT;
}

int sonde_bpf_host__add_unwinder(struct sonde_bpf_host *host, int prog_fd)
{
	__u32 slot;

	for (slot = 0; slot < SONDE_MAX_UNWINDERS; slot++)
		if (!(host->unwinders_used & (1u << slot)))
			break;
	if (slot == SONDE_MAX_UNWINDERS)
		return -ENOSPC;
	if (bpf_map_update_elem(bpf_map__fd(host->sample->maps.unwinders), &slot, &prog_fd, BPF_ANY))
		return -errno;
	host->unwinders_used |= 1u << slot;
	return (int)slot;
}

int sonde_bpf_host__set_process(struct sonde_bpf_host *host, uint32_t pid, uint32_t slot,
				bool profiled)
{
	struct sonde_proc_info info = { .unwinder = slot, .flags = profiled ? 0 : SONDE_PROC_SKIP };

	if (slot >= SONDE_MAX_UNWINDERS || !(host->unwinders_used & (1u << slot)))
		return -EINVAL;
	if (bpf_map_update_elem(bpf_map__fd(host->sample->maps.procs), &pid, &info, BPF_ANY))
		return -errno;
	return 0;
}

void sonde_bpf_host__forget_process(struct sonde_bpf_host *host, uint32_t pid)
{
	bpf_map_delete_elem(bpf_map__fd(host->sample->maps.procs), &pid);
	bpf_map_delete_elem(bpf_map__fd(host->sample->maps.handover), &pid);
}

void sonde_bpf_host__enable_tags(struct sonde_bpf_host *host)
{
	/* .bss is mmap'd by the skeleton: the sampler sees it at once */
	host->sample->bss->sonde_tags_on = 1;
}

int sonde_bpf_host__set_handover(struct sonde_bpf_host *host, uint32_t pid, uint32_t slot,
				 const uint64_t *ranges, int n)
{
	int fd = bpf_map__fd(host->sample->maps.handover);
	struct sonde_handover ho = { 0 }, old = { 0 };
	uint32_t i;
	int j;

	if (slot == SONDE_UNWINDER_FP || slot >= SONDE_MAX_UNWINDERS || n < 0 ||
	    (n && !ranges))
		return -EINVAL;
	if (bpf_map_lookup_elem(fd, &pid, &old))
		old.n = 0;
	for (i = 0; i < old.n && i < SONDE_MAX_HANDOVER_RANGES; i++)
		if (old.ranges[i].slot != slot)
			ho.ranges[ho.n++] = old.ranges[i];
	for (j = 0; j < n; j++) {
		if (ranges[2 * j] >= ranges[2 * j + 1])
			return -EINVAL;
		if (ho.n == SONDE_MAX_HANDOVER_RANGES)
			return -ENOSPC;
		ho.ranges[ho.n++] = (struct sonde_handover_range){
			.start = ranges[2 * j], .end = ranges[2 * j + 1], .slot = slot };
	}
	if (!ho.n) {
		if (bpf_map_delete_elem(fd, &pid) && errno != ENOENT)
			return -errno;
		return 0;
	}
	if (bpf_map_update_elem(fd, &pid, &ho, BPF_ANY))
		return -errno;
	return 0;
}
