/* SPDX-License-Identifier: MIT */
/*
 * A growable byte buffer for building text and binary bodies. Once an
 * append fails (ENOMEM) the buffer stays failed: later appends do nothing
 * and sonde_strbuf__error() reports it, so callers check once at the end.
 */
#ifndef SONDE_STRBUF_H
#define SONDE_STRBUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

struct sonde_strbuf {
	char *data; /* NUL-terminated when len > 0 */
	size_t len;
	size_t cap;
	bool failed;
};

#define SONDE_STRBUF_INIT {0}

void sonde_strbuf__append(struct sonde_strbuf *sb, const void *data, size_t len);
void sonde_strbuf__puts(struct sonde_strbuf *sb, const char *s);
__attribute__((format(printf, 2, 3))) void sonde_strbuf__printf(struct sonde_strbuf *sb,
								 const char *fmt, ...);
__attribute__((format(printf, 2, 0))) void sonde_strbuf__vprintf(struct sonde_strbuf *sb,
								 const char *fmt, va_list ap);
/* -ENOMEM if an append failed, else 0. */
int sonde_strbuf__error(const struct sonde_strbuf *sb);
void sonde_strbuf__reset(struct sonde_strbuf *sb); /* keeps the memory */
void sonde_strbuf__release(struct sonde_strbuf *sb);

#endif /* SONDE_STRBUF_H */
