/* SPDX-License-Identifier: MIT */
/*
 * The process registry: every process on the node with its metadata and
 * its address space over time, so that a sample is attributed and its
 * frames named even when the process has exited by the time the sample is
 * read (a `sh -c` that lives 50 ms).
 *
 * Fed by three sources:
 *  - a /proc scan at start, and per process on demand (an unknown pid, or
 *    an address no known mapping covers while the process lives);
 *  - the lifecycle tracepoints (bpf/proc.bpf.c) through the events ringbuf:
 *    exec (comm, exe, argv, cgroup), fork of a process, exit;
 *  - perf side-band records (see sideband.h): executable mmaps, exec
 *    boundaries and process forks, timestamped by the kernel as they happen.
 *
 * Mappings carry the time they appeared and the time they were replaced
 * (by an overlapping mmap or an exec), and lookups take the sample's time,
 * so a late sample still meets the address space it ran in. Exited
 * processes stay for a grace period (sonde_procs__reap).
 *
 * All times are CLOCK_MONOTONIC nanoseconds (sonde_now_ns()).
 * Threading: loop thread only. Library-like: returns errors, logs at most
 * debug. Ownership: processes and mappings belong to the registry; a
 * pointer stays valid until the next sonde_procs__reap().
 */
#ifndef SONDE_PROC_H
#define SONDE_PROC_H

#include <stdbool.h>
#include <stdint.h>

#include "sonde/abi.h"

struct sonde_symbolizer;
struct sonde_object;
struct sonde_procs;

#define SONDE_CONTAINER_ID_LEN 64

struct sonde_mapping {
	uint64_t start, end;     /* [start, end) */
	uint64_t pgoff;          /* file offset of start */
	struct sonde_object *obj;
	uint64_t since_ns;       /* appeared (0: found by a /proc scan; a later read of
				  * /proc/PID/maps dates a new mapping back to the
				  * last exec or the end of what it replaced) */
	uint64_t until_ns;       /* replaced; UINT64_MAX while current */
	uint64_t dev;            /* makedev(major, minor) of the file; 0 for [vdso] */
	uint64_t ino;            /* inode of the file; 0 for [vdso] */
	const char *name;        /* path as the process sees it, or "[vdso]"; owned by the registry */
};

struct sonde_proc {
	uint32_t pid;
	uint32_t ppid;
	char comm[SONDE_COMM_LEN];
	char *exe;         /* executable path as the process sees it, or NULL */
	char *cmdline;     /* argv joined by spaces, or NULL */
	char *cgroup;      /* cgroup v2 path, e.g. /system.slice/nginx.service, or NULL */
	char container_id[SONDE_CONTAINER_ID_LEN + 1]; /* "" when the cgroup names none */
	uint64_t exit_ns;  /* 0 while alive */
	/* private to proc.c from here */
	struct sonde_mapping *maps;
	uint32_t nmaps, maps_cap;
	uint64_t last_rescan_ns;
	uint64_t max_map_len;    /* longest mapping ever in maps: bounds the lookup walk */
	uint64_t start_ns;       /* fork time when seen (0: unknown) */
	uint64_t exec_ns;        /* last exec boundary seen (0: none) */
	struct sonde_proc *hnext; /* hash chain */
};

struct sonde_procs_opts {
	const char *proc_root;   /* NULL: /proc */
	const char *cgroup_root; /* NULL: /sys/fs/cgroup */
	uint64_t grace_ns;       /* how long exited processes stay; 0: 30 s */
	uint64_t rescan_ns;      /* least time between two maps rescans of a pid; 0: 1 s */
};

struct sonde_procs_stats {
	uint64_t processes;      /* known now, exited ones in grace included */
	uint64_t scans;          /* /proc/PID/maps reads */
	uint64_t unknown_pids;   /* lookups of a pid neither known nor in /proc */
	uint64_t unmapped_addrs; /* lookups no mapping covered, even after a rescan */
};

/* NULL and errno on failure. The symbolizer gives each mapping its object. */
struct sonde_procs *sonde_procs__new(struct sonde_symbolizer *sym,
				     const struct sonde_procs_opts *opts);
void sonde_procs__free(struct sonde_procs *procs);

/* Reads every process in /proc. 0 or -errno (only if /proc cannot be read). */
int sonde_procs__scan(struct sonde_procs *procs);

/* Lifecycle events from the ringbuf. */
void sonde_procs__on_exec(struct sonde_procs *procs, const struct sonde_exec_event *e);
void sonde_procs__on_fork(struct sonde_procs *procs, const struct sonde_fork_event *e);
void sonde_procs__on_exit(struct sonde_procs *procs, const struct sonde_exit_event *e);

/* Side-band records (sideband.c decodes them). maj/min/ino identify the file. */
void sonde_procs__on_mmap(struct sonde_procs *procs, uint32_t pid, uint64_t time_ns,
			  uint64_t start, uint64_t len, uint64_t pgoff, uint32_t maj, uint32_t min,
			  uint64_t ino, const char *filename);
/* The address space of pid was replaced by an exec at time_ns. */
void sonde_procs__on_exec_mm(struct sonde_procs *procs, uint32_t pid, uint64_t time_ns);
/* Process child was forked from parent at time_ns: it starts with a copy of
 * the parent's mappings. */
void sonde_procs__on_fork_mm(struct sonde_procs *procs, uint32_t parent, uint32_t child,
			     uint64_t time_ns);

/*
 * The process pid, reading /proc/pid when it is not known yet. NULL when
 * it is neither known nor in /proc.
 */
struct sonde_proc *sonde_procs__get(struct sonde_procs *procs, uint32_t pid);

/*
 * The mapping that covered addr at time_ns. On a miss, while the process
 * lives, rereads /proc/pid/maps (at most once per rescan_ns) and tries
 * again. NULL when nothing covers addr.
 */
const struct sonde_mapping *sonde_procs__find_mapping(struct sonde_procs *procs,
						      struct sonde_proc *proc, uint64_t addr,
						      uint64_t time_ns);

/* Frees processes that exited more than grace_ns before now_ns, and
 * mappings replaced that long ago. */
void sonde_procs__reap(struct sonde_procs *procs, uint64_t now_ns);

void sonde_procs__stats(const struct sonde_procs *procs, struct sonde_procs_stats *out);

/* Calls fn for every known process, exited ones in grace included. */
void sonde_procs__for_each(struct sonde_procs *procs,
			   void (*fn)(void *ctx, struct sonde_proc *proc), void *ctx);

/*
 * The container id a cgroup path names (docker, containerd, cri-o, podman
 * and Kubernetes patterns, cgroup v1 and v2): 64 lowercase hex digits into
 * out, true; false and "" when it names none.
 */
bool sonde_cgroup_container_id(const char *cgroup_path, char out[SONDE_CONTAINER_ID_LEN + 1]);

#endif /* SONDE_PROC_H */
