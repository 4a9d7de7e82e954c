// SPDX-License-Identifier: MIT
/*
 * The process registry. Notes on the choices that are not obvious:
 *
 * - Processes live in a chained hash table keyed by pid; the chain link is
 *   in the private part of struct sonde_proc so no extra node is allocated.
 *
 * - A process's mappings are one array sorted by start. History (replaced
 *   mappings) stays in the same array, so several entries may cover one
 *   address; a lookup binary-searches the last entry starting at or below
 *   the address and walks back only while an entry could still reach it
 *   (start + longest mapping > addr), which keeps it O(log n + overlaps).
 *   Among the entries alive at the sample's time the newest wins.
 *
 * - Replaced mappings are never split: a partial munmap/mmap over a range
 *   ends the old mapping as a whole. perf reports the new mapping, not
 *   what is left of the old one, and a sample in the remains is answered by
 *   a /proc rescan.
 *
 * - Side-band records of different CPUs reach us in (mostly) time order but
 *   not strictly, so every "end what this replaces" step only ends mappings
 *   that appeared at or before the replacing event, and a mapping that
 *   appears after a newer overlapping one is born already ended.
 *
 * - Pid reuse: an exec or fork for a pid marked exited resets the entry in
 *   place; mappings that appeared after the old exit (side-band records are
 *   drained before the events ringbuf, so they may come first) stay.
 */
#include "hash.h"
#include "loop.h"
#include "proc.h"
#include "strbuf.h"
#include "symbolize.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_GRACE_NS  (30ULL * 1000000000ULL)
#define DEFAULT_RESCAN_NS (1ULL * 1000000000ULL)
#define CGROUP_REWALK_NS  (1ULL * 1000000000ULL)
#define CGROUP_BUCKETS	  4096
#define CGROUP_MAX_DEPTH  64
#define CMDLINE_MAX	  4096 /* longer command lines are cut: labels, not forensics */
#define MAP_CURRENT	  UINT64_MAX
#define DELETED_SUFFIX	  " (deleted)"

struct name_ent {
	struct name_ent *next;
	uint32_t hash;
	char str[];
};

struct cgroup_ent {
	struct cgroup_ent *next;
	uint64_t id;
	char path[];
};

struct sonde_procs {
	struct sonde_symbolizer *sym;
	char *proc_root;
	char *cgroup_root;
	uint64_t grace_ns;
	uint64_t rescan_ns;

	struct sonde_proc **buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t count;

	/* Mapping names, interned: mappings are copied on fork and outlive
	 * their process in history, so they point at one shared string. */
	struct name_ent **names;
	uint32_t nnames_buckets;
	uint32_t nnames;

	/* cgroup v2 id (directory inode) -> path under cgroup_root. */
	struct cgroup_ent **cgroups;
	uint64_t cgroup_walk_ns;
	bool cgroup_walked;

	struct sonde_procs_stats stats;
};

/* One parsed line of /proc/PID/maps. */
struct maps_line {
	uint64_t start, end, pgoff, ino;
	unsigned int maj, min;
	char perms[5];
	char *path; /* points into the line; "" for anonymous */
};

/* ---- strings ---- */

static void set_str(char **dst, const char *src)
{
	char *copy = src ? strdup(src) : NULL; /* src may be *dst */

	free(*dst);
	*dst = copy;
}

static void set_comm(struct sonde_proc *p, const char *comm)
{
	size_t n = strnlen(comm, SONDE_COMM_LEN - 1);

	memcpy(p->comm, comm, n);
	p->comm[n] = '\0';
}

static const char *intern(struct sonde_procs *procs, const char *s)
{
	uint32_t h = sonde_hash_str(s), i;
	struct name_ent *e;
	size_t len;

	if (procs->nnames >= procs->nnames_buckets) {
		uint32_t n = procs->nnames_buckets ? procs->nnames_buckets * 2 : 256;
		struct name_ent **b = calloc(n, sizeof(*b));

		if (b) {
			for (i = 0; i < procs->nnames_buckets; i++) {
				while ((e = procs->names[i])) {
					procs->names[i] = e->next;
					e->next = b[e->hash & (n - 1)];
					b[e->hash & (n - 1)] = e;
				}
			}
			free(procs->names);
			procs->names = b;
			procs->nnames_buckets = n;
		} else if (!procs->nnames_buckets) {
			return NULL;
		}
	}
	for (e = procs->names[h & (procs->nnames_buckets - 1)]; e; e = e->next)
		if (e->hash == h && !strcmp(e->str, s))
			return e->str;
	len = strlen(s);
	e = malloc(sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	e->hash = h;
	memcpy(e->str, s, len + 1);
	e->next = procs->names[h & (procs->nnames_buckets - 1)];
	procs->names[h & (procs->nnames_buckets - 1)] = e;
	procs->nnames++;
	return e->str;
}

/* ---- container ids ---- */

static bool is_hex64(const char *s)
{
	int i;

	for (i = 0; i < SONDE_CONTAINER_ID_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/*
 * A cgroup path component that names a container: the bare id (cgroupfs
 * drivers: /docker/<id>, /kubepods/burstable/pod<uid>/<id>) or
 * <runtime>-<id>[.scope] (systemd drivers). The runtime prefix must match
 * exactly, which leaves out crio-conmon-<id> and libpod-conmon-<id>: those
 * are the monitors, not the containers.
 */
static const char *component_container_id(const char *c, size_t len)
{
	static const char *const runtimes[] = {
		"docker", "cri-containerd", "crio", "libpod", "containerd", "cri-dockerd",
	};
	size_t stem = len, i, plen;

	if (len == SONDE_CONTAINER_ID_LEN)
		return is_hex64(c) ? c : NULL;
	if (len > 6 && !memcmp(c + len - 6, ".scope", 6))
		stem = len - 6;
	if (stem < SONDE_CONTAINER_ID_LEN + 2 || c[stem - SONDE_CONTAINER_ID_LEN - 1] != '-')
		return NULL;
	if (!is_hex64(c + stem - SONDE_CONTAINER_ID_LEN))
		return NULL;
	plen = stem - SONDE_CONTAINER_ID_LEN - 1;
	for (i = 0; i < sizeof(runtimes) / sizeof(runtimes[0]); i++)
		if (strlen(runtimes[i]) == plen && !memcmp(c, runtimes[i], plen))
			return c + stem - SONDE_CONTAINER_ID_LEN;
	return NULL;
}

bool sonde_cgroup_container_id(const char *cgroup_path, char out[SONDE_CONTAINER_ID_LEN + 1])
{
	const char *c = cgroup_path, *id, *found = NULL;
	size_t len;

	out[0] = '\0';
	if (!cgroup_path)
		return false;
	while (*c) {
		while (*c == '/')
			c++;
		len = strcspn(c, "/");
		if (!len)
			break;
		id = component_container_id(c, len);
		if (id)
			found = id; /* the innermost container wins (nested runtimes) */
		c += len;
	}
	if (!found)
		return false;
	memcpy(out, found, SONDE_CONTAINER_ID_LEN);
	out[SONDE_CONTAINER_ID_LEN] = '\0';
	return true;
}

/* ---- the process table ---- */

static struct sonde_proc *proc_find(const struct sonde_procs *procs, uint32_t pid)
{
	struct sonde_proc *p;

	for (p = procs->buckets[sonde_hash_mix(0, pid) & (procs->nbuckets - 1)]; p; p = p->hnext)
		if (p->pid == pid)
			return p;
	return NULL;
}

static void proc_grow(struct sonde_procs *procs)
{
	uint32_t n = procs->nbuckets * 2, i;
	struct sonde_proc **b = calloc(n, sizeof(*b)), *p;

	if (!b)
		return; /* longer chains, still correct */
	for (i = 0; i < procs->nbuckets; i++) {
		while ((p = procs->buckets[i])) {
			procs->buckets[i] = p->hnext;
			p->hnext = b[sonde_hash_mix(0, p->pid) & (n - 1)];
			b[sonde_hash_mix(0, p->pid) & (n - 1)] = p;
		}
	}
	free(procs->buckets);
	procs->buckets = b;
	procs->nbuckets = n;
}

static struct sonde_proc *proc_new(struct sonde_procs *procs, uint32_t pid)
{
	struct sonde_proc *p = calloc(1, sizeof(*p));
	uint32_t b;

	if (!p)
		return NULL;
	p->pid = pid;
	if (procs->count >= procs->nbuckets)
		proc_grow(procs);
	b = sonde_hash_mix(0, pid) & (procs->nbuckets - 1);
	p->hnext = procs->buckets[b];
	procs->buckets[b] = p;
	procs->count++;
	return p;
}

static void proc_destroy(struct sonde_proc *p)
{
	free(p->exe);
	free(p->cmdline);
	free(p->cgroup);
	free(p->maps);
	free(p);
}

static void proc_unlink(struct sonde_procs *procs, struct sonde_proc *p)
{
	struct sonde_proc **pp = &procs->buckets[sonde_hash_mix(0, p->pid) & (procs->nbuckets - 1)];

	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == p) {
			*pp = p->hnext;
			procs->count--;
			return;
		}
	}
}

static void maps_recompute_len(struct sonde_proc *p)
{
	uint32_t i;

	p->max_map_len = 0;
	for (i = 0; i < p->nmaps; i++)
		if (p->maps[i].end - p->maps[i].start > p->max_map_len)
			p->max_map_len = p->maps[i].end - p->maps[i].start;
}

/*
 * A new incarnation of a reused pid: metadata goes, and so do mappings,
 * except those that appeared at or after keep_since (they belong to the
 * new process and arrived before the event that revealed the reuse).
 */
static void proc_reset(struct sonde_proc *p, uint64_t keep_since)
{
	uint32_t i, n = 0;

	set_str(&p->exe, NULL);
	set_str(&p->cmdline, NULL);
	set_str(&p->cgroup, NULL);
	p->comm[0] = '\0';
	p->container_id[0] = '\0';
	p->ppid = 0;
	p->exit_ns = 0;
	p->start_ns = 0;
	p->exec_ns = 0;
	p->last_rescan_ns = 0;
	for (i = 0; i < p->nmaps; i++)
		if (p->maps[i].since_ns >= keep_since)
			p->maps[n++] = p->maps[i];
	p->nmaps = n;
	maps_recompute_len(p);
}

/* ---- mappings ---- */

static struct sonde_mapping *map_insert(struct sonde_proc *p, const struct sonde_mapping *m)
{
	uint32_t lo = 0, hi = p->nmaps, mid;

	if (p->nmaps == p->maps_cap) {
		uint32_t cap = p->maps_cap ? p->maps_cap * 2 : 16;
		struct sonde_mapping *maps = realloc(p->maps, cap * sizeof(*maps));

		if (!maps)
			return NULL;
		p->maps = maps;
		p->maps_cap = cap;
	}
	/* Upper bound of (start, since): equal starts stay in arrival order. */
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (p->maps[mid].start < m->start ||
		    (p->maps[mid].start == m->start && p->maps[mid].since_ns <= m->since_ns))
			lo = mid + 1;
		else
			hi = mid;
	}
	memmove(&p->maps[lo + 1], &p->maps[lo], (p->nmaps - lo) * sizeof(*m));
	p->maps[lo] = *m;
	p->nmaps++;
	if (m->end - m->start > p->max_map_len)
		p->max_map_len = m->end - m->start;
	return &p->maps[lo];
}

static const struct sonde_mapping *map_lookup(const struct sonde_proc *p, uint64_t addr, uint64_t t)
{
	const struct sonde_mapping *m, *best = NULL;
	uint32_t lo = 0, hi = p->nmaps, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (p->maps[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	while (lo-- > 0) {
		m = &p->maps[lo];
		if (addr - m->start >= p->max_map_len)
			break; /* nothing further back reaches addr */
		if (addr < m->end && m->since_ns <= t && t < m->until_ns &&
		    (!best || m->since_ns > best->since_ns))
			best = m;
	}
	return best;
}

static bool ranges_overlap(const struct sonde_mapping *m, uint64_t start, uint64_t end)
{
	return m->start < end && start < m->end;
}

static struct sonde_object *object_for(struct sonde_procs *procs, uint32_t pid, bool alive,
				       const char *name, uint64_t dev, uint64_t ino, uint64_t start,
				       uint64_t end)
{
	char open_path[PATH_MAX + 64];
	size_t len = strlen(name), slen = strlen(DELETED_SUFFIX);
	struct stat st;

	if (!procs->sym)
		return NULL;
	if (!strcmp(name, "[vdso]"))
		return sonde_symbolizer__vdso(procs->sym);
	if (len > slen && !strcmp(name + len - slen, DELETED_SUFFIX)) {
		/* The path names nothing now (or something else); the mapping
		 * itself can still be opened while the process lives. */
		snprintf(open_path, sizeof(open_path), "%s/%u/map_files/%" PRIx64 "-%" PRIx64,
			 procs->proc_root, pid, start, end);
	} else {
		/* Through the process's root, so files inside containers open. A
		 * process gone by now has no root to go through: fall back to the
		 * path as the host sees it (the symbolizer checks dev/ino). */
		snprintf(open_path, sizeof(open_path), "%s/%u/root%s", procs->proc_root, pid, name);
		if (!alive || stat(open_path, &st))
			snprintf(open_path, sizeof(open_path), "%s", name);
	}
	return sonde_symbolizer__object(procs->sym, open_path, name, dev, ino);
}

/* Files and the vdso are worth naming; anonymous code (JITs) is for plugins. */
static bool wanted_name(const char *name)
{
	return name[0] == '/' ? strcmp(name, "//anon") != 0 : !strcmp(name, "[vdso]");
}

static void mapping_fill(struct sonde_procs *procs, struct sonde_proc *p, struct sonde_mapping *m,
			 const char *name, bool alive)
{
	char clean[PATH_MAX];
	size_t len = strlen(name), slen = strlen(DELETED_SUFFIX);

	m->obj = object_for(procs, p->pid, alive, name, m->dev, m->ino, m->start, m->end);
	/* The name is the path, without the kernel's " (deleted)" remark. */
	if (len > slen && len < sizeof(clean) && !strcmp(name + len - slen, DELETED_SUFFIX)) {
		memcpy(clean, name, len - slen);
		clean[len - slen] = '\0';
		m->name = intern(procs, clean);
	} else {
		m->name = intern(procs, name);
	}
}

/* ---- /proc readers ---- */

static ssize_t read_small(const char *path, char *buf, size_t size)
{
	ssize_t n, total = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	while ((size_t)total < size - 1) {
		n = read(fd, buf + total, size - 1 - total);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			total = -errno;
			break;
		}
		if (n == 0)
			break;
		total += n;
	}
	close(fd);
	if (total >= 0)
		buf[total] = '\0';
	return total;
}

static void read_comm(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], buf[64];
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%u/comm", procs->proc_root, p->pid);
	n = read_small(path, buf, sizeof(buf));
	if (n <= 0)
		return;
	buf[strcspn(buf, "\n")] = '\0';
	set_comm(p, buf);
}

static void read_exe(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], buf[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%u/exe", procs->proc_root, p->pid);
	n = readlink(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return; /* kernel threads have none */
	buf[n] = '\0';
	set_str(&p->exe, buf);
}

/* argv, NUL-separated and len bytes long, as one line. */
static void set_cmdline(struct sonde_proc *p, const char *args, size_t len)
{
	char *s;
	size_t i;

	while (len && args[len - 1] == '\0')
		len--;
	free(p->cmdline);
	p->cmdline = NULL;
	if (!len)
		return;
	s = malloc(len + 1);
	if (!s)
		return;
	for (i = 0; i < len; i++)
		s[i] = args[i] ? args[i] : ' ';
	s[len] = '\0';
	p->cmdline = s;
}

static void read_cmdline(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], *buf;
	ssize_t n;

	buf = malloc(CMDLINE_MAX + 1);
	if (!buf)
		return;
	snprintf(path, sizeof(path), "%s/%u/cmdline", procs->proc_root, p->pid);
	n = read_small(path, buf, CMDLINE_MAX + 1);
	if (n > 0)
		set_cmdline(p, buf, (size_t)n);
	free(buf);
}

static int read_stat(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], buf[1024], state;
	unsigned int ppid;
	ssize_t n;
	char *paren;

	snprintf(path, sizeof(path), "%s/%u/stat", procs->proc_root, p->pid);
	n = read_small(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	/* comm may hold spaces and parentheses: the last ')' ends it. */
	paren = strrchr(buf, ')');
	if (paren && sscanf(paren + 1, " %c %u", &state, &ppid) == 2)
		p->ppid = ppid;
	return 0;
}

static void set_cgroup(struct sonde_proc *p, const char *path)
{
	set_str(&p->cgroup, path);
	sonde_cgroup_container_id(path, p->container_id);
}

/* The v2 line ("0::/path") when there is one, else the first v1 path. */
static void read_cgroup(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], *line = NULL, *first = NULL, *c;
	size_t cap = 0;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%u/cgroup", procs->proc_root, p->pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while ((n = getline(&line, &cap, f)) > 0) {
		if (line[n - 1] == '\n')
			line[n - 1] = '\0';
		c = strchr(line, ':');
		if (!c || !(c = strchr(c + 1, ':')))
			continue;
		if (!strncmp(line, "0::", 3)) {
			free(first);
			first = strdup(c + 1);
			break;
		}
		if (!first)
			first = strdup(c + 1);
	}
	free(line);
	fclose(f);
	if (first)
		set_cgroup(p, first);
	free(first);
}

/* 0 and *out filled, or -EINVAL for a line that is not a maps line. */
static int parse_maps_line(char *line, struct maps_line *out)
{
	int pos = 0;
	size_t len;

	if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64 "%n", &out->start,
		   &out->end, out->perms, &out->pgoff, &out->maj, &out->min, &out->ino,
		   &pos) != 7 ||
	    pos == 0 || out->end <= out->start)
		return -EINVAL;
	out->path = line + pos;
	while (*out->path == ' ' || *out->path == '\t')
		out->path++;
	len = strlen(out->path);
	while (len && (out->path[len - 1] == '\n' || out->path[len - 1] == '\r'))
		out->path[--len] = '\0';
	return 0;
}

static bool same_mapping(const struct sonde_mapping *m, const struct maps_line *l)
{
	return m->start == l->start && m->end == l->end && m->pgoff == l->pgoff &&
	       m->dev == makedev(l->maj, l->min) && m->ino == l->ino;
}

/*
 * Adds the executable mappings of /proc/PID/maps that are not current yet.
 *
 * What "since" to give a mapping found late: the scan runs because a sample
 * (or a new pid) needs it, and that sample is older than the scan, so
 * "since = now" would make it miss. We take the earliest time consistent
 * with what we know instead: the last exec of the process, or the end of
 * any earlier mapping of that range, whichever is later (0 when nothing is
 * known, as for the start-up scan). A late sample then meets the mapping,
 * and a sample from before the exec or from the earlier mapping's time
 * still meets what it ran in. A current mapping that overlaps but differs
 * was replaced at some point we did not see: it ends now, and the found
 * one wins from just after the old one appeared.
 */
static int read_maps(struct sonde_procs *procs, struct sonde_proc *p)
{
	char path[PATH_MAX], *line = NULL;
	struct maps_line l;
	size_t cap = 0;
	uint64_t now = sonde_now_ns(), since;
	uint32_t i, nold;
	bool known;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%u/maps", procs->proc_root, p->pid);
	f = fopen(path, "re");
	procs->stats.scans++;
	p->last_rescan_ns = now;
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		struct sonde_mapping m = {0};

		if (parse_maps_line(line, &l) || l.perms[2] != 'x' || !wanted_name(l.path))
			continue;
		since = p->exec_ns;
		known = false;
		nold = p->nmaps;
		for (i = 0; i < nold; i++) {
			struct sonde_mapping *o = &p->maps[i];

			if (!ranges_overlap(o, l.start, l.end))
				continue;
			if (o->until_ns != MAP_CURRENT) {
				if (o->until_ns > since)
					since = o->until_ns;
			} else if (same_mapping(o, &l)) {
				known = true;
				break;
			} else {
				if (o->since_ns + 1 > since)
					since = o->since_ns + 1;
				o->until_ns = now > o->since_ns ? now : o->since_ns + 1;
			}
		}
		if (known)
			continue;
		m.start = l.start;
		m.end = l.end;
		m.pgoff = l.pgoff;
		m.dev = makedev(l.maj, l.min);
		m.ino = l.ino;
		m.since_ns = since;
		m.until_ns = MAP_CURRENT;
		mapping_fill(procs, p, &m, l.path, true);
		map_insert(p, &m);
	}
	free(line);
	fclose(f);
	return 0;
}

/* Metadata and mappings of /proc/PID into p. -ENOENT when there is no such process. */
static int read_proc(struct sonde_procs *procs, struct sonde_proc *p)
{
	int err = read_stat(procs, p);

	if (err)
		return err;
	read_comm(procs, p);
	read_exe(procs, p);
	read_cmdline(procs, p);
	read_cgroup(procs, p);
	read_maps(procs, p);
	return 0;
}

/* A pid not known yet, from /proc. NULL when it is not there either. */
static struct sonde_proc *load_proc(struct sonde_procs *procs, uint32_t pid)
{
	struct sonde_proc *p = proc_new(procs, pid);

	if (!p)
		return NULL;
	if (read_proc(procs, p)) {
		proc_unlink(procs, p);
		proc_destroy(p);
		return NULL;
	}
	return p;
}

/*
 * The entry side-band records go to: known, or from /proc, or a bare one
 * (the process is gone already, but its records still tell its story).
 */
static struct sonde_proc *proc_for_record(struct sonde_procs *procs, uint32_t pid)
{
	struct sonde_proc *p = proc_find(procs, pid);

	if (!p)
		p = load_proc(procs, pid);
	if (!p)
		p = proc_new(procs, pid);
	return p;
}

/* ---- cgroup ids ---- */

static void cgroup_clear(struct sonde_procs *procs)
{
	struct cgroup_ent *e;
	uint32_t i;

	for (i = 0; i < CGROUP_BUCKETS; i++) {
		while ((e = procs->cgroups[i])) {
			procs->cgroups[i] = e->next;
			free(e);
		}
	}
}

static void cgroup_add(struct sonde_procs *procs, uint64_t id, const char *path)
{
	size_t len = strlen(path);
	struct cgroup_ent *e = malloc(sizeof(*e) + len + 1);
	uint32_t b = sonde_hash_mix(0, id) & (CGROUP_BUCKETS - 1);

	if (!e)
		return;
	e->id = id;
	memcpy(e->path, path, len + 1);
	e->next = procs->cgroups[b];
	procs->cgroups[b] = e;
}

/* rel: the path under cgroup_root, "" for the root itself. */
static void cgroup_walk(struct sonde_procs *procs, struct sonde_strbuf *rel, int depth)
{
	struct sonde_strbuf full = SONDE_STRBUF_INIT;
	struct dirent *d;
	struct stat st;
	size_t len;
	DIR *dir;

	sonde_strbuf__printf(&full, "%s%s", procs->cgroup_root, rel->len ? rel->data : "");
	if (sonde_strbuf__error(&full))
		goto cleanup;
	dir = opendir(full.data);
	if (!dir)
		goto cleanup;
	while ((d = readdir(dir))) {
		if (d->d_type != DT_DIR && d->d_type != DT_UNKNOWN)
			continue;
		if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, ".."))
			continue;
		if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    !S_ISDIR(st.st_mode))
			continue;
		len = rel->len;
		sonde_strbuf__printf(rel, "/%s", d->d_name);
		if (sonde_strbuf__error(rel))
			break;
		cgroup_add(procs, st.st_ino, rel->data);
		if (depth < CGROUP_MAX_DEPTH)
			cgroup_walk(procs, rel, depth + 1);
		rel->len = len;
		if (rel->data)
			rel->data[len] = '\0';
	}
	closedir(dir);
cleanup:
	sonde_strbuf__release(&full);
}

static void cgroup_rewalk(struct sonde_procs *procs)
{
	struct sonde_strbuf rel = SONDE_STRBUF_INIT;
	struct stat st;

	cgroup_clear(procs);
	if (!stat(procs->cgroup_root, &st))
		cgroup_add(procs, st.st_ino, "/");
	cgroup_walk(procs, &rel, 0);
	sonde_strbuf__release(&rel);
}

static const char *cgroup_lookup(const struct sonde_procs *procs, uint64_t id)
{
	struct cgroup_ent *e;

	for (e = procs->cgroups[sonde_hash_mix(0, id) & (CGROUP_BUCKETS - 1)]; e; e = e->next)
		if (e->id == id)
			return e->path;
	return NULL;
}

/* New cgroups appear all the time (every container start), so a miss
 * rewalks the tree, but no more than once a second. */
static const char *cgroup_path(struct sonde_procs *procs, uint64_t id)
{
	const char *path;
	uint64_t now;

	if (!id)
		return NULL;
	path = cgroup_lookup(procs, id);
	if (path)
		return path;
	now = sonde_now_ns();
	if (procs->cgroup_walked && now - procs->cgroup_walk_ns < CGROUP_REWALK_NS)
		return NULL;
	procs->cgroup_walked = true;
	procs->cgroup_walk_ns = now;
	cgroup_rewalk(procs);
	return cgroup_lookup(procs, id);
}

/* ---- public API ---- */

struct sonde_procs *sonde_procs__new(struct sonde_symbolizer *sym,
				     const struct sonde_procs_opts *opts)
{
	struct sonde_procs *procs = calloc(1, sizeof(*procs));
	const char *proc_root = opts && opts->proc_root ? opts->proc_root : "/proc";
	const char *cgroup_root = opts && opts->cgroup_root ? opts->cgroup_root : "/sys/fs/cgroup";

	if (!procs)
		return NULL;
	procs->sym = sym;
	procs->grace_ns = opts && opts->grace_ns ? opts->grace_ns : DEFAULT_GRACE_NS;
	procs->rescan_ns = opts && opts->rescan_ns ? opts->rescan_ns : DEFAULT_RESCAN_NS;
	procs->proc_root = strdup(proc_root);
	procs->cgroup_root = strdup(cgroup_root);
	procs->nbuckets = 1024;
	procs->buckets = calloc(procs->nbuckets, sizeof(*procs->buckets));
	procs->cgroups = calloc(CGROUP_BUCKETS, sizeof(*procs->cgroups));
	if (!procs->proc_root || !procs->cgroup_root || !procs->buckets || !procs->cgroups)
		goto err;
	return procs;
err:
	sonde_procs__free(procs);
	errno = ENOMEM;
	return NULL;
}

void sonde_procs__free(struct sonde_procs *procs)
{
	struct sonde_proc *p;
	struct name_ent *e;
	uint32_t i;

	if (!procs)
		return;
	for (i = 0; procs->buckets && i < procs->nbuckets; i++) {
		while ((p = procs->buckets[i])) {
			procs->buckets[i] = p->hnext;
			proc_destroy(p);
		}
	}
	for (i = 0; i < procs->nnames_buckets; i++) {
		while ((e = procs->names[i])) {
			procs->names[i] = e->next;
			free(e);
		}
	}
	if (procs->cgroups)
		cgroup_clear(procs);
	free(procs->cgroups);
	free(procs->names);
	free(procs->buckets);
	free(procs->proc_root);
	free(procs->cgroup_root);
	free(procs);
}

int sonde_procs__scan(struct sonde_procs *procs)
{
	struct dirent *d;
	unsigned long pid;
	char *end;
	DIR *dir;

	dir = opendir(procs->proc_root);
	if (!dir)
		return -errno;
	while ((d = readdir(dir))) {
		if (!isdigit((unsigned char)d->d_name[0]))
			continue;
		pid = strtoul(d->d_name, &end, 10);
		if (*end || pid == 0 || pid > UINT32_MAX)
			continue;
		if (!proc_find(procs, (uint32_t)pid))
			load_proc(procs, (uint32_t)pid); /* gone meanwhile: fine */
	}
	closedir(dir);
	return 0;
}

void sonde_procs__on_exec(struct sonde_procs *procs, const struct sonde_exec_event *e)
{
	struct sonde_proc *p = proc_find(procs, e->hdr.pid);
	char filename[SONDE_PATH_LEN];
	size_t args_len = e->args_len < SONDE_ARGS_LEN ? e->args_len : SONDE_ARGS_LEN;

	if (!p)
		p = proc_new(procs, e->hdr.pid);
	else if (p->exit_ns)
		proc_reset(p, p->exit_ns);
	if (!p)
		return;
	set_comm(p, e->comm);
	memcpy(filename, e->filename, sizeof(filename));
	filename[sizeof(filename) - 1] = '\0';
	set_str(&p->exe, filename[0] ? filename : NULL);
	set_cmdline(p, e->args, args_len);
	if (e->ppid)
		p->ppid = e->ppid;
	if (e->cgroup_id) {
		const char *cg = cgroup_path(procs, e->cgroup_id);

		if (cg)
			set_cgroup(p, cg);
	}
	/* Mappings are the side-band's business (on_exec_mm): this event
	 * fires after the new image is mapped, so ending mappings here would
	 * end the new ones. */
}

void sonde_procs__on_fork(struct sonde_procs *procs, const struct sonde_fork_event *e)
{
	struct sonde_proc *child = proc_find(procs, e->hdr.pid), *parent;

	if (!child)
		child = proc_new(procs, e->hdr.pid);
	else if (child->exit_ns)
		proc_reset(child, child->exit_ns);
	if (!child)
		return;
	child->ppid = e->ppid;
	set_comm(child, e->comm);
	if (!child->start_ns)
		child->start_ns = e->hdr.time_ns;
	parent = proc_find(procs, e->ppid);
	if (parent) {
		if (!child->exe && parent->exe)
			set_str(&child->exe, parent->exe);
		if (!child->cmdline && parent->cmdline)
			set_str(&child->cmdline, parent->cmdline);
		if (!child->cgroup && parent->cgroup)
			set_cgroup(child, parent->cgroup);
	}
	if (!child->cgroup && e->cgroup_id) {
		const char *cg = cgroup_path(procs, e->cgroup_id);

		if (cg)
			set_cgroup(child, cg);
	}
}

void sonde_procs__on_exit(struct sonde_procs *procs, const struct sonde_exit_event *e)
{
	struct sonde_proc *p = proc_find(procs, e->hdr.pid);

	if (!p)
		return;
	/* The exit of an earlier process with this pid, whose successor's
	 * fork the side-band reported first. */
	if (p->start_ns && e->hdr.time_ns < p->start_ns)
		return;
	p->exit_ns = e->hdr.time_ns ? e->hdr.time_ns : 1;
}

void sonde_procs__on_mmap(struct sonde_procs *procs, uint32_t pid, uint64_t time_ns, uint64_t start,
			  uint64_t len, uint64_t pgoff, uint32_t maj, uint32_t min, uint64_t ino,
			  const char *filename)
{
	struct sonde_mapping m = {0};
	struct sonde_proc *p;
	uint64_t end = start + len;
	uint32_t i;

	if (!len || end < start || !filename || !wanted_name(filename))
		return;
	p = proc_for_record(procs, pid);
	if (!p)
		return;
	if (p->exit_ns && time_ns > p->exit_ns)
		proc_reset(p, p->exit_ns);
	m.start = start;
	m.end = end;
	m.pgoff = pgoff;
	m.since_ns = time_ns;
	m.until_ns = MAP_CURRENT;
	if (strcmp(filename, "[vdso]")) {
		m.dev = makedev(maj, min);
		m.ino = ino;
	}
	for (i = 0; i < p->nmaps; i++) {
		struct sonde_mapping *o = &p->maps[i];

		if (o->until_ns != MAP_CURRENT || !ranges_overlap(o, start, end))
			continue;
		if (o->since_ns <= time_ns)
			o->until_ns = time_ns;
		else if (o->since_ns < m.until_ns)
			m.until_ns = o->since_ns; /* a newer one, seen first */
	}
	mapping_fill(procs, p, &m, filename, !p->exit_ns);
	map_insert(p, &m);
}

void sonde_procs__on_exec_mm(struct sonde_procs *procs, uint32_t pid, uint64_t time_ns)
{
	struct sonde_proc *p = proc_for_record(procs, pid);
	uint32_t i;

	if (!p)
		return;
	if (p->exit_ns && time_ns > p->exit_ns)
		proc_reset(p, p->exit_ns);
	for (i = 0; i < p->nmaps; i++)
		if (p->maps[i].until_ns == MAP_CURRENT && p->maps[i].since_ns <= time_ns)
			p->maps[i].until_ns = time_ns;
	if (time_ns > p->exec_ns)
		p->exec_ns = time_ns;
}

void sonde_procs__on_fork_mm(struct sonde_procs *procs, uint32_t parent, uint32_t child,
			     uint64_t time_ns)
{
	struct sonde_proc *par = proc_for_record(procs, parent), *c;
	struct sonde_mapping m;
	uint32_t i, n;

	if (!par)
		return;
	c = proc_find(procs, child);
	if (c && c->exit_ns) {
		proc_reset(c, time_ns);
	} else if (c) {
		/* Known and alive: a ringbuf fork event came first, or the
		 * entry is an earlier process whose exit we have not read yet.
		 * Either way nothing mapped before the fork belongs to it. */
		for (i = 0; i < c->nmaps; i++)
			if (c->maps[i].until_ns == MAP_CURRENT && c->maps[i].since_ns < time_ns)
				c->maps[i].until_ns = time_ns;
	} else {
		c = proc_new(procs, child);
		if (!c)
			return;
	}
	c->ppid = parent;
	c->start_ns = time_ns;
	if (!c->comm[0])
		set_comm(c, par->comm);
	if (!c->exe && par->exe)
		set_str(&c->exe, par->exe);
	if (!c->cmdline && par->cmdline)
		set_str(&c->cmdline, par->cmdline);
	if (!c->cgroup && par->cgroup)
		set_cgroup(c, par->cgroup);
	/* par->maps may move while we insert into c: index, do not hold. */
	n = par->nmaps;
	for (i = 0; i < n; i++) {
		if (par->maps[i].since_ns > time_ns || par->maps[i].until_ns <= time_ns)
			continue;
		m = par->maps[i];
		m.since_ns = time_ns; /* the child did not exist before */
		m.until_ns = MAP_CURRENT;
		map_insert(c, &m);
	}
}

struct sonde_proc *sonde_procs__get(struct sonde_procs *procs, uint32_t pid)
{
	struct sonde_proc *p = proc_find(procs, pid);

	if (p)
		return p;
	p = load_proc(procs, pid);
	if (!p)
		procs->stats.unknown_pids++;
	return p;
}

const struct sonde_mapping *sonde_procs__find_mapping(struct sonde_procs *procs,
						      struct sonde_proc *proc, uint64_t addr,
						      uint64_t time_ns)
{
	const struct sonde_mapping *m = map_lookup(proc, addr, time_ns);
	uint64_t now;

	if (m)
		return m;
	if (!proc->exit_ns) {
		now = sonde_now_ns();
		if (!proc->last_rescan_ns || now - proc->last_rescan_ns >= procs->rescan_ns) {
			read_maps(procs, proc);
			m = map_lookup(proc, addr, time_ns);
		}
	}
	if (!m)
		procs->stats.unmapped_addrs++;
	return m;
}

void sonde_procs__reap(struct sonde_procs *procs, uint64_t now_ns_)
{
	uint64_t horizon = now_ns_ > procs->grace_ns ? now_ns_ - procs->grace_ns : 0;
	struct sonde_proc **pp, *p;
	uint32_t b, i, n;

	for (b = 0; b < procs->nbuckets; b++) {
		pp = &procs->buckets[b];
		while ((p = *pp)) {
			if (p->exit_ns && p->exit_ns < horizon) {
				*pp = p->hnext;
				procs->count--;
				proc_destroy(p);
				continue;
			}
			for (i = 0, n = 0; i < p->nmaps; i++)
				if (p->maps[i].until_ns == MAP_CURRENT ||
				    p->maps[i].until_ns >= horizon)
					p->maps[n++] = p->maps[i];
			if (n != p->nmaps) {
				p->nmaps = n;
				maps_recompute_len(p);
			}
			pp = &p->hnext;
		}
	}
}

void sonde_procs__stats(const struct sonde_procs *procs, struct sonde_procs_stats *out)
{
	*out = procs->stats;
	out->processes = procs->count;
}

void sonde_procs__for_each(struct sonde_procs *procs,
			   void (*fn)(void *ctx, struct sonde_proc *proc), void *ctx)
{
	struct sonde_proc *p, *next;
	uint32_t b;

	for (b = 0; b < procs->nbuckets; b++) {
		for (p = procs->buckets[b]; p; p = next) {
			next = p->hnext;
			fn(ctx, p);
		}
	}
}
