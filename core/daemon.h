/* SPDX-License-Identifier: MIT */
/*
 * The daemon: wires the BPF host, the process registry, the symbolizer,
 * the script, plugins, profiles, exports, HTTP, the control socket and the
 * loop together, and runs until SIGINT/SIGTERM (then flushes the current
 * window, detaches everything and returns 0). SIGHUP reloads the script.
 */
#ifndef SONDE_DAEMON_H
#define SONDE_DAEMON_H

#include <stdbool.h>

struct sonde_daemon_opts {
	unsigned int hz;        /* 0: the script's, else 19 */
	unsigned int window_s;  /* 0: the script's, else 10 */
	const char *output_dir; /* NULL: the script's, else no files */
	bool http_set;          /* the command line chose http_addr (NULL: none) */
	const char *http_addr;
	bool export_set;        /* likewise for the export pub socket */
	const char *export_url;
	bool control_set;       /* and the control socket */
	const char *control_url;
	const char *script;     /* NULL: none */
	bool unsafe_script;     /* open os/io/package/load to the script */
	const char *plugin_dir; /* NULL: SONDE_PLUGIN_DIR */
	bool check;             /* load, attach, sample a second, report, return */
};

/* 0 on a clean stop; -errno when start-up failed (already logged). */
int sonde_daemon_run(const struct sonde_daemon_opts *opts);

#endif /* SONDE_DAEMON_H */
