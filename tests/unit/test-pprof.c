// SPDX-License-Identifier: MIT
/*
 * The oracle is Debian's `go tool pprof` (package golang-go): what it prints
 * with -raw, -traces and -top is what users and Pyroscope/Parca will see.
 * Without go the oracle tests skip, except under CI=true where they fail.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "pprof.h"

#define PERIOD INT64_C(10000000) /* 10 ms */

static char tmpdir[] = "/tmp/sonde-test-pprof.XXXXXX";

static bool ci(void)
{
	const char *v = getenv("CI");

	return v && !strcmp(v, "true");
}

static void need_go(void)
{
	if (!system("command -v go >/dev/null 2>&1"))
		return;
	if (ci())
		fail_msg("`go` not found (apt-get install golang-go); required when CI=true");
	print_message("skipping: `go` not found, install golang-go for `go tool pprof`\n");
	skip();
}

static void write_profile(const char *name, const uint8_t *buf, size_t len, char *path,
			  size_t pathsz)
{
	FILE *f;

	snprintf(path, pathsz, "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void encode_to(struct sonde_pprof *p, const char *name, char *path, size_t pathsz)
{
	uint8_t *buf = NULL;
	size_t len = 0;

	assert_int_equal(sonde_pprof__encode(p, &buf, &len), 0);
	write_profile(name, buf, len, path, pathsz);
	free(buf);
}

/* Runs `go tool pprof ARGS FILE`; returns stdout (malloc'd); asserts exit 0, quiet stderr. */
static char *pprof_run(const char *args, const char *file)
{
	char cmd[1024], errpath[512], errtext[4096] = "";
	size_t len = 0, cap = 1 << 16, n;
	char *out = malloc(cap);
	FILE *f;
	int status;

	assert_non_null(out);
	snprintf(errpath, sizeof(errpath), "%s/stderr", tmpdir);
	snprintf(cmd, sizeof(cmd), "go tool pprof %s '%s' 2>'%s'", args, file, errpath);
	f = popen(cmd, "r");
	assert_non_null(f);
	while ((n = fread(out + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 2) {
			cap *= 2;
			out = realloc(out, cap);
			assert_non_null(out);
		}
	}
	out[len] = '\0';
	status = pclose(f);
	f = fopen(errpath, "r");
	if (f) {
		n = fread(errtext, 1, sizeof(errtext) - 1, f);
		errtext[n] = '\0';
		fclose(f);
	}
	if (status != 0)
		fail_msg("`%s` exited %d: %s", cmd, WEXITSTATUS(status), errtext);
	/* Anything there means pprof tried to re-symbolize or found fault. */
	if (errtext[0])
		fail_msg("`%s` wrote to stderr: %s", cmd, errtext);
	return out;
}

/* Splits text into lines in place; returns the count. */
static size_t split_lines(char *text, char **lines, size_t max)
{
	size_t n = 0;
	char *s = text, *nl;

	while (*s && n < max) {
		lines[n++] = s;
		nl = strchr(s, '\n');
		if (!nl)
			break;
		*nl = '\0';
		s = nl + 1;
	}
	return n;
}

/* Index of the line equal to want, failing with the whole output if absent. */
static size_t find_line(char **lines, size_t n, const char *want)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(lines[i], want))
			return i;
	for (i = 0; i < n; i++)
		print_message("| %s\n", lines[i]);
	fail_msg("line not found: \"%s\"", want);
	return 0;
}

static const char *trim(const char *s)
{
	while (*s == ' ')
		s++;
	return s;
}

static size_t find_suffix(char **lines, size_t n, const char *suffix)
{
	size_t i, sl = strlen(suffix), l;

	for (i = 0; i < n; i++) {
		l = strlen(lines[i]);
		if (l >= sl && !strcmp(lines[i] + l - sl, suffix))
			return i;
	}
	fail_msg("no line ends with \"%s\"", suffix);
	return 0;
}

static struct sonde_pprof *new_profile(void)
{
	struct sonde_pprof_opts opts = {
		.period_ns = PERIOD,
		.time_ns = 1700000000LL * 1000000000LL,
		.duration_ns = 10LL * 1000000000LL,
	};
	struct sonde_pprof *p = sonde_pprof__new(&opts);

	assert_non_null(p);
	return p;
}

static void test_interning(void **state)
{
	struct sonde_pprof *p = new_profile();
	struct sonde_pprof_line l;
	uint64_t m1, m2, f, loc, ids[100], bad = 99;
	char name[32];
	int i;

	(void)state;
	m1 = sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/a", "aa");
	assert_int_equal(m1, 1);
	assert_int_equal(sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/a", "aa"), m1);
	/* Every field counts: a different build id is a different mapping. */
	m2 = sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/a", "bb");
	assert_int_equal(m2, 2);
	assert_int_equal(sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/a", NULL), 3);
	assert_int_equal(sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/a", ""), 3);

	for (i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "fn%d", i);
		ids[i] = sonde_pprof__function(p, name, "x.c");
		assert_int_equal(ids[i], i + 1);
	}
	for (i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "fn%d", i);
		assert_int_equal(sonde_pprof__function(p, name, "x.c"), ids[i]);
	}
	f = sonde_pprof__function(p, "fn0", NULL);
	assert_int_equal(f, 101);
	assert_int_equal(sonde_pprof__function(p, "fn0", ""), f);

	l = (struct sonde_pprof_line){ .function_id = ids[0], .line = 3 };
	loc = sonde_pprof__location(p, m1, 0x1234, &l, 1);
	assert_int_equal(loc, 1);
	/* Interned on (mapping, address): other lines do not make a new one. */
	l.function_id = ids[1];
	assert_int_equal(sonde_pprof__location(p, m1, 0x1234, &l, 1), loc);
	assert_int_equal(sonde_pprof__location(p, m2, 0x1234, &l, 1), 2);
	assert_int_equal(sonde_pprof__location(p, m1, 0x1235, NULL, 0), 3);

	/* Dangling ids would make pprof reject the profile. */
	errno = 0;
	assert_int_equal(sonde_pprof__location(p, 42, 0x1, NULL, 0), 0);
	assert_int_equal(errno, EINVAL);
	l.function_id = 999;
	errno = 0;
	assert_int_equal(sonde_pprof__location(p, m1, 0x2, &l, 1), 0);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(sonde_pprof__sample(p, &bad, 1, 1, NULL, 0), -EINVAL);
	assert_int_equal(sonde_pprof__sample(p, &loc, 1, 1, NULL, 0), 0);
	/* Still usable after refused input. */
	assert_int_equal(sonde_pprof__location(p, m1, 0x1236, NULL, 0), 4);
	sonde_pprof__free(p);
	sonde_pprof__free(NULL);
}

static size_t gunzip(const uint8_t *in, size_t inlen, uint8_t **out)
{
	z_stream zs = { 0 };
	size_t cap = 1 << 16;
	int ret;

	*out = malloc(cap);
	assert_non_null(*out);
	assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
	zs.next_in = (Bytef *)in;
	zs.avail_in = (uInt)inlen;
	zs.next_out = *out;
	zs.avail_out = (uInt)cap;
	ret = inflate(&zs, Z_FINISH);
	assert_int_equal(ret, Z_STREAM_END);
	inflateEnd(&zs);
	return zs.total_out;
}

static size_t count_occurrences(const uint8_t *buf, size_t len, const char *s)
{
	size_t n = 0, sl = strlen(s), i;

	for (i = 0; i + sl <= len; i++)
		if (!memcmp(buf + i, s, sl))
			n++;
	return n;
}

/* Needs no go: the gzip framing, string dedup, and re-encoding. */
static void test_gzip_and_reencode(void **state)
{
	struct sonde_pprof *p = new_profile();
	uint8_t *a, *b, *c, *raw_a, *raw_c;
	size_t la, lb, lc, ra, rc;
	uint64_t m, f, loc;
	struct sonde_pprof_line l;
	struct sonde_pprof_label lab = { .key = "comm", .str = "app.c" };

	(void)state;
	m = sonde_pprof__mapping(p, 0x1000, 0x2000, 0, "/bin/app", "ab");
	f = sonde_pprof__function(p, "main", "app.c");
	l = (struct sonde_pprof_line){ .function_id = f, .line = 1 };
	loc = sonde_pprof__location(p, m, 0x1100, &l, 1);
	assert_int_equal(sonde_pprof__sample(p, &loc, 1, 1, &lab, 1), 0);

	assert_int_equal(sonde_pprof__encode(p, &a, &la), 0);
	assert_true(la > 18);
	assert_int_equal(a[0], 0x1f);
	assert_int_equal(a[1], 0x8b);
	assert_int_equal(a[2], 8); /* deflate */
	assert_int_equal(sonde_pprof__encode(p, &b, &lb), 0);
	assert_int_equal(la, lb);
	assert_memory_equal(a, b, la);

	ra = gunzip(a, la, &raw_a);
	/* The file name and the label value are one string-table entry. */
	assert_int_equal(count_occurrences(raw_a, ra, "app.c"), 1);
	assert_int_equal(count_occurrences(raw_a, ra, "/bin/app"), 1);

	assert_int_equal(sonde_pprof__sample(p, &loc, 1, 5, &lab, 1), 0);
	assert_int_equal(sonde_pprof__encode(p, &c, &lc), 0);
	rc = gunzip(c, lc, &raw_c);
	assert_true(rc > ra);
	assert_int_equal(count_occurrences(raw_c, rc, "app.c"), 1);

	free(a);
	free(b);
	free(c);
	free(raw_a);
	free(raw_c);
	sonde_pprof__free(p);
}

struct known {
	uint64_t m_app, m_libc, m_kernel;
	uint64_t l_main, l_inl, l_libc, l_sys, l_entry, l_unknown;
};

static struct sonde_pprof *known_profile(struct known *k)
{
	struct sonde_pprof *p = new_profile();
	uint64_t f_main, f_compute, f_add, f_libc, f_sys, f_entry;
	struct sonde_pprof_line lines[2];
	struct sonde_pprof_label app[] = { { .key = "pid", .num = 4242 },
					   { .key = "comm", .str = "app" } };
	struct sonde_pprof_label worker[] = { { .key = "pid", .num = 7 },
					      { .key = "comm", .str = "worker" } };
	uint64_t s1[3], s2[5], s3[3];

	/* The main binary first: pprof moves it there and renumbers otherwise. */
	k->m_app = sonde_pprof__mapping(p, 0x400000, 0x500000, 0, "/usr/bin/app", "b1d0");
	k->m_libc = sonde_pprof__mapping(p, 0x7f0000000000, 0x7f0000200000, 0x28000,
					 "/usr/lib/x86_64-linux-gnu/libc.so.6", "c0ffee");
	k->m_kernel = sonde_pprof__mapping(p, 0xffffffff81000000, 0xffffffff83000000, 0,
					   "[kernel.kallsyms]", NULL);
	f_main = sonde_pprof__function(p, "main", "app.c");
	f_compute = sonde_pprof__function(p, "compute", "app.c");
	f_add = sonde_pprof__function(p, "add_one", "util.h");
	f_libc = sonde_pprof__function(p, "__libc_start_call_main", NULL);
	f_sys = sonde_pprof__function(p, "do_syscall_64", NULL);
	f_entry = sonde_pprof__function(p, "entry_SYSCALL_64", NULL);

	lines[0] = (struct sonde_pprof_line){ f_main, 20 };
	k->l_main = sonde_pprof__location(p, k->m_app, 0x401100, lines, 1);
	/* add_one inlined into compute: innermost first. */
	lines[0] = (struct sonde_pprof_line){ f_add, 5 };
	lines[1] = (struct sonde_pprof_line){ f_compute, 33 };
	k->l_inl = sonde_pprof__location(p, k->m_app, 0x401200, lines, 2);
	lines[0] = (struct sonde_pprof_line){ f_libc, 0 };
	k->l_libc = sonde_pprof__location(p, k->m_libc, 0x7f0000029d90, lines, 1);
	lines[0] = (struct sonde_pprof_line){ f_sys, 0 };
	k->l_sys = sonde_pprof__location(p, k->m_kernel, 0xffffffff81e0000f, lines, 1);
	lines[0] = (struct sonde_pprof_line){ f_entry, 0 };
	k->l_entry = sonde_pprof__location(p, k->m_kernel, 0xffffffff82000080, lines, 1);
	k->l_unknown = sonde_pprof__location(p, k->m_app, 0x401300, NULL, 0);
	assert_true(k->l_main && k->l_inl && k->l_libc && k->l_sys && k->l_entry &&
		    k->l_unknown);

	s1[0] = k->l_inl, s1[1] = k->l_main, s1[2] = k->l_libc;
	s2[0] = k->l_sys, s2[1] = k->l_entry, s2[2] = k->l_inl, s2[3] = k->l_main,
	s2[4] = k->l_libc;
	s3[0] = k->l_unknown, s3[1] = k->l_main, s3[2] = k->l_libc;
	assert_int_equal(sonde_pprof__sample(p, s1, 3, 5, app, 2), 0);
	assert_int_equal(sonde_pprof__sample(p, s2, 5, 2, app, 2), 0);
	assert_int_equal(sonde_pprof__sample(p, s3, 3, 1, worker, 2), 0);
	assert_int_equal(sonde_pprof__comment(p, "sonde test profile"), 0);
	return p;
}

/*
 * pprof renumbers locations (and mappings) in order of first use when it
 * loads a profile, so its ids are resolved through its own tables here.
 */
struct raw_loc {
	uint64_t id, address, mapping;
	size_t line; /* index of the location's first line */
};

static size_t raw_locations(char **lines, size_t n, struct raw_loc *locs, size_t max)
{
	size_t i, nl = 0;

	for (i = find_line(lines, n, "Locations") + 1; i < n && nl < max; i++) {
		struct raw_loc *l = &locs[nl];

		if (!strcmp(lines[i], "Mappings"))
			break;
		if (sscanf(lines[i], "%" SCNu64 ": %" SCNx64 " M=%" SCNu64, &l->id, &l->address,
			   &l->mapping) == 3) {
			l->line = i;
			nl++;
		}
	}
	return nl;
}

static const struct raw_loc *raw_by_address(const struct raw_loc *locs, size_t n, uint64_t addr)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (locs[i].address == addr)
			return &locs[i];
	fail_msg("no location at %#" PRIx64 " in pprof -raw", addr);
	return NULL;
}

static const struct raw_loc *raw_by_id(const struct raw_loc *locs, size_t n, uint64_t id)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (locs[i].id == id)
			return &locs[i];
	fail_msg("sample refers to location %" PRIu64 " missing from pprof -raw", id);
	return NULL;
}

/* The text after "ID: " of a mapping line, e.g. "0x400000/0x500000/0x0 /usr/bin/app ...". */
static const char *raw_mapping(char **lines, size_t n, uint64_t id)
{
	char prefix[32];
	size_t i, pl;

	pl = (size_t)snprintf(prefix, sizeof(prefix), "%" PRIu64 ": ", id);
	for (i = find_line(lines, n, "Mappings") + 1; i < n; i++)
		if (!strncmp(lines[i], prefix, pl))
			return lines[i] + pl;
	fail_msg("mapping %" PRIu64 " missing from pprof -raw", id);
	return NULL;
}

/*
 * Checks the sample printed with values (count, count * period): its stack
 * (as addresses, leaf first) and its two label lines.
 */
static void check_raw_sample(char **lines, size_t n, const struct raw_loc *locs, size_t nlocs,
			     int64_t count, const uint64_t *addrs, size_t naddrs,
			     const char *str_label, const char *num_label)
{
	char prefix[64], *s, *end;
	size_t i, pl, j = 0;
	uint64_t id;

	pl = (size_t)snprintf(prefix, sizeof(prefix), " %10" PRId64 " %10" PRId64 ": ", count,
			      count * PERIOD);
	for (i = 0; i < n; i++)
		if (!strncmp(lines[i], prefix, pl))
			break;
	if (i == n)
		fail_msg("no sample with values %" PRId64 " %" PRId64, count, count * PERIOD);
	for (s = lines[i] + pl;; s = end) {
		id = strtoull(s, &end, 10);
		if (end == s)
			break;
		assert_true(j < naddrs);
		assert_int_equal(raw_by_id(locs, nlocs, id)->address, addrs[j]);
		j++;
	}
	assert_int_equal(j, naddrs);
	assert_string_equal(trim(lines[i + 1]), str_label);
	assert_string_equal(trim(lines[i + 2]), num_label);
}

/* A location's lines (innermost first) and its mapping's description. */
static void check_raw_location(char **lines, size_t n, const struct raw_loc *locs, size_t nlocs,
			       uint64_t addr, const char *const *want, size_t nwant,
			       const char *mapping)
{
	const struct raw_loc *l = raw_by_address(locs, nlocs, addr);
	char head[64];
	size_t i, hl;

	hl = (size_t)snprintf(head, sizeof(head), "%6" PRIu64 ": %#" PRIx64 " M=%" PRIu64 " ",
			      l->id, l->address, l->mapping);
	assert_true(!strncmp(lines[l->line], head, hl));
	if (!nwant)
		assert_string_equal(lines[l->line] + hl, "");
	for (i = 0; i < nwant; i++)
		assert_string_equal(i ? trim(lines[l->line + i]) : lines[l->line] + hl, want[i]);
	/* The next line starts the next location (or the mapping table). */
	assert_true(l->line + nwant < n);
	assert_true(strstr(lines[l->line + nwant], " M=") ||
		    !strcmp(lines[l->line + nwant], "Mappings"));
	assert_string_equal(raw_mapping(lines, n, l->mapping), mapping);
}

static void test_go_pprof_raw(void **state)
{
	static const char *const app = "0x400000/0x500000/0x0 /usr/bin/app b1d0 [FN][FL][LN][IN]";
	static const char *const libc =
		"0x7f0000000000/0x7f0000200000/0x28000 "
		"/usr/lib/x86_64-linux-gnu/libc.so.6 c0ffee [FN][FL][LN][IN]";
	static const char *const kernel = "0xffffffff81000000/0xffffffff83000000/0x0 "
					  "[kernel.kallsyms]  [FN][FL][LN][IN]";
	static const char *const inl[] = { "add_one util.h:5 s=0", "compute app.c:33 s=0" };
	static const char *const main_[] = { "main app.c:20 s=0" };
	static const char *const libc_[] = { "__libc_start_call_main :0 s=0" };
	static const char *const sys[] = { "do_syscall_64 :0 s=0" };
	static const char *const entry[] = { "entry_SYSCALL_64 :0 s=0" };
	/* Addresses of the stacks known_profile() records, leaf first. */
	static const uint64_t s1[] = { 0x401200, 0x401100, 0x7f0000029d90 };
	static const uint64_t s2[] = { 0xffffffff81e0000f, 0xffffffff82000080, 0x401200, 0x401100,
				       0x7f0000029d90 };
	static const uint64_t s3[] = { 0x401300, 0x401100, 0x7f0000029d90 };
	struct raw_loc locs[16];
	struct known k;
	struct sonde_pprof *p;
	char path[512], *out, *lines[256] = { NULL };
	size_t n, nl, i;

	(void)state;
	need_go();
	p = known_profile(&k);
	encode_to(p, "known.pb.gz", path, sizeof(path));
	out = pprof_run("-raw", path);
	n = split_lines(out, lines, 256);

	find_line(lines, n, "Comment: sonde test profile");
	find_line(lines, n, "PeriodType: cpu nanoseconds");
	find_line(lines, n, "Period: 10000000");
	find_line(lines, n, "Time: 2023-11-14 22:13:20 +0000 UTC");
	find_line(lines, n, "Duration: 10s");
	/* [dflt] is default_sample_type. */
	i = find_line(lines, n, "samples/count cpu/nanoseconds[dflt]");
	assert_string_equal(lines[i - 1], "Samples:");

	nl = raw_locations(lines, n, locs, 16);
	assert_int_equal(nl, 6);
	check_raw_sample(lines, n, locs, nl, 5, s1, 3, "comm:[app]", "pid:[4242]");
	check_raw_sample(lines, n, locs, nl, 2, s2, 5, "comm:[app]", "pid:[4242]");
	check_raw_sample(lines, n, locs, nl, 1, s3, 3, "comm:[worker]", "pid:[7]");

	check_raw_location(lines, n, locs, nl, 0x401200, inl, 2, app);
	check_raw_location(lines, n, locs, nl, 0x401100, main_, 1, app);
	check_raw_location(lines, n, locs, nl, 0x401300, NULL, 0, app);
	check_raw_location(lines, n, locs, nl, 0x7f0000029d90, libc_, 1, libc);
	check_raw_location(lines, n, locs, nl, 0xffffffff81e0000f, sys, 1, kernel);
	check_raw_location(lines, n, locs, nl, 0xffffffff82000080, entry, 1, kernel);

	free(out);
	sonde_pprof__free(p);
}

static void test_go_pprof_traces_and_top(void **state)
{
	static const char *const stack[] = {
		"20ms   do_syscall_64", "entry_SYSCALL_64", "add_one (inline)",
		"compute", "main", "__libc_start_call_main",
	};
	struct known k;
	struct sonde_pprof *p;
	char path[512], *out, *lines[256] = { NULL };
	size_t n, i, j;

	(void)state;
	need_go();
	p = known_profile(&k);
	encode_to(p, "known.pb.gz", path, sizeof(path));

	out = pprof_run("-traces", path);
	n = split_lines(out, lines, 256);
	/* The kernel+user stack, leaf first, inlined frame above its caller. */
	i = find_suffix(lines, n, "do_syscall_64");
	for (j = 0; j < sizeof(stack) / sizeof(stack[0]); j++)
		assert_string_equal(trim(lines[i + j]), stack[j]);
	assert_string_equal(trim(lines[i - 2]), "comm:  app");
	assert_string_equal(trim(lines[i - 1]), "pid:  4242");
	free(out);

	out = pprof_run("-top", path);
	n = split_lines(out, lines, 256);
	find_line(lines, n, "Showing nodes accounting for 80ms, 100% of 80ms total");
	find_line(lines, n, "Build ID: b1d0");
	i = find_suffix(lines, n, "add_one (inline)");
	assert_true(!strncmp(trim(lines[i]), "50ms ", 5));
	i = find_suffix(lines, n, "do_syscall_64");
	assert_true(!strncmp(trim(lines[i]), "20ms ", 5));
	i = find_suffix(lines, n, "  main");
	assert_true(!strncmp(trim(lines[i]), "0 ", 2));
	free(out);

	out = pprof_run("-sample_index=samples -top", path);
	n = split_lines(out, lines, 256);
	find_line(lines, n, "Showing nodes accounting for 8, 100% of 8 total");
	free(out);
	sonde_pprof__free(p);
}

static void test_go_pprof_empty(void **state)
{
	struct sonde_pprof *p;
	char path[512], *out, *lines[64] = { NULL };
	uint8_t *buf;
	size_t n, i, len;

	(void)state;
	need_go();
	p = new_profile();
	assert_int_equal(sonde_pprof__encode(p, &buf, &len), 0);
	/* pprof takes a 0-byte file as an empty legacy profile: make sure it is not one. */
	assert_true(len > 18);
	write_profile("empty.pb.gz", buf, len, path, sizeof(path));
	free(buf);
	out = pprof_run("-raw", path);
	n = split_lines(out, lines, 64);
	find_line(lines, n, "PeriodType: cpu nanoseconds");
	i = find_line(lines, n, "samples/count cpu/nanoseconds[dflt]");
	assert_string_equal(lines[i + 1], "Locations");
	free(out);
	sonde_pprof__free(p);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_large_profile(void **state)
{
	enum { NFUNC = 5000, NLOC = 50000, NSAMPLE = 100000, DEPTH = 8 };
	struct sonde_pprof *p;
	struct sonde_pprof_line lines[2];
	struct sonde_pprof_label lab[2] = { { .key = "pid" }, { .key = "comm" } };
	uint64_t m, fids[NFUNC], stack[DEPTH];
	int64_t total = 0, count;
	char name[64], comm[16], path[512], want[128], *out, *olines[256] = { NULL };
	uint8_t *buf;
	size_t len, n;
	double t0, t1;
	int i, j;

	(void)state;
	t0 = now();
	p = new_profile();
	m = sonde_pprof__mapping(p, 0x400000, 0x4000000, 0, "/usr/bin/big", "feed");
	for (i = 0; i < NFUNC; i++) {
		snprintf(name, sizeof(name), "namespace::Class::method_%d", i);
		fids[i] = sonde_pprof__function(p, name, "big.cc");
		assert_int_equal(fids[i], i + 1);
	}
	for (i = 0; i < NLOC; i++) {
		lines[0] = (struct sonde_pprof_line){ fids[i % NFUNC], i % 1000 };
		lines[1] = (struct sonde_pprof_line){ fids[(i + 1) % NFUNC], i % 777 };
		assert_int_equal(sonde_pprof__location(p, m, 0x400000 + (uint64_t)i * 16, lines,
						       1 + (i & 1)),
				 i + 1);
	}
	for (i = 0; i < NSAMPLE; i++) {
		for (j = 0; j < DEPTH; j++)
			stack[j] = (uint64_t)((i * 7 + j * 6151) % NLOC) + 1;
		count = 1 + i % 3;
		total += count;
		snprintf(comm, sizeof(comm), "w%d", i % 50);
		lab[0].num = 1000 + i % 50;
		lab[1].str = comm;
		assert_int_equal(sonde_pprof__sample(p, stack, DEPTH, count, lab, 2), 0);
	}
	assert_int_equal(sonde_pprof__encode(p, &buf, &len), 0);
	t1 = now();
	print_message("100k samples, 50k locations: built and encoded in %.3f s, %zu bytes\n",
		      t1 - t0, len);
	assert_true(t1 - t0 < 1.0);
	assert_int_equal(buf[0], 0x1f);
	assert_int_equal(buf[1], 0x8b);
	sonde_pprof__free(p);

	need_go();
	write_profile("large.pb.gz", buf, len, path, sizeof(path));
	free(buf);
	out = pprof_run("-sample_index=samples -top -nodecount=1", path);
	n = split_lines(out, olines, 256);
	snprintf(want, sizeof(want), "of %" PRId64 " total", total);
	for (size_t k = 0; k < n; k++)
		if (!strncmp(olines[k], "Showing nodes accounting for ", 29) &&
		    strstr(olines[k], want))
			goto found;
	fail_msg("pprof -top does not show \"%s\"", want);
found:
	free(out);
}

static int setup(void **state)
{
	char cache[600];

	(void)state;
	if (!mkdtemp(tmpdir))
		return -1;
	/* go wants a writable HOME and build cache even for `go tool`. */
	snprintf(cache, sizeof(cache), "%s/gocache", tmpdir);
	setenv("HOME", tmpdir, 1);
	setenv("GOCACHE", cache, 1);
	setenv("TZ", "UTC", 1);
	setenv("PPROF_TMPDIR", tmpdir, 1);
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_interning),
		cmocka_unit_test(test_gzip_and_reencode),
		cmocka_unit_test(test_go_pprof_raw),
		cmocka_unit_test(test_go_pprof_traces_and_top),
		cmocka_unit_test(test_go_pprof_empty),
		cmocka_unit_test(test_large_profile),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
