// SPDX-License-Identifier: MIT
#include "strbuf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(struct sonde_strbuf *sb, size_t extra)
{
	size_t need, cap;
	char *data;

	if (sb->failed)
		return false;
	need = sb->len + extra + 1;
	if (need <= sb->cap)
		return true;
	cap = sb->cap ? sb->cap : 256;
	while (cap < need)
		cap *= 2;
	data = realloc(sb->data, cap);
	if (!data) {
		sb->failed = true;
		return false;
	}
	sb->data = data;
	sb->cap = cap;
	return true;
}

void sonde_strbuf__append(struct sonde_strbuf *sb, const void *data, size_t len)
{
	if (!reserve(sb, len))
		return;
	memcpy(sb->data + sb->len, data, len);
	sb->len += len;
	sb->data[sb->len] = '\0';
}

void sonde_strbuf__puts(struct sonde_strbuf *sb, const char *s)
{
	sonde_strbuf__append(sb, s, strlen(s));
}

void sonde_strbuf__vprintf(struct sonde_strbuf *sb, const char *fmt, va_list ap)
{
	va_list copy;
	int n;

	va_copy(copy, ap);
	n = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (n < 0 || !reserve(sb, (size_t)n)) {
		sb->failed = true;
		return;
	}
	vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
	sb->len += (size_t)n;
}

void sonde_strbuf__printf(struct sonde_strbuf *sb, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sonde_strbuf__vprintf(sb, fmt, ap);
	va_end(ap);
}

int sonde_strbuf__error(const struct sonde_strbuf *sb)
{
	return sb->failed ? -ENOMEM : 0;
}

void sonde_strbuf__reset(struct sonde_strbuf *sb)
{
	sb->len = 0;
	sb->failed = false;
	if (sb->data)
		sb->data[0] = '\0';
}

void sonde_strbuf__release(struct sonde_strbuf *sb)
{
	free(sb->data);
	*sb = (struct sonde_strbuf)SONDE_STRBUF_INIT;
}
