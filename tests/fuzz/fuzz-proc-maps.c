// SPDX-License-Identifier: MIT
/*
 * The process registry's /proc readers on arbitrary bytes: a fake proc
 * root whose one process has the input as its maps file (and, split at
 * the first NUL, as its cgroup file). Lookups over the result must never
 * crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proc.h"
#include "fuzz.h"

static void put(const char *dir, const char *name, const void *data, size_t len)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		abort();
	fwrite(data, 1, len, f);
	fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char root[] = "/tmp/sonde-fuzz-proc-XXXXXX";
	static char pid_dir[64];
	static const char stat_line[] = "4242 (fuzz) S 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1";
	struct sonde_procs_opts opts = { .proc_root = root, .cgroup_root = "/nonexistent" };
	const uint8_t *nul = memchr(data, 0, size);
	size_t maps_len = nul ? (size_t)(nul - data) : size;
	struct sonde_procs *procs;
	struct sonde_proc *p;
	uint64_t addr;
	int i;

	if (!pid_dir[0]) {
		if (!mkdtemp(root))
			abort();
		snprintf(pid_dir, sizeof(pid_dir), "%s/4242", root);
		if (mkdir(pid_dir, 0755))
			abort();
		put(pid_dir, "comm", "fuzz\n", 5);
		put(pid_dir, "cmdline", "fuzz\0--x\0", 9);
		put(pid_dir, "stat", stat_line, sizeof(stat_line) - 1);
	}
	put(pid_dir, "maps", data, maps_len);
	put(pid_dir, "cgroup", nul ? nul + 1 : (const uint8_t *)"", nul ? size - maps_len - 1 : 0);

	procs = sonde_procs__new(NULL, &opts);
	if (!procs)
		return 0;
	sonde_procs__scan(procs);
	p = sonde_procs__get(procs, 4242);
	for (i = 0; p && i < 8; i++) {
		addr = 0;
		if (size >= 8)
			memcpy(&addr, data + (size_t)i * 7 % (size - 7), 8);
		sonde_procs__find_mapping(procs, p, addr, 0);
		sonde_procs__find_mapping(procs, p, 0x400000 + (uint64_t)i * 0x1000, UINT64_MAX);
	}
	sonde_procs__free(procs);
	return 0;
}
