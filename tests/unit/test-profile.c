// SPDX-License-Identifier: MIT
/* Window aggregation: interning of stacks per label set, filters, and the
 * pprof that comes out, read back by `go tool pprof -raw`. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "profile.h"
#include "strbuf.h"
#include "symbolize.h"

struct fixture {
	struct sonde_symbolizer *sym;
	struct sonde_object *lib, *exe;
	struct sonde_profile *p;
};

static int setup(void **state)
{
	struct sonde_profile_opts opts = { .period_ns = 10000000 };
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->sym = sonde_symbolizer__new(NULL);
	assert_non_null(f->sym);
	/* Files that do not exist: objects without symbols, named name+0xoffset. */
	f->lib = sonde_symbolizer__object(f->sym, "/nonexistent/libgone.so", "/usr/lib/libgone.so",
					  1, 100);
	f->exe = sonde_symbolizer__object(f->sym, "/nonexistent/app", "/usr/bin/app", 1, 101);
	assert_non_null(f->lib);
	assert_non_null(f->exe);
	assert_ptr_not_equal(f->lib, f->exe);
	f->p = sonde_profile__new(&opts);
	assert_non_null(f->p);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	sonde_profile__free(f->p);
	sonde_symbolizer__free(f->sym);
	free(f);
	return 0;
}

static void test_interns_stacks_per_label_set(void **state)
{
	struct fixture *f = *state;
	struct sonde_profile_frame a[] = {
		{ f->lib, 0x1234, 0 },
		{ f->exe, 0x400, SONDE_PROFILE_FRAME_RETURN },
	};
	struct sonde_profile_frame b[] = {
		{ f->lib, 0x1234, SONDE_PROFILE_FRAME_RETURN },
		{ f->exe, 0x400, SONDE_PROFILE_FRAME_RETURN },
	};
	struct sonde_profile_labels app = { .pid = 7, .comm = "app", .exe = "/usr/bin/app" };
	struct sonde_profile_labels other = { .pid = 8, .comm = "app", .exe = "/usr/bin/app" };
	char comm[] = "app";
	struct sonde_profile_labels same_but_copied = { .pid = 7, .comm = comm,
							 .exe = "/usr/bin/app" };

	assert_int_equal(sonde_profile__add(f->p, &app, a, 2, 1), 0);
	assert_int_equal(sonde_profile__add(f->p, &app, a, 2, 2), 0);
	assert_int_equal(sonde_profile__stacks(f->p), 1);
	assert_int_equal(sonde_profile__samples(f->p), 3);
	/* label strings are compared by value, not by pointer */
	assert_int_equal(sonde_profile__add(f->p, &same_but_copied, a, 2, 1), 0);
	comm[0] = 'X';
	assert_int_equal(sonde_profile__stacks(f->p), 1);
	assert_int_equal(sonde_profile__add(f->p, &other, a, 2, 1), 0);
	assert_int_equal(sonde_profile__stacks(f->p), 2);
	/* the leaf's flag makes another frame */
	assert_int_equal(sonde_profile__add(f->p, &app, b, 2, 1), 0);
	/* a prefix is another stack */
	assert_int_equal(sonde_profile__add(f->p, &app, a, 1, 1), 0);
	assert_int_equal(sonde_profile__stacks(f->p), 4);
	assert_int_equal(sonde_profile__samples(f->p), 7);

	/* "" and NULL are the same absent label: no new label set per sample */
	{
		struct sonde_profile_labels empty = { .pid = 9, .comm = "app", .container_id = "" };
		struct sonde_profile_labels null = { .pid = 9, .comm = "app", .exe = "" };

		assert_int_equal(sonde_profile__add(f->p, &empty, a, 2, 1), 0);
		assert_int_equal(sonde_profile__add(f->p, &empty, a, 2, 1), 0);
		assert_int_equal(sonde_profile__add(f->p, &null, a, 2, 1), 0);
		assert_int_equal(sonde_profile__stacks(f->p), 5);
	}
	/* extra labels are part of the label set, compared by value */
	{
		struct sonde_profile_label team_a[] = { { "team", "a" } }, team_b[] = { { "team", "b" } };
		char key[] = "team", val[] = "a";
		struct sonde_profile_label team_a2[] = { { key, val } };
		struct sonde_profile_labels la = { .pid = 7, .comm = "app", .extra = team_a, .nextra = 1 };
		struct sonde_profile_labels la2 = { .pid = 7, .comm = "app", .extra = team_a2, .nextra = 1 };
		struct sonde_profile_labels lb = { .pid = 7, .comm = "app", .extra = team_b, .nextra = 1 };

		assert_int_equal(sonde_profile__add(f->p, &la, a, 2, 1), 0);
		assert_int_equal(sonde_profile__add(f->p, &la2, a, 2, 1), 0);
		assert_int_equal(sonde_profile__stacks(f->p), 6);
		assert_int_equal(sonde_profile__add(f->p, &lb, a, 2, 1), 0);
		assert_int_equal(sonde_profile__stacks(f->p), 7);
	}

	sonde_profile__reset(f->p);
	assert_int_equal(sonde_profile__stacks(f->p), 0);
	assert_int_equal(sonde_profile__samples(f->p), 0);
	assert_int_equal(sonde_profile__add(f->p, &app, a, 2, 1), 0);
	assert_int_equal(sonde_profile__stacks(f->p), 1);
}

static void test_filters(void **state)
{
	struct sonde_profile_opts by_pid = { .period_ns = 1, .pid = 42 };
	struct sonde_profile_opts by_comm = { .period_ns = 1, .comm = "nginx" };
	struct sonde_profile_labels nginx42 = { .pid = 42, .comm = "nginx" };
	struct sonde_profile_labels nginx43 = { .pid = 43, .comm = "nginx" };
	struct sonde_profile_labels bash42 = { .pid = 42, .comm = "bash" };
	struct sonde_profile_labels nameless = { .pid = 44 };
	struct sonde_profile *p1 = sonde_profile__new(&by_pid);
	struct sonde_profile *p2 = sonde_profile__new(&by_comm);

	(void)state;
	assert_true(sonde_profile__wants(p1, &nginx42));
	assert_true(sonde_profile__wants(p1, &bash42));
	assert_false(sonde_profile__wants(p1, &nginx43));
	assert_true(sonde_profile__wants(p2, &nginx42));
	assert_true(sonde_profile__wants(p2, &nginx43));
	assert_false(sonde_profile__wants(p2, &bash42));
	assert_false(sonde_profile__wants(p2, &nameless));
	sonde_profile__free(p1);
	sonde_profile__free(p2);
}

static void test_label_matches(void **state)
{
	const struct sonde_profile_label route_users[] = { { "http_route", "/users/{id}" } };
	const struct sonde_profile_label both[] = { { "http_route", "/users/{id}" },
						    { "http_request_method", "GET" } };
	const struct sonde_profile_label get_users[] = { { "team", "a" },
							 { "http_route", "/users/{id}" },
							 { "http_request_method", "GET" } };
	const struct sonde_profile_label post_users[] = { { "http_route", "/users/{id}" },
							  { "http_request_method", "POST" } };
	const struct sonde_profile_label orders[] = { { "http_route", "/orders" } };
	struct sonde_profile_opts by_route = { .period_ns = 1, .match = route_users, .nmatch = 1 };
	struct sonde_profile_opts by_both = { .period_ns = 1, .match = both, .nmatch = 2 };
	struct sonde_profile_opts too_many = { .period_ns = 1, .match = get_users,
					       .nmatch = SONDE_PROFILE_MAX_MATCH + 1 };
	struct sonde_profile_labels l_get = { .pid = 1, .extra = get_users, .nextra = 3 };
	struct sonde_profile_labels l_post = { .pid = 1, .extra = post_users, .nextra = 2 };
	struct sonde_profile_labels l_orders = { .pid = 1, .extra = orders, .nextra = 1 };
	struct sonde_profile_labels l_none = { .pid = 1 };
	struct sonde_profile *p1 = sonde_profile__new(&by_route);
	struct sonde_profile *p2 = sonde_profile__new(&by_both);

	(void)state;
	assert_non_null(p1);
	assert_non_null(p2);
	assert_true(sonde_profile__wants(p1, &l_get));
	assert_true(sonde_profile__wants(p1, &l_post));
	assert_false(sonde_profile__wants(p1, &l_orders));
	assert_false(sonde_profile__wants(p1, &l_none));
	assert_true(sonde_profile__wants(p2, &l_get));
	assert_false(sonde_profile__wants(p2, &l_post));
	errno = 0;
	assert_null(sonde_profile__new(&too_many));
	assert_int_equal(errno, EINVAL);
	sonde_profile__free(p1);
	sonde_profile__free(p2);
}

static void test_many_distinct_stacks(void **state)
{
	struct fixture *f = *state;
	struct sonde_profile_labels l = { .pid = 1, .comm = "x" };
	struct sonde_profile_frame fr[3];
	uint32_t i;

	sonde_profile__reset(f->p);
	for (i = 0; i < 100000; i++) {
		fr[0] = (struct sonde_profile_frame){ f->lib, i, 0 };
		fr[1] = (struct sonde_profile_frame){ f->exe, i % 7, SONDE_PROFILE_FRAME_RETURN };
		fr[2] = (struct sonde_profile_frame){ f->exe, 1, SONDE_PROFILE_FRAME_RETURN };
		l.pid = 1 + i % 3;
		assert_int_equal(sonde_profile__add(f->p, &l, fr, 3, 1), 0);
		assert_int_equal(sonde_profile__add(f->p, &l, fr, 3, 1), 0);
	}
	assert_int_equal(sonde_profile__stacks(f->p), 100000);
	assert_int_equal(sonde_profile__samples(f->p), 200000);
}

static char *run(const char *cmd)
{
	static char out[1 << 16];
	size_t n;
	FILE *pipe = popen(cmd, "r");

	assert_non_null(pipe);
	n = fread(out, 1, sizeof(out) - 1, pipe);
	out[n] = '\0';
	assert_int_equal(pclose(pipe), 0);
	return out;
}

static void test_pprof_names_unknown_frames(void **state)
{
	struct fixture *f = *state;
	struct sonde_profile_frame st[] = {
		{ f->lib, 0x1234, 0 },
		{ f->exe, 0x400, SONDE_PROFILE_FRAME_RETURN },
	};
	struct sonde_profile_labels l = { .pid = 7, .comm = "app", .exe = "/usr/bin/app",
					  .container_id = "" };
	char file[] = "/tmp/sonde-profile-XXXXXX", cmd[256];
	uint8_t *data = NULL;
	size_t len = 0;
	char *out;
	int fd;

	if (access("/usr/bin/go", X_OK) != 0) {
		if (getenv("CI") && strcmp(getenv("CI"), "true") == 0)
			fail_msg("go is missing (golang-go): it reads the pprof under test");
		skip();
	}
	sonde_profile__reset(f->p);
	assert_int_equal(sonde_profile__add(f->p, &l, st, 2, 5), 0);
	assert_int_equal(sonde_profile__pprof(f->p, &data, &len), 0);
	fd = mkstemp(file);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	free(data);
	snprintf(cmd, sizeof(cmd),
		 "HOME=${HOME:-/tmp} go tool pprof -symbolize=none -raw %s 2>&1", file);
	out = run(cmd);
	unlink(file);
	if (!strstr(out, "Period: 10000000") || !strstr(out, "5   50000000: 1 2 ") ||
	    !strstr(out, "libgone.so+0x1234") || !strstr(out, "app+0x400") ||
	    !strstr(out, "comm:[app]") || !strstr(out, "exe:[/usr/bin/app]") ||
	    !strstr(out, "pid:[7]") || strstr(out, "container_id"))
		fail_msg("unexpected pprof:\n%s", out);
}

struct count_ctx {
	uint64_t stacks, samples;
	char team[8];
};

static int count_stack(void *ctx, const struct sonde_profile_labels *labels,
		       const struct sonde_profile_frame *frames, uint32_t n, uint64_t count)
{
	struct count_ctx *c = ctx;

	c->stacks++;
	c->samples += count;
	if (labels->nextra == 1 && strcmp(labels->extra[0].key, "team") == 0)
		snprintf(c->team, sizeof(c->team), "%s", labels->extra[0].value);
	return 0;
}

static void test_merge_folded_and_iteration(void **state)
{
	struct fixture *f = *state;
	struct sonde_profile_opts only7 = { .period_ns = 10000000, .pid = 7 };
	struct sonde_profile *dst = sonde_profile__new(&only7);
	struct sonde_profile_frame st[] = {
		{ f->lib, 0x1234, 0 },
		{ f->exe, 0x400, SONDE_PROFILE_FRAME_RETURN },
	};
	struct sonde_profile_label team[] = { { "team", "web" } };
	struct sonde_profile_labels l7 = { .pid = 7, .comm = "app", .extra = team, .nextra = 1 };
	struct sonde_profile_labels l8 = { .pid = 8, .comm = "other" };
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	struct count_ctx c = { 0 };

	sonde_profile__reset(f->p);
	assert_int_equal(sonde_profile__add(f->p, &l7, st, 2, 3), 0);
	assert_int_equal(sonde_profile__add(f->p, &l8, st, 1, 2), 0);
	assert_int_equal(sonde_profile__for_each_stack(f->p, count_stack, &c), 0);
	assert_int_equal(c.stacks, 2);
	assert_int_equal(c.samples, 5);

	assert_int_equal(sonde_profile__merge(dst, f->p), 0);
	assert_int_equal(sonde_profile__merge(dst, f->p), 0);
	assert_int_equal(sonde_profile__stacks(dst), 1);
	assert_int_equal(sonde_profile__samples(dst), 6);
	memset(&c, 0, sizeof(c));
	assert_int_equal(sonde_profile__for_each_stack(dst, count_stack, &c), 0);
	assert_string_equal(c.team, "web");

	/* root first, unnamed frames as module+0xoffset, one line per stack;
	 * stacks that read the same (here: another pid of the same comm) merge */
	{
		struct sonde_profile_labels l9 = { .pid = 9, .comm = "other" };

		assert_int_equal(sonde_profile__add(f->p, &l9, st, 1, 4), 0);
	}
	assert_int_equal(sonde_profile__folded(f->p, &sb), 0);
	assert_string_equal(sb.data, "app;app+0x400;libgone.so+0x1234 3\nother;libgone.so+0x1234 6\n");
	sonde_strbuf__release(&sb);
	sonde_profile__free(dst);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_interns_stacks_per_label_set, setup, teardown),
		cmocka_unit_test(test_filters),
		cmocka_unit_test(test_label_matches),
		cmocka_unit_test_setup_teardown(test_many_distinct_stacks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pprof_names_unknown_frames, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_folded_and_iteration, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
