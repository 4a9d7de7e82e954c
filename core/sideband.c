// SPDX-License-Identifier: MIT
/*
 * perf side-band records, read from one ring per CPU.
 *
 * Why our own ring reader rather than perf_buffer__new_raw(): a drain
 * gathers the records of every CPU first and hands them to the registry in
 * time order. A process's fork is recorded on the parent's CPU and its
 * first mmap on whichever CPU the child runs on; in CPU order the mmap
 * could reach the registry before the fork that creates the address space
 * it belongs to. Sorting one drain's records by their kernel timestamps
 * removes that (records split across two drains can still cross, which the
 * registry tolerates).
 *
 * Records are copied out of the ring into the batch buffer, which also
 * takes care of records that wrap past the ring's end.
 *
 * CPUs that come online after sonde_sideband__new() are not watched; the
 * registry's /proc rescans cover what they would have reported.
 */
#include "sideband.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PAGES  64
#define SAMPLE_ID_SIZE 16 /* PERF_SAMPLE_TID | PERF_SAMPLE_TIME: u32 pid, tid; u64 time */

struct ring {
	int fd;
	int cpu;
	void *base; /* struct perf_event_mmap_page, then the data pages */
};

/* A record of the current drain: where it sits in the batch, and its time. */
struct rec_ref {
	uint64_t time;
	uint32_t off;
	uint32_t seq; /* keeps equal times in reading order */
};

struct sonde_sideband {
	struct sonde_procs *procs;
	int epfd;
	struct ring *rings;
	int nrings;
	size_t page_size;
	size_t mmap_size;
	uint64_t lost;

	char *batch;
	size_t batch_len, batch_cap;
	struct rec_ref *refs;
	size_t nrefs, refs_cap;
};

/* The records we read; layouts as in linux/perf_event.h's comments, with
 * attr.sample_id_all's trailer (struct sample_id) after the variable part. */
struct mmap2_rec {
	struct perf_event_header header;
	uint32_t pid, tid;
	uint64_t addr, len, pgoff;
	uint32_t maj, min;
	uint64_t ino, ino_generation;
	uint32_t prot, flags;
	char filename[];
};

struct comm_rec {
	struct perf_event_header header;
	uint32_t pid, tid;
	char comm[];
};

struct fork_rec {
	struct perf_event_header header;
	uint32_t pid, ppid, tid, ptid;
	uint64_t time;
};

struct lost_rec {
	struct perf_event_header header;
	uint64_t id, lost;
};

static int perf_event_open(struct perf_event_attr *attr, int cpu)
{
	return (int)syscall(__NR_perf_event_open, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
}

/* "0-3,5,7-8" into a list of CPUs. Count or -errno. */
static int online_cpus(int **out)
{
	char buf[4096], *s, *end;
	int *cpus = NULL, *grown, n = 0, cap = 0, err = 0;
	long a, b, c;
	ssize_t len;
	int fd;

	fd = open("/sys/devices/system/cpu/online", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = read(fd, buf, sizeof(buf) - 1);
	err = len < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	buf[len] = '\0';
	for (s = buf; *s && *s != '\n';) {
		a = strtol(s, &end, 10);
		b = a;
		if (end != s && *end == '-') {
			s = end + 1;
			b = strtol(s, &end, 10);
		}
		if (end == s || a < 0 || b < a) {
			err = -EINVAL;
			goto cleanup;
		}
		for (c = a; c <= b; c++) {
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				grown = realloc(cpus, cap * sizeof(*cpus));
				if (!grown) {
					err = -ENOMEM;
					goto cleanup;
				}
				cpus = grown;
			}
			cpus[n++] = (int)c;
		}
		s = *end == ',' ? end + 1 : end;
	}
cleanup:
	if (err) {
		free(cpus);
		return err;
	}
	*out = cpus;
	return n;
}

struct sonde_sideband *sonde_sideband__new(struct sonde_procs *procs, unsigned int pages_per_cpu)
{
	struct perf_event_attr attr = {0};
	struct sonde_sideband *sb;
	struct epoll_event ev = {0};
	unsigned int pages = 1;
	int *cpus = NULL, ncpus, i, err = 0;
	struct ring *r;

	sb = calloc(1, sizeof(*sb));
	if (!sb)
		return NULL;
	sb->procs = procs;
	sb->epfd = -1;
	sb->page_size = (size_t)sysconf(_SC_PAGESIZE);
	/* The kernel wants a power of two of data pages. */
	if (!pages_per_cpu)
		pages_per_cpu = DEFAULT_PAGES;
	while (pages < pages_per_cpu)
		pages <<= 1;
	sb->mmap_size = (1 + (size_t)pages) * sb->page_size;

	ncpus = online_cpus(&cpus);
	if (ncpus < 0) {
		err = ncpus;
		goto cleanup;
	}
	sb->rings = calloc(ncpus ? ncpus : 1, sizeof(*sb->rings));
	sb->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!sb->rings || sb->epfd < 0) {
		err = sb->rings ? -errno : -ENOMEM;
		goto cleanup;
	}

	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_SOFTWARE;
	attr.config = PERF_COUNT_SW_DUMMY;
	attr.sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_TIME;
	attr.mmap = 1;	/* executable mappings (mmap_data stays 0) */
	attr.mmap2 = 1; /* ... as MMAP2, with device and inode */
	attr.comm = 1;
	attr.comm_exec = 1; /* marks the COMM of an exec */
	attr.task = 1;	    /* FORK and EXIT */
	attr.sample_id_all = 1;
	attr.use_clockid = 1;
	attr.clockid = CLOCK_MONOTONIC; /* the clock of bpf_ktime_get_ns() */
	/* Wake the reader on every record (side-band volume is low).
	 * wakeup_events would not do: the kernel counts it on samples only,
	 * and a dummy event has none, so side-band records wake by watermark
	 * (half the ring by default). */
	attr.watermark = 1;
	attr.wakeup_watermark = 1;

	for (i = 0; i < ncpus; i++) {
		r = &sb->rings[sb->nrings];
		r->cpu = cpus[i];
		r->fd = perf_event_open(&attr, cpus[i]);
		if (r->fd < 0) {
			if (errno == ENODEV)
				continue; /* went offline since we read the list */
			err = -errno;
			goto cleanup;
		}
		r->base = mmap(NULL, sb->mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
		if (r->base == MAP_FAILED) {
			err = -errno;
			r->base = NULL;
			close(r->fd);
			goto cleanup;
		}
		ev.events = EPOLLIN;
		ev.data.u32 = (uint32_t)sb->nrings;
		sb->nrings++; /* from here on freed with the others */
		if (epoll_ctl(sb->epfd, EPOLL_CTL_ADD, r->fd, &ev)) {
			err = -errno;
			goto cleanup;
		}
	}
	if (!sb->nrings)
		err = -ENODEV;
cleanup:
	free(cpus);
	if (err) {
		sonde_sideband__free(sb);
		errno = -err;
		return NULL;
	}
	return sb;
}

void sonde_sideband__free(struct sonde_sideband *sb)
{
	int i;

	if (!sb)
		return;
	for (i = 0; i < sb->nrings; i++) {
		if (sb->rings[i].base)
			munmap(sb->rings[i].base, sb->mmap_size);
		close(sb->rings[i].fd);
	}
	if (sb->epfd >= 0)
		close(sb->epfd);
	free(sb->rings);
	free(sb->batch);
	free(sb->refs);
	free(sb);
}

int sonde_sideband__fd(const struct sonde_sideband *sb)
{
	return sb->epfd;
}

uint64_t sonde_sideband__lost(const struct sonde_sideband *sb)
{
	return sb->lost;
}

static void ring_copy(void *dst, const char *data, uint64_t size, uint64_t pos, size_t len)
{
	uint64_t off = pos & (size - 1);
	size_t first = len;

	if (off + len > size)
		first = (size_t)(size - off); /* the record wraps: two pieces */
	memcpy(dst, data + off, first);
	memcpy((char *)dst + first, data, len - first);
}

/* Room for len more bytes in the batch and one more ref. */
static bool batch_reserve(struct sonde_sideband *sb, size_t len)
{
	if (sb->batch_len + len > sb->batch_cap) {
		size_t cap = sb->batch_cap ? sb->batch_cap : 64 * 1024;
		char *b;

		while (cap < sb->batch_len + len)
			cap *= 2;
		if (cap > UINT32_MAX)
			return false;
		b = realloc(sb->batch, cap);
		if (!b)
			return false;
		sb->batch = b;
		sb->batch_cap = cap;
	}
	if (sb->nrefs == sb->refs_cap) {
		size_t cap = sb->refs_cap ? sb->refs_cap * 2 : 1024;
		struct rec_ref *r = realloc(sb->refs, cap * sizeof(*r));

		if (!r)
			return false;
		sb->refs = r;
		sb->refs_cap = cap;
	}
	return true;
}

static bool wanted(const struct perf_event_header *h)
{
	switch (h->type) {
	case PERF_RECORD_MMAP2:
		return h->size >= sizeof(struct mmap2_rec) + SAMPLE_ID_SIZE;
	case PERF_RECORD_COMM:
		return (h->misc & PERF_RECORD_MISC_COMM_EXEC) &&
		       h->size >= sizeof(struct comm_rec) + SAMPLE_ID_SIZE;
	case PERF_RECORD_FORK:
		return h->size >= sizeof(struct fork_rec) + SAMPLE_ID_SIZE;
	case PERF_RECORD_LOST:
		return h->size >= sizeof(struct lost_rec);
	default:
		return false;
	}
}

/* Copies the records waiting in one ring into the batch. Records read, or -ENOMEM
 * (the ring is consumed anyway: a stuck ring would lose everything after). */
static int ring_read(struct sonde_sideband *sb, struct ring *r)
{
	struct perf_event_mmap_page *meta = r->base;
	const char *data = (const char *)r->base + sb->page_size;
	uint64_t size = sb->mmap_size - sb->page_size, head, tail;
	struct perf_event_header h;
	int n = 0, err = 0;
	char *rec;

	if (meta->data_size) {
		data = (const char *)r->base + meta->data_offset;
		size = meta->data_size;
	}
	/* Acquire: the record bytes below head are visible once head is. */
	head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
	tail = meta->data_tail;
	while (tail < head) {
		ring_copy(&h, data, size, tail, sizeof(h));
		if (h.size < sizeof(h) || h.size > head - tail) {
			tail = head; /* cannot happen with a sane kernel; do not spin */
			break;
		}
		n++;
		if (!wanted(&h)) {
			tail += h.size;
			continue;
		}
		if (!batch_reserve(sb, h.size)) {
			sb->lost++;
			err = -ENOMEM;
			tail += h.size;
			continue;
		}
		rec = sb->batch + sb->batch_len;
		ring_copy(rec, data, size, tail, h.size);
		tail += h.size;
		if (h.type == PERF_RECORD_LOST) {
			struct lost_rec *l = (struct lost_rec *)rec;

			sb->lost += l->lost;
			continue;
		}
		/* Every record we keep ends with the sample_id trailer: time last. */
		memcpy(&sb->refs[sb->nrefs].time, rec + h.size - sizeof(uint64_t),
		       sizeof(uint64_t));
		sb->refs[sb->nrefs].off = (uint32_t)sb->batch_len;
		sb->refs[sb->nrefs].seq = (uint32_t)sb->nrefs;
		sb->nrefs++;
		sb->batch_len += h.size;
	}
	/* Release: we are done reading the bytes before tail. */
	__atomic_store_n(&meta->data_tail, tail, __ATOMIC_RELEASE);
	return err ? err : n;
}

static int ref_cmp(const void *a, const void *b)
{
	const struct rec_ref *x = a, *y = b;

	if (x->time != y->time)
		return x->time < y->time ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void dispatch(struct sonde_sideband *sb, char *rec, uint64_t time)
{
	struct perf_event_header *h = (struct perf_event_header *)rec;

	switch (h->type) {
	case PERF_RECORD_MMAP2: {
		struct mmap2_rec *m = (struct mmap2_rec *)rec;
		size_t name_len = h->size - sizeof(*m) - SAMPLE_ID_SIZE;

		if (!name_len)
			return;
		m->filename[name_len - 1] = '\0'; /* it is NUL-padded; be sure */
		sonde_procs__on_mmap(sb->procs, m->pid, time, m->addr, m->len, m->pgoff, m->maj,
				     m->min, m->ino, m->filename);
		break;
	}
	case PERF_RECORD_COMM: {
		struct comm_rec *c = (struct comm_rec *)rec;

		sonde_procs__on_exec_mm(sb->procs, c->pid, time);
		break;
	}
	case PERF_RECORD_FORK: {
		struct fork_rec *f = (struct fork_rec *)rec;

		if (f->pid != f->ppid) /* a new process; a new thread shares the mm */
			sonde_procs__on_fork_mm(sb->procs, f->ppid, f->pid, f->time);
		break;
	}
	default:
		break;
	}
}

int sonde_sideband__drain(struct sonde_sideband *sb)
{
	struct epoll_event evs[64];
	int i, n, total = 0, err = 0;
	size_t k;

	/* Empties the epoll fd's ready list; every ring is read below anyway. */
	for (i = 0; i <= sb->nrings / 64; i++)
		if (epoll_wait(sb->epfd, evs, 64, 0) < 64)
			break;
	sb->batch_len = 0;
	sb->nrefs = 0;
	for (i = 0; i < sb->nrings; i++) {
		n = ring_read(sb, &sb->rings[i]);
		if (n < 0)
			err = n;
		else
			total += n;
	}
	qsort(sb->refs, sb->nrefs, sizeof(*sb->refs), ref_cmp);
	for (k = 0; k < sb->nrefs; k++)
		dispatch(sb, sb->batch + sb->refs[k].off, sb->refs[k].time);
	return err ? err : total;
}
