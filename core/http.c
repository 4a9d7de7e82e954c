// SPDX-License-Identifier: MIT
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"
#include "strbuf.h"

#define HEAD_MAX	  8192
#define MAX_CONNS	  64
#define IDLE_TIMEOUT_NS	  (60ULL * 1000000000ULL)
#define IDLE_MIN_MS	  100
/* How long a closing connection may keep sending us bytes we discard. */
#define LINGER_NS	  (2ULL * 1000000000ULL)
#define SWEEP_INTERVAL_MS 1000
/* Output buffers above this are given back after each answer. */
#define KEEP_OUT_CAP	  (64 * 1024)

/*
 * A connection moves READING -> (handler) WAITING -> [DEFERRED] -> WRITING
 * -> READING again, or -> LINGER when it must close. Only READING, WRITING
 * and LINGER are subject to timeouts: a deferred answer (a profile) may
 * legitimately take minutes.
 */
enum conn_state {
	CONN_READING,
	CONN_WAITING,  /* inside the handler, no answer yet */
	CONN_DEFERRED, /* the handler said the answer comes later */
	CONN_WRITING,
	CONN_LINGER, /* answer sent, write side shut, draining the peer */
	CONN_CLOSE,  /* to be freed by conn_run (set where freeing is unsafe) */
};

struct sonde_http_conn {
	struct sonde_http *http;
	struct sonde_http_conn *prev, *next;
	int fd;
	uint32_t events; /* what epoll currently watches */
	enum conn_state state;
	bool in_handler;
	bool keep_alive; /* after the current answer */
	bool head;	 /* the current request is HEAD */
	uint64_t last_active;

	/* The request head is parsed in place; its strings point into in[]. */
	size_t in_len;
	size_t head_start; /* after leading empty lines */
	size_t scan;	   /* where the search for the blank line resumes */
	size_t head_end;   /* bytes of the current request, 0 while incomplete */
	struct sonde_http_request req;

	struct sonde_strbuf out;
	size_t out_off;

	void (*on_close)(void *ctx);
	void *on_close_ctx;

	char in[HEAD_MAX];
};

struct sonde_http {
	struct sonde_loop *loop;
	int fd;
	bool accept_paused;
	sonde_http_handler handler;
	void *ctx;
	struct sonde_loop_timer *sweep;
	uint64_t idle_ns;	       /* IDLE_TIMEOUT_NS unless set */
	struct sonde_http_conn *conns; /* newest first */
	unsigned int nconns;
	char addr[INET6_ADDRSTRLEN + 8];
};

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 406: return "Not Acceptable";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return status < 300 ? "OK" : status < 400 ? "Redirect" :
		 status < 500 ? "Client Error" : "Server Error";
	}
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Percent-decodes src[0..len) into dst (may be NULL to only measure; may be
 * src itself, the output never outruns the input). A decoded NUL is refused:
 * the result is a C string. Returns the decoded length or -EINVAL.
 */
static ssize_t percent_decode(const char *src, size_t len, char *dst, bool plus_is_space)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		char c = src[i];

		if (c == '%') {
			int hi, lo;

			if (len - i < 3)
				return -EINVAL;
			hi = hex_value(src[i + 1]);
			lo = hex_value(src[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return -EINVAL;
			c = (char)(hi << 4 | lo);
			i += 2;
		} else if (c == '+' && plus_is_space) {
			c = ' ';
		} else if (c == '\0') {
			return -EINVAL;
		}
		if (dst)
			dst[n] = c;
		n++;
	}
	return (ssize_t)n;
}

int sonde_http_query_get(const char *query, const char *key, char *buf, size_t size)
{
	size_t key_len = strlen(key);
	const char *p = query ? query : "";

	while (*p) {
		const char *end = strchr(p, '&');
		const char *eq;
		size_t pair_len, name_len;

		pair_len = end ? (size_t)(end - p) : strlen(p);
		eq = memchr(p, '=', pair_len);
		name_len = eq ? (size_t)(eq - p) : pair_len;
		if (name_len == key_len && !memcmp(p, key, key_len)) {
			const char *val = eq ? eq + 1 : p + pair_len;
			size_t val_len = (size_t)(p + pair_len - val);
			ssize_t n = percent_decode(val, val_len, NULL, true);

			if (n < 0)
				return (int)n;
			if ((size_t)n >= size)
				return -ENAMETOOLONG;
			percent_decode(val, val_len, buf, true);
			buf[n] = '\0';
			return 1;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

static void set_events(struct sonde_http_conn *conn, uint32_t events)
{
	if (conn->events == events)
		return;
	/* Failure here means the fd is gone: the next sweep closes it idle. */
	if (!sonde_loop__mod_fd(conn->http->loop, conn->fd, events))
		conn->events = events;
}

/* Frees conn; a deferred conn's owner hears of it through on_close. */
static void conn_destroy(struct sonde_http_conn *conn)
{
	struct sonde_http *http = conn->http;
	void (*on_close)(void *ctx) = NULL;
	void *on_close_ctx = conn->on_close_ctx;

	if (conn->state == CONN_DEFERRED)
		on_close = conn->on_close;
	sonde_loop__del_fd(http->loop, conn->fd);
	close(conn->fd);
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		http->conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	http->nconns--;
	sonde_strbuf__release(&conn->out);
	free(conn);
	if (on_close)
		on_close(on_close_ctx);
}

/*
 * Builds the whole answer (head and body) in conn->out. Fails only for
 * a bad status or content type, or memory.
 */
static int queue_response(struct sonde_http_conn *conn, int status, const char *content_type,
			  const char *extra_headers, const void *body, size_t len)
{
	struct sonde_strbuf *out = &conn->out;

	if (status < 200 || status > 599)
		return -EINVAL;
	if (!content_type)
		content_type = "text/plain; charset=utf-8";
	if (strpbrk(content_type, "\r\n"))
		return -EINVAL;
	sonde_strbuf__reset(out);
	conn->out_off = 0;
	sonde_strbuf__printf(out,
			     "HTTP/1.1 %d %s\r\n"
			     "Content-Type: %s\r\n"
			     "Content-Length: %zu\r\n"
			     "%s"
			     "Connection: %s\r\n"
			     "\r\n",
			     status, reason_phrase(status), content_type, len,
			     extra_headers ? extra_headers : "",
			     conn->keep_alive ? "keep-alive" : "close");
	if (!conn->head && len)
		sonde_strbuf__append(out, body, len);
	return sonde_strbuf__error(out);
}

/* An error found by the parser: the stream can no longer be trusted. */
static void fail_request(struct sonde_http_conn *conn, int status, const char *msg,
			 const char *extra_headers)
{
	char body[128];
	int n;

	conn->keep_alive = false;
	n = snprintf(body, sizeof(body), "%s\n", msg);
	if (queue_response(conn, status, NULL, extra_headers, body, (size_t)n))
		conn->state = CONN_CLOSE;
	else
		conn->state = CONN_WRITING;
}

static bool is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* True when the comma-separated list value holds token (case-insensitive). */
static bool has_token(const char *value, const char *token)
{
	size_t tlen = strlen(token);
	const char *p = value;

	while (*p) {
		const char *end;
		size_t len;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		end = p;
		while (*end && *end != ',')
			end++;
		len = (size_t)(end - p);
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len == tlen && !strncasecmp(p, token, tlen))
			return true;
		p = end;
	}
	return false;
}

/*
 * Cuts the line starting at *pos: NUL-terminates it, moves *pos past it.
 * Every line of a found head ends in '\n' and the head holds no NUL, so
 * the search never leaves the head.
 */
static char *next_line(char *buf, size_t *pos)
{
	char *line = buf + *pos;
	char *nl = strchr(line, '\n');
	size_t len = (size_t)(nl - line);

	*pos += len + 1;
	if (len && line[len - 1] == '\r')
		len--;
	line[len] = '\0';
	return line;
}

/* A refused head: the status and one-line message the server answers with. */
static void refuse(struct sonde_http_head *h, int status, const char *msg)
{
	h->status = status;
	h->error = msg;
}

/*
 * Parses the complete head buf[pos..end) in place (end as find_head_end
 * found it). Fills h->req and h->keep_alive, or h->status and h->error.
 */
static void parse_head(char *buf, size_t pos, size_t end, struct sonde_http_head *h)
{
	char *line, *method, *target, *version, *sp, *query;
	bool http10, keep_alive = false, close = false;
	ssize_t n;

	/* A NUL would cut our C strings short; no valid head holds one. */
	if (memchr(buf + pos, '\0', end - pos)) {
		refuse(h, 400, "NUL byte in request head");
		return;
	}
	line = next_line(buf, &pos);

	method = line;
	sp = strchr(method, ' ');
	if (!sp)
		goto bad_line;
	*sp = '\0';
	target = sp + 1;
	sp = strchr(target, ' ');
	if (!sp)
		goto bad_line;
	*sp = '\0';
	version = sp + 1;
	if (!*method || !*target || strchr(version, ' '))
		goto bad_line;
	for (sp = method; *sp; sp++)
		if (!is_tchar(*sp))
			goto bad_line;
	for (sp = target; *sp; sp++)
		if ((unsigned char)*sp <= 0x20 || *sp == 0x7f)
			goto bad_line;

	if (!strcmp(version, "HTTP/1.1")) {
		http10 = false;
	} else if (!strcmp(version, "HTTP/1.0")) {
		http10 = true;
	} else if (!strncmp(version, "HTTP/", 5) && version[5] >= '0' && version[5] <= '9') {
		refuse(h, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
		return;
	} else {
		goto bad_line;
	}

	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		refuse(h, 405, "only GET and HEAD are allowed");
		return;
	}
	if (target[0] != '/') {
		refuse(h, 400, "the request target must be a path");
		return;
	}

	while (pos < end) {
		char *name, *value, *colon, *vend;

		line = next_line(buf, &pos);
		if (!*line)
			break;
		colon = strchr(line, ':');
		if (!colon || colon == line) {
			refuse(h, 400, "malformed header line");
			return;
		}
		*colon = '\0';
		name = line;
		for (sp = name; *sp; sp++) {
			if (!is_tchar(*sp)) {
				refuse(h, 400, "malformed header line");
				return;
			}
		}
		value = colon + 1;
		while (*value == ' ' || *value == '\t')
			value++;
		vend = value + strlen(value);
		while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t'))
			*--vend = '\0';

		if (!strcasecmp(name, "Connection")) {
			close |= has_token(value, "close");
			keep_alive |= has_token(value, "keep-alive");
		} else if (!strcasecmp(name, "Content-Length")) {
			if (!*value || strspn(value, "0123456789") != strlen(value)) {
				refuse(h, 400, "malformed Content-Length");
				return;
			}
			if (strspn(value, "0") != strlen(value)) {
				refuse(h, 413, "request bodies are not accepted");
				return;
			}
		} else if (!strcasecmp(name, "Transfer-Encoding")) {
			refuse(h, 413, "request bodies are not accepted");
			return;
		}
	}

	query = strchr(target, '?');
	if (query)
		*query++ = '\0';
	else
		query = target + strlen(target); /* "" */
	n = percent_decode(target, strlen(target), target, false);
	if (n < 0) {
		refuse(h, 400, "malformed escape in path");
		return;
	}
	target[n] = '\0';

	h->keep_alive = http10 ? keep_alive && !close : !close;
	h->req.method = !strcmp(method, "HEAD") ? "HEAD" : "GET";
	h->req.path = target;
	h->req.query = query;
	return;

bad_line:
	refuse(h, 400, "malformed request line");
}

/*
 * Looks for the blank line that ends the head in in[0..in_len), resuming at
 * *scan where the last search stopped. Leading empty lines are skipped, as
 * RFC 9112 asks, by moving *head_start past them; *head_end is set when the
 * head is complete.
 */
static bool find_head_end(const char *in, size_t in_len, size_t *head_start, size_t *scan,
			  size_t *head_end)
{
	const char *nl;

	while (*scan < in_len && (nl = memchr(in + *scan, '\n', in_len - *scan))) {
		size_t line_len = (size_t)(nl - (in + *scan));
		size_t next = *scan + line_len + 1;

		if (line_len && in[*scan + line_len - 1] == '\r')
			line_len--;
		if (line_len == 0) {
			if (*scan == *head_start) {
				*head_start = next;
			} else {
				*head_end = next;
				return true;
			}
		}
		*scan = next;
	}
	return false;
}

/* Parses conn's complete head: fills conn->req, or queues the error answer. */
static bool accept_head(struct sonde_http_conn *conn)
{
	struct sonde_http_head h = { 0 };

	parse_head(conn->in, conn->head_start, conn->head_end, &h);
	if (h.status) {
		fail_request(conn, h.status, h.error,
			     h.status == 405 ? "Allow: GET, HEAD\r\n" : NULL);
		return false;
	}
	conn->head = !strcmp(h.req.method, "HEAD");
	conn->keep_alive = h.keep_alive;
	conn->req = h.req;
	return true;
}

int sonde_http_parse_head(char *buf, size_t len, struct sonde_http_head *head)
{
	size_t start = 0, scan = 0, end = 0;

	memset(head, 0, sizeof(*head));
	if (!find_head_end(buf, len, &start, &scan, &end))
		return -EAGAIN;
	parse_head(buf, start, end, head);
	head->len = end;
	return 0;
}

/* Drops the answered request from in[], keeping pipelined bytes. */
static void consume_request(struct sonde_http_conn *conn)
{
	size_t used = conn->head_end;

	memmove(conn->in, conn->in + used, conn->in_len - used);
	conn->in_len -= used;
	conn->head_start = 0;
	conn->scan = 0;
	conn->head_end = 0;
	conn->head = false;
	conn->on_close = NULL;
	conn->on_close_ctx = NULL;
	memset(&conn->req, 0, sizeof(conn->req));
	if (conn->out.cap > KEEP_OUT_CAP)
		sonde_strbuf__release(&conn->out);
	else
		sonde_strbuf__reset(&conn->out);
	conn->out_off = 0;
}

/* 0 when everything went out, -EAGAIN when the socket is full, -errno. */
static int flush_out(struct sonde_http_conn *conn)
{
	while (conn->out_off < conn->out.len) {
		ssize_t n = send(conn->fd, conn->out.data + conn->out_off,
				 conn->out.len - conn->out_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		}
		conn->out_off += (size_t)n;
		conn->last_active = sonde_now_ns();
	}
	return 0;
}

/*
 * Advances conn as far as it can go without waiting, handling pipelined
 * requests in a loop rather than by recursion. conn may be freed on return.
 */
static void conn_run(struct sonde_http_conn *conn)
{
	int err;

	for (;;) {
		switch (conn->state) {
		case CONN_READING:
			if (!find_head_end(conn->in, conn->in_len, &conn->head_start, &conn->scan,
					   &conn->head_end)) {
				if (conn->in_len == sizeof(conn->in)) {
					fail_request(conn, 431, "request head too large", NULL);
					break;
				}
				set_events(conn, EPOLLIN | EPOLLRDHUP);
				return;
			}
			if (!accept_head(conn))
				break;
			conn->state = CONN_WAITING;
			conn->in_handler = true;
			conn->http->handler(conn->http->ctx, conn, &conn->req);
			conn->in_handler = false;
			if (conn->state == CONN_WAITING) {
				/* The handler forgot to answer: say so rather than hang. */
				conn->keep_alive = false;
				if (queue_response(conn, 500, NULL, NULL, "no answer\n", 10))
					conn->state = CONN_CLOSE;
				else
					conn->state = CONN_WRITING;
			}
			break;
		case CONN_WAITING:
			return; /* not reached: WAITING only lives inside the handler */
		case CONN_DEFERRED:
			/* Only the peer going away can wake a deferred conn up. */
			set_events(conn, EPOLLRDHUP);
			return;
		case CONN_WRITING:
			err = flush_out(conn);
			if (err == -EAGAIN) {
				set_events(conn, EPOLLOUT);
				return;
			}
			if (err) {
				conn_destroy(conn);
				return;
			}
			if (!conn->keep_alive) {
				/*
				 * Shut only our side and drain the peer for a while: closing
				 * with unread bytes (the rest of an oversized head) would
				 * send a reset that can destroy the answer in flight.
				 */
				shutdown(conn->fd, SHUT_WR);
				conn->state = CONN_LINGER;
				conn->last_active = sonde_now_ns();
				set_events(conn, EPOLLIN | EPOLLRDHUP);
				return;
			}
			consume_request(conn);
			conn->state = CONN_READING;
			break;
		case CONN_LINGER:
			return;
		case CONN_CLOSE:
			conn_destroy(conn);
			return;
		}
	}
}

static void on_conn(void *ctx, int fd, uint32_t revents)
{
	struct sonde_http_conn *conn = ctx;
	char drain[4096];
	ssize_t n;

	switch (conn->state) {
	case CONN_READING:
		if (conn->in_len == sizeof(conn->in))
			break; /* not reached: conn_run leaves READING with room */
		n = read(fd, conn->in + conn->in_len, sizeof(conn->in) - conn->in_len);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			conn_destroy(conn);
			return;
		}
		conn->in_len += (size_t)n;
		conn->last_active = sonde_now_ns();
		break;
	case CONN_DEFERRED:
		/* Watched for EPOLLRDHUP only: any event means the peer is gone. */
		conn_destroy(conn);
		return;
	case CONN_LINGER:
		n = read(fd, drain, sizeof(drain));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0)
			conn_destroy(conn);
		return;
	default:
		break;
	}
	conn_run(conn);
}

/* Idle means nobody waits for it: no request in progress, or closing. */
static bool conn_idle(const struct sonde_http_conn *conn)
{
	return (conn->state == CONN_READING && conn->in_len == 0) ||
	       conn->state == CONN_LINGER;
}

static void make_room(struct sonde_http *http)
{
	struct sonde_http_conn *conn, *oldest = NULL;

	for (conn = http->conns; conn; conn = conn->next)
		if (conn_idle(conn) && (!oldest || conn->last_active <= oldest->last_active))
			oldest = conn;
	if (oldest)
		conn_destroy(oldest);
}

static void pause_accept(struct sonde_http *http, bool pause)
{
	if (http->accept_paused == pause)
		return;
	if (!sonde_loop__mod_fd(http->loop, http->fd, pause ? 0 : EPOLLIN))
		http->accept_paused = pause;
}

static void on_accept(void *ctx, int fd, uint32_t revents)
{
	static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
				   "Content-Type: text/plain; charset=utf-8\r\n"
				   "Content-Length: 17\r\n"
				   "Connection: close\r\n"
				   "\r\n"
				   "too many clients\n";
	struct sonde_http *http = ctx;
	struct sonde_http_conn *conn;
	int cfd, i;

	/* A bounded batch, so a connection storm cannot starve the loop. */
	for (i = 0; i < 16; i++) {
		cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				pause_accept(http, true); /* the sweep resumes it */
			return;
		}
		if (http->nconns >= MAX_CONNS)
			make_room(http);
		if (http->nconns >= MAX_CONNS) {
			/* Every connection is busy; best effort, the socket is fresh. */
			(void)send(cfd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(cfd);
			continue;
		}
		conn = calloc(1, sizeof(*conn));
		if (!conn) {
			close(cfd);
			continue;
		}
		conn->http = http;
		conn->fd = cfd;
		conn->state = CONN_READING;
		conn->events = EPOLLIN | EPOLLRDHUP;
		conn->last_active = sonde_now_ns();
		if (sonde_loop__add_fd(http->loop, cfd, conn->events, on_conn, conn)) {
			close(cfd);
			free(conn);
			continue;
		}
		conn->next = http->conns;
		if (http->conns)
			http->conns->prev = conn;
		http->conns = conn;
		http->nconns++;
	}
}

static void on_sweep(void *ctx)
{
	struct sonde_http *http = ctx;
	struct sonde_http_conn *conn, *next;
	uint64_t now = sonde_now_ns();

	for (conn = http->conns; conn; conn = next) {
		uint64_t age = now - conn->last_active;

		next = conn->next;
		if (conn->state == CONN_LINGER ? age > LINGER_NS :
		    (conn->state == CONN_READING || conn->state == CONN_WRITING) &&
			    age > http->idle_ns)
			conn_destroy(conn);
	}
	pause_accept(http, false);
}

/* Splits "HOST:PORT", "[V6]:PORT" or ":PORT"; host "" means any. */
static int split_addr(const char *addr, char *host, size_t host_size, char *port,
		      size_t port_size)
{
	const char *colon, *h = addr;
	size_t hlen;

	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');

		if (!close || close[1] != ':' || close == addr + 1)
			return -EINVAL;
		h = addr + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		hlen = (size_t)(colon - addr);
		if (memchr(addr, ':', hlen))
			return -EINVAL; /* a bare IPv6 address is ambiguous */
	}
	if (hlen >= host_size)
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	colon++;
	if (!*colon || strlen(colon) >= port_size || strspn(colon, "0123456789") != strlen(colon) ||
	    strtoul(colon, NULL, 10) > 65535)
		return -EINVAL;
	strcpy(port, colon);
	return 0;
}

static int gai_to_errno(int rc)
{
	switch (rc) {
	case EAI_SYSTEM: return errno ? errno : EIO;
	case EAI_MEMORY: return ENOMEM;
	case EAI_AGAIN: return EAGAIN;
	default: return EINVAL;
	}
}

static int bind_one(const struct addrinfo *ai, bool dual_stack)
{
	int fd, one = 1, zero = 0, err;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	if (dual_stack && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0)
		goto fail;
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0)
		goto fail;
	return fd;
fail:
	err = -errno;
	close(fd);
	return err;
}

/*
 * ":PORT" tries one dual-stack [::] socket first so IPv4 and IPv6 scrapers
 * both reach it, and falls back to 0.0.0.0 where IPv6 is off.
 */
static int open_listener(const char *addr)
{
	struct addrinfo hints = {
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | AI_PASSIVE,
	};
	struct addrinfo *res = NULL, *ai;
	char host[256], port[8];
	int fd = -EINVAL, rc, pass;

	rc = split_addr(addr, host, sizeof(host), port, sizeof(port));
	if (rc)
		return rc;
	for (pass = 0; pass < 2; pass++) {
		if (host[0]) {
			if (pass)
				break;
			hints.ai_family = AF_UNSPEC;
		} else {
			hints.ai_family = pass ? AF_INET : AF_INET6;
		}
		errno = 0;
		rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
		if (rc) {
			fd = -gai_to_errno(rc);
			continue;
		}
		for (ai = res; ai; ai = ai->ai_next) {
			fd = bind_one(ai, !host[0] && ai->ai_family == AF_INET6);
			if (fd >= 0)
				break;
		}
		freeaddrinfo(res);
		res = NULL;
		/* A taken port stays taken on the other family: keep that error. */
		if (fd >= 0 || fd == -EADDRINUSE)
			break;
	}
	return fd;
}

static int format_addr(int fd, char *out, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		snprintf(out, size, "[%s]:%u", ip, ntohs(sin6->sin6_port));
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		snprintf(out, size, "%s:%u", ip, ntohs(sin->sin_port));
	}
	return 0;
}

struct sonde_http *sonde_http__new(struct sonde_loop *loop, const char *addr,
				   sonde_http_handler handler, void *ctx)
{
	struct sonde_http *http = NULL;
	int err;

	if (!loop || !addr || !handler) {
		errno = EINVAL;
		return NULL;
	}
	http = calloc(1, sizeof(*http));
	if (!http)
		return NULL;
	http->loop = loop;
	http->handler = handler;
	http->ctx = ctx;
	http->idle_ns = IDLE_TIMEOUT_NS;
	http->fd = open_listener(addr);
	if (http->fd < 0) {
		err = http->fd;
		goto cleanup;
	}
	err = format_addr(http->fd, http->addr, sizeof(http->addr));
	if (err)
		goto cleanup;
	err = sonde_loop__add_fd(loop, http->fd, EPOLLIN, on_accept, http);
	if (err)
		goto cleanup;
	http->sweep = sonde_loop__add_timer(loop, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS, on_sweep,
					    http);
	if (!http->sweep) {
		err = -errno;
		sonde_loop__del_fd(loop, http->fd);
		goto cleanup;
	}
	return http;

cleanup:
	if (http->fd >= 0)
		close(http->fd);
	free(http);
	errno = -err;
	return NULL;
}

void sonde_http__free(struct sonde_http *http)
{
	if (!http)
		return;
	/* Deferred owners hear about their conn through on_close, once. */
	while (http->conns)
		conn_destroy(http->conns);
	sonde_loop__cancel_timer(http->loop, http->sweep);
	sonde_loop__del_fd(http->loop, http->fd);
	close(http->fd);
	free(http);
}

const char *sonde_http__addr(const struct sonde_http *http)
{
	return http->addr;
}

int sonde_http__set_idle_timeout(struct sonde_http *http, unsigned int ms)
{
	struct sonde_loop_timer *sweep;
	uint64_t interval;

	if (ms < IDLE_MIN_MS)
		return -EINVAL;
	/* Sweeping at a quarter of the timeout closes within 1.25 times it. */
	interval = ms / 4 < SWEEP_INTERVAL_MS ? ms / 4 : SWEEP_INTERVAL_MS;
	sweep = sonde_loop__add_timer(http->loop, interval, interval, on_sweep, http);
	if (!sweep)
		return -errno;
	sonde_loop__cancel_timer(http->loop, http->sweep);
	http->sweep = sweep;
	http->idle_ns = (uint64_t)ms * 1000000ULL;
	return 0;
}

int sonde_http_conn__respond(struct sonde_http_conn *conn, int status, const char *content_type,
			     const void *body, size_t len)
{
	int err;

	if (conn->state != CONN_WAITING && conn->state != CONN_DEFERRED)
		return -EALREADY;
	err = queue_response(conn, status, content_type, NULL, body, len);
	conn->state = err ? CONN_CLOSE : CONN_WRITING;
	conn->on_close = NULL;
	/* A profile may have kept it waiting past the idle timeout. */
	conn->last_active = sonde_now_ns();
	/*
	 * Inside the handler, conn_run picks the answer up when the handler
	 * returns. Later (a deferred answer), let the loop write it: freeing
	 * conn or running the next pipelined request from inside the caller's
	 * code would surprise it.
	 */
	if (!conn->in_handler)
		set_events(conn, EPOLLOUT);
	return err;
}

int sonde_http_conn__error(struct sonde_http_conn *conn, int status, const char *msg)
{
	struct sonde_strbuf body = SONDE_STRBUF_INIT;
	int err;

	sonde_strbuf__printf(&body, "%s\n", msg ? msg : reason_phrase(status));
	err = sonde_strbuf__error(&body);
	if (err) {
		/* Still answer something, the conn is consumed either way. */
		sonde_http_conn__respond(conn, status, NULL, "\n", 1);
		return err;
	}
	err = sonde_http_conn__respond(conn, status, NULL, body.data, body.len);
	sonde_strbuf__release(&body);
	return err;
}

void sonde_http_conn__defer(struct sonde_http_conn *conn, void (*on_close)(void *ctx), void *ctx)
{
	if (conn->state != CONN_WAITING)
		return;
	conn->state = CONN_DEFERRED;
	conn->on_close = on_close;
	conn->on_close_ctx = ctx;
}
