// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-native: whole user stacks for code built without frame
 * pointers, walked in BPF with tables built here from each ELF's .eh_frame
 * (or .debug_frame, for files built without unwind tables).
 *
 * Tables are shared by every process that maps the same file (keyed by
 * build-id) and live in slices of one mmap'd BPF array; a table no process
 * uses stays cached until its space is needed. A process gets the list of
 * its executable mappings, each pointing at its table's slice; when the
 * walker meets a pc in no listed mapping (ld.so had not mapped the
 * libraries yet when the process was attached, or a dlopen), it asks for a
 * rescan, which a timer here serves.
 *
 * The vdso has no file: its image is read from the process's memory (the
 * whole ELF is mapped there) and built from like a file's, keyed by its
 * build-id, so the one table serves every process of the kernel.
 *
 * Tables are built off the loop thread: libjvm's take ~120 ms, and the
 * loop must not block. attach_process (and a rescan) only reads the maps
 * and each file's build-id, then queues the files without a table for the
 * plugin's one worker thread, which reads the table from the on-disk cache
 * (cache_dir, one file per build-id) or builds it and saves it there. Done
 * jobs come back to the loop through an eventfd the host watches; the loop
 * copies their rows into the table space, and a process whose tables are
 * all ready gets its mappings into unw_procs then. Until that moment the
 * walker finds no entry for the process and walks it with frame pointers
 * (counted as no_process_table), so its first samples are the same as
 * without the plugin, never wrong. The worker touches nothing but its job:
 * tables, processes and the BPF maps are the loop's alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gelf.h>
#include <libelf.h>
#include <sonde/plugin.h>

#include "native.h"
#include "plugin_util.h"
#include "native.skel.h"
#include "tables.h"

#define RESCAN_INTERVAL_MS 100
#define RESCAN_MIN_GAP_NS  (200ull * 1000000) /* per process */
#define KEY_LEN		   96
#define VDSO_MAX_SIZE	   (1u << 20) /* the most of a [vdso] copied (8 KiB on 6.x) */

struct settings {
	int64_t max_rows;
	int64_t max_processes;
	const char *cache_dir;
};

/* One ELF file's table, by key. rows == 0 with err set: the build failed
 * (remembered so that it is not retried for every process). */
struct table {
	struct table *next;
	char key[KEY_LEN];
	char name[64]; /* the file's base name, for logs */
	uint32_t first, rows;	  /* its rows in unw_rows */
	uint32_t npages, page_lo; /* its page index, right before first */
	int refs;
	int err;
	bool ready;  /* false while the worker has its job */
	bool cached; /* its rows came from the disk cache */
	struct sonde_unw_table_stats stats;
};

/* A table for the worker to get. The worker reads fd (or image) and writes
 * the result fields; everything else is the loop's. */
struct job {
	struct job *next;
	struct table *table; /* carried back, never touched by the worker */
	int fd;		     /* the ELF file, or -1; the worker closes it */
	void *image;	     /* or its image (the vdso's), a copy; the worker frees it */
	size_t image_len;
	char key[KEY_LEN];
	struct sonde_unw_table *built; /* result: NULL with err */
	int err;
	bool from_cache, cache_invalid;
	int save_err;
};

struct scan;

struct proc {
	struct proc *next;
	uint32_t pid;
	uint64_t maps_hash; /* of the executable mappings, to skip useless rescans */
	uint64_t scanned_ns;
	struct table **tables; /* references held */
	size_t ntables;
	struct scan *pending; /* its mappings, waiting for tables to be ready */
	uint64_t pending_ns;  /* when it started waiting */
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
	uint64_t cache_hits, cache_misses, cache_invalid, cache_write_errors;
	size_t jobs_queued; /* sent to the worker, not back yet */
	char *cache_dir;    /* NULL: no cache */

	/* the worker; todo and done, and stop, under lock */
	pthread_t worker;
	bool worker_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct job *todo, **todo_tail, *done;
	bool stop;
	int efd; /* the worker writes it when a job is done */
	bool efd_watched;
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
		/* a table still with the worker has no rows yet; one that did
		 * not fit is dropped so that a later process retries it */
		if (t->refs || !t->ready || !(t->rows || t->err == ENOSPC)) {
			pp = &t->next;
			continue;
		}
		if (t->rows)
			extent_release(u, t->first - t->npages, t->npages + t->rows);
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

/* Hands t's file (a dup of fd), or a copy of its image when fd is -1, to
 * the worker. */
static int queue_job(struct unw *u, struct table *t, int fd, const void *image, size_t len)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return -ENOMEM;
	j->table = t;
	j->fd = -1;
	if (fd >= 0) {
		j->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (j->fd < 0) {
			free(j);
			return -errno;
		}
	} else {
		j->image = malloc(len);
		if (!j->image) {
			free(j);
			return -ENOMEM;
		}
		memcpy(j->image, image, len);
		j->image_len = len;
	}
	snprintf(j->key, sizeof(j->key), "%s", t->key);
	LOG(u, DEBUG, "%s: table queued (key %s)", t->name, t->key);
	pthread_mutex_lock(&u->lock);
	*u->todo_tail = j;
	u->todo_tail = &j->next;
	pthread_cond_signal(&u->wake);
	pthread_mutex_unlock(&u->lock);
	u->jobs_queued++;
	return 0;
}

/* The table for the ELF file open at fd (or, fd -1, of the image elf was
 * opened on): known (ready or on its way), or queued for the worker now.
 * NULL with errno when there is none to have (ENODATA: neither .eh_frame_hdr
 * nor .debug_frame; a failed build's error); the returned table holds a
 * reference. */
static struct table *table_get(struct unw *u, Elf *elf, int fd, const void *image, size_t image_len,
			       const char *path)
{
	const char *base = strrchr(path, '/');
	char key[KEY_LEN];
	struct table *t;
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
	if (!sonde_unw_elf_has_cfi(elf)) {
		errno = ENODATA;
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	snprintf(t->key, sizeof(t->key), "%s", key);
	snprintf(t->name, sizeof(t->name), "%s", base ? base + 1 : path);
	err = queue_job(u, t, fd, image, image_len);
	if (err) {
		free(t);
		errno = -err;
		return NULL;
	}
	t->next = u->tables;
	u->tables = t;
found:
	if (t->ready && t->err) {
		errno = t->err;
		return NULL;
	}
	t->refs++;
	return t;
}

/* A job back from the worker: its rows into the table space. */
static void finish_job(struct unw *u, struct job *j)
{
	struct sonde_unw_table *b = j->built;
	struct table *t = j->table;
	size_t npages, need;
	uint32_t start;
	int err;

	u->jobs_queued--;
	t->ready = true;
	if (j->cache_invalid) {
		u->cache_invalid++;
		LOG(u, WARN,
		    "%s: its cache file is truncated, corrupt or of another version: rebuilt",
		    t->name);
	}
	if (j->save_err) {
		u->cache_write_errors++;
		LOG(u, WARN, "%s: cannot write its table to %s: %s", t->name, u->cache_dir,
		    strerror(-j->save_err));
	}
	if (!b) {
		t->err = j->err ? j->err : EINVAL;
		u->build_failures++;
		LOG(u, DEBUG, "%s: no unwind table: %s", t->name, strerror(t->err));
		return;
	}
	t->stats = b->stats;
	t->cached = j->from_cache;
	if (j->from_cache) {
		u->cache_hits++;
	} else {
		u->builds++;
		u->build_ns += b->stats.build_ns;
		u->cache_misses += u->cache_dir != NULL;
	}
	npages = sonde_unw_table__npages(b);
	need = b->nrows + npages;
	err = need > u->max_rows ? -ENOSPC : extent_alloc(u, (uint32_t)need, &start);
	if (err == -ENOSPC && evict_unused(u))
		err = extent_alloc(u, (uint32_t)need, &start);
	if (err) {
		t->err = ENOSPC;
		LOG(u, WARN, "%s: its %zu rows and %zu index entries do not fit the table space "
		    "(%u of %u rows used)", t->name, b->nrows, npages, u->used_rows, u->max_rows);
		return;
	}
	sonde_unw_table__pages(b, (struct sonde_unw_page *)&u->rows[start]);
	memcpy(&u->rows[start + npages], b->rows, b->nrows * sizeof(b->rows[0]));
	t->first = (uint32_t)(start + npages);
	t->rows = (uint32_t)b->nrows;
	t->npages = (uint32_t)npages;
	t->page_lo = npages ? b->rows[0].pc >> SONDE_UNW_PAGE_SHIFT : 0;
	LOG(u, INFO, "%s: %u rows (%zu unsupported, %zu plt) from %zu FDEs %s %.1f ms", t->name,
	    t->rows, t->stats.unsupported, t->stats.plt, t->stats.fdes,
	    j->from_cache ? "from the cache, built once in" : "in",
	    (double)t->stats.build_ns / 1e6);
}

/* The worker's part of a job: the cache, else a build (then saved). */
static void run_job(const struct unw *u, struct job *j)
{
	Elf *elf;

	if (u->cache_dir) {
		j->built = sonde_unw_cache__load(u->cache_dir, j->key);
		if (j->built) {
			j->from_cache = true;
			goto out;
		}
		j->cache_invalid = errno == EBADMSG;
	}
	elf = j->image ? elf_memory(j->image, j->image_len)
		       : elf_begin(j->fd, ELF_C_READ_MMAP, NULL);
	j->built = elf ? sonde_unw_table__build(elf) : NULL;
	j->err = j->built ? 0 : elf ? errno : EINVAL;
	elf_end(elf);
	if (j->built && u->cache_dir && strncmp(j->key, "b:", 2) == 0)
		j->save_err = sonde_unw_cache__save(u->cache_dir, j->key, j->built);
out:
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	free(j->image);
	j->image = NULL;
}

static void *worker_main(void *arg)
{
	struct unw *u = arg;
	uint64_t one = 1;
	struct job *j;

	pthread_mutex_lock(&u->lock);
	for (;;) {
		while (!u->stop && !u->todo)
			pthread_cond_wait(&u->wake, &u->lock);
		if (u->stop)
			break;
		j = u->todo;
		u->todo = j->next;
		if (!u->todo)
			u->todo_tail = &u->todo;
		pthread_mutex_unlock(&u->lock);
		run_job(u, j);
		pthread_mutex_lock(&u->lock);
		j->next = u->done;
		u->done = j;
		/* fails only when the counter would overflow: readable anyway */
		if (write(u->efd, &one, sizeof(one)) < 0)
			(void)0;
	}
	pthread_mutex_unlock(&u->lock);
	return NULL;
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
	struct sonde_unw_proc val;		      /* first and rows filled at install time */
	struct table *mtab[SONDE_UNW_MAX_MAPPINGS];   /* each mapping's table, or NULL */
	struct table *tables[SONDE_UNW_MAX_MAPPINGS]; /* the references held */
	size_t ntables, with_rows;
	uint64_t hash;
};

/* Notes t as the table of sc's last mapping. The vdso's does not count
 * towards with_rows: a process with no other table is declined as before,
 * since the walk would be a frame-pointer walk everywhere else. */
static void use_table(struct scan *sc, struct table *t, bool counts)
{
	sc->tables[sc->ntables++] = t;
	sc->mtab[sc->val.nmappings - 1] = t;
	sc->with_rows += counts && (t->rows > 0 || !t->ready);
}

/*
 * The vdso's mapping m: its image read from the process (the kernel maps
 * the whole ELF, section headers included, so it reads like a file), keyed
 * by its build-id. Without a table it stays a mapping of no rows. Reading
 * it again at each scan costs a few KiB of copy; its build-id then finds
 * the table the first process's scan queued.
 */
static void add_vdso(struct unw *u, uint32_t pid, struct scan *sc, struct sonde_unw_mapping *m)
{
	size_t len = m->end - m->start;
	struct table *t;
	void *image;
	uint64_t bias;
	Elf *elf = NULL;
	ssize_t n;

	if (len > VDSO_MAX_SIZE)
		return;
	image = malloc(len);
	if (!image)
		return;
	n = u->api->read_memory(u->host, pid, m->start, image, len);
	if (n != (ssize_t)len)
		goto cleanup;
	elf = elf_memory(image, len);
	if (!elf || elf_kind(elf) != ELF_K_ELF || sonde_unw_elf_bias(elf, m->start, 0, &bias))
		goto cleanup;
	m->bias = bias;
	/* no build-id: sonde_unw_elf_key() fails on fd -1, and the vdso is
	 * walked with rbp as before */
	t = table_get(u, elf, -1, image, len, "[vdso]");
	if (t)
		use_table(sc, t, false);
cleanup:
	elf_end(elf);
	free(image);
}

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
	if (strcmp(path, "[vdso]") == 0) {
		add_vdso(u, pid, sc, m);
		return;
	}
	if (path[0] != '/')
		return; /* anonymous code (JITs): rbp only */
	/* map_files reaches the very file mapped, whatever mount namespace */
	snprintf(file, sizeof(file), "/proc/%u/map_files/%" PRIx64 "-%" PRIx64, pid, start, end);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	if (!elf || elf_kind(elf) != ELF_K_ELF || sonde_unw_elf_bias(elf, start, offset, &bias))
		goto cleanup;
	m->bias = bias;
	t = table_get(u, elf, fd, NULL, 0, path);
	if (t)
		use_table(sc, t, true);
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
		snprintf(reason, len,
			 "no executable mapping has an unwind table "
			 "(.eh_frame_hdr or .debug_frame)%s",
			 u->used_rows + 1024 > u->max_rows ? " or the table space is full" : "");
		goto decline;
	}
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

static void free_scan(struct scan *sc)
{
	size_t i;

	if (!sc)
		return;
	for (i = 0; i < sc->ntables; i++)
		table_unref(sc->tables[i]);
	free(sc);
}

static void drop_pending(struct proc *p)
{
	free_scan(p->pending);
	p->pending = NULL;
}

static bool scan_ready(const struct scan *sc)
{
	size_t i;

	for (i = 0; i < sc->ntables; i++) {
		if (!sc->tables[i]->ready)
			return false;
	}
	return true;
}

/* Puts sc in the BPF map and in p, dropping p's old references; on success
 * sc's references are p's. */
static int install(struct unw *u, struct proc *p, struct scan *sc)
{
	struct table **tables = malloc((sc->ntables ? sc->ntables : 1) * sizeof(*tables));
	size_t i;
	int err;

	if (!tables)
		return -ENOMEM;
	for (i = 0; i < sc->val.nmappings; i++) {
		const struct table *t = sc->mtab[i];

		if (t && t->rows) {
			sc->val.mappings[i].first = t->first;
			sc->val.mappings[i].rows = t->rows;
			sc->val.mappings[i].npages = t->npages;
			sc->val.mappings[i].page_lo = t->page_lo;
		}
	}
	qsort(sc->val.mappings, sc->val.nmappings, sizeof(sc->val.mappings[0]), cmp_mapping);
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
	sc->ntables = 0;
	return 0;
}

/* What `sondectl ps` shows for the process (host ABI 1.2; older hosts: nothing). */
static void set_status(struct unw *u, uint32_t pid, const char *note)
{
	if (u->api->size >= offsetof(struct sonde_host_api, process_status) +
				    sizeof(u->api->process_status) &&
	    u->api->process_status)
		u->api->process_status(u->host, pid, 1, note);
}

/* Installs sc now if its tables are all ready, or keeps it in p until they
 * are (p keeps its current mappings meanwhile). Consumes sc. 0 or -errno. */
static int settle(struct unw *u, struct proc *p, struct scan *sc)
{
	int err;

	drop_pending(p);
	if (!scan_ready(sc)) {
		p->pending = sc;
		p->pending_ns = now_ns();
		set_status(u, p->pid, "waiting for its unwind tables (frame pointers meanwhile)");
		return 0;
	}
	err = install(u, p, sc);
	free_scan(sc);
	set_status(u, p->pid, err ? "its mappings could not be stored (frame pointers)" : "");
	return err;
}

static void free_proc(struct proc *p)
{
	size_t i;

	for (i = 0; i < p->ntables; i++)
		table_unref(p->tables[i]);
	free(p->tables);
	drop_pending(p);
	free(p);
}

static int native_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
			 size_t reasonlen)
{
	struct unw *u = state;
	struct proc *p, **where;
	struct scan *sc;
	int rc;

	sc = malloc(sizeof(*sc));
	if (!sc)
		return -ENOMEM;
	rc = scan_maps(u, proc->pid, sc, reason, reasonlen);
	if (rc) {
		free(sc);
		return rc;
	}
	p = find_proc(u, proc->pid, &where);
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p) {
			free_scan(sc);
			return -ENOMEM;
		}
		p->pid = proc->pid;
		*where = p;
	}
	LOG(u, DEBUG, "pid %u: %u executable mappings, %zu with tables", proc->pid,
	    sc->val.nmappings, sc->with_rows);
	rc = settle(u, p, sc);
	if (rc) {
		snprintf(reason, reasonlen, "cannot store its mappings: %s%s", strerror(-rc),
			 rc == -E2BIG ? " (max_processes reached)" : "");
		if (!p->ntables) {
			*where = p->next;
			free_proc(p);
		}
	}
	return rc;
}

static void native_detach(void *state, uint32_t pid)
{
	struct unw *u = state;
	struct proc *p, **where;

	p = find_proc(u, pid, &where);
	if (!p)
		return;
	bpf_map__delete_elem(u->skel->maps.unw_procs, &pid, sizeof(pid), 0);
	*where = p->next;
	free_proc(p);
}

/* The worker finished jobs: their tables into the table space, then the
 * processes whose tables are now all ready into unw_procs. */
static void on_jobs_done(void *ctx, int fd, uint32_t revents)
{
	struct unw *u = ctx;
	struct job *list, *j;
	struct proc *p;
	uint64_t n;

	(void)revents;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		LOG(u, WARN, "reading the worker's eventfd: %s", strerror(errno));
	pthread_mutex_lock(&u->lock);
	list = u->done;
	u->done = NULL;
	pthread_mutex_unlock(&u->lock);
	while ((j = list)) {
		list = j->next;
		finish_job(u, j);
		sonde_unw_table__free(j->built);
		free(j);
	}
	for (p = u->procs; p; p = p->next) {
		struct scan *sc = p->pending;
		uint64_t waited;
		int err;

		if (!sc || !scan_ready(sc))
			continue;
		p->pending = NULL;
		waited = now_ns() - p->pending_ns;
		err = settle(u, p, sc);
		if (err)
			LOG(u, WARN, "pid %u: cannot store its mappings: %s", p->pid,
			    strerror(-err));
		else
			LOG(u, DEBUG, "pid %u: tables ready after %.1f ms", p->pid,
			    (double)waited / 1e6);
	}
}

/* Serves the walker's rescan requests: a process whose executable mappings
 * changed gets them again. */
static void rescan_timer(void *ctx)
{
	struct unw *u = ctx;
	uint32_t pids[64], key, next;
	size_t n = 0, i;
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
	for (i = 0; i < n; i++) {
		struct proc *p = find_proc(u, pids[i], NULL);

		if (p && now_ns() - p->scanned_ns < RESCAN_MIN_GAP_NS)
			continue; /* asked again soon enough if still needed */
		bpf_map_delete_elem(fd, &pids[i]);
		if (!p || p->pending)
			continue; /* gone, or new mappings already on their way */
		sc = malloc(sizeof(*sc));
		if (!sc || scan_maps(u, p->pid, sc, reason, sizeof(reason))) {
			free(sc);
			continue; /* nothing usable any more: keep the old list */
		}
		u->rescans++;
		p->scanned_ns = now_ns();
		if (sc->hash == p->maps_hash)
			free_scan(sc);
		else
			settle(u, p, sc);
	}
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
	[SONDE_UNW_WALK_NS] = "walk_ns",
	[SONDE_UNW_HANDOVERS] = "handovers",
	[SONDE_UNW_STOP_HANDOVER_FAILED] = "handover_failed",
};

static int native_metrics(void *state, FILE *out)
{
	struct unw *u = state;
	int ncpu = libbpf_num_possible_cpus(), fd = bpf_map__fd(u->skel->maps.unw_stats);
	uint64_t sums[SONDE_UNW_STAT__COUNT] = {0}, *vals;
	size_t nunsupported = 0, ntables = 0, attached = 0, waiting = 0;
	struct table *t;
	struct proc *p;
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
	for (p = u->procs; p; p = p->next) {
		attached += p->ntables > 0;
		waiting += p->pending && !p->ntables;
	}
	fprintf(out, "# HELP sonde_unwind_native_stops_total DWARF stack walks that ended before "
		     "the outermost frame, by reason.\n"
		     "# TYPE sonde_unwind_native_stops_total counter\n");
	for (i = SONDE_UNW_STOP_NO_PROC; i <= SONDE_UNW_STOP__LAST; i++)
		fprintf(out, "sonde_unwind_native_stops_total{reason=\"%s\"} %" PRIu64 "\n",
			stat_names[i], sums[i]);
	fprintf(out, "sonde_unwind_native_stops_total{reason=\"%s\"} %" PRIu64 "\n",
		stat_names[SONDE_UNW_STOP_HANDOVER_FAILED], sums[SONDE_UNW_STOP_HANDOVER_FAILED]);
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
		"# HELP sonde_unwind_native_walk_seconds_total BPF time spent in table walks "
		"(the walk alone: not the sample's emission, nor the core's part).\n"
		"# TYPE sonde_unwind_native_walk_seconds_total counter\n"
		"sonde_unwind_native_walk_seconds_total %.9f\n",
		(double)sums[SONDE_UNW_WALK_NS] / 1e9);
	fprintf(out,
		"# HELP sonde_unwind_native_handovers_total Frames the walker handed to an "
		"interpreter's unwinder (Python, JVM), which wrote its own frames in their "
		"place.\n"
		"# TYPE sonde_unwind_native_handovers_total counter\n"
		"sonde_unwind_native_handovers_total %" PRIu64 "\n"
		"# HELP sonde_unwind_native_rescans_total Rescans of a process's mappings "
		"after the walker met an unknown pc.\n"
		"# TYPE sonde_unwind_native_rescans_total counter\n"
		"sonde_unwind_native_rescans_total %" PRIu64 "\n",
		sums[SONDE_UNW_HANDOVERS], u->rescans);
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
		"sonde_unwind_native_table_build_seconds_total %.6f\n"
		"# HELP sonde_unwind_native_table_builds_pending Tables with the worker thread.\n"
		"# TYPE sonde_unwind_native_table_builds_pending gauge\n"
		"sonde_unwind_native_table_builds_pending %zu\n"
		"# HELP sonde_unwind_native_table_cache_total Lookups of the on-disk table cache "
		"(setting cache_dir); invalid: a truncated, corrupt or old file, rebuilt.\n"
		"# TYPE sonde_unwind_native_table_cache_total counter\n"
		"sonde_unwind_native_table_cache_total{result=\"hit\"} %" PRIu64 "\n"
		"sonde_unwind_native_table_cache_total{result=\"miss\"} %" PRIu64 "\n"
		"sonde_unwind_native_table_cache_total{result=\"invalid\"} %" PRIu64 "\n"
		"# HELP sonde_unwind_native_table_cache_write_errors_total Tables that could not "
		"be saved to the cache.\n"
		"# TYPE sonde_unwind_native_table_cache_write_errors_total counter\n"
		"sonde_unwind_native_table_cache_write_errors_total %" PRIu64 "\n"
		"# HELP sonde_unwind_native_processes Processes given unwind-native: attached (in "
		"the walker's map) or waiting for their tables (walked with frame pointers).\n"
		"# TYPE sonde_unwind_native_processes gauge\n"
		"sonde_unwind_native_processes{state=\"attached\"} %zu\n"
		"sonde_unwind_native_processes{state=\"waiting\"} %zu\n",
		ntables, u->used_rows, u->max_rows, nunsupported, u->builds, u->build_failures,
		(double)u->build_ns / 1e9, u->jobs_queued, u->cache_hits, u->cache_misses,
		u->cache_invalid, u->cache_write_errors, attached, waiting);
	return ferror(out) ? -EIO : 0;
}

static void native_fini(void *state);

/* mkdir -p, the last component with mode (the parents 0755). 0 or -errno. */
static int make_dirs(const char *dir, mode_t mode)
{
	char buf[4096];
	size_t i, len = strlen(dir);

	if (len == 0 || len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, dir, len + 1);
	for (i = 1; i < len; i++) {
		if (buf[i] != '/')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0755) && errno != EEXIST)
			return -errno;
		buf[i] = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

/* The worker thread, with every signal blocked: the core's loop takes them. */
static int start_worker(struct unw *u)
{
	sigset_t all, old;
	int err;

	u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (u->efd < 0)
		return -errno;
	err = u->api->watch_fd(u->host, u->efd, EPOLLIN, on_jobs_done, u);
	if (err)
		return err;
	u->efd_watched = true;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&u->worker, NULL, worker_main, u);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		return err;
	u->worker_started = true;
	return 0;
}

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
	u->efd = -1;
	pthread_mutex_init(&u->lock, NULL);
	pthread_cond_init(&u->wake, NULL);
	u->todo_tail = &u->todo;
	if (set->max_rows < 1024 || set->max_rows > (1 << 28) || set->max_processes < 1 ||
	    set->max_processes > 65536) {
		snprintf(err, errlen,
			 "max_rows must be in [1024, 2^28] and max_processes in "
			 "[1, 65536]");
		goto fail;
	}
	elf_version(EV_CURRENT);
	if (set->cache_dir && set->cache_dir[0]) {
		rc = make_dirs(set->cache_dir, 0700);
		if (rc)
			LOG(u, WARN, "cache_dir %s: %s; tables are not cached", set->cache_dir,
			    strerror(-rc));
		else if (!(u->cache_dir = strdup(set->cache_dir)))
			goto fail;
	}
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
		rc = plugin_reuse_core_maps(u->api, u->host, u->skel->obj);
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
	u->skel->bss->self_slot = (uint32_t)slot; /* interpreters hand walks back here */
	rc = start_worker(u);
	if (rc) {
		snprintf(err, errlen, "cannot start the table worker: %s", strerror(-rc));
		goto fail;
	}
	u->timer = api->add_timer(host, RESCAN_INTERVAL_MS, RESCAN_INTERVAL_MS, rescan_timer, u);
	if (!u->timer) {
		snprintf(err, errlen, "cannot add the rescan timer");
		goto fail;
	}
	LOG(u, INFO,
	    "unwinder slot %d, table space %u rows (%zu KiB), %" PRId64 " processes, cache %s",
	    slot, u->max_rows, u->rows_len >> 10, set->max_processes,
	    u->cache_dir ? u->cache_dir : "off");
	return u;
fail:
	native_fini(u);
	return NULL;
}

static void native_fini(void *state)
{
	struct unw *u = state;
	struct job *j, *lists[2];
	struct table *t;
	struct proc *p;
	int i;

	if (!u)
		return;
	if (u->timer)
		u->api->cancel_timer(u->host, u->timer);
	if (u->worker_started) {
		pthread_mutex_lock(&u->lock);
		u->stop = true;
		pthread_cond_signal(&u->wake);
		pthread_mutex_unlock(&u->lock);
		pthread_join(u->worker, NULL);
	}
	lists[0] = u->todo;
	lists[1] = u->done;
	for (i = 0; i < 2; i++) {
		while ((j = lists[i])) {
			lists[i] = j->next;
			if (j->fd >= 0)
				close(j->fd);
			free(j->image);
			sonde_unw_table__free(j->built);
			free(j);
		}
	}
	if (u->efd_watched)
		u->api->unwatch_fd(u->host, u->efd);
	if (u->efd >= 0)
		close(u->efd);
	while ((p = u->procs)) {
		u->procs = p->next;
		free(p->tables);
		free(p->pending);
		free(p);
	}
	while ((t = u->tables)) {
		u->tables = t->next;
		free(t);
	}
	if (u->rows)
		munmap(u->rows, u->rows_len);
	native_bpf__destroy(u->skel);
	pthread_mutex_destroy(&u->lock);
	pthread_cond_destroy(&u->wake);
	free(u->cache_dir);
	free(u->free);
	free(u);
}

static const struct sonde_plugin_setting native_settings[] = {
	{SONDE_SETTING_INT, "max_rows", "1048576", offsetof(struct settings, max_rows),
	 "rows of the table space shared by all unwind tables (8 bytes each; libc needs ~60k)"},
	{SONDE_SETTING_INT, "max_processes", "1024", offsetof(struct settings, max_processes),
	 "processes unwound at once (5 KiB of BPF map each)"},
	{SONDE_SETTING_STRING, "cache_dir", "/var/cache/sonde/unwind",
	 offsetof(struct settings, cache_dir),
	 "directory of built tables, one file per build-id, so a restart does not rebuild "
	 "them (created 0700; empty: no cache)"},
	{SONDE_SETTING_END, NULL, NULL, 0, NULL},
};

const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "unwind-native",
	.version = "0.2",
	.description = "DWARF CFI (.eh_frame, .debug_frame) unwinding in BPF, for code without "
		       "frame pointers",
	.settings = native_settings,
	.settings_size = sizeof(struct settings),
	.init = native_init,
	.fini = native_fini,
	.attach_process = native_attach,
	.detach_process = native_detach,
	.write_metrics = native_metrics,
};
