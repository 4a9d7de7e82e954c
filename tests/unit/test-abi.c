// SPDX-License-Identifier: MIT
/* Holds the BPF <-> userspace records to their written layout. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "sonde/abi.h"
#include "sonde/errors.h"

static void test_sample_layout(void **state)
{
	(void)state;
	assert_int_equal(SONDE_ABI_VERSION, 2);
	assert_int_equal(offsetof(struct sonde_sample, hdr.time_ns), 8);
	assert_int_equal(offsetof(struct sonde_sample, tid), 16);
	assert_int_equal(offsetof(struct sonde_sample, cgroup_id), 24);
	assert_int_equal(offsetof(struct sonde_sample, kstack_len), 32);
	assert_int_equal(offsetof(struct sonde_sample, flags), 36);
	assert_int_equal(offsetof(struct sonde_sample, comm), 40);
	assert_int_equal(offsetof(struct sonde_sample, tag), 56);
	assert_int_equal(offsetof(struct sonde_sample, frames), SONDE_SAMPLE_HDR_SIZE);
	assert_int_equal(SONDE_MAX_FRAMES, 254);
}

static void test_process_events_layout(void **state)
{
	(void)state;
	assert_int_equal(offsetof(struct sonde_exec_event, cgroup_id), 24);
	assert_int_equal(offsetof(struct sonde_exec_event, filename), 48);
	assert_int_equal(offsetof(struct sonde_exec_event, args), 48 + SONDE_PATH_LEN);
	assert_int_equal(offsetof(struct sonde_fork_event, comm), 32);
	assert_int_equal(sizeof(struct sonde_proc_info), 8);
}

static void test_frame_kind(void **state)
{
	(void)state;
	assert_int_equal(SONDE_FRAME_KIND(0x00007fffdeadbeefULL), SONDE_FRAME_NATIVE);
	assert_int_equal(SONDE_FRAME_KIND(0x0200000000001234ULL), 2);
	assert_int_equal(SONDE_TAG_PROVIDER(0x0300000000000010ULL), 3);
	assert_int_equal(0x0300000000000010ULL & SONDE_TAG_VALUE_MASK, 0x10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sample_layout),
		cmocka_unit_test(test_process_events_layout),
		cmocka_unit_test(test_frame_kind),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
