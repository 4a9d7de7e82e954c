// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-native: whole user stacks for code built without frame
 * pointers, walked in BPF with tables built here from each ELF's .eh_frame.
 *
 * Tables are shared by every process that maps the same file (keyed by
 * build-id) and live in slices of one mmap'd BPF array; a table no process
 * uses stays cached until its space is needed. A process gets the list of
 * its executable mappings, each pointing at its table's slice; when the
 * walker meets a pc in no listed mapping (ld.so had not mapped the
 * libraries yet when the process was attached, or a dlopen), it asks for a
 * rescan, which a timer here serves.
 *
 * Tables are built on the loop thread, at attach and rescan time: libc's
 * 28k rows take 5-15 ms, small enough for now; a worker thread and an
 * on-disk cache are for when libjvm-sized files come.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <libelf.h>
#include <sonde/plugin.h>

#include "native.h"
#include "native.skel.h"
#include "tables.h"

#define RESCAN_INTERVAL_MS 100
#define RESCAN_MIN_GAP_NS  (200ull * 1000000) /* per process */
#define KEY_LEN		   96

struct settings {
	int64_t max_rows;
	int64_t max_processes;
};

/* One ELF file's table, by key. rows == 0 with err set: the build failed
 * (remembered so that it is not retried for every process). */
struct table {
	struct table *next;
	char key[KEY_LEN];
	char name[64]; /* the file's base name, for logs */
	uint32_t first, rows;
	int refs;
	int err;
	struct sonde_unw_table_stats stats;
};

struct proc {
	struct proc *next;
	uint32_t pid;
	uint64_t maps_hash; /* of the executable mappings, to skip useless rescans */
	uint64_t scanned_ns;
	struct table **tables; /* references held */
	size_t ntables;
};

struct extent {
	uint32_t start, len;
};

struct unw {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	struct native_bpf *skel;
	struct sonde_unw_row *rows; /* unw_rows, mmap'd */
	size_t rows_len;
	uint32_t max_rows, used_rows;
	struct extent *free; /* free slices of unw_rows, sorted, merged */
	size_t nfree;
	struct table *tables;
	struct proc *procs;
	void *timer;
	uint64_t build_ns, builds, build_failures, rescans;
};

#define LOG(u, lvl, ...) (u)->api->log((u)->host, SONDE_PLUGIN_LOG_##lvl, __VA_ARGS__)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Slices of unw_rows: first fit over a sorted list of free extents. */
static int extent_alloc(struct unw *u, uint32_t n, uint32_t *start)
{
	size_t i;

	for (i = 0; i < u->nfree; i++) {
		if (u->free[i].len < n)
			continue;
		*start = u->free[i].start;
		u->free[i].start += n;
		u->free[i].len -= n;
		if (!u->free[i].len) {
			memmove(&u->free[i], &u->free[i + 1],
				(u->nfree - i - 1) * sizeof(u->free[0]));
			u->nfree--;
		}
		u->used_rows += n;
		return 0;
	}
	return -ENOSPC;
}

static int extent_release(struct unw *u, uint32_t start, uint32_t n)
{
	struct extent *e;
	size_t i;

	for (i = 0; i < u->nfree && u->free[i].start < start; i++)
		;
	e = realloc(u->free, (u->nfree + 1) * sizeof(*e));
	if (!e)
		return -ENOMEM; /* the slice is lost until restart; nothing breaks */
	u->free = e;
	memmove(&e[i + 1], &e[i], (u->nfree - i) * sizeof(*e));
	e[i] = (struct extent){start, n};
	u->nfree++;
	u->used_rows -= n;
	if (i + 1 < u->nfree && e[i].start + e[i].len == e[i + 1].start) {
		e[i].len += e[i + 1].len;
		memmove(&e[i + 1], &e[i + 2], (u->nfree - i - 2) * sizeof(*e));
		u->nfree--;
	}
	if (i > 0 && e[i - 1].start + e[i - 1].len == e[i].start) {
		e[i - 1].len += e[i].len;
		memmove(&e[i], &e[i + 1], (u->nfree - i - 1) * sizeof(*e));
		u->nfree--;
	}
	return 0;
}

/* Frees the slices of tables no process uses; true if any was freed. */
static bool evict_unused(struct unw *u)
{
	struct table **pp = &u->tables, *t;
	bool freed = false;

	while ((t = *pp)) {
		if (t->refs || !t->rows) {
			pp = &t->next;
			continue;
		}
		extent_release(u, t->first, t->rows);
		*pp = t->next;
		free(t);
		freed = true;
	}
	return freed;
}

static void table_unref(struct table *t)
{
	if (t && t->refs > 0)
		t->refs--;
}

/* The table for the ELF file open at fd, built and loaded on first use.
 * NULL with errno when it cannot be had; the table holds a reference. */
static struct table *table_get(struct unw *u, Elf *elf, int fd, const char *path)
{
	const char *base = strrchr(path, '/');
	struct sonde_unw_table *built;
	char key[KEY_LEN];
	struct table *t;
	uint32_t start;
	int err;

	err = sonde_unw_elf_key(elf, fd, key, sizeof(key));
	if (err) {
		errno = -err;
		return NULL;
	}
	for (t = u->tables; t; t = t->next) {
		if (strcmp(t->key, key) == 0)
			goto found;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	snprintf(t->key, sizeof(t->key), "%s", key);
	snprintf(t->name, sizeof(t->name), "%s", base ? base + 1 : path);
	built = sonde_unw_table__build(elf);
	if (!built) {
		t->err = errno;
		u->build_failures++;
		LOG(u, DEBUG, "%s: no unwind table: %s", path, strerror(t->err));
	} else {
		t->stats = built->stats;
		u->build_ns += built->stats.build_ns;
		u->builds++;
		err = built->nrows > u->max_rows ? -ENOSPC
						 : extent_alloc(u, (uint32_t)built->nrows, &start);
		if (err == -ENOSPC && evict_unused(u))
			err = extent_alloc(u, (uint32_t)built->nrows, &start);
		if (err) {
			/* not remembered: space may free up for the next process */
			LOG(u, WARN,
			    "%s: its %zu rows do not fit the table space (%u of %u rows used)",
			    path, built->nrows, u->used_rows, u->max_rows);
			sonde_unw_table__free(built);
			free(t);
			errno = ENOSPC;
			return NULL;
		} else {
			memcpy(&u->rows[start], built->rows, built->nrows * sizeof(built->rows[0]));
			t->first = start;
			t->rows = (uint32_t)built->nrows;
			LOG(u, INFO,
			    "%s: %u rows (%zu unsupported, %zu plt) from %zu FDEs in %.1f ms",
			    t->name, t->rows, t->stats.unsupported, t->stats.plt, t->stats.fdes,
			    (double)t->stats.build_ns / 1e6);
		}
		sonde_unw_table__free(built);
	}
	t->next = u->tables;
	u->tables = t;
found:
	if (t->err && t->err != ENODATA) {
		errno = t->err;
		return NULL;
	}
	t->refs++;
	return t; /* ENODATA: a table of no rows, the walker tries rbp there */
}

static uint64_t fnv(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return h;
}

static int cmp_mapping(const void *a, const void *b)
{
	const struct sonde_unw_mapping *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

struct scan {
	struct sonde_unw_proc val;
	struct table *tables[SONDE_UNW_MAX_MAPPINGS];
	size_t ntables, with_rows;
	uint64_t hash;
};

/* One executable mapping: its file's table, or a mapping of no rows. */
static void add_mapping(struct unw *u, uint32_t pid, struct scan *sc, uint64_t start, uint64_t end,
			uint64_t offset, const char *path)
{
	struct sonde_unw_mapping *m = &sc->val.mappings[sc->val.nmappings++];
	struct table *t = NULL;
	uint64_t bias;
	char file[128];
	Elf *elf = NULL;
	int fd = -1;

	*m = (struct sonde_unw_mapping){.start = start, .end = end};
	if (path[0] != '/')
		return; /* [vdso], anonymous code: rbp only */
	/* map_files reaches the very file mapped, whatever mount namespace */
	snprintf(file, sizeof(file), "/proc/%u/map_files/%" PRIx64 "-%" PRIx64, pid, start, end);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	if (!elf || elf_kind(elf) != ELF_K_ELF || sonde_unw_elf_bias(elf, start, offset, &bias))
		goto cleanup;
	m->bias = bias;
	t = table_get(u, elf, fd, path);
	if (!t)
		goto cleanup;
	sc->tables[sc->ntables++] = t;
	m->first = t->first;
	m->rows = t->rows;
	sc->with_rows += t->rows > 0;
cleanup:
	elf_end(elf);
	close(fd);
}

/* Reads /proc/PID/maps into sc. 0, or -errno with a reason. */
static int scan_maps(struct unw *u, uint32_t pid, struct scan *sc, char *reason, size_t len)
{
	char path[64], line[4096], file[4096];
	size_t nexec = 0, i;
	FILE *f;

	memset(sc, 0, sizeof(*sc));
	sc->hash = 0xcbf29ce484222325ull;
	snprintf(path, sizeof(path), "/proc/%u/maps", pid);
	f = fopen(path, "re");
	if (!f) {
		snprintf(reason, len, "cannot read %s: %s", path, strerror(errno));
		return -errno;
	}
	while (fgets(line, sizeof(line), f)) {
		unsigned long long start, end, offset;
		char perms[8];

		file[0] = '\0';
		if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %4095[^\n]", &start, &end, perms,
			   &offset, file) < 4 ||
		    perms[2] != 'x')
			continue;
		sc->hash = fnv(sc->hash, line);
		if (++nexec > SONDE_UNW_MAX_MAPPINGS)
			continue;
		add_mapping(u, pid, sc, start, end, offset, file);
	}
	fclose(f);
	if (nexec > SONDE_UNW_MAX_MAPPINGS) {
		snprintf(reason, len,
			 "%zu executable mappings, more than the %d unwind-native handles", nexec,
			 SONDE_UNW_MAX_MAPPINGS);
		goto decline;
	}
	if (!sc->with_rows) {
		snprintf(reason, len, "no executable mapping has an unwind table (.eh_frame_hdr)%s",
			 u->used_rows + 1024 > u->max_rows ? " or the table space is full" : "");
		goto decline;
	}
	qsort(sc->val.mappings, sc->val.nmappings, sizeof(sc->val.mappings[0]), cmp_mapping);
	return 0;
decline:
	for (i = 0; i < sc->ntables; i++)
		table_unref(sc->tables[i]);
	sc->ntables = 0;
	return SONDE_DECLINE;
}

static struct proc *find_proc(struct unw *u, uint32_t pid, struct proc ***where)
{
	struct proc **pp;

	for (pp = &u->procs; *pp; pp = &(*pp)->next) {
		if ((*pp)->pid == pid)
			break;
	}
	if (where)
		*where = pp;
	return *pp;
}

/* Puts sc in the BPF map and in p, dropping p's old references. */
static int install(struct unw *u, struct proc *p, struct scan *sc)
{
	struct table **tables = malloc((sc->ntables ? sc->ntables : 1) * sizeof(*tables));
	size_t i;
	int err;

	if (!tables)
		return -ENOMEM;
	err = bpf_map__update_elem(u->skel->maps.unw_procs, &p->pid, sizeof(p->pid), &sc->val,
				   sizeof(sc->val), BPF_ANY);
	if (err) {
		free(tables);
		return err;
	}
	for (i = 0; i < p->ntables; i++)
		table_unref(p->tables[i]);
	free(p->tables);
	memcpy(tables, sc->tables, sc->ntables * sizeof(*tables));
	p->tables = tables;
	p->ntables = sc->ntables;
	p->maps_hash = sc->hash;
	p->scanned_ns = now_ns();
	return 0;
}

static int native_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
			 size_t reasonlen)
{
	struct unw *u = state;
	struct proc *p, **where;
	struct scan *sc;
	size_t i;
	int rc;

	sc = malloc(sizeof(*sc));
	if (!sc)
		return -ENOMEM;
	rc = scan_maps(u, proc->pid, sc, reason, reasonlen);
	if (rc)
		goto cleanup;
	p = find_proc(u, proc->pid, &where);
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p) {
			rc = -ENOMEM;
			goto cleanup;
		}
		p->pid = proc->pid;
		*where = p;
	}
	rc = install(u, p, sc);
	if (rc) {
		snprintf(reason, reasonlen, "cannot store its mappings: %s%s", strerror(-rc),
			 rc == -E2BIG ? " (max_processes reached)" : "");
		*where = p->next;
		free(p->tables);
		free(p);
		goto cleanup;
	}
	sc->ntables = 0; /* the references are p's now */
	LOG(u, DEBUG, "pid %u: %u executable mappings, %zu with tables", proc->pid,
	    sc->val.nmappings, sc->with_rows);
cleanup:
	for (i = 0; i < sc->ntables; i++)
		table_unref(sc->tables[i]);
	free(sc);
	return rc;
}

static void native_detach(void *state, uint32_t pid)
{
	struct unw *u = state;
	struct proc *p, **where;
	size_t i;

	p = find_proc(u, pid, &where);
	if (!p)
		return;
	bpf_map__delete_elem(u->skel->maps.unw_procs, &pid, sizeof(pid), 0);
	*where = p->next;
	for (i = 0; i < p->ntables; i++)
		table_unref(p->tables[i]);
	free(p->tables);
	free(p);
}

/* Serves the walker's rescan requests: a process whose executable mappings
 * changed gets them again. */
static void rescan_timer(void *ctx)
{
	struct unw *u = ctx;
	uint32_t pids[64], key, next;
	size_t n = 0, i, j;
	int fd = bpf_map__fd(u->skel->maps.unw_rescan);
	char reason[128];
	struct scan *sc;

	for (int err = bpf_map_get_next_key(fd, NULL, &next); !err && n < 64;
	     err = bpf_map_get_next_key(fd, &key, &next)) {
		pids[n++] = next;
		key = next;
	}
	if (!n)
		return;
	sc = malloc(sizeof(*sc));
	for (i = 0; i < n; i++) {
		struct proc *p = find_proc(u, pids[i], NULL);

		if (p && now_ns() - p->scanned_ns < RESCAN_MIN_GAP_NS)
			continue; /* asked again soon enough if still needed */
		bpf_map_delete_elem(fd, &pids[i]);
		if (!p || !sc || scan_maps(u, p->pid, sc, reason, sizeof(reason)))
			continue; /* gone, or nothing usable any more: keep the old list */
		u->rescans++;
		if (sc->hash == p->maps_hash || install(u, p, sc)) {
			for (j = 0; j < sc->ntables; j++)
				table_unref(sc->tables[j]);
			p->scanned_ns = now_ns();
		}
	}
	free(sc);
}

static const char *const stat_names[SONDE_UNW_STAT__COUNT] = {
	[SONDE_UNW_END_OUTERMOST] = "outermost",
	[SONDE_UNW_END_ZERO_RA] = "zero_return_address",
	[SONDE_UNW_END_KTHREAD] = "kernel_thread",
	[SONDE_UNW_STOP_NO_PROC] = "no_process_table",
	[SONDE_UNW_STOP_NO_MAPPING] = "no_mapping",
	[SONDE_UNW_STOP_NO_CFI] = "no_cfi",
	[SONDE_UNW_STOP_UNSUPPORTED] = "unsupported_rule",
	[SONDE_UNW_STOP_READ_FAILED] = "read_failed",
	[SONDE_UNW_STOP_NOT_ADVANCING] = "not_advancing",
	[SONDE_UNW_STOP_FRAME_LIMIT] = "frame_limit",
	[SONDE_UNW_FRAMES_CFI] = "cfi",
	[SONDE_UNW_FRAMES_FP] = "frame_pointer",
	[SONDE_UNW_RESCAN_REQUESTS] = "rescan_requests",
};

static int native_metrics(void *state, FILE *out)
{
	struct unw *u = state;
	int ncpu = libbpf_num_possible_cpus(), fd = bpf_map__fd(u->skel->maps.unw_stats);
	uint64_t sums[SONDE_UNW_STAT__COUNT] = {0}, *vals;
	size_t nunsupported = 0, ntables = 0;
	struct table *t;
	uint32_t i;
	int c;

	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return -ENOMEM;
	for (i = 0; i < SONDE_UNW_STAT__COUNT; i++) {
		if (bpf_map_lookup_elem(fd, &i, vals))
			continue;
		for (c = 0; c < ncpu; c++)
			sums[i] += vals[c];
	}
	free(vals);
	for (t = u->tables; t; t = t->next) {
		ntables += t->rows > 0;
		nunsupported += t->rows ? t->stats.unsupported : 0;
	}
	fprintf(out, "# HELP sonde_unwind_native_stops_total DWARF stack walks that ended before "
		     "the outermost frame, by reason.\n"
		     "# TYPE sonde_unwind_native_stops_total counter\n");
	for (i = SONDE_UNW_STOP_NO_PROC; i <= SONDE_UNW_STOP__LAST; i++)
		fprintf(out, "sonde_unwind_native_stops_total{reason=\"%s\"} %" PRIu64 "\n",
			stat_names[i], sums[i]);
	fprintf(out, "# HELP sonde_unwind_native_complete_total DWARF stack walks that reached the "
		     "outermost frame, by how they knew.\n"
		     "# TYPE sonde_unwind_native_complete_total counter\n");
	for (i = SONDE_UNW_END_OUTERMOST; i <= SONDE_UNW_END_KTHREAD; i++)
		fprintf(out, "sonde_unwind_native_complete_total{end=\"%s\"} %" PRIu64 "\n",
			stat_names[i], sums[i]);
	fprintf(out,
		"# HELP sonde_unwind_native_frames_total User frames stepped, by method.\n"
		"# TYPE sonde_unwind_native_frames_total counter\n"
		"sonde_unwind_native_frames_total{method=\"cfi\"} %" PRIu64 "\n"
		"sonde_unwind_native_frames_total{method=\"frame_pointer\"} %" PRIu64 "\n",
		sums[SONDE_UNW_FRAMES_CFI], sums[SONDE_UNW_FRAMES_FP]);
	fprintf(out,
		"# HELP sonde_unwind_native_rescans_total Rescans of a process's mappings "
		"after the walker met an unknown pc.\n"
		"# TYPE sonde_unwind_native_rescans_total counter\n"
		"sonde_unwind_native_rescans_total %" PRIu64 "\n",
		u->rescans);
	fprintf(out,
		"# HELP sonde_unwind_native_tables Unwind tables loaded.\n"
		"# TYPE sonde_unwind_native_tables gauge\n"
		"sonde_unwind_native_tables %zu\n"
		"# HELP sonde_unwind_native_table_rows Rows used in the table space.\n"
		"# TYPE sonde_unwind_native_table_rows gauge\n"
		"sonde_unwind_native_table_rows %u\n"
		"# HELP sonde_unwind_native_table_rows_max Size of the table space "
		"(setting max_rows).\n"
		"# TYPE sonde_unwind_native_table_rows_max gauge\n"
		"sonde_unwind_native_table_rows_max %u\n"
		"# HELP sonde_unwind_native_unsupported_rows Rows of loaded tables whose rule "
		"the walker cannot follow.\n"
		"# TYPE sonde_unwind_native_unsupported_rows gauge\n"
		"sonde_unwind_native_unsupported_rows %zu\n"
		"# HELP sonde_unwind_native_table_builds_total Tables built, and failures.\n"
		"# TYPE sonde_unwind_native_table_builds_total counter\n"
		"sonde_unwind_native_table_builds_total{result=\"ok\"} %" PRIu64 "\n"
		"sonde_unwind_native_table_builds_total{result=\"failed\"} %" PRIu64 "\n"
		"# HELP sonde_unwind_native_table_build_seconds_total Time spent building tables.\n"
		"# TYPE sonde_unwind_native_table_build_seconds_total counter\n"
		"sonde_unwind_native_table_build_seconds_total %.6f\n",
		ntables, u->used_rows, u->max_rows, nunsupported, u->builds, u->build_failures,
		(double)u->build_ns / 1e9);
	return ferror(out) ? -EIO : 0;
}

static int reuse(struct unw *u, struct bpf_map *map, const char *name)
{
	int fd = u->api->map_fd(u->host, name);

	return fd < 0 ? fd : bpf_map__reuse_fd(map, fd);
}

static void native_fini(void *state);

static void *native_init(const struct sonde_host_api *api, struct sonde_host *host,
			 const void *settings, char *err, size_t errlen)
{
	const struct settings *set = settings;
	struct unw *u = calloc(1, sizeof(*u));
	uint32_t steps = 1;
	int rc, slot;

	if (!u) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	u->api = api;
	u->host = host;
	if (set->max_rows < 1024 || set->max_rows > (1 << 28) || set->max_processes < 1 ||
	    set->max_processes > 65536) {
		snprintf(err, errlen,
			 "max_rows must be in [1024, 2^28] and max_processes in "
			 "[1, 65536]");
		goto fail;
	}
	elf_version(EV_CURRENT);
	u->max_rows = (uint32_t)set->max_rows;
	u->free = malloc(sizeof(*u->free));
	u->skel = native_bpf__open();
	if (!u->free || !u->skel) {
		snprintf(err, errlen, "cannot open the BPF object: %s", strerror(errno));
		goto fail;
	}
	u->free[0] = (struct extent){0, u->max_rows};
	u->nfree = 1;
	while ((1ull << steps) <= u->max_rows)
		steps++;
	u->skel->rodata->row_search_steps = steps;
	rc = bpf_map__set_max_entries(u->skel->maps.unw_rows, u->max_rows);
	if (!rc)
		rc = bpf_map__set_max_entries(u->skel->maps.unw_procs,
					      (uint32_t)set->max_processes);
	if (!rc)
		rc = bpf_map__set_max_entries(u->skel->maps.unw_rescan,
					      (uint32_t)set->max_processes);
	if (!rc)
		rc = reuse(u, u->skel->maps.scratch, "scratch");
	if (!rc)
		rc = reuse(u, u->skel->maps.stats, "stats");
	if (!rc)
		rc = reuse(u, u->skel->maps.events, "events");
	if (!rc)
		rc = native_bpf__load(u->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the walker: %s", strerror(-rc));
		goto fail;
	}
	u->rows_len = ((size_t)u->max_rows * sizeof(struct sonde_unw_row) + 4095) & ~(size_t)4095;
	u->rows = mmap(NULL, u->rows_len, PROT_READ | PROT_WRITE, MAP_SHARED,
		       bpf_map__fd(u->skel->maps.unw_rows), 0);
	if (u->rows == MAP_FAILED) {
		u->rows = NULL;
		snprintf(err, errlen, "cannot map the table space: %s", strerror(errno));
		goto fail;
	}
	slot = api->register_unwinder(host, "native",
				      bpf_program__fd(u->skel->progs.unwind_native));
	if (slot < 0) {
		snprintf(err, errlen, "no unwinder slot: %s", strerror(-slot));
		goto fail;
	}
	u->timer = api->add_timer(host, RESCAN_INTERVAL_MS, RESCAN_INTERVAL_MS, rescan_timer, u);
	if (!u->timer) {
		snprintf(err, errlen, "cannot add the rescan timer");
		goto fail;
	}
	LOG(u, INFO, "unwinder slot %d, table space %u rows (%zu KiB), %" PRId64 " processes", slot,
	    u->max_rows, u->rows_len >> 10, set->max_processes);
	return u;
fail:
	native_fini(u);
	return NULL;
}

static void native_fini(void *state)
{
	struct unw *u = state;
	struct table *t;
	struct proc *p;

	if (!u)
		return;
	if (u->timer)
		u->api->cancel_timer(u->host, u->timer);
	while ((p = u->procs)) {
		u->procs = p->next;
		free(p->tables);
		free(p);
	}
	while ((t = u->tables)) {
		u->tables = t->next;
		free(t);
	}
	if (u->rows)
		munmap(u->rows, u->rows_len);
	native_bpf__destroy(u->skel);
	free(u->free);
	free(u);
}

static const struct sonde_plugin_setting native_settings[] = {
	{SONDE_SETTING_INT, "max_rows", "1048576", offsetof(struct settings, max_rows),
	 "rows of the table space shared by all unwind tables (8 bytes each; libc needs ~60k)"},
	{SONDE_SETTING_INT, "max_processes", "1024", offsetof(struct settings, max_processes),
	 "processes unwound at once (4 KiB of BPF map each)"},
	{SONDE_SETTING_END, NULL, NULL, 0, NULL},
};

const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "unwind-native",
	.version = "0.1",
	.description = "DWARF CFI (.eh_frame) unwinding in BPF, for code without frame pointers",
	.settings = native_settings,
	.settings_size = sizeof(struct settings),
	.init = native_init,
	.fini = native_fini,
	.attach_process = native_attach,
	.detach_process = native_detach,
	.write_metrics = native_metrics,
};
