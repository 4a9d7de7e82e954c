// SPDX-License-Identifier: MIT
/*
 * unw-tablebench FILE...: what building each file's unwind table costs, for
 * bench/unwind-native. Builds each table ROUNDS times (the first run pays
 * the page cache) and prints one line per file:
 *   FILE ROWS TABLE_BYTES FDES UNSUPPORTED MIN_MS MEDIAN_MS PEAK_RSS_KIB CACHE_MS
 * PEAK_RSS_KIB is how much the process's peak RSS grew during the file's
 * builds: the transient memory of libdw and the row buffer, file mapped in.
 * CACHE_MS is the median time to read the table back from the disk cache
 * (a directory under /tmp, page cache warm), what a restart pays instead.
 * Files are measured in the order given, so list them smallest first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tables.h"

#define ROUNDS 5

/* VmHWM, not getrusage's ru_maxrss: that one carries the parent's peak
 * across exec (a Python runner's tens of MiB would hide ours). */
static long peak_rss_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "re");

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	}
	if (f)
		fclose(f);
	return kib;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static char cache_dir[] = "/tmp/unw-tablebench-XXXXXX";

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Median time to load t back from the cache, in ms; -1 when it cannot. */
static double cache_ms(Elf *elf, int fd, const struct sonde_unw_table *t)
{
	struct sonde_unw_table *back;
	uint64_t ns[ROUNDS], t0;
	char key[96];
	int r;

	if (sonde_unw_elf_key(elf, fd, key, sizeof(key)) ||
	    sonde_unw_cache__save(cache_dir, key, t))
		return -1;
	for (r = 0; r < ROUNDS; r++) {
		t0 = now_ns();
		back = sonde_unw_cache__load(cache_dir, key);
		ns[r] = now_ns() - t0;
		if (!back || back->nrows != t->nrows ||
		    memcmp(back->rows, t->rows, t->nrows * sizeof(t->rows[0]))) {
			sonde_unw_table__free(back);
			return -1;
		}
		sonde_unw_table__free(back);
	}
	qsort(ns, ROUNDS, sizeof(ns[0]), cmp_u64);
	return (double)ns[ROUNDS / 2] / 1e6;
}

static int bench(const char *path)
{
	double cached;
	Elf *elf;
	uint64_t ns[ROUNDS];
	struct sonde_unw_table *t = NULL;
	long rss0 = peak_rss_kib();
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	for (r = 0; r < ROUNDS; r++) {
		elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
		sonde_unw_table__free(t);
		t = elf ? sonde_unw_table__build(elf) : NULL;
		elf_end(elf);
		if (!t) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			close(fd);
			return -1;
		}
		ns[r] = t->stats.build_ns;
	}
	qsort(ns, ROUNDS, sizeof(ns[0]), cmp_u64);
	rss0 = peak_rss_kib() - rss0;
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	cached = elf ? cache_ms(elf, fd, t) : -1;
	elf_end(elf);
	printf("%s %zu %zu %zu %zu %.2f %.2f %ld %.2f\n", path, t->nrows,
	       t->nrows * sizeof(t->rows[0]), t->stats.fdes, t->stats.unsupported,
	       (double)ns[0] / 1e6, (double)ns[ROUNDS / 2] / 1e6, rss0, cached);
	sonde_unw_table__free(t);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	char cmd[64];
	int i, rc = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: unw-tablebench FILE...\n");
		return 2;
	}
	elf_version(EV_CURRENT);
	if (!mkdtemp(cache_dir)) {
		perror("mkdtemp");
		return 1;
	}
	for (i = 1; i < argc; i++)
		rc |= bench(argv[i]) ? 1 : 0;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", cache_dir);
	if (system(cmd) != 0)
		rc = 1;
	return rc;
}
