/* SPDX-License-Identifier: MIT */
/*
 * The daemon: wires the BPF host, the process registry, the symbolizer,
 * profiles, HTTP and the loop together, and runs until SIGINT/SIGTERM
 * (then flushes the current window, detaches everything and returns 0).
 */
#ifndef SONDE_DAEMON_H
#define SONDE_DAEMON_H

#include <stdbool.h>

struct sonde_daemon_opts {
	unsigned int hz;
	unsigned int window_s;
	const char *output_dir; /* NULL: no files */
	const char *http_addr;  /* NULL: no HTTP */
	const char *script;     /* NULL: none */
	bool check;             /* load, attach, sample a second, report, return */
};

/* 0 on a clean stop; -errno when start-up failed (already logged). */
int sonde_daemon_run(const struct sonde_daemon_opts *opts);

#endif /* SONDE_DAEMON_H */
