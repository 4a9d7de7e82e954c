// SPDX-License-Identifier: MIT
/*
 * HTTP/1.x heads as one read or write returned them: bytes may stop in the
 * middle of anything, so every scan is bounded by len and a cut header is
 * ignored rather than guessed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "red_http.h"

/* The methods the semantic conventions know (RFC 9110 and PATCH); any
 * other token becomes _OTHER so a scanner cannot mint series. */
static const char *const known_methods[] = {
	"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
};

static bool is_tchar_upper(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

/* Where the line starting at p ends (at its CR or LF), or NULL if it runs
 * past end. */
static const char *line_end(const char *p, const char *end)
{
	for (; p < end; p++)
		if (*p == '\r' || *p == '\n')
			return p;
	return NULL;
}

static const char *next_line(const char *eol, const char *end)
{
	if (eol < end && *eol == '\r')
		eol++;
	if (eol < end && *eol == '\n')
		eol++;
	return eol;
}

/* Parses a decimal value with surrounding whitespace; -1 if it is not one. */
static int64_t parse_length(const char *p, const char *end)
{
	int64_t v = 0;
	bool digits = false;

	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (v > (INT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (*p - '0');
		digits = true;
	}
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return digits && p == end ? v : -1;
}

static bool header_is(const char *line, const char *eol, const char *name, const char **value)
{
	size_t n = strlen(name);

	if ((size_t)(eol - line) <= n || line[n] != ':' || strncasecmp(line, name, n))
		return false;
	*value = line + n + 1;
	return true;
}

/* Ends in "chunked", the last coding (RFC 9112 6.1), case-insensitively. */
static bool is_chunked(const char *v, const char *end)
{
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	return end - v >= 7 && !strncasecmp(end - 7, "chunked", 7);
}

/*
 * Copies the host of an authority (RFC 3986 3.2: "host[:port]", the host
 * possibly an IPv6 literal in brackets) into out, lower case, without the
 * port or brackets. A value with userinfo, an empty host or a byte outside
 * what host names and addresses use gives "": a label is never minted from
 * arbitrary bytes.
 */
static void copy_host(const char *v, const char *end, char *out, size_t outlen)
{
	const char *h, *hend;
	size_t n, i;

	out[0] = '\0';
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (v < end && *v == '[') {
		h = v + 1;
		hend = memchr(h, ']', (size_t)(end - h));
		if (!hend || (hend + 1 < end && hend[1] != ':'))
			return;
	} else {
		h = v;
		hend = memchr(h, ':', (size_t)(end - h));
		if (!hend)
			hend = end;
	}
	n = (size_t)(hend - h);
	if (!n || n >= outlen)
		return;
	for (i = 0; i < n; i++) {
		char c = h[i];

		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
			   c == '-' || c == '_' || (c == ':' && *v == '[')))
			break;
		out[i] = c;
	}
	out[i == n ? n : 0] = '\0';
}

/* Walks the header lines from p: Content-Length, Transfer-Encoding, Host
 * (when host is not NULL and still empty) and where the head ends. Lines
 * cut by end are not looked at. */
static void scan_headers(const char *start, const char *p, const char *end, int64_t *clen,
			 int *chunked, size_t *head_len, char *host, size_t hostlen)
{
	const char *eol, *v;

	*clen = -1;
	*chunked = 0;
	*head_len = 0;
	while (p < end) {
		eol = line_end(p, end);
		if (!eol)
			return;
		if (eol == p) { /* the blank line */
			*head_len = (size_t)(next_line(eol, end) - start);
			if (eol < end && *eol == '\r' && (eol + 1 >= end || eol[1] != '\n'))
				*head_len = 0; /* CR cut from its LF */
			return;
		}
		if (eol + 1 >= end && *eol == '\r')
			return; /* the LF of this line is not here: it may go on */
		if (header_is(p, eol, "content-length", &v))
			*clen = parse_length(v, eol);
		else if (header_is(p, eol, "transfer-encoding", &v))
			*chunked = is_chunked(v, eol);
		else if (host && !host[0] && header_is(p, eol, "host", &v))
			copy_host(v, eol, host, hostlen);
		p = next_line(eol, end);
	}
}

int sonde_red_parse_request(const void *buf, size_t len, struct sonde_red_request *req)
{
	const char *s = buf, *end = s + len, *p = s, *t, *eol, *q;
	size_t mlen, plen, i;

	memset(req, 0, sizeof(*req));
	req->content_length = -1;
	req->method = "_OTHER";
	while (p < end && p - s < 16 && is_tchar_upper((unsigned char)*p))
		p++;
	if (p == s || p >= end || *p != ' ')
		return -EINVAL;
	mlen = (size_t)(p - s);
	for (i = 0; i < sizeof(known_methods) / sizeof(known_methods[0]); i++) {
		if (strlen(known_methods[i]) == mlen && !memcmp(s, known_methods[i], mlen)) {
			req->method = known_methods[i];
			break;
		}
	}
	req->is_head = !strcmp(req->method, "HEAD");
	t = ++p;
	while (p < end && *p != ' ' && *p != '\r' && *p != '\n')
		p++;
	eol = line_end(p, end);
	if (p < end && *p != ' ')
		return -EINVAL; /* "GET /x\r\n": HTTP/0.9 or not HTTP */
	if (eol) {
		if (eol - p != 9 || memcmp(p, " HTTP/1.", 8) || p[8] < '0' || p[8] > '9')
			return -EINVAL;
		req->line_complete = 1;
	} else if (p < end) {
		/* the version is cut: what there is of it must match */
		size_t n = (size_t)(end - p) < 9 ? (size_t)(end - p) : 9;

		if (memcmp(p, " HTTP/1.", n < 8 ? n : 8))
			return -EINVAL;
	}
	if (p < end) {
		/* the whole target is here: keep its path */
		if (t < p && *t != '/' && *t != '*') {
			/* absolute form: skip scheme://authority */
			q = memchr(t, ':', (size_t)(p - t));
			if (q && p - q > 3 && q[1] == '/' && q[2] == '/') {
				const char *auth = q + 3;

				q = memchr(auth, '/', (size_t)(p - auth));
				t = q ? q : p;
				/* semconv: the absolute target's host comes before Host */
				copy_host(auth, t, req->host, sizeof(req->host));
			}
		}
		for (q = t; q < p && *q != '?' && *q != '#'; q++)
			;
		plen = (size_t)(q - t);
		if (plen >= sizeof(req->path))
			plen = 0; /* longer than we keep: no path, not half of one */
		memcpy(req->path, t, plen);
		req->path[plen] = '\0';
		if (!plen && t < q)
			req->line_complete = 0;
	}
	if (req->line_complete)
		scan_headers(s, next_line(eol, end), end, &req->content_length, &req->chunked,
			     &req->head_len, req->host, sizeof(req->host));
	return 0;
}

int sonde_red_parse_response(const void *buf, size_t len, struct sonde_red_response *resp)
{
	const char *s = buf, *end = s + len, *eol;

	memset(resp, 0, sizeof(*resp));
	resp->content_length = -1;
	if (len < 12 || memcmp(s, "HTTP/1.", 7) || s[7] < '0' || s[7] > '9' || s[8] != ' ')
		return -EINVAL;
	if (s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9')
		return -EINVAL;
	if (len > 12 && s[12] != ' ' && s[12] != '\r' && s[12] != '\n')
		return -EINVAL;
	resp->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
	eol = line_end(s + 12, end);
	if (eol)
		scan_headers(s, next_line(eol, end), end, &resp->content_length, &resp->chunked,
			     &resp->head_len, NULL, 0);
	return 0;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Whether a path segment names one thing among many (an id) rather than a
 * place in the API: those become `*` so they cannot mint series. */
static bool looks_like_id(const char *seg, size_t n)
{
	size_t i, digits = 0, hex = 0, alpha = 0;

	for (i = 0; i < n; i++) {
		char c = seg[i];

		if (c >= '0' && c <= '9')
			digits++;
		else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
			alpha++;
		else if (c != '-' && c != '_' && c != '.' && c != '~')
			return true; /* %xx, ':', '@', '=', non-ASCII: not a word */
		if (is_hex(c))
			hex++;
	}
	if (digits == n)
		return true;
	if (n == 36 && seg[8] == '-' && seg[13] == '-' && seg[18] == '-' && seg[23] == '-' &&
	    hex == 32)
		return true; /* UUID */
	if (n >= 8 && hex == n && digits)
		return true; /* hash, object id */
	if (n >= 16 && digits && alpha)
		return true; /* token */
	return false;
}

size_t sonde_red_route(const char *path, char *out, size_t outlen)
{
	const char *p = path, *seg;
	size_t o = 0, n;
	bool more;

	if (outlen < 3) {
		if (outlen)
			out[0] = '\0';
		return 0;
	}
	if (!strcmp(path, "*")) {
		memcpy(out, "*", 2);
		return 1;
	}
	while (*p == '/')
		p++;
	while (*p) {
		seg = p;
		while (*p && *p != '/')
			p++;
		n = (size_t)(p - seg);
		while (*p == '/') /* empty segments and a trailing slash go */
			p++;
		more = *p != '\0';
		if (looks_like_id(seg, n)) {
			seg = "*";
			n = 1;
		}
		/* Room for "/seg", and for the closing slash-star if more follows: every
		 * step keeps that room, so the cut below always fits. */
		if (o + 1 + n + (more ? 2 : 0) >= outlen) {
			memcpy(out + o, "/*", 2);
			o += 2;
			break;
		}
		out[o++] = '/';
		memcpy(out + o, seg, n);
		o += n;
	}
	if (!o)
		out[o++] = '/';
	out[o] = '\0';
	return o;
}

/* The segment at *p (after any slashes), its length in *n, *p moved past
 * it; NULL when only slashes are left. */
static const char *next_segment(const char **p, size_t *n)
{
	const char *seg;

	while (**p == '/')
		(*p)++;
	if (!**p)
		return NULL;
	seg = *p;
	while (**p && **p != '/')
		(*p)++;
	*n = (size_t)(*p - seg);
	return seg;
}

_Static_assert(SONDE_RED_ROUTE_MAX == 128, "the error below says 127 bytes");

static bool is_separator(char c)
{
	return c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r';
}

/* Why the pattern at p (n bytes, n < SONDE_RED_ROUTE_MAX) cannot be one,
 * or NULL when it can. */
static const char *pattern_error(const char *p, size_t n)
{
	size_t i = 0, seg, len, k, open = 0, close = 0;

	if (p[0] != '/')
		return "it does not start with '/'";
	for (k = 0; k < n; k++) {
		open += p[k] == '{';
		close += p[k] == '}';
		if (close > open || open > close + 1)
			return "unbalanced braces";
	}
	if (open != close)
		return "unbalanced braces";
	while (i < n) {
		while (i < n && p[i] == '/')
			i++;
		seg = i;
		while (i < n && p[i] != '/')
			i++;
		len = i - seg;
		if (memchr(p + seg, '{', len) &&
		    (p[seg] != '{' || p[i - 1] != '}' || len < 3))
			return "a {name} must be a whole segment, with a name";
		if (memchr(p + seg, '*', len)) {
			if (len != 1)
				return "'*' must be a whole segment";
			for (k = i; k < n && p[k] == '/'; k++)
				;
			if (k < n)
				return "'*' must be the last segment";
		}
	}
	return NULL;
}

int sonde_red_patterns_parse(const char *spec, struct sonde_red_patterns *out, char *err,
			     size_t errlen)
{
	const char *p = spec ? spec : "", *start, *why;
	size_t n;

	memset(out, 0, sizeof(*out));
	for (;;) {
		while (is_separator(*p))
			p++;
		if (!*p)
			return 0;
		start = p;
		while (*p && !is_separator(*p))
			p++;
		n = (size_t)(p - start);
		if (out->count == SONDE_RED_PATTERNS_MAX) {
			snprintf(err, errlen, "routes: too many patterns (at most %d) at '%.*s'",
				 SONDE_RED_PATTERNS_MAX, (int)(n < 64 ? n : 64), start);
			return -EINVAL;
		}
		why = n >= SONDE_RED_ROUTE_MAX ? "longer than 127 bytes" : pattern_error(start, n);
		if (why) {
			snprintf(err, errlen, "routes: bad pattern '%.*s%s': %s",
				 (int)(n < 64 ? n : 64), start, n > 64 ? "..." : "", why);
			return -EINVAL;
		}
		memcpy(out->pattern[out->count], start, n);
		out->pattern[out->count][n] = '\0';
		out->count++;
	}
}

/* Whether path matches pattern, segment by segment. */
static bool pattern_matches(const char *pattern, const char *path)
{
	const char *ps, *qs;
	size_t pn = 0, qn = 0;

	for (;;) {
		ps = next_segment(&pattern, &pn);
		qs = next_segment(&path, &qn);
		if (!ps)
			return !qs;
		if (pn == 1 && *ps == '*')
			return true; /* the rest, whatever it is */
		if (!qs)
			return false;
		if (*ps == '{')
			continue; /* any one segment */
		if (pn != qn || memcmp(ps, qs, pn))
			return false;
	}
}

const char *sonde_red_patterns_match(const struct sonde_red_patterns *p, const char *path)
{
	unsigned int i;

	if (!p || path[0] != '/')
		return NULL; /* "*" (OPTIONS *) and cut targets */
	for (i = 0; i < p->count; i++)
		if (pattern_matches(p->pattern[i], path))
			return p->pattern[i];
	return NULL;
}
