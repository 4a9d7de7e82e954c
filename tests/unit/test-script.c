// SPDX-License-Identifier: MIT
/* The configuration script: values, errors with file:line, the sandbox. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "script.h"

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

/* Loads text; returns the error message ("" on success). */
static const char *load(const char *text, struct sonde_script_config *cfg)
{
	static char err[512];
	int rc;

	err[0] = '\0';
	rc = sonde_script_load(write_script(text), cfg, err, sizeof(err));
	unlink(path);
	assert_true(rc == 0 ? err[0] == '\0' : err[0] != '\0');
	return err;
}

static void expect_error(const char *text, int line, const char *what)
{
	struct sonde_script_config cfg;
	const char *err = load(text, &cfg);
	char where[96];

	snprintf(where, sizeof(where), "%s:%d: ", path, line);
	if (!strstr(err, where) || !strstr(err, what))
		fail_msg("expected '%s%s', got '%s'", where, what, err);
}

static void test_sets_options(void **state)
{
	struct sonde_script_config cfg;

	(void)state;
	assert_string_equal(load("sampling { hz = 99, window = 5 }\n"
				 "http { listen = '127.0.0.1:9000' }\n"
				 "output { dir = '/tmp' }\n",
				 &cfg),
			    "");
	assert_int_equal(cfg.hz, 99);
	assert_int_equal(cfg.window_s, 5);
	assert_true(cfg.http_set);
	assert_string_equal(cfg.http_addr, "127.0.0.1:9000");
	assert_string_equal(cfg.output_dir, "/tmp");
	sonde_script_config_free(&cfg);

	assert_string_equal(load("http { listen = false }\n", &cfg), "");
	assert_true(cfg.http_set);
	assert_null(cfg.http_addr);
	assert_int_equal(cfg.hz, 0);
	sonde_script_config_free(&cfg);
}

static void test_the_shipped_default_loads(void **state)
{
	struct sonde_script_config cfg;
	char err[512] = "";

	(void)state;
	assert_int_equal(sonde_script_load(SONDE_SOURCE_DIR "/scripts/default.lua", &cfg, err,
					   sizeof(err)),
			 0);
	assert_int_equal(cfg.hz, 19);
	assert_int_equal(cfg.window_s, 10);
	assert_string_equal(cfg.http_addr, "127.0.0.1:7470");
	sonde_script_config_free(&cfg);
}

static void test_errors_name_file_and_line(void **state)
{
	(void)state;
	expect_error("\n\nsampling { hz = \n", 4, "unexpected symbol");
	expect_error("sampling { hz = 0 }\n", 1, "sampling: hz must be a whole number from 1 to 100000");
	expect_error("\nsampling { hz = 'fast' }\n", 2, "hz must be a whole number");
	expect_error("sampling { hzz = 19 }\n", 1, "sampling: unknown option 'hzz'");
	expect_error("http { listen = 7470 }\n", 1, "http: listen must be an address");
	expect_error("local x = nil\nx.y = 1\n", 2, "attempt to index a nil value");
}

static void test_sandbox(void **state)
{
	struct sonde_script_config cfg;
	char err[512];

	(void)state;
	expect_error("os.execute('touch /tmp/sonde-pwned')\n", 1, "global 'os'");
	assert_int_equal(access("/tmp/sonde-pwned", F_OK), -1);
	expect_error("io.open('/etc/passwd')\n", 1, "global 'io'");
	expect_error("dofile('/etc/passwd')\n", 1, "global 'dofile'");
	expect_error("require('os')\n", 1, "global 'require'");
	expect_error("load('return 1')()\n", 1, "global 'load'");
	/* an endless loop stops at the budget; pcall cannot swallow it for good:
	 * once tripped, every later instruction count trips it again */
	expect_error("while true do end\n", 1, "instruction budget");
	expect_error("for i = 1, 10 do pcall(function() while true do end end) end\nwhile true do end\n",
		     2, "instruction budget");
	/* unbounded allocation stops at the memory cap */
	snprintf(err, sizeof(err), "%s",
		 load("local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n",
		      &cfg));
	assert_non_null(strstr(err, "not enough memory"));
	/* bytecode is refused */
	assert_non_null(strstr(load("\x1bLua", &cfg), "attempt to load a binary chunk"));
}

static void test_missing_file(void **state)
{
	struct sonde_script_config cfg;
	char err[512];

	(void)state;
	assert_int_equal(sonde_script_load("/nonexistent/x.lua", &cfg, err, sizeof(err)), -22);
	assert_non_null(strstr(err, "cannot open /nonexistent/x.lua"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sets_options),
		cmocka_unit_test(test_the_shipped_default_loads),
		cmocka_unit_test(test_errors_name_file_and_line),
		cmocka_unit_test(test_sandbox),
		cmocka_unit_test(test_missing_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
