// SPDX-License-Identifier: MIT
/*
 * The broken test plugins, one per build: meson compiles this file once per
 * flaw (-DABI_MAJOR=99, -DNO_SYMBOL, ...) into sonde-<PLUGIN_NAME>.so.
 */
#include <stdio.h>

#include <sonde/plugin.h>

#ifndef MAGIC
#define MAGIC SONDE_PLUGIN_MAGIC
#endif
#ifndef ABI_MAJOR
#define ABI_MAJOR SONDE_PLUGIN_ABI_MAJOR
#endif
#ifndef ABI_MINOR
#define ABI_MINOR SONDE_PLUGIN_ABI_MINOR
#endif
#ifndef SIZE
#define SIZE sizeof(struct sonde_plugin)
#endif
/* Exports a descriptor under another name: no "sonde_plugin" at all. */
#ifdef NO_SYMBOL
#define DESCRIPTOR sonde_plugin_v0
#else
#define DESCRIPTOR sonde_plugin
#endif

static int state;

static void *bad_init(const struct sonde_host_api *api, struct sonde_host *host,
		      const void *settings, char *err, size_t errlen)
{
	(void)api;
	(void)host;
	(void)settings;
#ifdef INIT_FAILS
	snprintf(err, errlen, "no frobnicator found");
	return NULL;
#endif
	(void)err;
	(void)errlen;
	return &state;
}

/* Unused in sonde-no-fini, which declares none. */
__attribute__((unused)) static void bad_fini(void *s)
{
	*(int *)s = 0;
}

#ifdef NO_FINI
#define FINI NULL
#else
#define FINI bad_fini
#endif

extern const struct sonde_plugin DESCRIPTOR;
const struct sonde_plugin DESCRIPTOR = {
	.magic = MAGIC,
	.abi_major = ABI_MAJOR,
	.abi_minor = ABI_MINOR,
	.size = SIZE,
	.name = PLUGIN_NAME,
	.version = "0.0.1",
	.init = bad_init,
	.fini = FINI,
};
