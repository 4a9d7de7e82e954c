/* SPDX-License-Identifier: MIT */
/*
 * The daemon's logger: one line per message on stderr, "sonded: LEVEL: msg".
 * libbpf's printer and plugins feed it too (plugins with their name first).
 * Messages above the current level are dropped.
 */
#ifndef SONDE_LOG_H
#define SONDE_LOG_H

enum sonde_log_level {
	SONDE_LOG_ERROR = 0,
	SONDE_LOG_WARN,
	SONDE_LOG_INFO,
	SONDE_LOG_DEBUG,
};

void sonde_log_set_level(enum sonde_log_level level);
enum sonde_log_level sonde_log_level(void);
__attribute__((format(printf, 2, 3))) void sonde_log(enum sonde_log_level level,
						      const char *fmt, ...);

#define sonde_err(...) sonde_log(SONDE_LOG_ERROR, __VA_ARGS__)
#define sonde_warn(...) sonde_log(SONDE_LOG_WARN, __VA_ARGS__)
#define sonde_info(...) sonde_log(SONDE_LOG_INFO, __VA_ARGS__)
#define sonde_debug(...) sonde_log(SONDE_LOG_DEBUG, __VA_ARGS__)

/* Routes libbpf's messages here (warnings as warnings, debug as debug). */
void sonde_log_libbpf(void);

#endif /* SONDE_LOG_H */
