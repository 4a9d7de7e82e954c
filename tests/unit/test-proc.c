// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "symbolize.h"

#define ID1 "4c01db0b339c4a6d9c3a9c1e5b0b6d2f8e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c"
#define ID2 "a3f5e0c9b8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1"
#define ID3 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* ---- fixture helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *dir, const char *rel, const void *data, size_t len)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void write_str(const char *dir, const char *rel, const char *s)
{
	write_file(dir, rel, s, strlen(s));
}

static void make_dir(const char *dir, const char *rel)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	assert_int_equal(mkdir(path, 0755), 0);
}

static const char fixture_maps[] =
	"55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234                       /usr/bin/app\n"
	"55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234                       /usr/bin/app\n"
	"55d0c0a05000-55d0c0a06000 rw-p 00005000 fd:01 1234                       /usr/bin/app\n"
	"55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]\n"
	"7f1000000000-7f1000001000 r-xp 00000000 00:00 0 \n"
	"7f1000100000-7f1000200000 r-xp 00028000 103:02 98765                     "
	"/lib/x86_64-linux-gnu/libc.so.6\n"
	"7f1000300000-7f1000301000 r-xp 00001000 fd:01 555                        "
	"/tmp/my lib.so (deleted)\n"
	"7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0                          [vdso]\n"
	"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

/* A proc root with process 123 (a container process with all files) and
 * 124 (cgroup v1 only, no exe, empty cmdline), plus entries that are not
 * processes. */
static char *make_proc_root(void)
{
	static const char cmdline[] = "/usr/bin/app\0--port\0"
				      "8080\0";
	char tmpl[] = "/tmp/sonde-proc-XXXXXX", path[PATH_MAX];
	char *root = mkdtemp(tmpl);

	assert_non_null(root);
	root = strdup(root);
	make_dir(root, "123");
	write_str(root, "123/comm", "my app\n");
	write_file(root, "123/cmdline", cmdline, sizeof(cmdline) - 1);
	write_str(root, "123/stat", "123 (my (app) x) S 77 123 123 0 -1 4194560 100 0 0 0\n");
	write_str(root, "123/cgroup",
		  "12:memory:/docker/" ID1 "\n"
		  "0::/system.slice/docker-" ID2 ".scope\n");
	write_str(root, "123/maps", fixture_maps);
	snprintf(path, sizeof(path), "%s/123/exe", root);
	assert_int_equal(symlink("/usr/bin/app", path), 0);

	make_dir(root, "124");
	write_str(root, "124/comm", "kworker/0:1\n");
	write_str(root, "124/cmdline", "");
	write_str(root, "124/stat", "124 (kworker/0:1) I 2 0 0 0 -1\n");
	write_str(root, "124/cgroup",
		  "5:cpu,cpuacct:/kubepods/burstable/pod6b3c8d2e-1f4a-4c6b-9d7e-2a1b3c4d5e6f/" ID3
		  "\n4:memory:/other\n");
	write_str(root, "124/maps", "");

	make_dir(root, "self");
	make_dir(root, "sys");
	return root;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- container ids ---- */

static void test_container_ids(void **state)
{
	static const struct {
		const char *path;
		const char *id; /* NULL: none */
	} cases[] = {
		/* docker, cgroupfs driver (v1 and v2) and systemd driver */
		{"/docker/" ID1, ID1},
		{"/system.slice/docker-" ID1 ".scope", ID1},
		/* containerd / CRI, systemd driver, all QoS classes */
		{"/kubepods.slice/kubepods-burstable.slice/"
		 "kubepods-burstable-pod6b3c8d2e_1f4a_4c6b_9d7e_2a1b3c4d5e6f.slice/"
		 "cri-containerd-" ID2 ".scope",
		 ID2},
		{"/kubepods.slice/kubepods-besteffort.slice/"
		 "kubepods-besteffort-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/"
		 "cri-containerd-" ID3 ".scope",
		 ID3},
		{"/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/"
		 "cri-containerd-" ID1 ".scope",
		 ID1},
		/* Kubernetes, cgroupfs driver (v1 style) */
		{"/kubepods/burstable/pod6b3c8d2e-1f4a-4c6b-9d7e-2a1b3c4d5e6f/" ID2, ID2},
		{"/kubepods/besteffort/pod6b3c8d2e-1f4a-4c6b-9d7e-2a1b3c4d5e6f/" ID3, ID3},
		/* cri-o; its conmon is not the container */
		{"/kubepods.slice/kubepods-burstable.slice/"
		 "kubepods-burstable-pod6b3c8d2e_1f4a_4c6b_9d7e_2a1b3c4d5e6f.slice/"
		 "crio-" ID1 ".scope",
		 ID1},
		{"/kubepods.slice/kubepods-burstable.slice/"
		 "kubepods-burstable-pod6b3c8d2e_1f4a_4c6b_9d7e_2a1b3c4d5e6f.slice/"
		 "crio-conmon-" ID1 ".scope",
		 NULL},
		/* podman, root and rootless; its conmon is not the container */
		{"/machine.slice/libpod-" ID2 ".scope", ID2},
		{"/machine.slice/libpod-" ID2 ".scope/container", ID2},
		{"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" ID3
		 ".scope/container",
		 ID3},
		{"/machine.slice/libpod-conmon-" ID2 ".scope", NULL},
		/* nested: the innermost container wins */
		{"/docker/" ID1 "/docker/" ID2, ID2},
		{"/docker/" ID1 "/init.scope", ID1},
		/* not containers */
		{"/", NULL},
		{"", NULL},
		{"/user.slice/user-1000.slice/session-3.scope", NULL},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/"
		 "app-gnome-firefox-4242.scope",
		 NULL},
		{"/system.slice/nginx.service", NULL},
		{"/system.slice/docker.service", NULL},
		{"/kubepods.slice/kubepods-burstable.slice", NULL},
		/* almost ids: uppercase, 63 digits, unknown runtime prefix */
		{"/docker/4C01DB0B339C4A6D9C3A9C1E5B0B6D2F8E7A6B5C4D3E2F1A0B9C8D7E6F5A4B3C", NULL},
		{"/docker/4c01db0b339c4a6d9c3a9c1e5b0b6d2f8e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3", NULL},
		{"/system.slice/foo-" ID1 ".scope", NULL},
	};
	char out[SONDE_CONTAINER_ID_LEN + 1];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool found = sonde_cgroup_container_id(cases[i].path, out);

		if (cases[i].id) {
			if (!found || strcmp(out, cases[i].id))
				fail_msg("%s: got '%s', want %s", cases[i].path, out, cases[i].id);
		} else if (found || out[0]) {
			fail_msg("%s: got '%s', want none", cases[i].path, out);
		}
	}
	assert_false(sonde_cgroup_container_id(NULL, out));
	assert_string_equal(out, "");
}

/* ---- /proc scan from a fixture ---- */

static void test_scan_fixture(void **state)
{
	struct sonde_procs_opts opts = {0};
	struct sonde_procs_stats st;
	struct sonde_procs *procs;
	struct sonde_proc *p;
	char *root = make_proc_root();

	(void)state;
	opts.proc_root = root;
	procs = sonde_procs__new(NULL, &opts);
	assert_non_null(procs);
	assert_int_equal(sonde_procs__scan(procs), 0);
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.processes, 2);
	assert_int_equal(st.scans, 2);

	p = sonde_procs__get(procs, 123);
	assert_non_null(p);
	assert_int_equal(p->pid, 123);
	assert_int_equal(p->ppid, 77);
	assert_string_equal(p->comm, "my app");
	assert_string_equal(p->exe, "/usr/bin/app");
	assert_string_equal(p->cmdline, "/usr/bin/app --port 8080");
	assert_string_equal(p->cgroup, "/system.slice/docker-" ID2 ".scope");
	assert_string_equal(p->container_id, ID2);
	assert_int_equal(p->exit_ns, 0);

	/* Executable mappings only, [vdso] kept, anonymous and [vsyscall] not. */
	assert_int_equal(p->nmaps, 4);
	assert_int_equal(p->maps[0].start, 0x55d0c0a02000);
	assert_int_equal(p->maps[0].end, 0x55d0c0a05000);
	assert_int_equal(p->maps[0].pgoff, 0x2000);
	assert_int_equal(p->maps[0].dev, makedev(0xfd, 0x01));
	assert_int_equal(p->maps[0].ino, 1234);
	assert_string_equal(p->maps[0].name, "/usr/bin/app");
	assert_int_equal(p->maps[0].since_ns, 0);
	assert_true(p->maps[0].until_ns == UINT64_MAX);
	assert_null(p->maps[0].obj);

	assert_int_equal(p->maps[1].start, 0x7f1000100000);
	assert_int_equal(p->maps[1].end, 0x7f1000200000);
	assert_int_equal(p->maps[1].pgoff, 0x28000);
	assert_int_equal(p->maps[1].dev, makedev(0x103, 0x02));
	assert_int_equal(p->maps[1].ino, 98765);
	assert_string_equal(p->maps[1].name, "/lib/x86_64-linux-gnu/libc.so.6");

	assert_int_equal(p->maps[2].start, 0x7f1000300000);
	assert_int_equal(p->maps[2].pgoff, 0x1000);
	assert_int_equal(p->maps[2].ino, 555);
	assert_string_equal(p->maps[2].name, "/tmp/my lib.so");

	assert_int_equal(p->maps[3].start, 0x7ffc00000000);
	assert_string_equal(p->maps[3].name, "[vdso]");
	assert_int_equal(p->maps[3].ino, 0);

	assert_ptr_equal(sonde_procs__find_mapping(procs, p, 0x55d0c0a04fff, 1), &p->maps[0]);
	assert_ptr_equal(sonde_procs__find_mapping(procs, p, 0x7f1000150000, 1), &p->maps[1]);

	p = sonde_procs__get(procs, 124);
	assert_non_null(p);
	assert_int_equal(p->ppid, 2);
	assert_string_equal(p->comm, "kworker/0:1");
	assert_null(p->exe);
	assert_null(p->cmdline);
	assert_string_equal(p->cgroup,
			    "/kubepods/burstable/pod6b3c8d2e-1f4a-4c6b-9d7e-2a1b3c4d5e6f/" ID3);
	assert_string_equal(p->container_id, ID3);
	assert_int_equal(p->nmaps, 0);

	/* Neither known nor in /proc. */
	assert_null(sonde_procs__get(procs, 999));
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.unknown_pids, 1);
	assert_int_equal(st.processes, 2);

	sonde_procs__free(procs);
	rm_tree(root);
	free(root);
}

/* A miss rereads maps (rate-limited); a mapping found late meets late samples
 * and samples from before the exec still meet the old image. */
static void test_rescan(void **state)
{
	struct sonde_procs_opts opts = {0};
	const struct sonde_mapping *m;
	struct sonde_procs_stats st;
	struct sonde_procs *procs;
	struct sonde_proc *p;
	char *root = make_proc_root();

	(void)state;
	opts.proc_root = root;
	opts.rescan_ns = 1;
	procs = sonde_procs__new(NULL, &opts);
	assert_non_null(procs);
	p = sonde_procs__get(procs, 123);
	assert_non_null(p);
	assert_int_equal(p->nmaps, 4);

	/* A library loaded after the first read. */
	write_str(root, "123/maps",
		  "55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234 /usr/bin/app\n"
		  "7f2000000000-7f2000004000 r-xp 00000000 fd:01 777 /usr/lib/libnew.so\n");
	m = sonde_procs__find_mapping(procs, p, 0x7f2000001000, 5);
	assert_non_null(m);
	assert_string_equal(m->name, "/usr/lib/libnew.so");
	assert_int_equal(m->ino, 777);
	assert_int_equal(m->since_ns, 0);
	assert_int_equal(p->nmaps, 5); /* the app mapping was current already */
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.scans, 2);

	/* An exec at 1000 whose mmaps we did not see. */
	sonde_procs__on_exec_mm(procs, 123, 1000);
	write_str(root, "123/maps",
		  "55d0c0a02000-55d0c0a09000 r-xp 00001000 fd:01 4321 /usr/bin/other\n");
	m = sonde_procs__find_mapping(procs, p, 0x55d0c0a03000, 1500);
	assert_non_null(m);
	assert_string_equal(m->name, "/usr/bin/other");
	assert_int_equal(m->since_ns, 1000);
	m = sonde_procs__find_mapping(procs, p, 0x55d0c0a03000, 500);
	assert_non_null(m);
	assert_string_equal(m->name, "/usr/bin/app");
	assert_int_equal(m->until_ns, 1000);
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.scans, 3);
	assert_int_equal(st.unmapped_addrs, 0);
	sonde_procs__free(procs);

	/* With a long rescan interval a miss right after the read stays a miss. */
	opts.rescan_ns = 3600ULL * 1000000000ULL;
	procs = sonde_procs__new(NULL, &opts);
	assert_non_null(procs);
	p = sonde_procs__get(procs, 123);
	assert_non_null(p);
	assert_null(sonde_procs__find_mapping(procs, p, 0x1234, 5));
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.scans, 1);
	assert_int_equal(st.unmapped_addrs, 1);
	sonde_procs__free(procs);

	rm_tree(root);
	free(root);
}

/* ---- mapping history ---- */

static void test_history(void **state)
{
	struct sonde_procs_opts opts = {0};
	const struct sonde_mapping *m;
	struct sonde_procs_stats st;
	struct sonde_procs *procs;
	struct sonde_proc *p, *c;
	struct sonde_exit_event ex = {0};
	struct sonde_fork_event fe = {0};
	char tmpl[] = "/tmp/sonde-proc-XXXXXX";
	char *root = mkdtemp(tmpl); /* an empty /proc: everything comes from events */
	uint64_t scans;

	(void)state;
	assert_non_null(root);
	opts.proc_root = root;
	opts.grace_ns = 100;
	opts.rescan_ns = 3600ULL * 1000000000ULL;
	procs = sonde_procs__new(NULL, &opts);
	assert_non_null(procs);

	sonde_procs__on_mmap(procs, 4242, 10, 0x1000, 0x1000, 0, 8, 1, 100, "/a");
	sonde_procs__on_mmap(procs, 4242, 20, 0x1800, 0x1000, 0x3000, 8, 1, 200, "/b");
	p = sonde_procs__get(procs, 4242);
	assert_non_null(p);
	assert_int_equal(p->nmaps, 2);

	m = sonde_procs__find_mapping(procs, p, 0x1900, 15);
	assert_non_null(m);
	assert_int_equal(m->ino, 100);
	assert_int_equal(m->until_ns, 20);
	m = sonde_procs__find_mapping(procs, p, 0x1900, 25);
	assert_non_null(m);
	assert_int_equal(m->ino, 200);
	assert_int_equal(m->pgoff, 0x3000);
	assert_int_equal(m->dev, makedev(8, 1));
	assert_string_equal(m->name, "/b");
	/* Not split: what is left of /a is not current after 20. */
	assert_null(sonde_procs__find_mapping(procs, p, 0x1100, 25));
	assert_non_null(sonde_procs__find_mapping(procs, p, 0x1100, 19));
	assert_null(sonde_procs__find_mapping(procs, p, 0x1100, 5));
	/* [start, end) */
	assert_null(sonde_procs__find_mapping(procs, p, 0x2800, 25));
	assert_non_null(sonde_procs__find_mapping(procs, p, 0x27ff, 25));

	/* An exec ends both; history still answers late samples. */
	sonde_procs__on_exec_mm(procs, 4242, 30);
	assert_null(sonde_procs__find_mapping(procs, p, 0x1900, 35));
	m = sonde_procs__find_mapping(procs, p, 0x1900, 25);
	assert_non_null(m);
	assert_int_equal(m->ino, 200);
	assert_int_equal(m->until_ns, 30);

	/* Anonymous code is not a mapping we keep; [vdso] is. */
	sonde_procs__on_mmap(procs, 4242, 35, 0x9000, 0x1000, 0, 0, 0, 0, "//anon");
	sonde_procs__on_mmap(procs, 4242, 35, 0x7000, 0x2000, 0, 0, 0, 0, "[vdso]");
	assert_int_equal(p->nmaps, 3);

	/* Fork copies what is current at the fork only. */
	sonde_procs__on_mmap(procs, 4242, 40, 0x5000, 0x1000, 0, 8, 1, 300, "/c");
	sonde_procs__on_fork_mm(procs, 4242, 4243, 50);
	c = sonde_procs__get(procs, 4243);
	assert_non_null(c);
	assert_int_equal(c->ppid, 4242);
	assert_int_equal(c->nmaps, 2);
	m = sonde_procs__find_mapping(procs, c, 0x5000, 55);
	assert_non_null(m);
	assert_string_equal(m->name, "/c");
	assert_int_equal(m->since_ns, 50);
	assert_null(sonde_procs__find_mapping(procs, c, 0x5000, 45)); /* before the fork */
	assert_null(sonde_procs__find_mapping(procs, c, 0x1900, 25));
	/* The parent is unchanged by its child's mmaps. */
	sonde_procs__on_mmap(procs, 4243, 52, 0x5000, 0x1000, 0, 8, 1, 301, "/d");
	assert_int_equal(sonde_procs__find_mapping(procs, c, 0x5000, 55)->ino, 301);
	assert_int_equal(sonde_procs__find_mapping(procs, p, 0x5000, 55)->ino, 300);

	/* Records of two CPUs out of order: the older mapping is born ended. */
	sonde_procs__on_mmap(procs, 4242, 100, 0xa000, 0x1000, 0, 8, 1, 401, "/new");
	sonde_procs__on_mmap(procs, 4242, 90, 0xa000, 0x1000, 0, 8, 1, 400, "/old");
	assert_int_equal(sonde_procs__find_mapping(procs, p, 0xa000, 95)->ino, 400);
	assert_int_equal(sonde_procs__find_mapping(procs, p, 0xa000, 105)->ino, 401);

	/* Exit, then reap after grace (100). */
	ex.hdr.type = SONDE_EV_EXIT;
	ex.hdr.pid = 4243;
	ex.hdr.time_ns = 60;
	sonde_procs__on_exit(procs, &ex);
	assert_int_equal(c->exit_ns, 60);
	/* Exited, so a miss does not rescan. */
	sonde_procs__stats(procs, &st);
	scans = st.scans;
	assert_null(sonde_procs__find_mapping(procs, c, 0xdead000, 55));
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.scans, scans);

	sonde_procs__reap(procs, 150); /* horizon 50: /a (until 20), /b (30) go */
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.processes, 2);
	assert_int_equal(p->nmaps, 4); /* [vdso], /c, /old (until 100), /new */
	assert_null(sonde_procs__find_mapping(procs, p, 0x1900, 25));
	assert_non_null(sonde_procs__find_mapping(procs, c, 0x5000, 55)); /* in grace */

	sonde_procs__reap(procs, 161); /* the child exited 101 ago */
	sonde_procs__stats(procs, &st);
	assert_int_equal(st.processes, 1);
	assert_null(sonde_procs__get(procs, 4243));

	/* Pid reuse: a fork of an exited pid starts afresh. */
	ex.hdr.pid = 4242;
	ex.hdr.time_ns = 170;
	sonde_procs__on_exit(procs, &ex);
	fe.hdr.type = SONDE_EV_FORK;
	fe.hdr.pid = 4242;
	fe.hdr.time_ns = 180;
	fe.ppid = 1;
	memcpy(fe.comm, "sh", 3);
	sonde_procs__on_fork(procs, &fe);
	p = sonde_procs__get(procs, 4242);
	assert_non_null(p);
	assert_int_equal(p->exit_ns, 0);
	assert_int_equal(p->ppid, 1);
	assert_string_equal(p->comm, "sh");
	assert_int_equal(p->nmaps, 0);

	sonde_procs__free(procs);
	rm_tree(root);
}

/* ---- lifecycle events with a fixture cgroup tree ---- */

static void test_events_and_cgroups(void **state)
{
	static const char args[] = "python3\0-m\0http.server\0"
				   "8000";
	struct sonde_procs_opts opts = {0};
	struct sonde_exec_event ev = {0};
	struct sonde_fork_event fe = {0};
	struct sonde_exit_event ex = {0};
	char tmpl[] = "/tmp/sonde-proc-XXXXXX", cg_tmpl[] = "/tmp/sonde-cg-XXXXXX";
	char *root = mkdtemp(tmpl), *cg = mkdtemp(cg_tmpl), path[PATH_MAX];
	struct sonde_procs *procs;
	struct sonde_proc *p, *c;
	struct stat st;

	(void)state;
	assert_non_null(root);
	assert_non_null(cg);
	make_dir(cg, "kubepods.slice");
	make_dir(cg, "kubepods.slice/kubepods-burstable.slice");
	make_dir(cg, "kubepods.slice/kubepods-burstable.slice/cri-containerd-" ID1 ".scope");
	make_dir(cg, "system.slice");
	write_str(cg, "system.slice/cgroup.procs", "1\n");
	snprintf(path, sizeof(path),
		 "%s/kubepods.slice/kubepods-burstable.slice/cri-containerd-" ID1 ".scope", cg);
	assert_int_equal(stat(path, &st), 0);

	opts.proc_root = root;
	opts.cgroup_root = cg;
	procs = sonde_procs__new(NULL, &opts);
	assert_non_null(procs);

	ev.hdr.type = SONDE_EV_EXEC;
	ev.hdr.pid = 500;
	ev.hdr.time_ns = 1000;
	ev.ppid = 499;
	ev.cgroup_id = st.st_ino;
	memcpy(ev.comm, "python3", 8);
	strcpy(ev.filename, "/usr/bin/python3.11");
	memcpy(ev.args, args, sizeof(args) - 1);
	ev.args_len = sizeof(args) - 1;
	sonde_procs__on_exec(procs, &ev);
	p = sonde_procs__get(procs, 500);
	assert_non_null(p);
	assert_string_equal(p->comm, "python3");
	assert_string_equal(p->exe, "/usr/bin/python3.11");
	assert_string_equal(p->cmdline, "python3 -m http.server 8000");
	assert_int_equal(p->ppid, 499);
	assert_string_equal(
		p->cgroup, "/kubepods.slice/kubepods-burstable.slice/cri-containerd-" ID1 ".scope");
	assert_string_equal(p->container_id, ID1);

	/* The fork of a process inherits what its parent is. */
	fe.hdr.type = SONDE_EV_FORK;
	fe.hdr.pid = 501;
	fe.hdr.time_ns = 1100;
	fe.ppid = 500;
	memcpy(fe.comm, "python3", 8);
	sonde_procs__on_fork(procs, &fe);
	c = sonde_procs__get(procs, 501);
	assert_non_null(c);
	assert_int_equal(c->ppid, 500);
	assert_string_equal(c->comm, "python3");
	assert_string_equal(c->exe, "/usr/bin/python3.11");
	assert_string_equal(c->cmdline, "python3 -m http.server 8000");
	assert_string_equal(c->container_id, ID1);

	/* exec in the child: argv cut at args_len, the root cgroup is "/" */
	assert_int_equal(stat(cg, &st), 0);
	ev.hdr.pid = 501;
	ev.hdr.time_ns = 1200;
	ev.ppid = 500;
	ev.cgroup_id = st.st_ino;
	memcpy(ev.comm, "sh", 3);
	strcpy(ev.filename, "/bin/sh");
	memcpy(ev.args, "sh\0-c\0sleep 1\0", 14);
	ev.args_len = 5;
	sonde_procs__on_exec(procs, &ev);
	assert_string_equal(c->comm, "sh");
	assert_string_equal(c->exe, "/bin/sh");
	assert_string_equal(c->cmdline, "sh -c");
	assert_string_equal(c->cgroup, "/");
	assert_string_equal(c->container_id, "");

	ex.hdr.type = SONDE_EV_EXIT;
	ex.hdr.pid = 501;
	ex.hdr.time_ns = 1300;
	sonde_procs__on_exit(procs, &ex);
	assert_int_equal(c->exit_ns, 1300);

	/* pid 501 reused by an exec'd process: a fresh entry. */
	ev.hdr.time_ns = 1400;
	ev.cgroup_id = 0;
	memcpy(ev.comm, "true", 5);
	strcpy(ev.filename, "/usr/bin/true");
	ev.args_len = 0;
	sonde_procs__on_exec(procs, &ev);
	c = sonde_procs__get(procs, 501);
	assert_int_equal(c->exit_ns, 0);
	assert_string_equal(c->comm, "true");
	assert_null(c->cmdline);
	assert_null(c->cgroup);

	/* A cgroup made after the walk is found only once the rate limit
	 * (1 s) allows another walk. */
	make_dir(cg, "system.slice/nginx.service");
	snprintf(path, sizeof(path), "%s/system.slice/nginx.service", cg);
	assert_int_equal(stat(path, &st), 0);
	ev.hdr.pid = 600;
	ev.cgroup_id = st.st_ino;
	sonde_procs__on_exec(procs, &ev);
	p = sonde_procs__get(procs, 600);
	assert_null(p->cgroup);
	usleep(1100 * 1000);
	sonde_procs__on_exec(procs, &ev);
	assert_string_equal(p->cgroup, "/system.slice/nginx.service");

	sonde_procs__free(procs);
	rm_tree(root);
	rm_tree(cg);
}

/* ---- the real /proc ---- */

static void test_real_proc(void **state)
{
	struct sonde_procs *procs = sonde_procs__new(NULL, NULL);
	const struct sonde_mapping *m;
	char exe[PATH_MAX], comm[64];
	struct sonde_proc *p;
	struct stat st;
	Dl_info info;
	ssize_t n;
	FILE *f;

	(void)state;
	assert_non_null(procs);
	assert_int_equal(sonde_procs__scan(procs), 0);

	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';
	f = fopen("/proc/self/comm", "r");
	assert_non_null(f);
	assert_non_null(fgets(comm, sizeof(comm), f));
	fclose(f);
	comm[strcspn(comm, "\n")] = '\0';

	p = sonde_procs__get(procs, (uint32_t)getpid());
	assert_non_null(p);
	assert_string_equal(p->comm, comm);
	assert_string_equal(p->comm, "test-proc");
	assert_string_equal(p->exe, exe);
	assert_int_equal(p->ppid, getppid());
	m = sonde_procs__find_mapping(procs, p, (uint64_t)(uintptr_t)&test_real_proc, mono_ns());
	assert_non_null(m);
	assert_string_equal(m->name, exe);
	assert_true(m->start <= (uintptr_t)&test_real_proc && (uintptr_t)&test_real_proc < m->end);
	/* The library that holds getpid() is there too, with its inode. */
	assert_int_not_equal(dladdr((void *)&getpid, &info), 0);
	assert_int_equal(stat(info.dli_fname, &st), 0);
	m = sonde_procs__find_mapping(procs, p, (uint64_t)(uintptr_t)&getpid, mono_ns());
	assert_non_null(m);
	assert_int_equal(m->ino, st.st_ino);
	assert_int_equal(m->dev, st.st_dev);
	/* pid 1 exists in any pid namespace. */
	assert_non_null(sonde_procs__get(procs, 1));
	sonde_procs__free(procs);
}

/* With a symbolizer: mappings get their objects, and the seam names code. */
static void test_real_proc_symbolized(void **state)
{
	struct sonde_symbolizer *sym = sonde_symbolizer__new(NULL);
	uint64_t self = (uint64_t)(uintptr_t)&test_real_proc_symbolized, vaddr;
	struct sonde_symbol_frame frames[4];
	const struct sonde_mapping *m;
	struct sonde_procs *procs;
	struct sonde_proc *p;
	char exe[PATH_MAX];
	bool vdso = false;
	uint32_t i;
	ssize_t n;
	int nf;

	(void)state;
	assert_non_null(sym);
	procs = sonde_procs__new(sym, NULL);
	assert_non_null(procs);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';

	p = sonde_procs__get(procs, (uint32_t)getpid());
	assert_non_null(p);
	m = sonde_procs__find_mapping(procs, p, self, mono_ns());
	assert_non_null(m);
	assert_non_null(m->obj);
	assert_string_equal(sonde_object__name(m->obj), exe);
	vaddr = sonde_object__to_vaddr(m->obj, m->start, m->pgoff, self);
	nf = sonde_object__symbolize(m->obj, vaddr, frames, 4);
	assert_true(nf >= 1);
	assert_string_equal(frames[nf - 1].function, "test_real_proc_symbolized");
	for (i = 0; i < p->nmaps; i++) {
		if (!strcmp(p->maps[i].name, "[vdso]")) {
			assert_ptr_equal(p->maps[i].obj, sonde_symbolizer__vdso(sym));
			vdso = true;
		}
	}
	assert_true(vdso);
	sonde_procs__free(procs);
	sonde_symbolizer__free(sym);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_container_ids),
		cmocka_unit_test(test_scan_fixture),
		cmocka_unit_test(test_rescan),
		cmocka_unit_test(test_history),
		cmocka_unit_test(test_events_and_cgroups),
		cmocka_unit_test(test_real_proc),
		cmocka_unit_test(test_real_proc_symbolized),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
