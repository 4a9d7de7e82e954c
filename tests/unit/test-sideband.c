// SPDX-License-Identifier: MIT
/*
 * The side-band against the running kernel: children map code and exit,
 * and the registry still answers for their addresses afterwards, from the
 * records alone (the children are gone from /proc by then). Needs root
 * (perf_event_open of every process on every CPU).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "sideband.h"

struct fixture {
	struct sonde_procs *procs;
	struct sonde_sideband *sb;
	char dir[64];
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static bool in_ci(void)
{
	const char *ci = getenv("CI");

	return ci && !strcmp(ci, "true");
}

/* Skips with a reason, or fails when CI=true: CI must run these. */
static void cannot_run(const char *why)
{
	if (in_ci())
		fail_msg("CI=true but %s", why);
	fprintf(stderr, "skipped: %s\n", why);
	skip();
}

static void fixture_open(struct fixture *f, unsigned int pages)
{
	memset(f, 0, sizeof(*f));
	if (geteuid() != 0)
		cannot_run("needs root for perf_event_open on all processes");
	f->procs = sonde_procs__new(NULL, NULL);
	assert_non_null(f->procs);
	f->sb = sonde_sideband__new(f->procs, pages);
	if (!f->sb && (errno == EACCES || errno == EPERM)) {
		sonde_procs__free(f->procs);
		cannot_run("perf_event_open refused (perf_event_paranoid, seccomp?)");
	}
	assert_non_null(f->sb);
	assert_true(sonde_sideband__fd(f->sb) >= 0);
	strcpy(f->dir, "/tmp/sonde-sb-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
}

static void fixture_close(struct fixture *f)
{
	char cmd[128];

	sonde_sideband__free(f->sb);
	sonde_procs__free(f->procs);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", f->dir);
}

/* A file with a page or two of bytes to map as code; its inode into st. */
static void make_code_file(const char *path, size_t size, struct stat *st)
{
	char *buf = calloc(1, size);
	int fd;

	assert_non_null(buf);
	memset(buf, 0xc3, size); /* ret */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, size), (ssize_t)size);
	assert_int_equal(close(fd), 0);
	assert_int_equal(stat(path, st), 0);
	free(buf);
}

/*
 * Polls the side-band fd and drains it until done() holds, for up to a
 * second. How many times the fd turned readable into *wakeups.
 */
static bool drain_until(struct fixture *f, bool (*done)(struct fixture *f, void *ctx), void *ctx,
			int *wakeups)
{
	struct pollfd pfd = {.fd = sonde_sideband__fd(f->sb), .events = POLLIN};
	uint64_t deadline = mono_ns() + 1000000000ULL;
	int n;

	do {
		n = poll(&pfd, 1, 50);
		if (n > 0 && wakeups)
			(*wakeups)++;
		assert_true(sonde_sideband__drain(f->sb) >= 0);
		if (done(f, ctx))
			return true;
	} while (mono_ns() < deadline);
	return false;
}

struct child_map {
	uint32_t pid;
	uint64_t addr, time;
	const char *path;
};

static bool child_mapped(struct fixture *f, void *ctx)
{
	struct child_map *c = ctx;
	struct sonde_proc *p = sonde_procs__get(f->procs, c->pid);
	const struct sonde_mapping *m;

	if (!p)
		return false;
	m = sonde_procs__find_mapping(f->procs, p, c->addr, c->time);
	return m && m->name && !strcmp(m->name, c->path);
}

static void test_child_mmap(void **state)
{
	struct fixture f;
	struct child_map c;
	const struct sonde_mapping *m;
	char path[PATH_MAX], exe[PATH_MAX];
	struct sonde_proc *p;
	struct stat st;
	uint64_t msg[2];
	int pfd[2], status, wakeups = 0;
	ssize_t n;
	pid_t pid;

	(void)state;
	fixture_open(&f, 0);
	snprintf(path, sizeof(path), "%s/code.bin", f.dir);
	make_code_file(path, 8192, &st);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(path, O_RDONLY);
		void *addr = fd < 0 ? MAP_FAILED
				    : mmap(NULL, 8192, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);

		msg[0] = addr == MAP_FAILED ? 0 : (uint64_t)(uintptr_t)addr + 100;
		msg[1] = mono_ns();
		_exit(write(pfd[1], msg, sizeof(msg)) == sizeof(msg) ? 0 : 1);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], msg, sizeof(msg)), sizeof(msg));
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_not_equal(msg[0], 0);
	assert_true(kill(pid, 0) < 0); /* gone: only the records can tell */

	c.pid = (uint32_t)pid;
	c.addr = msg[0];
	c.time = msg[1];
	c.path = path;
	assert_true(drain_until(&f, child_mapped, &c, &wakeups));
	assert_true(wakeups > 0);

	p = sonde_procs__get(f.procs, (uint32_t)pid);
	assert_non_null(p);
	assert_int_equal(p->ppid, getpid());
	m = sonde_procs__find_mapping(f.procs, p, c.addr, c.time);
	assert_non_null(m);
	assert_int_equal(m->ino, st.st_ino);
	assert_int_equal(m->dev, st.st_dev);
	assert_int_equal(m->end - m->start, 8192);
	assert_int_equal(m->pgoff, 0);
	assert_true(m->since_ns > 0 && m->since_ns <= c.time);
	/* Before its mmap the child had no such mapping. */
	assert_null(sonde_procs__find_mapping(f.procs, p, c.addr, m->since_ns - 1));
	/* What the child had from its parent came with the fork. */
	m = sonde_procs__find_mapping(f.procs, p, (uint64_t)(uintptr_t)&test_child_mmap, c.time);
	assert_non_null(m);
	assert_string_equal(m->name, exe);
	assert_int_equal(sonde_sideband__lost(f.sb), 0);
	fixture_close(&f);
}

struct child_exec {
	uint32_t pid;
	uint64_t time;
	const char *path;
	const struct sonde_mapping *found;
};

static bool child_execed(struct fixture *f, void *ctx)
{
	struct child_exec *c = ctx;
	struct sonde_proc *p = sonde_procs__get(f->procs, c->pid);
	uint32_t i;

	if (!p)
		return false;
	for (i = 0; i < p->nmaps; i++) {
		if (p->maps[i].name && !strcmp(p->maps[i].name, c->path)) {
			c->found =
				sonde_procs__find_mapping(f->procs, p, p->maps[i].start, c->time);
			return c->found != NULL;
		}
	}
	return false;
}

static void test_child_exec(void **state)
{
	struct child_exec c = {0};
	struct fixture f;
	const struct sonde_mapping *m;
	char exe[PATH_MAX], truepath[PATH_MAX];
	uint64_t self = (uint64_t)(uintptr_t)&test_child_exec, exec_start;
	struct sonde_proc *p;
	bool ended = false;
	int status;
	uint32_t i;
	ssize_t n;
	pid_t pid;

	(void)state;
	fixture_open(&f, 0);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';
	assert_non_null(realpath("/bin/true", truepath)); /* /usr/bin/true on merged /usr */

	exec_start = mono_ns();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = {"true", NULL}, *envp[] = {NULL};

		execve("/bin/true", argv, envp);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	c.pid = (uint32_t)pid;
	c.time = mono_ns();
	c.path = truepath;
	assert_true(drain_until(&f, child_execed, &c, NULL));
	assert_string_equal(c.found->name, truepath);
	assert_true(c.found->since_ns > exec_start && c.found->since_ns < c.time);

	p = sonde_procs__get(f.procs, (uint32_t)pid);
	assert_non_null(p);
	/* The image inherited at fork ended with the exec, before the new one. */
	for (i = 0; i < p->nmaps; i++) {
		if (!strcmp(p->maps[i].name, exe) && p->maps[i].start <= self &&
		    self < p->maps[i].end) {
			assert_true(p->maps[i].until_ns != UINT64_MAX);
			assert_true(p->maps[i].until_ns <= c.found->since_ns);
			ended = true;
		}
	}
	assert_true(ended);
	m = sonde_procs__find_mapping(f.procs, p, self, c.time);
	assert_true(m == NULL || strcmp(m->name, exe) != 0);
	/* The dynamic loader and libc of the new image came as records too. */
	for (i = 0, n = 0; i < p->nmaps; i++)
		if (p->maps[i].until_ns == UINT64_MAX && strstr(p->maps[i].name, "/ld-linux"))
			n++;
	assert_true(n > 0);
	fixture_close(&f);
}

/*
 * A one-page ring wraps many times over; records of varying size (file
 * names of varying length) then straddle its end, and every one of them
 * must still be read whole.
 */
static void test_ring_wrap(void **state)
{
	enum { FILES = 24, ROUNDS = 300 };
	struct fixture f;
	struct stat st[FILES];
	char path[FILES][PATH_MAX];
	uint64_t addrs[ROUNDS], times[ROUNDS];
	const struct sonde_mapping *m;
	struct sonde_proc *p;
	cpu_set_t cpus, old;
	int fds[FILES], i, k;

	(void)state;
	fixture_open(&f, 1);
	for (k = 0; k < FILES; k++) {
		int len = snprintf(path[k], sizeof(path[k]), "%s/", f.dir);

		memset(path[k] + len, 'a' + k % 26, (size_t)(k * 7 + 1));
		path[k][len + k * 7 + 1] = '\0';
		make_code_file(path[k], 4096, &st[k]);
		fds[k] = open(path[k], O_RDONLY);
		assert_true(fds[k] >= 0);
	}
	/* One CPU, so all our records go through the one small ring. */
	assert_int_equal(sched_getaffinity(0, sizeof(old), &old), 0);
	CPU_ZERO(&cpus);
	CPU_SET(sched_getcpu(), &cpus);
	assert_int_equal(sched_setaffinity(0, sizeof(cpus), &cpus), 0);

	for (i = 0; i < ROUNDS; i++) {
		void *addr;

		k = i % FILES;
		addr = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fds[k], 0);

		assert_true(addr != MAP_FAILED);
		addrs[i] = (uint64_t)(uintptr_t)addr;
		times[i] = mono_ns();
		munmap(addr, 4096);
		assert_true(sonde_sideband__drain(f.sb) >= 0);
	}
	sched_setaffinity(0, sizeof(old), &old);
	assert_int_equal(sonde_sideband__lost(f.sb), 0);

	p = sonde_procs__get(f.procs, (uint32_t)getpid());
	assert_non_null(p);
	for (i = 0; i < ROUNDS; i++) {
		k = i % FILES;
		m = sonde_procs__find_mapping(f.procs, p, addrs[i], times[i]);
		if (!m || m->ino != st[k].st_ino || strcmp(m->name, path[k]))
			fail_msg("round %d: mapping of %s at %#llx not found whole", i, path[k],
				 (unsigned long long)addrs[i]);
	}
	for (k = 0; k < FILES; k++)
		close(fds[k]);
	fixture_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_child_mmap),
		cmocka_unit_test(test_child_exec),
		cmocka_unit_test(test_ring_wrap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
