/* SPDX-License-Identifier: MIT */
/*
 * What the test plugin sonde-good shows test-plugin of itself: the settings
 * it was given, the host it was given, and what it saw. The test reaches it
 * with dlopen(RTLD_NOLOAD) + dlsym(), so nothing here is part of the ABI.
 */
#ifndef SONDE_TEST_GOOD_H
#define SONDE_TEST_GOOD_H

#include <stdint.h>

#include <sonde/plugin.h>

struct good_settings {
	int verbose;
	int64_t depth;
	const char *label;
	const char *fini_file; /* fini() writes a line here, if set */
};

struct good_view {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	const struct good_settings *settings;
	int frame_kind;	    /* register_frame_kind("good") in init() */
	int map_fd;	    /* map_fd("events") in init() */
	int unwinder;	    /* register_unwinder("good", -1) in init() */
	uint64_t *attached; /* the counter "processes-attached" */
	unsigned int detach_calls;
	uint32_t last_detached;
};

/* The view of the running instance; NULL when not initialized. */
const struct good_view *sonde_good_view(void);

#endif /* SONDE_TEST_GOOD_H */
