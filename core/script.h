/* SPDX-License-Identifier: MIT */
/*
 * The configuration script (Lua 5.4). For now a script sets the daemon's
 * options by calling:
 *
 *   sampling { hz = 19, window = 10 }
 *   http { listen = "127.0.0.1:7470" }      -- or listen = false: no HTTP
 *   output { dir = "/var/lib/sonde/profiles" }
 *
 * It runs in a sandbox: only the base (without dofile/loadfile/load/
 * require), table, string, math and utf8 libraries, text chunks only, an
 * instruction budget and a memory cap. Options given on the command line
 * win over the script's.
 */
#ifndef SONDE_SCRIPT_H
#define SONDE_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>

struct sonde_script_config {
	unsigned int hz;       /* 0: not set by the script */
	unsigned int window_s; /* 0: not set */
	bool http_set;
	char *http_addr;       /* NULL with http_set: no HTTP */
	char *output_dir;      /* NULL: not set */
};

/*
 * Runs the script at path and fills cfg. 0, or -EINVAL with the reason in
 * err ("FILE:LINE: message", as Lua reports it) on any error.
 */
int sonde_script_load(const char *path, struct sonde_script_config *cfg, char *err,
		      size_t errlen);
void sonde_script_config_free(struct sonde_script_config *cfg);

#endif /* SONDE_SCRIPT_H */
