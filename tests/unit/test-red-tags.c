// SPDX-License-Identifier: MIT
/* red-metrics' memory of what each request was, for the profiles' labels. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "red_tags.h"

#define SEC 1000000000ULL

static void test_put_get_expire(void **state)
{
	struct red_tags *t = red_tags__new(2 * SEC, 100);
	const char *method = NULL, *route = NULL;

	(void)state;
	assert_non_null(t);
	assert_int_equal(red_tags__put(t, 10, 5000, "GET", "/users/*", 1 * SEC), 0);
	assert_int_equal(red_tags__put(t, 11, 5000, "POST", "/orders", 1 * SEC), 0);
	assert_true(red_tags__get(t, 10, 5000, &method, &route));
	assert_string_equal(method, "GET");
	assert_string_equal(route, "/users/*");
	assert_true(red_tags__get(t, 11, 5000, &method, &route));
	assert_string_equal(route, "/orders");
	/* same start, another process; same process, another start */
	assert_false(red_tags__get(t, 12, 5000, &method, &route));
	assert_false(red_tags__get(t, 10, 5001, &method, &route));

	/* a put 2.5 s later expires both older entries */
	assert_int_equal(red_tags__put(t, 10, 9000, "GET", "/", 3 * SEC + SEC / 2), 0);
	assert_int_equal(red_tags__count(t), 1);
	assert_false(red_tags__get(t, 10, 5000, &method, &route));
	assert_true(red_tags__get(t, 10, 9000, &method, &route));
	assert_string_equal(route, "/");
	red_tags__free(t);
}

static void test_bounded(void **state)
{
	struct red_tags *t = red_tags__new(60 * SEC, 1000); /* room for 1024 */
	const char *method, *route;
	uint64_t i;

	(void)state;
	for (i = 0; i < 5000; i++)
		assert_int_equal(red_tags__put(t, 7 + (uint32_t)(i % 3), i, "GET", "/x", SEC + i), 0);
	assert_int_equal(red_tags__count(t), 1024);
	/* the oldest went, every one kept is found under its own process */
	assert_false(red_tags__get(t, 7 + 3975 % 3, 3975, &method, &route));
	for (i = 3976; i < 5000; i++)
		assert_true(red_tags__get(t, 7 + (uint32_t)(i % 3), i, &method, &route));
	assert_false(red_tags__get(t, 9, 3976, &method, &route)); /* 3976 was process 8's */
	red_tags__free(t);
	red_tags__free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get_expire),
		cmocka_unit_test(test_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
