// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "strbuf.h"

static void test_appends_and_formats(void **state)
{
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	int i;

	(void)state;
	sonde_strbuf__puts(&sb, "samples ");
	sonde_strbuf__printf(&sb, "%d %s", 42, "total");
	assert_string_equal(sb.data, "samples 42 total");
	for (i = 0; i < 1000; i++)
		sonde_strbuf__append(&sb, "0123456789", 10);
	assert_int_equal(sb.len, 16 + 10000);
	assert_int_equal(sonde_strbuf__error(&sb), 0);
	sonde_strbuf__reset(&sb);
	assert_int_equal(sb.len, 0);
	assert_string_equal(sb.data, "");
	sonde_strbuf__release(&sb);
	assert_null(sb.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_appends_and_formats),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
