// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "good.h"
#include "loop.h"
#include "plugin.h"
#include "strbuf.h"

#define DIR  SONDE_TEST_PLUGIN_DIR
#define GOOD DIR "/sonde-good.so"

/* The core's ABI version as text, so the expected messages follow plugin.h. */
#define STR_(x)	   #x
#define STR(x)	   STR_(x)
#define CORE_MAJOR STR(SONDE_PLUGIN_ABI_MAJOR)
#define CORE_ABI   STR(SONDE_PLUGIN_ABI_MAJOR) "." STR(SONDE_PLUGIN_ABI_MINOR)

struct fixture {
	struct sonde_loop *loop;
	struct sonde_plugins *ps;
	char tmpdir[64];
};

static int setup(void **state)
{
	struct sonde_plugin_services svc = {.plugin_dir = DIR};
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	f->loop = sonde_loop__new();
	svc.loop = f->loop;
	f->ps = f->loop ? sonde_plugins__new(&svc) : NULL;
	snprintf(f->tmpdir, sizeof(f->tmpdir), "/tmp/test-plugin.XXXXXX");
	if (!f->ps || !mkdtemp(f->tmpdir))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	sonde_plugins__free(f->ps);
	sonde_loop__free(f->loop);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", f->tmpdir);
	free(f);
	return 0;
}

/* The running sonde-good's view of itself; the handle keeps it mapped. */
static const struct good_view *good_view(void **handle)
{
	const struct good_view *(*get)(void);

	*handle = dlopen(GOOD, RTLD_NOW | RTLD_NOLOAD);
	assert_non_null(*handle);
	*(void **)&get = dlsym(*handle, "sonde_good_view");
	assert_non_null(get);
	return get();
}

static int load(struct fixture *f, const char *name, const struct sonde_plugin_kv *kvs, size_t n,
		char *err, size_t errlen)
{
	return sonde_plugins__load(f->ps, name, kvs, n, err, errlen);
}

static void count_plugin(void *ctx, const char *name, const char *version, const char *path)
{
	(void)name;
	(void)version;
	(void)path;
	(*(int *)ctx)++;
}

static void test_refuses_broken_plugins(void **state)
{
	static const struct {
		const char *name;
		int ret;
		const char *reason;
	} cases[] = {
		{"wrong-abi", -ENOEXEC, "plugin ABI 99.0, this sonded speaks " CORE_ABI},
		{"newer-minor", -ENOEXEC,
		 "plugin ABI " CORE_MAJOR ".7 is newer than this sonded's " CORE_ABI},
		{"no-symbol", -ENOEXEC, "not a sonde plugin (no symbol sonde_plugin)"},
		{"bad-magic", -ENOEXEC, "bad magic 0xdeadbeef (expected 0x736f6e64)"},
		{"no-fini", -ENOEXEC, "descriptor has no fini()"},
		{"init-fails", -EIO, "init failed: no frobnicator found"},
		{"missing", -ENOENT, "cannot load: No such file or directory"},
	};
	struct fixture *f = *state;
	char err[256], want[512];
	size_t i;
	int n = 0;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(want, sizeof(want), "%s/sonde-%s.so: %s", DIR, cases[i].name,
			 cases[i].reason);
		assert_int_equal(load(f, cases[i].name, NULL, 0, err, sizeof(err)), cases[i].ret);
		assert_string_equal(err, want);
	}

	/* ABI 1.0 reads the descriptor up to detach_process. */
	snprintf(want, sizeof(want),
		 "%s/sonde-too-small.so: descriptor size 12 is too small "
		 "(ABI %d.0 needs %zu)",
		 DIR, SONDE_PLUGIN_ABI_MAJOR,
		 offsetof(struct sonde_plugin, detach_process) + sizeof(void *));
	assert_int_equal(load(f, "too-small", NULL, 0, err, sizeof(err)), -ENOEXEC);
	assert_string_equal(err, want);

	assert_int_equal(load(f, "Good", NULL, 0, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "plugin name 'Good' is not [a-z0-9-]+");

	sonde_plugins__for_each(f->ps, count_plugin, &n);
	assert_int_equal(n, 0);
}

static void test_refuses_a_file_that_is_not_elf(void **state)
{
	struct fixture *f = *state;
	char path[128], err[512], want[512];
	FILE *file;
	int i;

	snprintf(path, sizeof(path), "%s/sonde-text.so", f->tmpdir);
	file = fopen(path, "w");
	assert_non_null(file);
	for (i = 0; i < 8; i++)
		fprintf(file, "this is a text file, not a shared object\n");
	fclose(file);
	assert_int_equal(load(f, path, NULL, 0, err, sizeof(err)), -ENOEXEC);
	/* dlerror() names the file too; the loader says it once. */
	snprintf(want, sizeof(want), "%s: cannot load: invalid ELF header", path);
	assert_string_equal(err, want);
}

static void test_settings_defaults(void **state)
{
	struct fixture *f = *state;
	const struct good_view *v;
	char err[256] = "unset";
	void *handle;

	assert_int_equal(load(f, "good", NULL, 0, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	v = good_view(&handle);
	assert_non_null(v);
	assert_int_equal(v->settings->verbose, 0);
	assert_int_equal(v->settings->depth, 8);
	assert_string_equal(v->settings->label, "plain");
	assert_null(v->settings->fini_file);
	/* No BPF host in this test: the services say so. */
	assert_int_equal(v->map_fd, -ENOENT);
	assert_int_equal(v->unwinder, -ENOTSUP);
	dlclose(handle);
}

static void test_settings_overrides(void **state)
{
	static const struct sonde_plugin_kv kvs[] = {
		{"verbose", "true"},
		{"depth", "-3"},
		{"label", "a b"},
		{"depth", "9223372036854775807"},
	};
	struct fixture *f = *state;
	const struct good_view *v;
	char err[256];
	void *handle;

	assert_int_equal(load(f, GOOD, kvs, 4, err, sizeof(err)), 0);
	v = good_view(&handle);
	assert_int_equal(v->settings->verbose, 1);
	assert_int_equal(v->settings->depth, INT64_MAX); /* the last one wins */
	assert_string_equal(v->settings->label, "a b");
	dlclose(handle);
}

static void test_settings_errors(void **state)
{
	static const struct {
		struct sonde_plugin_kv kv;
		const char *reason;
	} cases[] = {
		{{"colour", "red"},
		 "unknown setting 'colour' (settings: verbose, depth, label, fini-file)"},
		{{"depth", "deep"}, "setting 'depth': expected an integer, got 'deep'"},
		{{"depth", "12abc"}, "setting 'depth': expected an integer, got '12abc'"},
		{{"depth", ""}, "setting 'depth': expected an integer, got ''"},
		{{"depth", "99999999999999999999"},
		 "setting 'depth': expected an integer, got '99999999999999999999'"},
		{{"verbose", "yes"}, "setting 'verbose': expected true or false, got 'yes'"},
	};
	struct fixture *f = *state;
	char err[256], want[512];
	size_t i;
	int n = 0;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(want, sizeof(want), GOOD ": %s", cases[i].reason);
		assert_int_equal(load(f, "good", &cases[i].kv, 1, err, sizeof(err)), -EINVAL);
		assert_string_equal(err, want);
	}
	/* None of them left a half-loaded plugin behind. */
	sonde_plugins__for_each(f->ps, count_plugin, &n);
	assert_int_equal(n, 0);
	assert_int_equal(load(f, "good", NULL, 0, err, sizeof(err)), 0);
}

struct listed {
	int n;
	char line[512];
};

static void list_plugin(void *ctx, const char *name, const char *version, const char *path)
{
	struct listed *l = ctx;

	l->n++;
	snprintf(l->line, sizeof(l->line), "%s %s %s", name, version, path);
}

static void test_loads_once(void **state)
{
	struct fixture *f = *state;
	struct listed l = {0};
	char err[256];

	assert_int_equal(load(f, "good", NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(load(f, "good", NULL, 0, err, sizeof(err)), -EEXIST);
	assert_string_equal(err, GOOD ": plugin 'good' is already loaded");
	/* By path, it is known by the name it declares. */
	assert_int_equal(load(f, DIR "/./sonde-good.so", NULL, 0, err, sizeof(err)), -EEXIST);
	assert_string_equal(err,
			    DIR "/./sonde-good.so: plugin 'good' is already loaded from " GOOD);
	sonde_plugins__for_each(f->ps, list_plugin, &l);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.line, "good 1.2.3 " GOOD);
}

/* Runs fn with stderr going to a file, and returns what was written. */
static char *capture_stderr(struct fixture *f, int (*fn)(struct fixture *f))
{
	char path[128];
	static char text[1024];
	FILE *file;
	size_t n;
	int saved, fd;

	snprintf(path, sizeof(path), "%s/stderr", f->tmpdir);
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	file = fopen(path, "w+");
	assert_non_null(file);
	fd = fileno(file);
	dup2(fd, STDERR_FILENO);
	assert_int_equal(fn(f), 0);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(file);
	n = fread(text, 1, sizeof(text) - 1, file);
	text[n] = '\0';
	fclose(file);
	return text;
}

static int load_good(struct fixture *f)
{
	return load(f, "good", NULL, 0, NULL, 0);
}

static void test_log_is_prefixed(void **state)
{
	struct fixture *f = *state;

	assert_string_equal(capture_stderr(f, load_good),
			    "sonded: info: plugin good: up: verbose=0 depth=8 label=plain\n");
}

static struct sonde_plugin_process process(uint32_t pid, const char *comm)
{
	struct sonde_plugin_process p = {
		.size = sizeof(p),
		.pid = pid,
		.comm = comm,
		.exe = "/usr/bin/x",
	};

	return p;
}

struct decisions {
	int n;
	char text[512];
};

static void add_decision(void *ctx, const char *plugin, bool attached, const char *reason)
{
	struct decisions *d = ctx;
	size_t used = strlen(d->text);

	d->n++;
	snprintf(d->text + used, sizeof(d->text) - used, "%s%s %s '%s'", used ? "; " : "", plugin,
		 attached ? "attached" : "declined", reason);
}

static struct decisions decisions_of(struct fixture *f, uint32_t pid)
{
	struct decisions d = {0};

	sonde_plugins__for_each_decision(f->ps, pid, add_decision, &d);
	return d;
}

static void test_attach_and_decline(void **state)
{
	struct fixture *f = *state;
	struct sonde_plugin_process p;
	const struct good_view *v;
	struct decisions d;
	char reason[128];
	void *handle;
	int slot = 7;

	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);

	p = process(100, "python3");
	assert_int_equal(
		sonde_plugins__attach_process(f->ps, "good", &p, &slot, reason, sizeof(reason)), 0);
	assert_int_equal(slot, -1); /* it registered no unwinder */
	assert_string_equal(reason, "");

	p = process(101, "nope");
	assert_int_equal(
		sonde_plugins__attach_process(f->ps, "good", &p, &slot, reason, sizeof(reason)),
		SONDE_DECLINE);
	assert_string_equal(reason, "comm is nope");

	p = process(102, "fail");
	assert_int_equal(
		sonde_plugins__attach_process(f->ps, "good", &p, &slot, reason, sizeof(reason)),
		-EIO);
	assert_string_equal(reason, "frobnicator jammed");

	assert_int_equal(
		sonde_plugins__attach_process(f->ps, "ghost", &p, &slot, reason, sizeof(reason)),
		-ENOENT);

	d = decisions_of(f, 100);
	assert_int_equal(d.n, 1);
	assert_string_equal(d.text, "good attached ''");
	d = decisions_of(f, 101);
	assert_string_equal(d.text, "good declined 'comm is nope'");
	d = decisions_of(f, 102);
	assert_string_equal(d.text, "good declined 'frobnicator jammed'");
	assert_int_equal(decisions_of(f, 103).n, 0);

	/* Offered again, the new decision replaces the old one. */
	p = process(101, "python3");
	assert_int_equal(sonde_plugins__attach_process(f->ps, "good", &p, NULL, NULL, 0), 0);
	d = decisions_of(f, 101);
	assert_int_equal(d.n, 1);
	assert_string_equal(d.text, "good attached ''");
	assert_int_equal(*v->attached, 2);

	sonde_plugins__detach_process(f->ps, 100);
	assert_int_equal(v->detach_calls, 1);
	assert_int_equal(v->last_detached, 100);
	assert_int_equal(decisions_of(f, 100).n, 0);
	/* A process it declined or failed is not detached from it. */
	sonde_plugins__detach_process(f->ps, 102);
	assert_int_equal(v->detach_calls, 1);
	assert_int_equal(decisions_of(f, 102).n, 0);
	dlclose(handle);
}

static void test_many_processes(void **state)
{
	struct fixture *f = *state;
	struct sonde_plugin_process p;
	const struct good_view *v;
	void *handle;
	uint32_t pid;

	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	for (pid = 1000; pid < 6000; pid++) {
		p = process(pid, pid % 10 ? "python3" : "nope");
		sonde_plugins__attach_process(f->ps, "good", &p, NULL, NULL, 0);
	}
	assert_int_equal(*v->attached, 4500);
	assert_string_equal(decisions_of(f, 1234).text, "good attached ''");
	assert_string_equal(decisions_of(f, 5990).text, "good declined 'comm is nope'");
	for (pid = 1000; pid < 6000; pid++)
		sonde_plugins__detach_process(f->ps, pid);
	assert_int_equal(v->detach_calls, 4500);
	assert_int_equal(decisions_of(f, 1234).n, 0);
	dlclose(handle);
}

static void test_counter_in_metrics(void **state)
{
	struct fixture *f = *state;
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	struct sonde_plugin_process p;
	uint32_t pid;

	assert_int_equal(load_good(f), 0);
	for (pid = 1; pid <= 3; pid++) {
		p = process(pid, pid == 2 ? "nope" : "ruby");
		sonde_plugins__attach_process(f->ps, "good", &p, NULL, NULL, 0);
	}
	sonde_plugins__metrics(f->ps, &sb);
	assert_int_equal(sonde_strbuf__error(&sb), 0);
	assert_string_equal(sb.data, "# HELP sonde_plugin_good_processes_attached_total "
				     "Processes the good plugin attached.\n"
				     "# TYPE sonde_plugin_good_processes_attached_total counter\n"
				     "sonde_plugin_good_processes_attached_total 2\n"
				     /* its own family, through write_metrics (ABI 1.1) */
				     "# HELP good_widgets Widgets the good plugin holds, by color.\n"
				     "# TYPE good_widgets gauge\n"
				     "good_widgets{color=\"blue\"} 3\n");
	sonde_strbuf__release(&sb);
}

static void test_symbolize_reaches_the_plugin(void **state)
{
	struct fixture *f = *state;
	struct sonde_plugin_frame frames[4];
	const struct good_view *v;
	uint64_t word;
	void *handle;

	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	assert_in_range(v->frame_kind, 1, 255);
	assert_string_equal(sonde_plugins__frame_kind_name(f->ps, (unsigned int)v->frame_kind),
			    "good");
	word = ((uint64_t)v->frame_kind << 56) | 40;

	memset(frames, 0, sizeof(frames));
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, word, 2, frames, 4), 2);
	assert_string_equal(frames[0].function, "good_inner");
	assert_string_equal(frames[0].file, "good.py");
	assert_int_equal(frames[0].line, 40);
	assert_string_equal(frames[1].function, "good_outer");
	assert_int_equal(frames[1].line, 41);

	/* Never more than asked for. */
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, word, 2, frames, 1), 1);
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, word, 1, frames, 4), 1);
	assert_string_equal(frames[0].function, "good_leaf");
	/* A payload it cannot name, a kind nobody owns, a native frame. */
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, word, 99, frames, 4), 0);
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, word + (1ULL << 56), 2, frames, 4), 0);
	assert_int_equal(sonde_plugins__symbolize(f->ps, 1, 0x401000, 2, frames, 4), 0);
	assert_null(sonde_plugins__frame_kind_name(f->ps, (unsigned int)v->frame_kind + 1));
	dlclose(handle);
}

struct loop_seen {
	struct sonde_loop *loop;
	int reads, ticks, stops;
	char byte;
};

static void on_readable(void *ctx, int fd, uint32_t revents)
{
	struct loop_seen *s = ctx;

	if ((revents & EPOLLIN) && read(fd, &s->byte, 1) == 1)
		s->reads++;
}

static void on_tick(void *ctx)
{
	((struct loop_seen *)ctx)->ticks++;
}

static void on_stop(void *ctx)
{
	struct loop_seen *s = ctx;

	s->stops++;
	sonde_loop__stop(s->loop);
}

static void test_loop_services(void **state)
{
	struct fixture *f = *state;
	struct loop_seen seen = {.loop = f->loop};
	const struct sonde_host_api *api;
	const struct good_view *v;
	struct sonde_host *host;
	void *handle, *tick, *left;
	int fds[2];

	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	api = v->api;
	host = v->host;
	assert_int_equal(pipe(fds), 0);

	assert_int_equal(api->watch_fd(host, fds[0], EPOLLIN, on_readable, &seen), 0);
	assert_int_equal(api->watch_fd(host, fds[0], EPOLLIN, on_readable, &seen), -EEXIST);
	/* Not its fd: a plugin cannot drop the core's registrations. */
	assert_int_equal(api->unwatch_fd(host, fds[1]), -ENOENT);
	assert_int_equal(write(fds[1], "x", 1), 1);
	tick = api->add_timer(host, 1, 1, on_tick, &seen);
	assert_non_null(tick);
	assert_non_null(api->add_timer(host, 30, 0, on_stop, &seen));
	assert_int_equal(sonde_loop__run(f->loop), 0);
	assert_int_equal(seen.reads, 1);
	assert_int_equal(seen.byte, 'x');
	assert_int_equal(seen.stops, 1);
	assert_true(seen.ticks >= 1);

	/* Cancelled, the tick stops; cancelling twice is harmless. */
	api->cancel_timer(host, tick);
	api->cancel_timer(host, tick);
	seen.ticks = 0;
	assert_int_equal(api->unwatch_fd(host, fds[0]), 0);
	assert_int_equal(api->watch_fd(host, fds[0], EPOLLIN, on_readable, &seen), 0);
	left = api->add_timer(host, 1, 1, on_tick, &seen);
	assert_non_null(left);
	api->cancel_timer(host, left);
	assert_non_null(sonde_loop__add_timer(f->loop, 20, 0, on_stop, &seen));
	assert_int_equal(sonde_loop__run(f->loop), 0);
	assert_int_equal(seen.ticks, 0);

	/* What it leaves registered goes with it. */
	assert_non_null(api->add_timer(host, 1, 1, on_tick, &seen));
	dlclose(handle);
	sonde_plugins__free(f->ps);
	f->ps = NULL;
	assert_int_equal(sonde_loop__add_fd(f->loop, fds[0], EPOLLIN, on_readable, &seen), 0);
	assert_int_equal(sonde_loop__del_fd(f->loop, fds[0]), 0);
	seen.ticks = 0;
	assert_non_null(sonde_loop__add_timer(f->loop, 20, 0, on_stop, &seen));
	assert_int_equal(sonde_loop__run(f->loop), 0);
	assert_int_equal(seen.ticks, 0);
	close(fds[0]);
	close(fds[1]);
}

static void test_read_memory(void **state)
{
	static const char known[] = "sonde reads this through the host";
	struct fixture *f = *state;
	const struct good_view *v;
	char buf[sizeof(known)];
	void *handle;

	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(v->api->read_memory(v->host, (uint32_t)getpid(), (uintptr_t)known, buf,
					     sizeof(buf)),
			 sizeof(known));
	assert_memory_equal(buf, known, sizeof(known));
	assert_int_equal(v->api->read_memory(v->host, (uint32_t)getpid(), 0, buf, 8), -EFAULT);
	/* Above any pid_max the kernel allows (4M). */
	assert_int_equal(v->api->read_memory(v->host, 0x7ffffff0u, (uintptr_t)known, buf, 8),
			 -ESRCH);
	dlclose(handle);
}

/* The daemon's side of script_hook, faked: what the plugin asked. */
static struct {
	int calls;
	char hook[32], fields[256];
	int answer;
} fake_script;

static int fake_hook(void *ctx, const char *hook, const struct sonde_plugin_label *fields,
		     int nfields, char *out, size_t outlen)
{
	size_t used = 0;
	int i;

	assert_ptr_equal(ctx, &fake_script);
	fake_script.calls++;
	snprintf(fake_script.hook, sizeof(fake_script.hook), "%s", hook);
	fake_script.fields[0] = '\0';
	for (i = 0; i < nfields; i++)
		used += (size_t)snprintf(fake_script.fields + used, sizeof(fake_script.fields) - used,
					 "%s=%s;", fields[i].key,
					 fields[i].value ? fields[i].value : "nil");
	if (fake_script.answer == SONDE_HOOK_REPLACE)
		snprintf(out, outlen, "/users/{id}");
	return fake_script.answer;
}

static uint64_t fake_generation(void *ctx)
{
	assert_ptr_equal(ctx, &fake_script);
	return 7;
}

/* ABI 1.5: script_hook reaches the daemon's script with the plugin's fields
 * and gives its answer back; without a script, -ENOENT and generation 0. */
static void test_script_hook(void **state)
{
	const struct sonde_plugin_label fields[] = {
		{"method", "GET"}, {"route", "/users/*"}, {"server_address", NULL}};
	struct sonde_plugin_label many[17];
	struct fixture *f = *state;
	struct sonde_plugin_services svc = {.loop = f->loop,
					    .plugin_dir = DIR,
					    .script_hook = fake_hook,
					    .script_generation = fake_generation,
					    .script_ctx = &fake_script};
	const struct good_view *v;
	char out[SONDE_HOOK_OUT_MIN];
	void *handle;

	/* the fixture's loader has no script */
	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	assert_int_equal(v->api->abi_minor, SONDE_PLUGIN_ABI_MINOR);
	assert_true(v->api->size >= offsetof(struct sonde_host_api, script_generation) +
					    sizeof(v->api->script_generation));
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, 3, out, sizeof(out)),
			 -ENOENT);
	assert_int_equal(v->api->script_generation(v->host), 0);
	dlclose(handle);
	sonde_plugins__free(f->ps);

	f->ps = sonde_plugins__new(&svc);
	assert_non_null(f->ps);
	assert_int_equal(load_good(f), 0);
	v = good_view(&handle);
	memset(&fake_script, 0, sizeof(fake_script));
	fake_script.answer = SONDE_HOOK_REPLACE;
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, 3, out, sizeof(out)),
			 SONDE_HOOK_REPLACE);
	assert_string_equal(out, "/users/{id}");
	assert_string_equal(fake_script.hook, "http_route");
	assert_string_equal(fake_script.fields, "method=GET;route=/users/*;server_address=nil;");
	fake_script.answer = SONDE_HOOK_DROP;
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, 3, out, sizeof(out)),
			 SONDE_HOOK_DROP);
	fake_script.answer = -EINVAL; /* a failed callback: the plugin keeps its route */
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, 3, out, sizeof(out)),
			 -EINVAL);
	assert_int_equal(v->api->script_generation(v->host), 7);
	/* what the plugin got wrong never reaches the script */
	memset(many, 0, sizeof(many));
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, 3, out, 255),
			 -ENOBUFS);
	assert_int_equal(v->api->script_hook(v->host, "http_route", many, 17, out, sizeof(out)),
			 -E2BIG);
	assert_int_equal(v->api->script_hook(v->host, NULL, fields, 3, out, sizeof(out)), -EFAULT);
	assert_int_equal(v->api->script_hook(v->host, "http_route", NULL, 3, out, sizeof(out)),
			 -EFAULT);
	assert_int_equal(v->api->script_hook(v->host, "http_route", fields, -1, out, sizeof(out)),
			 -E2BIG);
	assert_int_equal(fake_script.calls, 3);
	dlclose(handle);
}

static void test_free_calls_fini(void **state)
{
	struct fixture *f = *state;
	struct sonde_plugin_kv kv = {"fini-file"};
	struct sonde_plugin_process p = process(42, "python3");
	char path[128], text[128] = "";
	FILE *file;

	snprintf(path, sizeof(path), "%s/fini", f->tmpdir);
	kv.value = path;
	assert_int_equal(load(f, "good", &kv, 1, NULL, 0), 0);
	assert_int_equal(sonde_plugins__attach_process(f->ps, "good", &p, NULL, NULL, 0), 0);
	assert_int_equal(access(path, F_OK), -1);
	sonde_plugins__free(f->ps);
	f->ps = NULL;
	file = fopen(path, "r");
	assert_non_null(file);
	assert_non_null(fgets(text, sizeof(text), file));
	fclose(file);
	assert_string_equal(text, "fini good attached=1\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_refuses_broken_plugins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_a_file_that_is_not_elf, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_settings_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_settings_overrides, setup, teardown),
		cmocka_unit_test_setup_teardown(test_settings_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loads_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_is_prefixed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_attach_and_decline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_processes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_counter_in_metrics, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symbolize_reaches_the_plugin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_services, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_memory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_script_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_calls_fini, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
