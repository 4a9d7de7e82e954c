// SPDX-License-Identifier: MIT
#include "log.h"

#include <bpf/libbpf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum sonde_log_level current = SONDE_LOG_INFO;

static const char *const level_names[] = {
	[SONDE_LOG_ERROR] = "error",
	[SONDE_LOG_WARN] = "warning",
	[SONDE_LOG_INFO] = "info",
	[SONDE_LOG_DEBUG] = "debug",
};

void sonde_log_set_level(enum sonde_log_level level)
{
	current = level;
}

enum sonde_log_level sonde_log_level(void)
{
	return current;
}

__attribute__((format(printf, 2, 0))) static void vlog(enum sonde_log_level level, const char *fmt, va_list ap)
{
	char *line = NULL;
	size_t n;

	if (level > current || vasprintf(&line, fmt, ap) < 0)
		return;
	n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	fprintf(stderr, "sonded: %s: %s\n", level_names[level], line);
	free(line);
}

void sonde_log(enum sonde_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, fmt, ap);
	va_end(ap);
}

/* libbpf's messages can be whole verifier logs: no length limit here. */
__attribute__((format(printf, 2, 0))) static int libbpf_print(enum libbpf_print_level level,
								  const char *fmt, va_list ap)
{
	enum sonde_log_level mine = level == LIBBPF_WARN ? SONDE_LOG_WARN : SONDE_LOG_DEBUG;
	char *msg = NULL;

	if (mine > current || vasprintf(&msg, fmt, ap) < 0)
		return 0;
	sonde_log(mine, "%s", msg);
	free(msg);
	return 0;
}

void sonde_log_libbpf(void)
{
	libbpf_set_print(libbpf_print);
}
