// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "control.h"
#include "loop.h"

#ifndef SONDECTL_PATH
#error "SONDECTL_PATH: the built sondectl, set by tests/unit/meson.build"
#endif

/*
 * The real sondectl binary against a fake sonded living in this process: a
 * loop thread with a real control socket whose handlers return canned
 * replies, and an nng pub socket publishing on a timer. Each test runs
 * sondectl and checks what its user would read: stdout, stderr, exit code,
 * files, and the request the fake daemon received.
 */

extern char **environ;

static const char folded_text[] = "main;run;compute;sqrt 50\n"
				  "main;run;compute 30\n"
				  "main;run;io;read 15\n"
				  "main;rec;rec 10\n"
				  "main;idle 5\n";

static const char pprof_bytes[] = "\x1f\x8b\x08\x00 fake pprof \x00\xff bytes";
#define PPROF_LEN (sizeof(pprof_bytes) - 1)

/* A tab, quotes, a backslash, UTF-8 (e acute) and one invalid byte. */
static const char tricky_text[] = "tab\t\"q\"\\ \xc3\xa9 \xff";

struct fake {
	char dir[64];
	char url[128];
	char export_url[128];
	struct sonde_loop *loop;
	struct sonde_control *control;
	nng_socket pub;
	struct sonde_loop_timer *pub_timer;
	uint64_t seq;
	pthread_t thread;
	int stop_fd;

	/* The last "profile" request, written on the loop thread. */
	pthread_mutex_t mu;
	int profiles;
	int64_t seconds, since, until, pid;
	bool has_seconds, has_since, has_until, has_pid;
	char comm[32], format[16];
};

/* ---- the fake daemon -------------------------------------------------- */

static void str(msgpack_packer *pk, const char *s)
{
	sonde_control__pack_str(pk, s);
}

static int fill_status(void *ctx, msgpack_packer *pk)
{
	str(pk, "version");
	str(pk, "9.9.9-test");
	str(pk, "uptime");
	msgpack_pack_uint64(pk, 3723);
	str(pk, "hz");
	msgpack_pack_int(pk, 99);
	str(pk, "window");
	msgpack_pack_int(pk, 10);
	str(pk, "cpus");
	msgpack_pack_int(pk, 8);
	str(pk, "script");
	str(pk, "/etc/sonde/test.lua");
	str(pk, "plugins");
	msgpack_pack_array(pk, 2);
	msgpack_pack_map(pk, 2);
	str(pk, "name");
	str(pk, "unwind-native");
	str(pk, "version");
	str(pk, "0.1.0");
	msgpack_pack_map(pk, 2);
	str(pk, "name");
	str(pk, "unwind-python");
	str(pk, "version");
	str(pk, "0.2.0");
	str(pk, "samples");
	msgpack_pack_uint64(pk, 12345);
	str(pk, "dropped");
	msgpack_pack_uint64(pk, 7);
	str(pk, "processes");
	msgpack_pack_int(pk, 42);
	return 10;
}

static void pack_proc(msgpack_packer *pk, int pid, const char *comm, const char *exe,
		      const char *container, bool profiled, const char *unw1, const char *unw2,
		      const char *declined_plugin, const char *declined_reason)
{
	msgpack_pack_map(pk, 7);
	str(pk, "pid");
	msgpack_pack_int(pk, pid);
	str(pk, "comm");
	str(pk, comm);
	str(pk, "exe");
	str(pk, exe);
	str(pk, "container_id");
	str(pk, container);
	str(pk, "profiled");
	if (profiled)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	str(pk, "unwinders");
	msgpack_pack_array(pk, !!unw1 + !!unw2);
	if (unw1)
		str(pk, unw1);
	if (unw2)
		str(pk, unw2);
	str(pk, "declined");
	msgpack_pack_array(pk, !!declined_plugin);
	if (declined_plugin) {
		msgpack_pack_map(pk, 2);
		str(pk, "plugin");
		str(pk, declined_plugin);
		str(pk, "reason");
		str(pk, declined_reason);
	}
}

static int fill_ps(void *ctx, msgpack_packer *pk)
{
	str(pk, "processes");
	msgpack_pack_array(pk, 2);
	/* Out of pid order on purpose: sondectl sorts. */
	pack_proc(pk, 200, "python3", "/usr/bin/python3.11",
		  "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd", true,
		  "native", "python", "jvm", "no libjvm.so mapped");
	pack_proc(pk, 17, "sshd", "/usr/sbin/sshd", "", false, NULL, NULL, NULL, NULL);
	return 1;
}

struct profile_reply {
	const char *format;
	bool pprof;
};

static int fill_profile(void *ctx, msgpack_packer *pk)
{
	const struct profile_reply *r = ctx;

	str(pk, "format");
	str(pk, r->format);
	str(pk, "data");
	if (r->pprof) {
		msgpack_pack_bin_with_body(pk, pprof_bytes, PPROF_LEN);
		str(pk, "samples");
		msgpack_pack_int(pk, 110);
		return 3;
	}
	msgpack_pack_bin_with_body(pk, folded_text, strlen(folded_text));
	return 2;
}

static bool get_i64(const msgpack_object *args, const char *key, int64_t *out)
{
	const msgpack_object *o = sonde_control__arg(args, key);

	if (!o || (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
		   o->type != MSGPACK_OBJECT_NEGATIVE_INTEGER))
		return false;
	*out = o->via.i64;
	return true;
}

static void get_str(const msgpack_object *args, const char *key, char *buf, size_t len)
{
	const msgpack_object *o = sonde_control__arg(args, key);

	buf[0] = '\0';
	if (o && o->type == MSGPACK_OBJECT_STR)
		snprintf(buf, len, "%.*s", (int)o->via.str.size, o->via.str.ptr);
}

static void handle(void *ctx, struct sonde_control_req *req, const char *cmd,
		   const msgpack_object *args)
{
	struct fake *f = ctx;

	if (!strcmp(cmd, "status")) {
		sonde_control_req__reply(req, fill_status, f);
	} else if (!strcmp(cmd, "ps")) {
		sonde_control_req__reply(req, fill_ps, f);
	} else if (!strcmp(cmd, "profile")) {
		struct profile_reply r;

		pthread_mutex_lock(&f->mu);
		f->profiles++;
		f->has_seconds = get_i64(args, "seconds", &f->seconds);
		f->has_since = get_i64(args, "since", &f->since);
		f->has_until = get_i64(args, "until", &f->until);
		f->has_pid = get_i64(args, "pid", &f->pid);
		get_str(args, "comm", f->comm, sizeof(f->comm));
		get_str(args, "format", f->format, sizeof(f->format));
		r.format = f->format;
		r.pprof = !strcmp(f->format, "pprof");
		pthread_mutex_unlock(&f->mu);
		if (!strcmp(f->comm, "nosuch"))
			sonde_control_req__fail(req, "no process named \"nosuch\"");
		else
			sonde_control_req__reply(req, fill_profile, &r);
	} else {
		sonde_control_req__fail(req, "unknown command \"%s\"", cmd);
	}
}

static void publish(struct fake *f, const char *topic)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_sbuffer_write(&sb, topic, strlen(topic) + 1);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	str(&pk, "seq");
	msgpack_pack_uint64(&pk, f->seq);
	str(&pk, "text");
	msgpack_pack_str_with_body(&pk, tricky_text, sizeof(tricky_text) - 1);
	str(&pk, "blob");
	msgpack_pack_bin_with_body(&pk, "\x00\x01\xff", 3);
	nng_send(f->pub, sb.data, sb.size, NNG_FLAG_NONBLOCK);
	msgpack_sbuffer_destroy(&sb);
}

static void on_pub_timer(void *ctx)
{
	struct fake *f = ctx;

	f->seq++;
	/* Topics sharing a prefix must not leak into "profile". */
	publish(f, "profile-extra");
	publish(f, "red");
	publish(f, "profile");
}

static void on_stop(void *ctx, int fd, uint32_t revents)
{
	struct fake *f = ctx;
	uint64_t v;

	if (read(fd, &v, sizeof(v)) > 0)
		sonde_loop__stop(f->loop);
}

static void *loop_main(void *arg)
{
	struct fake *f = arg;

	sonde_loop__run(f->loop);
	return NULL;
}

static int setup(void **state)
{
	struct sonde_control_handlers h = {.handle = handle};
	struct fake *f = calloc(1, sizeof(*f));
	char err[256] = "";

	assert_non_null(f);
	pthread_mutex_init(&f->mu, NULL);
	snprintf(f->dir, sizeof(f->dir), "/tmp/sonde-sondectl-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->url, sizeof(f->url), "ipc://%s/control.ipc", f->dir);
	snprintf(f->export_url, sizeof(f->export_url), "ipc://%s/export.ipc", f->dir);
	f->loop = sonde_loop__new();
	assert_non_null(f->loop);
	f->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_int_equal(sonde_loop__add_fd(f->loop, f->stop_fd, EPOLLIN, on_stop, f), 0);
	h.ctx = f;
	f->control = sonde_control__new(f->loop, f->url, &h, err, sizeof(err));
	if (!f->control)
		fail_msg("sonde_control__new: %s", err);
	assert_int_equal(nng_pub0_open(&f->pub), 0);
	assert_int_equal(nng_listen(f->pub, f->export_url, NULL, 0), 0);
	f->pub_timer = sonde_loop__add_timer(f->loop, 20, 20, on_pub_timer, f);
	assert_non_null(f->pub_timer);
	assert_int_equal(pthread_create(&f->thread, NULL, loop_main, f), 0);
	*state = f;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int teardown(void **state)
{
	struct fake *f = *state;
	uint64_t one = 1;

	assert_int_equal(write(f->stop_fd, &one, sizeof(one)), sizeof(one));
	pthread_join(f->thread, NULL);
	sonde_loop__cancel_timer(f->loop, f->pub_timer);
	sonde_control__free(f->control);
	nng_close(f->pub);
	sonde_loop__del_fd(f->loop, f->stop_fd);
	close(f->stop_fd);
	sonde_loop__free(f->loop);
	pthread_mutex_destroy(&f->mu);
	nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* ---- running sondectl --------------------------------------------------- */

struct run {
	int status; /* exit code */
	char *out;
	char *err;
};

static char *slurp(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	assert_non_null(fp);
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	fclose(fp);
	return buf;
}

/* Runs sondectl ARGS... (NULL-terminated), with the fake's URLs first. */
static struct run run_ctl(struct fake *f, int urls, ...)
{
	char out_path[128], err_path[128];
	const char *argv[32];
	posix_spawn_file_actions_t fa;
	struct run r = {0};
	int argc = 0, wst = 0;
	pid_t pid;
	va_list ap;

	argv[argc++] = SONDECTL_PATH;
	if (urls) {
		argv[argc++] = "--control";
		argv[argc++] = f->url;
		argv[argc++] = "--export";
		argv[argc++] = f->export_url;
	}
	va_start(ap, urls);
	for (const char *a; (a = va_arg(ap, const char *));)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;

	snprintf(out_path, sizeof(out_path), "%s/stdout", f->dir);
	snprintf(err_path, sizeof(err_path), "%s/stderr", f->dir);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(posix_spawn(&pid, SONDECTL_PATH, &fa, NULL, (char **)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);

	/* A hung sondectl fails the test after 20 s instead of hanging it. */
	for (int i = 0; i < 2000; i++) {
		if (waitpid(pid, &wst, WNOHANG) == pid)
			break;
		if (i == 1999) {
			kill(pid, SIGKILL);
			waitpid(pid, &wst, 0);
			fail_msg("sondectl did not exit within 20 s");
		}
		usleep(10 * 1000);
	}
	assert_true(WIFEXITED(wst));
	r.status = WEXITSTATUS(wst);
	r.out = slurp(out_path);
	r.err = slurp(err_path);
	return r;
}

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

/* ---- a JSON syntax check, enough to say "a JSON parser accepts it" ------- */

static const char *json_value(const char *p);

static const char *ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

static const char *json_string(const char *p)
{
	if (*p++ != '"')
		return NULL;
	while (*p != '"') {
		if ((unsigned char)*p < 0x20)
			return NULL;
		if (*p == '\\') {
			p++;
			if (*p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
						return NULL;
				p += 4;
			} else if (!*p || !strchr("\"\\/bfnrt", *p)) {
				return NULL;
			}
		}
		p++;
	}
	return p + 1;
}

static const char *json_value(const char *p)
{
	p = ws(p);
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		bool obj = *p == '{';

		p = ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (obj) {
				p = json_string(ws(p));
				if (!p)
					return NULL;
				p = ws(p);
				if (*p++ != ':')
					return NULL;
			}
			p = json_value(p);
			if (!p)
				return NULL;
			p = ws(p);
			if (*p == close)
				return p + 1;
			if (*p++ != ',')
				return NULL;
		}
	}
	if (*p == '"')
		return json_string(p);
	if (!strncmp(p, "true", 4) || !strncmp(p, "null", 4))
		return p + 4;
	if (!strncmp(p, "false", 5))
		return p + 5;
	if (*p == '-' || (*p >= '0' && *p <= '9')) {
		char *end;

		strtod(p, &end);
		return end;
	}
	return NULL;
}

static void assert_one_json_document(const char *text)
{
	const char *end = json_value(text);

	if (!end)
		fail_msg("not JSON: %s", text);
	assert_string_equal(ws(end), "");
}

/* ---- tests -------------------------------------------------------------- */

static void test_status(void **state)
{
	struct run r = run_ctl(*state, true, "status", NULL);

	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	assert_string_equal(r.out, "sonded 9.9.9-test, up 1h 2m 3s\n"
				   "sampling:  99 Hz on 8 CPUs, 10 s windows\n"
				   "script:    /etc/sonde/test.lua\n"
				   "plugins:   unwind-native 0.1.0, unwind-python 0.2.0\n"
				   "samples:   12345 (dropped 7)\n"
				   "processes: 42\n");
	run_free(&r);
}

static void test_status_json(void **state)
{
	struct run r = run_ctl(*state, true, "status", "--json", NULL);

	assert_int_equal(r.status, 0);
	assert_one_json_document(r.out);
	assert_string_equal(r.out,
			    "{\"v\":1,\"ok\":true,\"version\":\"9.9.9-test\",\"uptime\":3723,"
			    "\"hz\":99,\"window\":10,\"cpus\":8,\"script\":\"/etc/sonde/test.lua\","
			    "\"plugins\":[{\"name\":\"unwind-native\",\"version\":\"0.1.0\"},"
			    "{\"name\":\"unwind-python\",\"version\":\"0.2.0\"}],"
			    "\"samples\":12345,\"dropped\":7,\"processes\":42}\n");
	run_free(&r);
}

static void test_ps(void **state)
{
	struct run r = run_ctl(*state, true, "ps", NULL), j;

	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	assert_string_equal(r.out,
			    "PID      COMM             UNWINDERS                CONTAINER\n"
			    "17       sshd             (not profiled)           -\n"
			    "200      python3          native,python            3f2a9c1b2d4e\n"
			    "         declined by jvm: no libjvm.so mapped\n");
	run_free(&r);

	j = run_ctl(*state, true, "ps", "--json", NULL);
	assert_int_equal(j.status, 0);
	assert_one_json_document(j.out);
	assert_non_null(strstr(j.out, "{\"pid\":17,\"comm\":\"sshd\",\"exe\":\"/usr/sbin/sshd\","
				      "\"container_id\":\"\",\"profiled\":false,"
				      "\"unwinders\":[],\"declined\":[]}"));
	assert_non_null(strstr(j.out, "\"declined\":[{\"plugin\":\"jvm\","
				      "\"reason\":\"no libjvm.so mapped\"}]"));
	run_free(&j);
}

static void test_folded(void **state)
{
	struct fake *f = *state;
	struct run r = run_ctl(f, true, "folded", "--seconds", "3", "--comm", "python3", NULL);

	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	assert_string_equal(r.out, folded_text);
	pthread_mutex_lock(&f->mu);
	assert_int_equal(f->profiles, 1);
	assert_true(f->has_seconds);
	assert_int_equal(f->seconds, 3);
	assert_false(f->has_pid);
	assert_false(f->has_since);
	assert_string_equal(f->comm, "python3");
	assert_string_equal(f->format, "folded");
	pthread_mutex_unlock(&f->mu);
	run_free(&r);
}

static void test_folded_last(void **state)
{
	struct fake *f = *state;
	struct run r = run_ctl(f, true, "folded", "--last", "60", NULL);
	int64_t now = time(NULL);

	assert_int_equal(r.status, 0);
	pthread_mutex_lock(&f->mu);
	assert_false(f->has_seconds);
	assert_true(f->has_since && f->has_until);
	assert_int_equal(f->until - f->since, 60);
	assert_true(f->until <= now && f->until >= now - 5);
	pthread_mutex_unlock(&f->mu);
	run_free(&r);
}

static void test_top_once(void **state)
{
	struct fake *f = *state;
	struct run r = run_ctl(f, true, "top", "--once", "--interval", "1", "--pid", "200", NULL);

	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	/*
	 * 110 samples. sqrt is only a leaf; compute is both; rec recurses and
	 * counts once per stack in TOTAL; main and run are never leaves.
	 */
	assert_string_equal(r.out, "110 samples in 1 s, pid 200\n"
				   "\n"
				   "  SELF%  TOTAL%   SAMPLES  FUNCTION\n"
				   " 45.45%  45.45%        50  sqrt\n"
				   " 27.27%  72.73%        30  compute\n"
				   " 13.64%  13.64%        15  read\n"
				   "  9.09%   9.09%        10  rec\n"
				   "  4.55%   4.55%         5  idle\n"
				   "\n");
	pthread_mutex_lock(&f->mu);
	assert_int_equal(f->seconds, 1);
	assert_true(f->has_pid);
	assert_int_equal(f->pid, 200);
	assert_string_equal(f->format, "folded");
	pthread_mutex_unlock(&f->mu);
	run_free(&r);
}

static void test_record(void **state)
{
	struct fake *f = *state;
	char path[128], want[200];
	struct run r;
	struct stat st;
	char *data;

	snprintf(path, sizeof(path), "%s/cpu.pb.gz", f->dir);
	r = run_ctl(f, true, "record", "--seconds", "2", "-o", path, NULL);
	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	snprintf(want, sizeof(want), "wrote %s (110 samples, %zu bytes)\n", path, PPROF_LEN);
	assert_string_equal(r.out, want);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, PPROF_LEN);
	data = slurp(path);
	assert_memory_equal(data, pprof_bytes, PPROF_LEN);
	free(data);
	pthread_mutex_lock(&f->mu);
	assert_int_equal(f->seconds, 2);
	assert_string_equal(f->format, "pprof");
	pthread_mutex_unlock(&f->mu);
	run_free(&r);
}

static void test_tail(void **state)
{
	struct run r =
		run_ctl(*state, true, "tail", "profile", "--count", "2", "--timeout", "10", NULL);
	const char *line = r.out;

	assert_string_equal(r.err, "");
	assert_int_equal(r.status, 0);
	for (int i = 0; i < 2; i++) {
		const char *nl = strchr(line, '\n');
		char want[160], got[160];
		unsigned long long seq;

		assert_non_null(nl);
		assert_true((size_t)(nl - line) < sizeof(got));
		memcpy(got, line, (size_t)(nl - line));
		got[nl - line] = '\0';
		assert_one_json_document(got);
		assert_int_equal(sscanf(got, "{\"seq\":%llu,", &seq), 1);
		snprintf(want, sizeof(want),
			 "{\"seq\":%llu,\"text\":\"tab\\t\\\"q\\\"\\\\ \xc3\xa9 \\ufffd\","
			 "\"blob\":\"AAH/\"}",
			 seq);
		assert_string_equal(got, want);
		line = nl + 1;
	}
	assert_string_equal(line, "");
	run_free(&r);
}

static void test_errors(void **state)
{
	struct fake *f = *state;
	char url[128], want[256];
	struct run r;

	snprintf(url, sizeof(url), "ipc://%s/nothere.ipc", f->dir);
	r = run_ctl(f, false, "--control", url, "status", NULL);
	snprintf(want, sizeof(want),
		 "sondectl: cannot reach sonded at %s: no such socket (is sonded running?)\n", url);
	assert_string_equal(r.err, want);
	assert_string_equal(r.out, "");
	assert_int_equal(r.status, 1);
	run_free(&r);

	r = run_ctl(f, true, "folded", "--comm", "nosuch", NULL);
	assert_string_equal(r.err, "sondectl: sonded: no process named \"nosuch\"\n");
	assert_int_equal(r.status, 1);
	run_free(&r);

	r = run_ctl(f, true, "status", "--pid", "3", NULL);
	assert_string_equal(r.err, "sondectl: --pid does not apply to status\n"
				   "Try 'sondectl --help'.\n");
	assert_int_equal(r.status, 2);
	run_free(&r);

	r = run_ctl(f, true, "record", NULL);
	assert_int_equal(r.status, 2);
	assert_non_null(strstr(r.err, "record -o FILE"));
	run_free(&r);

	r = run_ctl(f, true, "frobnicate", NULL);
	assert_string_equal(r.err, "sondectl: unknown command \"frobnicate\"\n"
				   "Try 'sondectl --help'.\n");
	assert_int_equal(r.status, 2);
	run_free(&r);
}

static void test_help_and_version(void **state)
{
	struct run r = run_ctl(*state, false, "--help", NULL);

	assert_int_equal(r.status, 0);
	/* The help names every command and the default socket. */
	for (const char *const *w = (const char *const[]){"status", "ps", "top", "record", "folded",
							  "tail", SONDE_CONTROL_URL_DEFAULT, NULL};
	     *w; w++)
		assert_non_null(strstr(r.out, *w));
	run_free(&r);

	r = run_ctl(*state, false, "--version", NULL);
	assert_int_equal(r.status, 0);
	assert_string_equal(r.out, "sondectl " SONDE_VERSION " (control protocol v1)\n");
	run_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_status, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_json, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folded_last, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_help_and_version, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
