// SPDX-License-Identifier: MIT
/* The samples held for their thread tag's labels: order, bound, release. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "tagwait.h"

struct seen {
	uint32_t ids[8];
	uint64_t held[8];
	size_t n;
	uint32_t take_below; /* fn takes records whose id is below this */
};

static bool take(void *ctx, const void *record, size_t size, uint64_t held_ns)
{
	struct seen *s = ctx;
	uint32_t id;

	assert_int_equal(size, sizeof(id));
	memcpy(&id, record, sizeof(id));
	if (s->n < 8) {
		s->ids[s->n] = id;
		s->held[s->n] = held_ns;
	}
	s->n++;
	return id < s->take_below;
}

static void test_fifo_bound_and_release(void **state)
{
	struct sonde_tagwait *w = sonde_tagwait__new(3);
	struct seen s = { .take_below = 2 };
	uint32_t id;

	(void)state;
	assert_non_null(w);
	for (id = 0; id < 3; id++)
		assert_int_equal(sonde_tagwait__hold(w, &id, sizeof(id), 100 + id), 0);
	assert_int_equal(sonde_tagwait__hold(w, &id, sizeof(id), 200), -ENOSPC);
	assert_int_equal(sonde_tagwait__count(w), 3);

	/* offered oldest first, with how long each waited; 0 and 1 are taken */
	assert_int_equal(sonde_tagwait__retry(w, 1000, take, &s), 2);
	assert_int_equal(s.n, 3);
	assert_int_equal(s.ids[0], 0);
	assert_int_equal(s.ids[1], 1);
	assert_int_equal(s.ids[2], 2);
	assert_int_equal(s.held[0], 900);
	assert_int_equal(s.held[2], 898);
	assert_int_equal(sonde_tagwait__count(w), 1);

	/* room again, and the newcomer goes after the one still held */
	id = 7;
	assert_int_equal(sonde_tagwait__hold(w, &id, sizeof(id), 1000), 0);
	s = (struct seen){ .take_below = 100 };
	assert_int_equal(sonde_tagwait__retry(w, 1000, take, &s), 2);
	assert_int_equal(s.ids[0], 2);
	assert_int_equal(s.ids[1], 7);
	assert_int_equal(sonde_tagwait__count(w), 0);

	/* the tail was reset: holding after emptying works */
	assert_int_equal(sonde_tagwait__hold(w, &id, sizeof(id), 1), 0);
	assert_int_equal(sonde_tagwait__count(w), 1);
	sonde_tagwait__free(w); /* frees what is still held */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fifo_bound_and_release),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
