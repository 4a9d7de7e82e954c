// SPDX-License-Identifier: MIT
/*
 * The scripting layer: configuration functions and their errors, on_process
 * decisions and their validation, on_window and publish (decoded with
 * msgpack-c), on_http_route through sonde_script__hook, the sandbox, the
 * budget and the memory cap in callbacks, and every shipped script and
 * documented example.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "script.h"

#define EXAMPLES SONDE_SOURCE_DIR "/scripts/examples"

static char path[64];

static const char *write_script(const char *text)
{
	FILE *f;
	int fd;

	strcpy(path, "/tmp/sonde-script-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

/* Loads text with opts; NULL with the message in err, which is "" on success. */
static struct sonde_script *load_opts(const char *text, const struct sonde_script_opts *opts,
				      char *err, size_t errlen)
{
	struct sonde_script *s;

	err[0] = 'x';
	err[1] = '\0';
	s = sonde_script__load(write_script(text), opts, err, errlen);
	unlink(path);
	if (s)
		assert_string_equal(err, "");
	else
		assert_true(err[0] != '\0' && errno == EINVAL);
	return s;
}

static struct sonde_script *load_ok(const char *text)
{
	char err[512];
	struct sonde_script *s = load_opts(text, NULL, err, sizeof(err));

	if (!s)
		fail_msg("loading failed: %s", err);
	return s;
}

static struct sonde_script *load_file(const char *file, bool unsafe, char *err, size_t errlen)
{
	struct sonde_script_opts opts = {.allow_unsafe = unsafe};

	err[0] = '\0';
	return sonde_script__load(file, &opts, err, errlen);
}

/* err must be "PATH:line: ...what..." */
static void expect_at(const char *err, int line, const char *what)
{
	char where[96];

	snprintf(where, sizeof(where), "%s:%d: ", path, line);
	if (strncmp(err, where, strlen(where)) != 0 || !strstr(err, what))
		fail_msg("expected '%s%s', got '%s'", where, what, err);
}

static void expect_error(const char *text, int line, const char *what)
{
	char err[512];

	assert_null(load_opts(text, NULL, err, sizeof(err)));
	expect_at(err, line, what);
}

static void test_sets_options(void **state)
{
	struct sonde_script *s;
	const struct sonde_script_config *c;

	(void)state;
	s = load_ok("sampling { hz = 99, window = 5 }\n"
		    "http { listen = '127.0.0.1:9000' }\n"
		    "output { dir = '/tmp' }\n"
		    "export { listen = 'ipc:///run/sonde/export.ipc' }\n"
		    "control { listen = 'tcp://127.0.0.1:7471' }\n"
		    "plugin 'unwind-native' { required = true, depth = 64, ratio = 0.5,\n"
		    "                         mode = 'fast', verbose = false }\n"
		    "plugin('plain')\n"
		    "plugin('two', { zeta = 'z', alpha = true })\n"
		    "plugin '/opt/sonde/sonde-x.so'\n"
		    "unwinders { 'unwind-native', 'plain' }\n");
	c = sonde_script__config(s);
	assert_int_equal(c->hz, 99);
	assert_int_equal(c->window_s, 5);
	assert_true(c->http_set);
	assert_string_equal(c->http_addr, "127.0.0.1:9000");
	assert_string_equal(c->output_dir, "/tmp");
	assert_string_equal(c->export_url, "ipc:///run/sonde/export.ipc");
	assert_string_equal(c->control_url, "tcp://127.0.0.1:7471");
	assert_int_equal(c->nplugins, 4);
	assert_string_equal(c->plugins[0].name, "unwind-native");
	assert_true(c->plugins[0].required);
	/* sorted by key, as text, "required" not among them */
	assert_int_equal(c->plugins[0].nkvs, 4);
	assert_string_equal(c->plugins[0].kvs[0].key, "depth");
	assert_string_equal(c->plugins[0].kvs[0].value, "64");
	assert_string_equal(c->plugins[0].kvs[1].key, "mode");
	assert_string_equal(c->plugins[0].kvs[1].value, "fast");
	assert_string_equal(c->plugins[0].kvs[2].key, "ratio");
	assert_string_equal(c->plugins[0].kvs[2].value, "0.5");
	assert_string_equal(c->plugins[0].kvs[3].key, "verbose");
	assert_string_equal(c->plugins[0].kvs[3].value, "false");
	assert_string_equal(c->plugins[1].name, "plain");
	assert_false(c->plugins[1].required);
	assert_int_equal(c->plugins[1].nkvs, 0);
	assert_string_equal(c->plugins[2].name, "two");
	assert_int_equal(c->plugins[2].nkvs, 2);
	assert_string_equal(c->plugins[2].kvs[0].key, "alpha");
	assert_string_equal(c->plugins[2].kvs[0].value, "true");
	assert_string_equal(c->plugins[2].kvs[1].value, "z");
	assert_string_equal(c->plugins[3].name, "/opt/sonde/sonde-x.so");
	assert_int_equal(c->ndefault_unwinders, 2);
	assert_string_equal(c->default_unwinders[0], "unwind-native");
	assert_string_equal(c->default_unwinders[1], "plain");
	assert_false(sonde_script__wants_windows(s));
	assert_non_null(strstr(sonde_script__path(s), "/tmp/sonde-script-"));
	sonde_script__free(s);

	/* nothing set: zeros and NULLs; http off */
	s = load_ok("http { listen = false }\n");
	c = sonde_script__config(s);
	assert_true(c->http_set);
	assert_null(c->http_addr);
	assert_int_equal(c->hz, 0);
	assert_int_equal(c->window_s, 0);
	assert_null(c->output_dir);
	assert_null(c->export_url);
	assert_null(c->control_url);
	assert_int_equal(c->nplugins, 0);
	assert_int_equal(c->ndefault_unwinders, 0);
	sonde_script__free(s);

	/* a later call wins */
	s = load_ok("sampling { hz = 7 }\nsampling { window = 3 }\nsampling { hz = 11 }\n"
		    "unwinders { 'a' }\nunwinders { 'b', 'c' }\n");
	c = sonde_script__config(s);
	assert_int_equal(c->hz, 11);
	assert_int_equal(c->window_s, 3);
	assert_int_equal(c->ndefault_unwinders, 2);
	assert_string_equal(c->default_unwinders[0], "b");
	sonde_script__free(s);
}

static void test_the_shipped_default_loads(void **state)
{
	const struct sonde_script_config *c;
	struct sonde_script *s;
	char err[512];

	(void)state;
	s = load_file(SONDE_SOURCE_DIR "/scripts/default.lua", false, err, sizeof(err));
	if (!s)
		fail_msg("%s", err);
	c = sonde_script__config(s);
	assert_int_equal(c->hz, 19);
	assert_int_equal(c->window_s, 10);
	assert_string_equal(c->http_addr, "127.0.0.1:7470");
	/* whole stacks for every process by default: native first, so that
	 * it hands interpreter frames over */
	assert_int_equal(c->ndefault_unwinders, 3);
	assert_string_equal(c->default_unwinders[0], "unwind-native");
	assert_string_equal(c->default_unwinders[1], "unwind-python");
	assert_string_equal(c->default_unwinders[2], "unwind-jvm");
	assert_int_equal(c->nplugins, 4);
	sonde_script__free(s);
}

static void test_errors_name_file_and_line(void **state)
{
	(void)state;
	expect_error("\n\nsampling { hz = \n", 4, "unexpected symbol");
	expect_error("sampling { hz = 0 }\n", 1,
		     "sampling: hz must be a whole number from 1 to 100000");
	expect_error("\nsampling { hz = 'fast' }\n", 2, "hz must be a whole number");
	expect_error("sampling { window = 3601 }\n", 1,
		     "sampling: window must be a whole number from 1 to 3600");
	expect_error("sampling { hzz = 19 }\n", 1, "sampling: unknown option 'hzz'");
	expect_error("sampling(19)\n", 1, "bad argument #1 to 'sampling' (table expected");
	expect_error("http { listen = 7470 }\n", 1, "http: listen must be an address");
	expect_error("output { dir = 1 }\n", 1, "output: dir must be a directory path");
	expect_error("output { directory = '/tmp' }\n", 1, "output: unknown option 'directory'");
	expect_error("local x = nil\nx.y = 1\n", 2, "attempt to index a nil value");
	expect_error("error('stop here')\n", 1, "stop here");

	expect_error("export { listen = 5 }\n", 1,
		     "export: listen must be an nng URL like \"ipc:///run/sonde/export.ipc\"");
	expect_error("\nexport { listen = '/run/sonde/export.ipc' }\n", 2,
		     "export: listen must be an nng URL");
	expect_error("control { listen = 'ipc://' }\n", 1, "control: listen must be an nng URL");
	expect_error("control { port = 1 }\n", 1, "control: unknown option 'port'");

	expect_error("plugin 'Unwind Native'\n", 1, "plugin: 'Unwind Native' is not a plugin name");
	expect_error("plugin(42 == 42)\n", 1, "bad argument #1 to 'plugin'");
	expect_error("plugin 'x'\n\nplugin 'x' { depth = 1 }\n", 3,
		     "plugin: 'x' is declared twice");
	expect_error("plugin 'x' { depth = {} }\n", 1,
		     "plugin 'x': depth must be a string, a number or a boolean");
	expect_error("plugin 'x' { required = 'yes' }\n", 1,
		     "plugin 'x': required must be true or false");
	expect_error("plugin 'x' { 'depth' }\n", 1, "plugin 'x': settings are key = value pairs");
	expect_error("plugin 'x' { ['a b'] = 1 }\n", 1, "plugin 'x': 'a b' is not a setting name");
	expect_error("plugin 'x' 'y'\n", 1, "plugin 'x': settings must be a table");

	expect_error("unwinders { 'a', 'a' }\n", 1, "unwinders: 'a' is listed twice");
	expect_error("unwinders { 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i' }\n", 1,
		     "unwinders: more than 8 unwinders");
	expect_error("unwinders { 1 }\n", 1, "unwinders: expected a list of names");
	expect_error("unwinders { first = 'a' }\n", 1, "unwinders: expected a list of names");
	expect_error("unwinders 'a'\n", 1, "unwinders: expected a list of names");
	expect_error("unwinders { 'Native' }\n", 1, "unwinders: 'Native' is not an unwinder name");

	expect_error("on_process(5)\n", 1, "bad argument #1 to 'on_process' (function expected");
	expect_error("on_process(function() end)\n\non_process(function() end)\n", 3,
		     "on_process: a callback is already set (at ");
	expect_error("on_window(function() end)\non_window(function() end)\n", 2,
		     "on_window: a callback is already set");
	/* the window's publish is not the main chunk's */
	expect_error("publish('x', {})\n", 1, "publish: only on_window can publish");
}

static void test_sandbox(void **state)
{
	struct sonde_script_opts unsafe = {.allow_unsafe = true};
	struct sonde_script *s;
	char err[512];

	(void)state;
	expect_error("os.execute('touch /tmp/sonde-pwned')\n", 1, "global 'os'");
	assert_int_equal(access("/tmp/sonde-pwned", F_OK), -1);
	expect_error("io.open('/etc/passwd')\n", 1, "global 'io'");
	expect_error("dofile('/etc/passwd')\n", 1, "global 'dofile'");
	expect_error("loadfile('/etc/passwd')\n", 1, "global 'loadfile'");
	expect_error("require('os')\n", 1, "global 'require'");
	expect_error("load('return 1')()\n", 1, "global 'load'");
	expect_error("collectgarbage('stop')\n", 1, "global 'collectgarbage'");
	expect_error("package.loadlib('/lib/x.so', 'f')\n", 1, "global 'package'");
	expect_error("debug.getinfo(1)\n", 1, "global 'debug'");
	/* what stays */
	s = load_ok("assert(pcall(error, 'x') == false)\n"
		    "assert(string.format('%d', 3) == '3' and math.max(1, 2) == 2)\n"
		    "assert(table.concat({ 'a', 'b' }, ',') == 'a,b' and utf8.char(72) == 'H')\n"
		    "assert(type(tostring) == 'function' and type(log) == 'function')\n"
		    "assert(print == log)\n");
	sonde_script__free(s);

	/* the operator's flag opens them */
	s = load_opts(
		"assert(os.execute and io.open and require and load and dofile and loadfile)\n"
		"assert(load('return 41 + 1')() == 42)\n"
		"assert(package.loaded.os == os)\n"
		"assert(collectgarbage == nil and debug == nil)\n",
		&unsafe, err, sizeof(err));
	if (!s)
		fail_msg("%s", err);
	sonde_script__free(s);

	/* bytecode is refused */
	assert_null(load_opts("\x1bLua", NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "attempt to load a binary chunk"));
}

static void test_main_chunk_limits(void **state)
{
	struct sonde_script_opts small = {.memory_cap = 1 << 20, .budget = 100000};
	char err[512];

	(void)state;
	/* an endless loop stops at the budget; pcall cannot swallow it */
	expect_error("while true do end\n", 1, "instruction budget of 10000000 exhausted");
	/* not even once: the instruction after the pcall fails again, on line 1 */
	expect_error(
		"for i = 1, 10 do pcall(function() while true do end end) end\nwhile true do end\n",
		1, "instruction budget");
	assert_null(load_opts("\nlocal n = 0\nwhile true do n = n + 1 end\n", &small, err,
			      sizeof(err)));
	expect_at(err, 3, "instruction budget of 100000 exhausted");
	/* unbounded allocation stops at the memory cap */
	assert_null(
		load_opts("local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n",
			  &small, err, sizeof(err)));
	expect_at(err, 2, "not enough memory");
	/* the default cap is 32 MiB; string.rep(s, n) needs 2n for a moment */
	sonde_script__free(load_ok("local s = string.rep('x', 10 << 20)\n"));
	expect_error("local s = string.rep('x', 20 << 20)\n", 1, "not enough memory");
}

static void test_missing_file(void **state)
{
	char err[512];

	(void)state;
	errno = 0;
	assert_null(sonde_script__load("/nonexistent/x.lua", NULL, err, sizeof(err)));
	assert_int_equal(errno, EINVAL);
	assert_non_null(strstr(err, "cannot open /nonexistent/x.lua"));
}

static struct sonde_script_process proc(uint32_t pid, const char *comm, const char *exe,
					const char *cmdline, const char *cgroup,
					const char *container_id)
{
	struct sonde_script_process p = {
		.pid = pid,
		.ppid = 1,
		.comm = comm,
		.exe = exe,
		.cmdline = cmdline,
		.cgroup = cgroup,
		.container_id = container_id,
	};

	return p;
}

static const char *label(const struct sonde_script_decision *d, const char *key)
{
	size_t i;

	for (i = 0; i < d->nlabels; i++)
		if (strcmp(d->labels[i].key, key) == 0)
			return d->labels[i].value;
	return NULL;
}

static void test_decide_without_callback(void **state)
{
	struct sonde_script_process p = proc(10, "bash", NULL, NULL, NULL, NULL);
	struct sonde_script_decision d;
	struct sonde_script *s;

	(void)state;
	s = load_ok("unwinders { 'unwind-native', 'unwind-python' }\n");
	memset(&d, 0xff, sizeof(d));
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 2);
	assert_string_equal(d.unwinders[0], "unwind-native");
	assert_string_equal(d.unwinders[1], "unwind-python");
	assert_int_equal(d.nlabels, 0);
	assert_string_equal(sonde_script__last_error(s), "");
	sonde_script__free(s);
}

static void test_decide_predicates(void **state)
{
	struct sonde_script_process p;
	struct sonde_script_decision d;
	struct sonde_script_stats st;
	struct sonde_script *s;

	(void)state;
	s = load_ok(
		"unwinders { 'unwind-native' }\n"
		"on_process(function(p)\n"
		"  if p.comm == 'sshd' then return false end\n"
		"  if p.exe and p.exe:match('/python3[%d.]*$') then\n"
		"    return { unwinders = { 'unwind-native', 'unwind-python' },\n"
		"             labels = { runtime = 'python', pid_seen = tostring(p.pid) } }\n"
		"  end\n"
		"  if p.cmdline and p.cmdline:find('--jvm', 1, true) then\n"
		"    return { unwinders = {}, plugins = { 'red-metrics' } }\n"
		"  end\n"
		"  if p.cgroup == '/system.slice/checkout.service' then\n"
		"    return { labels = { team = 'payments', Zone_1 = 'a', _x = 'b' } }\n"
		"  end\n"
		"  if p.container_id then\n"
		"    return { labels = { container = p.container_id:sub(1, 12),\n"
		"                        ppid = tostring(p.ppid) } }\n"
		"  end\n"
		"  if p.exe == nil and p.cgroup == nil and p.cmdline == nil then return nil end\n"
		"  return true\n"
		"end)\n");

	p = proc(2, "sshd", "/usr/sbin/sshd", "sshd -D", "/system.slice/ssh.service", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_false(d.profile);
	assert_int_equal(d.nunwinders, 0);
	assert_int_equal(d.nlabels, 0);

	p = proc(3, "python3", "/usr/bin/python3.11", "python3 app.py", NULL, NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 2);
	assert_string_equal(d.unwinders[0], "unwind-native");
	assert_string_equal(d.unwinders[1], "unwind-python");
	assert_int_equal(d.nlabels, 2);
	assert_string_equal(d.labels[0].key, "pid_seen"); /* sorted by key */
	assert_string_equal(d.labels[0].value, "3");
	assert_string_equal(d.labels[1].key, "runtime");
	assert_string_equal(d.labels[1].value, "python");

	p = proc(4, "java", "/usr/bin/java", "java --jvm -jar x.jar", NULL, NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 0); /* an empty list: none */
	assert_int_equal(d.nplugins, 1);   /* a plugin that unwinds nothing */
	assert_string_equal(d.plugins[0], "red-metrics");

	p = proc(5, "checkout", "/srv/checkout", "checkout", "/system.slice/checkout.service",
		 NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 1); /* no unwinders key: the defaults */
	assert_string_equal(d.unwinders[0], "unwind-native");
	assert_int_equal(d.nlabels, 3);
	assert_string_equal(d.labels[0].key, "Zone_1");
	assert_string_equal(d.labels[1].key, "_x");
	assert_string_equal(d.labels[2].key, "team");
	assert_string_equal(label(&d, "team"), "payments");

	p = proc(6, "nginx", "/usr/sbin/nginx", "nginx", "/kubepods/pod1/abc",
		 "0123456789abcdef0123456789abcdef");
	p.ppid = 77;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_string_equal(label(&d, "container"), "0123456789ab");
	assert_string_equal(label(&d, "ppid"), "77");

	/* absent strings are nil; nil is "not profiled" */
	p = proc(7, "kworker/0:1", NULL, NULL, NULL, NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_false(d.profile);

	p = proc(8, "bash", "/bin/bash", "bash", "/user.slice/x", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 1);
	assert_int_equal(d.nlabels, 0);

	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 0);
	sonde_script__free(s);
}

static void test_decide_bad_returns(void **state)
{
	static const struct {
		const char *ret, *what;
	} cases[] = {
		{"5", "on_process: return true, false or a table, not number"},
		{"'yes'", "on_process: return true, false or a table, not string"},
		{"{ unwinder = { 'a' } }",
		 "on_process: unknown key 'unwinder' in the returned table"},
		{"{ 'a' }", "on_process: unknown key a number in the returned table"},
		{"{ labels = { team = 5 } }",
		 "on_process: label 'team' must be a string, not number"},
		{"{ labels = { team = true } }",
		 "on_process: label 'team' must be a string, not boolean"},
		{"{ labels = { ['bad-key'] = 'x' } }", "on_process: 'bad-key' is not a label name"},
		{"{ labels = { ['1abc'] = 'x' } }", "on_process: '1abc' is not a label name"},
		{"{ labels = { [''] = 'x' } }", "on_process: '' is not a label name"},
		{"{ labels = { __name__ = 'x' } }", "on_process: label '__name__' is reserved"},
		{"{ labels = { pid = '1' } }", "on_process: label 'pid' is the process id; it cannot be relabeled"},
		{"{ labels = { 'x' } }", "on_process: label names must be strings, not number"},
		{"{ labels = 'team' }", "on_process: labels must be a table"},
		{"{ labels = { a=' ', b=' ', c=' ', d=' ', e=' ', f=' ', g=' ', h=' ', i=' ',\n"
		 "  j=' ', k=' ', l=' ', m=' ', n=' ', o=' ', p=' ', q=' ' } }",
		 "on_process: more than 16 labels"},
		{"{ labels = { big = string.rep('x', 1025) } }",
		 "on_process: label 'big' is longer than 1024 bytes"},
		{"{ unwinders = 'unwind-native' }",
		 "on_process: unwinders: expected a list of names"},
		{"{ unwinders = { 'Native' } }",
		 "on_process: unwinders: 'Native' is not an unwinder name"},
		{"{ unwinders = { 'a', 'a' } }", "on_process: unwinders: 'a' is listed twice"},
		{"{ plugins = { 'Red' } }", "on_process: plugins: 'Red' is not a plugin name"},
		{"{ unwinders = { 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i' } }",
		 "on_process: unwinders: more than 8 unwinders"},
	};
	struct sonde_script_process p = proc(42, "app", "/app", "app", "/x", NULL);
	struct sonde_script_decision d;
	struct sonde_script_stats st;
	struct sonde_script *s;
	char text[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text),
			 "unwinders { 'unwind-native' }\n\non_process(function(p)\n  return "
			 "%s\nend)\n",
			 cases[i].ret);
		s = load_ok(text);
		assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
		/* the line where the callback is defined */
		expect_at(sonde_script__last_error(s), 3, cases[i].what);
		assert_null(strchr(sonde_script__last_error(s), '\n'));
		/* the default decision */
		assert_true(d.profile);
		assert_int_equal(d.nunwinders, 1);
		assert_string_equal(d.unwinders[0], "unwind-native");
		assert_int_equal(d.nlabels, 0);
		sonde_script__stats(s, &st);
		assert_int_equal(st.errors, 1);
		assert_int_equal(st.budget_overruns, 0);
		assert_int_equal(st.memory_overruns, 0);
		sonde_script__free(s);
	}
}

static void test_failing_callback_keeps_working(void **state)
{
	struct sonde_script_process p;
	struct sonde_script_decision d;
	struct sonde_script_stats st;
	struct sonde_script *s;

	(void)state;
	s = load_ok("-- a script\n"
		    "on_process(function(p)\n"
		    "  if p.pid == 1 then\n"
		    "    local t = nil\n"
		    "    return t.x\n"
		    "  elseif p.pid == 2 then\n"
		    "    error({ code = 1 })\n"
		    "  elseif p.pid == 3 then\n"
		    "    error('no position', 0)\n"
		    "  elseif p.pid == 4 then\n"
		    "    sampling { hz = 1 }\n"
		    "  end\n"
		    "  return { labels = { ok = 'yes' } }\n"
		    "end)\n");
	p = proc(1, "a", NULL, NULL, NULL, NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 5, "attempt to index a nil value (local 't')");
	assert_true(d.profile);

	p.pid = 2;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 2, "(error object is a table value)");
	p.pid = 3;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 2, "no position");
	/* the configuration cannot change once loaded */
	p.pid = 4;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 11,
		  "sampling: only the main chunk can call it, not a callback");
	assert_int_equal(sonde_script__config(s)->hz, 0);

	p.pid = 5;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "ok"), "yes");
	assert_string_equal(sonde_script__last_error(s), "");
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 4);
	assert_int_equal(st.budget_overruns, 0);
	sonde_script__free(s);
}

static void test_budget_in_callback(void **state)
{
	struct sonde_script_opts opts = {.budget = 200000};
	struct sonde_script_process p = proc(0, "x", NULL, NULL, NULL, NULL);
	struct sonde_script_decision d;
	struct sonde_script_stats st;
	struct sonde_script *s;
	char err[512];

	(void)state;
	s = load_opts("local function spin() while true do end end\n"
		      "on_process(function(p)\n"
		      "  if p.pid == 1 then spin() end\n"
		      "  if p.pid == 2 then\n"
		      "    for i = 1, 100 do pcall(spin) end\n"
		      "    return { labels = { escaped = 'yes' } }\n"
		      "  end\n"
		      "  if p.pid == 3 then\n"
		      "    while true do pcall(function() pcall(spin) end) end\n"
		      "  end\n"
		      "  local n = 0\n"
		      "  for i = 1, 10000 do n = n + i end\n"
		      "  return { labels = { sum = tostring(n) } }\n"
		      "end)\n",
		      &opts, err, sizeof(err));
	assert_non_null(s);
	p.pid = 1;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 1, "instruction budget of 200000 exhausted");
	/* pcall in the callback does not get it back */
	p.pid = 2;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	assert_non_null(strstr(sonde_script__last_error(s), "instruction budget"));
	assert_null(label(&d, "escaped"));
	p.pid = 3;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	assert_non_null(strstr(sonde_script__last_error(s), "instruction budget"));
	/* every call has a fresh budget: 10000 iterations fit in 200000 */
	p.pid = 4;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "sum"), "50005000");
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 3);
	assert_int_equal(st.budget_overruns, 3);
	assert_int_equal(st.memory_overruns, 0);
	sonde_script__free(s);
}

static void test_memory_in_callback(void **state)
{
	struct sonde_script_opts opts = {.memory_cap = 8 << 20};
	struct sonde_script_process p = proc(0, "x", NULL, NULL, NULL, NULL);
	struct sonde_script_decision d;
	struct sonde_script_stats st;
	struct sonde_script *s;
	char err[512];

	(void)state;
	/* string.rep(s, n) holds 2n bytes for a moment: 3 MiB kept, 6 more refused */
	s = load_opts("keep = nil\n"
		      "on_process(function(p)\n"
		      "  if p.pid == 1 then\n"
		      "    local t = {}\n"
		      "    for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n"
		      "  end\n"
		      "  if p.pid == 2 then\n"
		      "    keep = string.rep('y', 3 << 20)\n"
		      "    local more = string.rep('z', 3 << 20)\n"
		      "  end\n"
		      "  if p.pid == 3 then keep = nil end\n"
		      "  local t = {}\n"
		      "  for i = 1, 1000 do t[i] = string.rep('z', 100) .. i end\n"
		      "  return { labels = { n = tostring(#t) } }\n"
		      "end)\n",
		      &opts, err, sizeof(err));
	assert_non_null(s);
	p.pid = 1;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 5, "not enough memory");
	assert_true(d.profile);
	/* what the failed call held is collected: the next one works */
	p.pid = 4;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "n"), "1000");
	/* a failure while a global holds memory: the rest still works */
	p.pid = 2;
	assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
	expect_at(sonde_script__last_error(s), 9, "not enough memory");
	p.pid = 4;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "n"), "1000");
	p.pid = 3;
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "n"), "1000");
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 2);
	assert_int_equal(st.memory_overruns, 2);
	assert_int_equal(st.budget_overruns, 0);
	sonde_script__free(s);
}

struct message {
	char topic[64];
	char *data;
	size_t len;
};

struct capture {
	struct message msgs[8];
	size_t n;
	int rc; /* what publish returns */
};

static int capture(void *ctx, const char *topic, const void *msgpack, size_t len)
{
	struct capture *c = ctx;
	struct message *m;

	if (c->rc)
		return c->rc;
	assert_true(c->n < 8);
	m = &c->msgs[c->n++];
	snprintf(m->topic, sizeof(m->topic), "%s", topic);
	m->data = malloc(len);
	assert_non_null(m->data);
	memcpy(m->data, msgpack, len);
	m->len = len;
	return 0;
}

static void capture_free(struct capture *c)
{
	size_t i;

	for (i = 0; i < c->n; i++)
		free(c->msgs[i].data);
	memset(c, 0, sizeof(*c));
}

static const msgpack_object *map_get(const msgpack_object *o, const char *key)
{
	uint32_t i;

	assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
	for (i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
		    memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
			return &o->via.map.ptr[i].val;
	}
	fail_msg("no key '%s'", key);
	return NULL;
}

static void assert_str(const msgpack_object *o, const char *s)
{
	assert_int_equal(o->type, MSGPACK_OBJECT_STR);
	assert_int_equal(o->via.str.size, strlen(s));
	assert_memory_equal(o->via.str.ptr, s, strlen(s));
}

static void unpack(const struct message *m, msgpack_unpacked *up)
{
	size_t off = 0;

	msgpack_unpacked_init(up);
	assert_int_equal(msgpack_unpack_next(up, m->data, m->len, &off), MSGPACK_UNPACK_SUCCESS);
	assert_int_equal(off, m->len);
}

/* Three stacks: main>work>hash twice (5+2 samples), main>idle (3), team-labeled. */
static const char *const frames_a[] = {"hash", "work", "main"};
static const char *const frames_b[] = {"idle", "main"};
static const struct sonde_script_label labels_a[] = {{"team", "payments"}, {"pid", "10"}};
static const struct sonde_script_label labels_b[] = {{"pid", "11"}};
static const struct sonde_script_stack stacks[] = {
	{.count = 5, .labels = labels_a, .nlabels = 2, .frames = frames_a, .nframes = 3},
	{.count = 3, .labels = labels_b, .nlabels = 1, .frames = frames_b, .nframes = 2},
	{.count = 2, .labels = labels_b, .nlabels = 1, .frames = frames_a, .nframes = 3},
};
static const struct sonde_script_window window = {
	.start = 1700000000.5,
	.duration = 10.0,
	.samples = 10,
	.stacks = stacks,
	.nstacks = 3,
};

static void test_window_and_publish(void **state)
{
	struct sonde_script_stats st;
	struct sonde_script *s;
	struct capture c = {0};
	msgpack_unpacked up;
	const msgpack_object *o, *v;

	(void)state;
	s = load_ok("on_window(function(w)\n"
		    "  local first = w.stacks[1]\n"
		    "  assert(#w.stacks == 3 and rawequal(w.stacks, w.stacks))\n"
		    "  assert(w.other == nil)\n"
		    "  local ok, err = publish('summary', {\n"
		    "    start = w.start, duration = w.duration, samples = w.samples,\n"
		    "    first = { count = first.count, leaf = first.frames[1], root = "
		    "first.frames[3],\n"
		    "              team = first.labels.team, pid = first.labels.pid },\n"
		    "    nstacks = #w.stacks,\n"
		    "  })\n"
		    "  assert(ok == true and err == nil)\n"
		    "  publish('cpu.by-team_2', { none = w.stacks[2].labels.team == nil })\n"
		    "end)\n");
	assert_true(sonde_script__wants_windows(s));
	assert_int_equal(sonde_script__window(s, &window, capture, &c), 0);
	assert_int_equal(c.n, 2);
	assert_string_equal(c.msgs[0].topic, "summary");
	unpack(&c.msgs[0], &up);
	o = &up.data;
	v = map_get(o, "start");
	assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
	assert_true(v->via.f64 == 1700000000.5);
	assert_true(map_get(o, "duration")->via.f64 == 10.0);
	v = map_get(o, "samples");
	assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
	assert_int_equal(v->via.u64, 10);
	assert_int_equal(map_get(o, "nstacks")->via.u64, 3);
	v = map_get(o, "first");
	assert_int_equal(map_get(v, "count")->via.u64, 5);
	assert_str(map_get(v, "leaf"), "hash");
	assert_str(map_get(v, "root"), "main");
	assert_str(map_get(v, "team"), "payments");
	assert_str(map_get(v, "pid"), "10");
	msgpack_unpacked_destroy(&up);
	assert_string_equal(c.msgs[1].topic, "cpu.by-team_2");
	unpack(&c.msgs[1], &up);
	v = map_get(&up.data, "none");
	assert_int_equal(v->type, MSGPACK_OBJECT_BOOLEAN);
	assert_true(v->via.boolean);
	msgpack_unpacked_destroy(&up);
	capture_free(&c);

	/* the transport refuses: publish returns nil and why, the callback goes on */
	sonde_script__free(s);
	s = load_ok("on_window(function(w)\n"
		    "  local ok, err = publish('a', { x = 1 })\n"
		    "  if not ok then error('refused: ' .. err) end\n"
		    "end)\n");
	c.rc = -EAGAIN;
	assert_int_equal(sonde_script__window(s, &window, capture, &c), -EINVAL);
	expect_at(sonde_script__last_error(s), 3, "refused: Resource temporarily unavailable");
	assert_int_equal(sonde_script__window(s, &window, NULL, NULL), -EINVAL);
	expect_at(sonde_script__last_error(s), 3, "refused: publishing is off");
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 2);
	sonde_script__free(s);
}

static void test_window_edges(void **state)
{
	struct sonde_script_window empty = {.start = 1, .duration = 1};
	struct capture c = {0};
	struct sonde_script *s;

	(void)state;
	/* without a callback: nothing to do */
	s = load_ok("sampling { hz = 1 }\n");
	assert_false(sonde_script__wants_windows(s));
	assert_int_equal(sonde_script__window(s, &window, capture, &c), 0);
	assert_int_equal(c.n, 0);
	sonde_script__free(s);

	/* the stacks of a window kept past its call cannot be built any more */
	s = load_ok("local old\n"
		    "on_window(function(w)\n"
		    "  if old then return old.stacks end\n"
		    "  old = w\n"
		    "end)\n");
	assert_int_equal(sonde_script__window(s, &window, capture, &c), 0);
	assert_int_equal(sonde_script__window(s, &window, capture, &c), -EINVAL);
	expect_at(sonde_script__last_error(s), 3, "w.stacks: this window is over");
	sonde_script__free(s);

	/* an empty window has no stacks */
	s = load_ok("on_window(function(w) publish('n', { n = #w.stacks, s = w.samples }) end)\n");
	assert_int_equal(sonde_script__window(s, &empty, capture, &c), 0);
	assert_int_equal(c.n, 1);
	{
		msgpack_unpacked up;

		unpack(&c.msgs[0], &up);
		assert_int_equal(map_get(&up.data, "n")->via.u64, 0);
		assert_int_equal(map_get(&up.data, "s")->via.u64, 0);
		msgpack_unpacked_destroy(&up);
	}
	capture_free(&c);
	sonde_script__free(s);

	/* frames without a name read "?" */
	{
		static const char *const holes[] = {NULL, "main"};
		struct sonde_script_stack st = {.count = 1, .frames = holes, .nframes = 2};
		struct sonde_script_window w = {.samples = 1, .stacks = &st, .nstacks = 1};
		msgpack_unpacked up;

		s = load_ok("on_window(function(w) publish('f', { leaf = w.stacks[1].frames[1] }) "
			    "end)\n");
		assert_int_equal(sonde_script__window(s, &w, capture, &c), 0);
		assert_int_equal(c.n, 1);
		unpack(&c.msgs[0], &up);
		assert_str(map_get(&up.data, "leaf"), "?");
		msgpack_unpacked_destroy(&up);
		capture_free(&c);
		sonde_script__free(s);
	}
}

static void test_publish_errors(void **state)
{
	static const struct {
		const char *call, *what;
	} cases[] = {
		{"publish('profile', {})", "publish: topic 'profile' is the core's"},
		{"publish('proc', {})", "publish: topic 'proc' is the core's"},
		{"publish('red', {})", "publish: topic 'red' is the core's"},
		{"publish('red.http', {})", "publish: topic 'red.http' is the core's"},
		{"publish('Top', {})", "publish: 'Top' is not a topic name"},
		{"publish('1top', {})", "publish: '1top' is not a topic name"},
		{"publish('', {})", "publish: '' is not a topic name"},
		{"publish('top', 5)", "bad argument #2 to 'publish' (table expected, got number)"},
		{"publish('top', { f = print })", "publish: f: cannot send a function"},
	};
	struct capture c = {0};
	struct sonde_script *s;
	char text[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "on_window(function(w)\n  %s\nend)\n", cases[i].call);
		s = load_ok(text);
		assert_int_equal(sonde_script__window(s, &window, capture, &c), -EINVAL);
		expect_at(sonde_script__last_error(s), 2, cases[i].what);
		assert_int_equal(c.n, 0);
		sonde_script__free(s);
	}
	/* topics that only start like the core's are the script's */
	s = load_ok("on_window(function(w) publish('profiles', {}) publish('redis', {}) end)\n");
	assert_int_equal(sonde_script__window(s, &window, capture, &c), 0);
	assert_int_equal(c.n, 2);
	capture_free(&c);
	sonde_script__free(s);

	/* on_process has no publish */
	{
		struct sonde_script_process p = proc(1, "a", NULL, NULL, NULL, NULL);
		struct sonde_script_decision d;

		s = load_ok("on_window(function() end)\n"
			    "on_process(function(p) publish('x', {}) end)\n");
		assert_int_equal(sonde_script__decide(s, &p, &d), -EINVAL);
		expect_at(sonde_script__last_error(s), 2, "publish: only on_window can publish");
		sonde_script__free(s);
	}
}

static void test_log(void **state)
{
	char logpath[] = "/tmp/sonde-script-log-XXXXXX";
	char buf[1024] = "", want[256];
	int fd, saved;
	ssize_t n;
	struct sonde_script *s;

	(void)state;
	fd = mkstemp(logpath);
	assert_true(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	dup2(fd, 2);
	s = load_ok("log('loaded', 42, true, nil)\n\nprint('via print')\n");
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(logpath);
	assert_true(n > 0);
	snprintf(want, sizeof(want), "sonded: info: %s:1: loaded 42 true nil\n", path);
	assert_non_null(strstr(buf, want));
	snprintf(want, sizeof(want), "sonded: info: %s:3: via print\n", path);
	assert_non_null(strstr(buf, want));
	sonde_script__free(s);
}

static void test_two_states_coexist(void **state)
{
	struct sonde_script_process p = proc(1, "a", NULL, NULL, NULL, NULL);
	struct sonde_script_decision d1, d2;
	struct sonde_script *a, *b;

	(void)state;
	a = load_ok("n = 0\non_process(function() n = n + 1 return { labels = { s = 'a' .. n } } "
		    "end)\n");
	b = load_ok("n = 100\non_process(function() n = n + 1 return { labels = { s = 'b' .. n } } "
		    "end)\n");
	assert_int_equal(sonde_script__decide(a, &p, &d1), 0);
	assert_int_equal(sonde_script__decide(b, &p, &d2), 0);
	assert_string_equal(label(&d1, "s"), "a1"); /* a's strings outlive a call into b */
	assert_string_equal(label(&d2, "s"), "b101");
	sonde_script__free(a);
	assert_int_equal(sonde_script__decide(b, &p, &d2), 0);
	assert_string_equal(label(&d2, "s"), "b102");
	sonde_script__free(b);
	sonde_script__free(NULL);
}

/* Asks on_http_route about (method, route, path, service, server_address). */
static int route(struct sonde_script *s, const char *method, const char *r, const char *p,
		 const char *service, const char *addr, char *out)
{
	const struct sonde_script_label fields[] = {
		{"method", method}, {"route", r}, {"path", p},
		{"service", service}, {"server_address", addr},
	};

	return sonde_script__hook(s, "http_route", fields, 5, out, SONDE_SCRIPT_ROUTE_MAX + 1);
}

static void test_http_route(void **state)
{
	char out[SONDE_SCRIPT_ROUTE_MAX + 1], small[16];
	struct sonde_script_stats st;
	struct sonde_script *s;

	(void)state;
	/* no callback, or a hook nobody knows: -ENOENT, nothing counted */
	s = load_ok("on_process(function() return true end)\n");
	assert_int_equal(route(s, "GET", "/a", "/a", "web", NULL, out), -ENOENT);
	sonde_script__free(s);

	s = load_ok("on_http_route(function(r) return '/first' end)\n"
		    "on_http_route(function(r)\n" /* line 2: the one that counts */
		    "  if r.route == '/keep' then return nil end\n"
		    "  if r.route == '/drop' then return false end\n"
		    "  if r.route == '/echo' then\n"
		    "    return '/' .. r.method .. '|' .. r.path .. '|' .. r.service .. '|' ..\n"
		    "           tostring(r.server_address)\n"
		    "  end\n"
		    "  if r.route == '/true' then return true end\n"
		    "  if r.route == '/num' then return 42 end\n"
		    "  if r.route == '/rel' then return 'users/{id}' end\n"
		    "  if r.route == '/other' then return '_OTHER' end\n"
		    "  if r.route == '/long' then return '/' .. string.rep('x', 255) end\n"
		    "  if r.route == '/max' then return '/' .. string.rep('x', 254) end\n"
		    "  if r.route == '/ctl' then return '/a\\nb' end\n"
		    "  if r.route == '/err' then local t = nil; return t.x end\n"
		    "  if r.route == '/cb' then on_http_route(print) end\n"
		    "  return '/renamed'\n"
		    "end)\n");
	assert_int_equal(sonde_script__hook(s, "http_routes", NULL, 0, out, sizeof(out)), -ENOENT);
	assert_int_equal(route(s, "GET", "/users/*", "/users/7", "web", NULL, out),
			 SONDE_SCRIPT_HOOK_REPLACE);
	assert_string_equal(out, "/renamed");
	assert_int_equal(route(s, "GET", "/keep", "/keep", "web", NULL, out), SONDE_SCRIPT_HOOK_KEEP);
	assert_int_equal(route(s, "GET", "/drop", "/drop", "web", NULL, out), SONDE_SCRIPT_HOOK_DROP);
	assert_int_equal(route(s, "POST", "/echo", "/echo/1", "api", NULL, out),
			 SONDE_SCRIPT_HOOK_REPLACE);
	assert_string_equal(out, "/POST|/echo/1|api|nil");
	assert_int_equal(route(s, "PUT", "/echo", "/e", "api", "shop.test", out),
			 SONDE_SCRIPT_HOOK_REPLACE);
	assert_string_equal(out, "/PUT|/e|api|shop.test");
	assert_int_equal(route(s, "GET", "/other", "/other", "web", NULL, out),
			 SONDE_SCRIPT_HOOK_REPLACE);
	assert_string_equal(out, "_OTHER");
	assert_int_equal(route(s, "GET", "/max", "/max", "web", NULL, out),
			 SONDE_SCRIPT_HOOK_REPLACE);
	assert_int_equal(strlen(out), 255);
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 0);

	/* bad answers: errors at the callback's line, counted; out is "" */
	assert_int_equal(route(s, "GET", "/true", "/true", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 2,
		  "on_http_route: return a route (a string), false (drop) or nil (keep), not true");
	assert_string_equal(out, "");
	assert_int_equal(route(s, "GET", "/num", "/num", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 2, "not number");
	assert_int_equal(route(s, "GET", "/rel", "/rel", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 2,
		  "on_http_route: route 'users/{id}' must start with '/' or be \"_OTHER\"");
	assert_int_equal(route(s, "GET", "/long", "/long", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 2,
		  "on_http_route: the route is 256 bytes, more than 255");
	assert_int_equal(route(s, "GET", "/ctl", "/ctl", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 2, "the route holds a control character (byte 3)");
	assert_int_equal(route(s, "GET", "/err", "/err", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 16, "attempt to index a nil value (local 't')");
	assert_int_equal(route(s, "GET", "/cb", "/cb", "web", NULL, out), -EINVAL);
	expect_at(sonde_script__last_error(s), 17,
		  "on_http_route: only the main chunk can call it, not a callback");
	/* the next call works */
	assert_int_equal(route(s, "GET", "/x", "/x", "web", NULL, out), SONDE_SCRIPT_HOOK_REPLACE);
	assert_string_equal(out, "/renamed");
	/* a buffer too small for a route: refused before the script runs */
	assert_int_equal(sonde_script__hook(s, "http_route", NULL, 0, small, sizeof(small)),
			 -ENOBUFS);
	sonde_script__stats(s, &st);
	assert_int_equal(st.errors, 7);
	assert_int_equal(st.budget_overruns, 0);
	assert_int_equal(st.http_route_calls, 15);
	sonde_script__free(s);

	/* the budget and the memory cap, as for on_process */
	{
		struct sonde_script_opts opts = {.budget = 100000, .memory_cap = 8 << 20};
		char err[512];

		s = load_opts("on_http_route(function(r)\n"
			      "  if r.route == '/spin' then while true do end end\n"
			      "  if r.route == '/eat' then\n"
			      "    local t = {}\n"
			      "    for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n"
			      "  end\n"
			      "  return '/fine'\n"
			      "end)\n",
			      &opts, err, sizeof(err));
		assert_non_null(s);
		assert_int_equal(route(s, "GET", "/spin", "/spin", "web", NULL, out), -EINVAL);
		expect_at(sonde_script__last_error(s), 2, "instruction budget of 100000 exhausted");
		assert_int_equal(route(s, "GET", "/eat", "/eat", "web", NULL, out), -EINVAL);
		expect_at(sonde_script__last_error(s), 5, "not enough memory");
		assert_int_equal(route(s, "GET", "/a", "/a", "web", NULL, out),
				 SONDE_SCRIPT_HOOK_REPLACE);
		assert_string_equal(out, "/fine");
		sonde_script__stats(s, &st);
		assert_int_equal(st.errors, 2);
		assert_int_equal(st.budget_overruns, 1);
		assert_int_equal(st.memory_overruns, 1);
		assert_int_equal(st.http_route_calls, 3);
		sonde_script__free(s);
	}
}

/* Every script has its own generation, never 0: a reload is seen. */
static void test_generation(void **state)
{
	struct sonde_script *a, *b;

	(void)state;
	a = load_ok("-- a\n");
	b = load_ok("-- a\n");
	assert_true(sonde_script__generation(a) != 0);
	assert_true(sonde_script__generation(b) != 0);
	assert_true(sonde_script__generation(a) != sonde_script__generation(b));
	sonde_script__free(a);
	sonde_script__free(b);
}

/* Loads every *.lua in dir (unsafe-*.lua with allow_unsafe, and checks they
 * need it); returns how many. */
static int load_all(const char *dir)
{
	struct dirent *de;
	int n = 0;
	DIR *d;

	d = opendir(dir);
	assert_non_null(d);
	while ((de = readdir(d))) {
		bool unsafe = strncmp(de->d_name, "unsafe-", 7) == 0;
		size_t len = strlen(de->d_name);
		struct sonde_script *s;
		char file[512], err[512];

		if (len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0)
			continue;
		snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
		s = load_file(file, unsafe, err, sizeof(err));
		if (!s)
			fail_msg("%s does not load: %s", file, err);
		sonde_script__free(s);
		if (unsafe) {
			assert_null(load_file(file, false, err, sizeof(err)));
			assert_non_null(strstr(err, "global 'io'"));
		}
		n++;
	}
	closedir(d);
	return n;
}

static void test_every_shipped_script_loads(void **state)
{
	(void)state;
	assert_true(load_all(SONDE_SOURCE_DIR "/scripts") >= 1);
	assert_true(load_all(EXAMPLES) >= 8);
}

static char *slurp(const char *file)
{
	FILE *f = fopen(file, "r");
	char *buf;
	long n;

	if (!f)
		fail_msg("cannot open %s", file);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Every ```lua block of docs/lua.md is, verbatim, part of a shipped script:
 * the examples the docs show are the ones the tests above load. */
static void test_docs_show_shipped_examples(void **state)
{
	char *doc = slurp(SONDE_SOURCE_DIR "/docs/lua.md");
	char *all = calloc(1, 1);
	const char *p = doc;
	struct dirent *de;
	int blocks = 0;
	DIR *d;

	(void)state;
	d = opendir(EXAMPLES);
	assert_non_null(d);
	while ((de = readdir(d))) {
		char file[512], *text, *grown;

		if (!strstr(de->d_name, ".lua"))
			continue;
		snprintf(file, sizeof(file), "%s/%s", EXAMPLES, de->d_name);
		text = slurp(file);
		grown = realloc(all, strlen(all) + strlen(text) + 2);
		assert_non_null(grown);
		all = grown;
		strcat(strcat(all, text), "\x01");
		free(text);
	}
	closedir(d);
	while ((p = strstr(p, "```lua\n"))) {
		const char *end = strstr(p + 7, "```\n");
		char *block;

		assert_non_null(end);
		block = strndup(p + 7, (size_t)(end - p - 7));
		if (!strstr(all, block))
			fail_msg("docs/lua.md shows a block no example holds:\n%s", block);
		free(block);
		blocks++;
		p = end + 4;
	}
	assert_true(blocks >= 8);
	free(all);
	free(doc);
}

static struct sonde_script *load_example(const char *name)
{
	char file[256], err[512];
	struct sonde_script *s;

	snprintf(file, sizeof(file), "%s/%s", EXAMPLES, name);
	s = load_file(file, false, err, sizeof(err));
	if (!s)
		fail_msg("%s", err);
	return s;
}

/* What docs/lua.md says the examples do, they do. */
static void test_examples_behave_as_documented(void **state)
{
	const struct sonde_script_config *c;
	struct sonde_script_process p;
	struct sonde_script_decision d;
	struct capture cap = {0};
	msgpack_unpacked up;
	const msgpack_object *top, *v;
	struct sonde_script *s;

	(void)state;
	s = load_example("basics.lua");
	c = sonde_script__config(s);
	assert_int_equal(c->hz, 49);
	assert_int_equal(c->window_s, 15);
	assert_string_equal(c->http_addr, "0.0.0.0:7470");
	assert_string_equal(c->output_dir, "/var/lib/sonde/profiles");
	sonde_script__free(s);

	s = load_example("exports.lua");
	c = sonde_script__config(s);
	assert_string_equal(c->export_url, "ipc:///run/sonde/export.ipc");
	assert_string_equal(c->control_url, "ipc:///run/sonde/control.ipc");
	sonde_script__free(s);

	s = load_example("plugins.lua");
	c = sonde_script__config(s);
	assert_int_equal(c->nplugins, 3);
	assert_string_equal(c->plugins[0].name, "unwind-native");
	assert_true(c->plugins[0].required);
	assert_int_equal(c->plugins[0].nkvs, 1);
	assert_string_equal(c->plugins[0].kvs[0].key, "depth");
	assert_string_equal(c->plugins[0].kvs[0].value, "64");
	assert_false(c->plugins[1].required);
	assert_string_equal(c->plugins[2].name, "/opt/sonde/plugins/sonde-unwind-jvm.so");
	assert_int_equal(c->ndefault_unwinders, 1);
	sonde_script__free(s);

	s = load_example("select.lua");
	p = proc(1, "sonded", "/usr/sbin/sonded", "sonded", "/system.slice/sonded.service", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_false(d.profile);
	p = proc(2, "nginx", "/usr/sbin/nginx", "nginx", "/kubepods/x", "abc");
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	p = proc(3, "cron", "/usr/sbin/cron", "cron -f", "/system.slice/cron.service", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	p = proc(4, "app", "/home/u/app", "./app --profile-me", "/user.slice/u", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	p = proc(5, "vim", "/usr/bin/vim", "vim", "/user.slice/u", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_false(d.profile);
	sonde_script__free(s);

	s = load_example("per-workload.lua");
	p = proc(6, "python3", "/usr/bin/python3.11", "python3 app.py",
		 "/system.slice/checkout.service", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_int_equal(d.nunwinders, 2);
	assert_string_equal(d.unwinders[1], "unwind-python");
	assert_string_equal(label(&d, "team"), "payments");
	assert_string_equal(label(&d, "runtime"), "python");
	p = proc(7, "java", "/usr/bin/java", "java -jar x", "/kubepods/y", "0123456789abcdef");
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(d.unwinders[1], "unwind-jvm");
	assert_string_equal(label(&d, "container"), "0123456789ab");
	assert_null(label(&d, "team"));
	p = proc(8, "bash", "/bin/bash", "bash", "/user.slice/u", NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_true(d.profile);
	assert_int_equal(d.nunwinders, 1);
	assert_string_equal(d.unwinders[0], "unwind-native");
	assert_int_equal(d.nlabels, 0);
	sonde_script__free(s);

	/* hash: 5 + 2 samples, idle: 3 */
	s = load_example("top-functions.lua");
	assert_int_equal(sonde_script__window(s, &window, capture, &cap), 0);
	assert_int_equal(cap.n, 1);
	assert_string_equal(cap.msgs[0].topic, "top");
	unpack(&cap.msgs[0], &up);
	assert_int_equal(map_get(&up.data, "samples")->via.u64, 10);
	top = map_get(&up.data, "top");
	assert_int_equal(top->type, MSGPACK_OBJECT_ARRAY);
	assert_int_equal(top->via.array.size, 2);
	v = &top->via.array.ptr[0];
	assert_str(map_get(v, "name"), "hash");
	assert_int_equal(map_get(v, "samples")->via.u64, 7);
	v = &top->via.array.ptr[1];
	assert_str(map_get(v, "name"), "idle");
	assert_int_equal(map_get(v, "samples")->via.u64, 3);
	msgpack_unpacked_destroy(&up);
	capture_free(&cap);
	sonde_script__free(s);

	s = load_example("cpu-by-team.lua");
	p = proc(9, "checkout", "/srv/checkout", "checkout", "/system.slice/checkout.service",
		 NULL);
	assert_int_equal(sonde_script__decide(s, &p, &d), 0);
	assert_string_equal(label(&d, "team"), "payments");
	assert_int_equal(sonde_script__window(s, &window, capture, &cap), 0);
	assert_int_equal(cap.n, 1);
	assert_string_equal(cap.msgs[0].topic, "cpu.by_team");
	unpack(&cap.msgs[0], &up);
	v = map_get(&up.data, "samples");
	assert_int_equal(map_get(v, "payments")->via.u64, 5);
	assert_int_equal(map_get(v, "none")->via.u64, 5);
	msgpack_unpacked_destroy(&up);
	capture_free(&cap);
	sonde_script__free(s);

	s = load_example("http-routes.lua");
	c = sonde_script__config(s);
	assert_int_equal(c->nplugins, 1);
	assert_string_equal(c->plugins[0].name, "red-metrics");
	{
		char out[SONDE_SCRIPT_ROUTE_MAX + 1];

		assert_int_equal(route(s, "GET", "/healthz", "/healthz", "web", NULL, out),
				 SONDE_SCRIPT_HOOK_DROP);
		assert_int_equal(route(s, "GET", "/users/*", "/users/42", "web", NULL, out),
				 SONDE_SCRIPT_HOOK_REPLACE);
		assert_string_equal(out, "/users/{id}");
		assert_int_equal(route(s, "POST", "/api/v1/orders/*", "/api/v1/orders/9", "legacy",
				       "shop.test", out),
				 SONDE_SCRIPT_HOOK_REPLACE);
		assert_string_equal(out, "/api/v1/*");
		assert_int_equal(route(s, "POST", "/api/v1/orders/*", "/api/v1/orders/9", "web",
				       NULL, out),
				 SONDE_SCRIPT_HOOK_KEEP);
		assert_int_equal(route(s, "GET", "/static/*", "/static/app.js", "web", NULL, out),
				 SONDE_SCRIPT_HOOK_KEEP);
	}
	sonde_script__free(s);

	/* unsafe-teams-file.lua: the teams of SONDE_TEAMS */
	{
		char teams[] = "/tmp/sonde-teams-XXXXXX", err[512];
		int fd = mkstemp(teams);

		assert_true(fd >= 0);
		assert_int_equal(write(fd, "checkout payments\nsearch discovery\n", 35), 35);
		close(fd);
		setenv("SONDE_TEAMS", teams, 1);
		s = load_file(EXAMPLES "/unsafe-teams-file.lua", true, err, sizeof(err));
		unsetenv("SONDE_TEAMS");
		unlink(teams);
		if (!s)
			fail_msg("%s", err);
		p = proc(10, "search", "/srv/search", "search", "/system.slice/search.service",
			 NULL);
		assert_int_equal(sonde_script__decide(s, &p, &d), 0);
		assert_string_equal(label(&d, "team"), "discovery");
		sonde_script__free(s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sets_options),
		cmocka_unit_test(test_the_shipped_default_loads),
		cmocka_unit_test(test_errors_name_file_and_line),
		cmocka_unit_test(test_sandbox),
		cmocka_unit_test(test_main_chunk_limits),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_decide_without_callback),
		cmocka_unit_test(test_decide_predicates),
		cmocka_unit_test(test_decide_bad_returns),
		cmocka_unit_test(test_failing_callback_keeps_working),
		cmocka_unit_test(test_budget_in_callback),
		cmocka_unit_test(test_memory_in_callback),
		cmocka_unit_test(test_window_and_publish),
		cmocka_unit_test(test_window_edges),
		cmocka_unit_test(test_publish_errors),
		cmocka_unit_test(test_log),
		cmocka_unit_test(test_two_states_coexist),
		cmocka_unit_test(test_http_route),
		cmocka_unit_test(test_generation),
		cmocka_unit_test(test_every_shipped_script_loads),
		cmocka_unit_test(test_docs_show_shipped_examples),
		cmocka_unit_test(test_examples_behave_as_documented),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
