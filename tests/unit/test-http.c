// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "loop.h"

/*
 * The server runs its loop in a thread; the test thread is a plain
 * blocking client with timeouts, so a server bug fails a test instead of
 * hanging it. Handler state is touched on the loop thread only, except the
 * atomics and the mutex-guarded copy of the last request.
 */

#define BIG_LEN (5 * 1024 * 1024)
/* The idle timeout of the idle tests: twice the shortest the API takes. */
#define IDLE_MS 200

struct server {
	struct sonde_loop *loop;
	struct sonde_http *http;
	pthread_t thread;
	int stop_pipe[2];
	int port;
	char *big;

	pthread_mutex_t mu;
	char method[16], path[256], query[256];

	atomic_int requests;
	atomic_int on_close_calls;
	/* loop thread only */
	struct sonde_http_conn *deferred;
	struct sonde_loop_timer *defer_timer;
};

static void on_deferred_close(void *ctx)
{
	struct server *s = ctx;

	s->deferred = NULL;
	atomic_fetch_add(&s->on_close_calls, 1);
}

static void on_defer_timer(void *ctx)
{
	struct server *s = ctx;

	sonde_loop__cancel_timer(s->loop, s->defer_timer);
	s->defer_timer = NULL;
	if (s->deferred) {
		sonde_http_conn__respond(s->deferred, 200, NULL, "late\n", 5);
		s->deferred = NULL;
	}
}

static void handler(void *ctx, struct sonde_http_conn *conn, const struct sonde_http_request *req)
{
	struct server *s = ctx;

	pthread_mutex_lock(&s->mu);
	snprintf(s->method, sizeof(s->method), "%s", req->method);
	snprintf(s->path, sizeof(s->path), "%s", req->path);
	snprintf(s->query, sizeof(s->query), "%s", req->query);
	pthread_mutex_unlock(&s->mu);
	atomic_fetch_add(&s->requests, 1);

	if (!strcmp(req->path, "/hello")) {
		sonde_http_conn__respond(conn, 200, NULL, "hello world\n", 12);
	} else if (!strcmp(req->path, "/metrics")) {
		sonde_http_conn__respond(conn, 200, "text/plain; version=0.0.4", "up 1\n", 5);
	} else if (!strcmp(req->path, "/big")) {
		sonde_http_conn__respond(conn, 200, "application/octet-stream", s->big, BIG_LEN);
	} else if (!strcmp(req->path, "/defer")) {
		sonde_http_conn__defer(conn, on_deferred_close, s);
		s->deferred = conn;
		s->defer_timer = sonde_loop__add_timer(s->loop, 200, 0, on_defer_timer, s);
	} else if (!strcmp(req->path, "/hang")) {
		sonde_http_conn__defer(conn, on_deferred_close, s);
		s->deferred = conn;
	} else if (!strcmp(req->path, "/noanswer")) {
		/* deliberately neither answers nor defers */
	} else {
		sonde_http_conn__error(conn, 404, "no such page");
	}
}

static void on_stop(void *ctx, int fd, uint32_t revents)
{
	struct server *s = ctx;
	char c;

	if (read(fd, &c, 1) < 0)
		return;
	sonde_loop__stop(s->loop);
}

static void *loop_thread(void *arg)
{
	struct server *s = arg;

	sonde_loop__run(s->loop);
	return NULL;
}

static int port_of(const char *addr)
{
	const char *colon = strrchr(addr, ':');

	return colon ? atoi(colon + 1) : -1;
}

/* idle_ms 0 keeps the server's default idle timeout. */
static int start_server(void **state, unsigned int idle_ms)
{
	struct server *s = calloc(1, sizeof(*s));
	size_t i;

	assert_non_null(s);
	pthread_mutex_init(&s->mu, NULL);
	s->big = malloc(BIG_LEN);
	assert_non_null(s->big);
	for (i = 0; i < BIG_LEN; i++)
		s->big[i] = (char)('a' + (i * 7 + i / 4096) % 26);
	s->loop = sonde_loop__new();
	assert_non_null(s->loop);
	s->http = sonde_http__new(s->loop, "127.0.0.1:0", handler, s);
	assert_non_null(s->http);
	s->port = port_of(sonde_http__addr(s->http));
	if (idle_ms) {
		assert_int_equal(sonde_http__set_idle_timeout(s->http, 99), -EINVAL);
		assert_int_equal(sonde_http__set_idle_timeout(s->http, idle_ms), 0);
	}
	assert_int_equal(pipe2(s->stop_pipe, O_CLOEXEC), 0);
	assert_int_equal(sonde_loop__add_fd(s->loop, s->stop_pipe[0], EPOLLIN, on_stop, s), 0);
	assert_int_equal(pthread_create(&s->thread, NULL, loop_thread, s), 0);
	*state = s;
	return 0;
}

static int setup(void **state)
{
	return start_server(state, 0);
}

static int setup_idle(void **state)
{
	return start_server(state, IDLE_MS);
}

/* Stops the loop thread; afterwards the test thread owns the loop. */
static void stop_loop(struct server *s)
{
	if (!s->thread)
		return;
	assert_int_equal(write(s->stop_pipe[1], "x", 1), 1);
	pthread_join(s->thread, NULL);
	s->thread = 0;
}

static int teardown(void **state)
{
	struct server *s = *state;

	stop_loop(s);
	sonde_http__free(s->http);
	sonde_loop__del_fd(s->loop, s->stop_pipe[0]);
	if (s->defer_timer)
		sonde_loop__cancel_timer(s->loop, s->defer_timer);
	sonde_loop__free(s->loop);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	free(s->big);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return 0;
}

/* ---- a small blocking client ---- */

struct client {
	int fd;
	char *buf;
	size_t len, cap;
};

struct response {
	char *raw; /* head and body, NUL-terminated */
	size_t raw_len;
	int status;
	const char *body;
	size_t body_len;
};

static int connect_to(int port, int rcvbuf)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = 3 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

static void client_open(struct client *c, int port)
{
	memset(c, 0, sizeof(*c));
	c->fd = connect_to(port, 0);
}

static void client_close(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->buf);
	c->buf = NULL;
}

static void send_str(int fd, const char *s, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);

		assert_true(n > 0);
		off += (size_t)n;
	}
}

static void client_send(struct client *c, const char *s)
{
	send_str(c->fd, s, strlen(s));
}

/* Reads more bytes; false on EOF. Fails the test on timeout or error. */
static bool client_fill(struct client *c)
{
	ssize_t n;

	if (c->cap - c->len < 65536) {
		c->cap = c->cap ? c->cap * 2 : 131072;
		c->buf = realloc(c->buf, c->cap);
		assert_non_null(c->buf);
	}
	n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
	if (n < 0)
		fail_msg("recv: %s", strerror(errno));
	c->len += (size_t)n;
	c->buf[c->len] = '\0';
	return n > 0;
}

/* One response off the stream; for a HEAD request no body follows. */
static void read_response(struct client *c, bool head_req, struct response *r)
{
	char *end = NULL, *cl;
	size_t head_len, total;

	memset(r, 0, sizeof(*r));
	while (!c->buf || !(end = strstr(c->buf, "\r\n\r\n")))
		assert_true(client_fill(c));
	head_len = (size_t)(end + 4 - c->buf);
	assert_int_equal(strncmp(c->buf, "HTTP/1.1 ", 9), 0);
	r->status = atoi(c->buf + 9);
	cl = strstr(c->buf, "\r\nContent-Length: ");
	assert_non_null(cl);
	assert_true(cl < end);
	r->body_len = head_req ? 0 : strtoul(cl + 18, NULL, 10);
	total = head_len + r->body_len;
	while (c->len < total)
		assert_true(client_fill(c));
	r->raw = malloc(total + 1);
	assert_non_null(r->raw);
	memcpy(r->raw, c->buf, total);
	r->raw[total] = '\0';
	r->raw_len = total;
	r->body = r->raw + head_len;
	memmove(c->buf, c->buf + total, c->len - total);
	c->len -= total;
	c->buf[c->len] = '\0';
}

static void expect_eof(struct client *c)
{
	assert_int_equal(c->len, 0);
	assert_false(client_fill(c));
}

static bool wait_for(atomic_int *v, int want, int ms)
{
	struct timespec ts = { .tv_nsec = 5 * 1000000 };
	int i;

	for (i = 0; i < ms / 5; i++) {
		if (atomic_load(v) == want)
			return true;
		nanosleep(&ts, NULL);
	}
	return atomic_load(v) == want;
}

static const char hello_200[] = "HTTP/1.1 200 OK\r\n"
				"Content-Type: text/plain; charset=utf-8\r\n"
				"Content-Length: 12\r\n"
				"Connection: keep-alive\r\n"
				"\r\n"
				"hello world\n";

static const char missing_404[] = "HTTP/1.1 404 Not Found\r\n"
				  "Content-Type: text/plain; charset=utf-8\r\n"
				  "Content-Length: 13\r\n"
				  "Connection: keep-alive\r\n"
				  "\r\n"
				  "no such page\n";

/* ---- tests ---- */

static void test_get_exact(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /hello HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);

	client_send(&c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, "HTTP/1.1 200 OK\r\n"
				   "Content-Type: text/plain; version=0.0.4\r\n"
				   "Content-Length: 5\r\n"
				   "Connection: keep-alive\r\n"
				   "\r\n"
				   "up 1\n");
	free(r.raw);
	pthread_mutex_lock(&s->mu);
	assert_string_equal(s->method, "GET");
	assert_string_equal(s->path, "/metrics");
	assert_string_equal(s->query, "");
	pthread_mutex_unlock(&s->mu);
	client_close(&c);
}

static void test_head_has_no_body(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	read_response(&c, true, &r);
	assert_string_equal(r.raw, "HTTP/1.1 200 OK\r\n"
				   "Content-Type: text/plain; charset=utf-8\r\n"
				   "Content-Length: 12\r\n"
				   "Connection: keep-alive\r\n"
				   "\r\n");
	free(r.raw);
	pthread_mutex_lock(&s->mu);
	assert_string_equal(s->method, "HEAD");
	pthread_mutex_unlock(&s->mu);
	/* No stray body bytes: the next answer starts right at its status line. */
	client_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	client_close(&c);
}

static void test_handler_error_404(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /nope HTTP/1.1\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, missing_404);
	free(r.raw);
	client_close(&c);
}

static void test_keep_alive_two_requests(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	client_send(&c, "GET /nope HTTP/1.1\nHost: x\n\n"); /* bare LF is tolerated */
	read_response(&c, false, &r);
	assert_string_equal(r.raw, missing_404);
	free(r.raw);
	assert_int_equal(atomic_load(&s->requests), 2);
	client_close(&c);
}

static void test_pipelined_in_order(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
			"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
			"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	read_response(&c, false, &r);
	assert_string_equal(r.raw, missing_404);
	free(r.raw);
	read_response(&c, true, &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	free(r.raw);
	expect_eof(&c);
	assert_int_equal(atomic_load(&s->requests), 3);
	client_close(&c);
}

static void test_http10_closes_unless_keep_alive(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /hello HTTP/1.0\r\n\r\n");
	read_response(&c, false, &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	free(r.raw);
	expect_eof(&c);
	client_close(&c);

	client_open(&c, s->port);
	client_send(&c, "GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	client_send(&c, "GET /hello HTTP/1.0\r\n\r\n");
	read_response(&c, false, &r);
	assert_non_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	free(r.raw);
	expect_eof(&c);
	client_close(&c);
}

static void test_deferred_answer(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;
	uint64_t t0, ms;

	client_open(&c, s->port);
	t0 = sonde_now_ns();
	client_send(&c, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
	read_response(&c, false, &r);
	ms = (sonde_now_ns() - t0) / 1000000;
	assert_true(ms >= 190);
	assert_true(ms < 2000);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 5);
	assert_memory_equal(r.body, "late\n", 5);
	free(r.raw);
	/* The connection goes on after a deferred answer. */
	client_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	assert_int_equal(atomic_load(&s->on_close_calls), 0);
	client_close(&c);
}

static void test_close_while_deferred(void **state)
{
	struct server *s = *state;
	struct timespec ts = { .tv_nsec = 100 * 1000000 };
	struct client c;

	client_open(&c, s->port);
	client_send(&c, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
	assert_true(wait_for(&s->requests, 1, 2000));
	client_close(&c);
	assert_true(wait_for(&s->on_close_calls, 1, 2000));
	nanosleep(&ts, NULL);
	assert_int_equal(atomic_load(&s->on_close_calls), 1);
}

static void test_free_calls_on_close(void **state)
{
	struct server *s = *state;
	struct client c;

	client_open(&c, s->port);
	client_send(&c, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
	assert_true(wait_for(&s->requests, 1, 2000));
	stop_loop(s);
	assert_int_equal(atomic_load(&s->on_close_calls), 0);
	sonde_http__free(s->http);
	s->http = NULL;
	assert_int_equal(atomic_load(&s->on_close_calls), 1);
	assert_null(s->deferred);
	/* The client sees the connection closed without an answer. */
	assert_false(client_fill(&c));
	assert_int_equal(c.len, 0);
	client_close(&c);
}

static void test_no_answer_is_500(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "GET /noanswer HTTP/1.1\r\n\r\n");
	read_response(&c, false, &r);
	assert_int_equal(r.status, 500);
	free(r.raw);
	expect_eof(&c);
	client_close(&c);
}

static void test_head_too_large_431(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;
	char *req = malloc(10000);

	assert_non_null(req);
	strcpy(req, "GET /hello HTTP/1.1\r\nX-Pad: ");
	memset(req + strlen(req), 'a', 9000);
	strcpy(req + 28 + 9000, "\r\n\r\n");
	client_open(&c, s->port);
	client_send(&c, req);
	read_response(&c, false, &r);
	assert_int_equal(r.status, 431);
	assert_non_null(strstr(r.raw, "HTTP/1.1 431 Request Header Fields Too Large\r\n"));
	assert_non_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	free(r.raw);
	expect_eof(&c);
	client_close(&c);
	assert_int_equal(atomic_load(&s->requests), 0);

	/* Just under the limit is fine. */
	strcpy(req, "GET /hello HTTP/1.1\r\nX-Pad: ");
	memset(req + 28, 'b', 8000);
	strcpy(req + 28 + 8000, "\r\n\r\n");
	client_open(&c, s->port);
	client_send(&c, req);
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	client_close(&c);
	free(req);
}

static void expect_error(struct server *s, const char *req, int status, const char *line)
{
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, req);
	read_response(&c, false, &r);
	assert_int_equal(r.status, status);
	if (line)
		assert_non_null(strstr(r.raw, line));
	assert_non_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	free(r.raw);
	expect_eof(&c);
	client_close(&c);
}

static void test_bad_requests(void **state)
{
	struct server *s = *state;

	expect_error(s, "POST /hello HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405,
		     "\r\nAllow: GET, HEAD\r\n");
	expect_error(s, "DELETE /x HTTP/1.1\r\n\r\n", 405, "HTTP/1.1 405 Method Not Allowed\r\n");
	expect_error(s, "hello there\r\n\r\n", 400, "HTTP/1.1 400 Bad Request\r\n");
	expect_error(s, "GET /x  HTTP/1.1\r\n\r\n", 400, "malformed request line");
	expect_error(s, "GET /x FTP/1.0\r\n\r\n", 400, NULL);
	expect_error(s, "GET /x HTTP/2.0\r\n\r\n", 505, NULL);
	expect_error(s, "GET /a%zz HTTP/1.1\r\n\r\n", 400, "malformed escape in path");
	expect_error(s, "GET /x HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header");
	expect_error(s, "GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413,
		     "request bodies are not accepted");
	expect_error(s, "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413,
		     NULL);
	assert_int_equal(atomic_load(&s->requests), 0);
}

static void test_path_decoded_query_raw(void **state)
{
	struct server *s = *state;
	struct client c;
	struct response r;

	client_open(&c, s->port);
	client_send(&c, "\r\nGET /a%20b%2Fc?x=1+2&y=%41 HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
	read_response(&c, false, &r);
	assert_int_equal(r.status, 404);
	free(r.raw);
	pthread_mutex_lock(&s->mu);
	assert_string_equal(s->path, "/a b/c");
	assert_string_equal(s->query, "x=1+2&y=%41");
	pthread_mutex_unlock(&s->mu);
	client_close(&c);
}

static void test_big_body_arrives_whole(void **state)
{
	struct server *s = *state;
	struct timespec ts = { .tv_nsec = 100 * 1000000 };
	struct client c = { .fd = -1 };
	struct response r;

	/* A small receive buffer and a late reader force the server to wait. */
	c.fd = connect_to(s->port, 16384);
	client_send(&c, "GET /big HTTP/1.1\r\n\r\n");
	nanosleep(&ts, NULL);
	read_response(&c, false, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, BIG_LEN);
	assert_memory_equal(r.body, s->big, BIG_LEN);
	free(r.raw);
	/* And the connection is still usable after it. */
	client_send(&c, "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	client_close(&c);
}

static void test_connection_limit_evicts_oldest_idle(void **state)
{
	struct server *s = *state;
	struct client c[65];
	struct response r;
	int i;

	/* c[0] is served first, so it is the oldest idle connection. */
	client_open(&c[0], s->port);
	client_send(&c[0], "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c[0], false, &r);
	free(r.raw);
	for (i = 1; i < 64; i++)
		client_open(&c[i], s->port);
	client_send(&c[63], "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c[63], false, &r);
	free(r.raw);

	/* The 65th pushes c[0] out and is served. */
	client_open(&c[64], s->port);
	client_send(&c[64], "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c[64], false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	expect_eof(&c[0]);
	client_send(&c[1], "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&c[1], false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	for (i = 0; i < 65; i++)
		client_close(&c[i]);
}

static void test_idle_partial_head_closed(void **state)
{
	struct server *s = *state;
	struct client kept, slow, fresh;
	struct response r;
	uint64_t t0, ms;

	/* A kept-alive connection that got its answer and went quiet... */
	client_open(&kept, s->port);
	client_send(&kept, "GET /hello HTTP/1.1\r\n\r\n");
	read_response(&kept, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);

	/* ...and one that stalls halfway through its head. */
	client_open(&slow, s->port);
	t0 = sonde_now_ns();
	client_send(&slow, "GET /hello HTTP/1.1\r\nHost: x\r\n");
	/* EOF, not the 3 s receive timeout (which fails the test in client_fill). */
	assert_false(client_fill(&slow));
	ms = (sonde_now_ns() - t0) / 1000000;
	assert_int_equal(slow.len, 0); /* closed without an answer */
	if (ms < IDLE_MS || ms > 4 * IDLE_MS)
		fail_msg("closed after %llu ms, want %d ms to 1.25 times that (plus slack)",
			 (unsigned long long)ms, IDLE_MS);
	/* The quiet one had been idle longer: closed by then too. */
	expect_eof(&kept);
	assert_int_equal(atomic_load(&s->requests), 1);
	client_close(&slow);
	client_close(&kept);

	/* The listener itself is not idle: a new connection is served. */
	client_open(&fresh, s->port);
	client_send(&fresh, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	read_response(&fresh, false, &r);
	assert_string_equal(r.raw, hello_200);
	free(r.raw);
	assert_int_equal(atomic_load(&s->requests), 2);
	client_close(&fresh);
}

static void test_idle_spares_deferred(void **state)
{
	struct server *s = *state;
	struct timespec ts = { .tv_nsec = 3 * IDLE_MS * 1000000L };
	struct timeval tv = { .tv_usec = 100 * 1000 };
	struct client c;
	char byte;

	/* A profile may take minutes: its connection must outlive the timeout. */
	client_open(&c, s->port);
	client_send(&c, "GET /hang HTTP/1.1\r\n\r\n");
	assert_true(wait_for(&s->requests, 1, 2000));
	nanosleep(&ts, NULL);
	assert_int_equal(atomic_load(&s->on_close_calls), 0);
	setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(recv(c.fd, &byte, 1, 0), -1);
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	client_close(&c);
	assert_true(wait_for(&s->on_close_calls, 1, 2000));
}

static void test_curl_client(void **state)
{
	struct server *s = *state;
	char cmd[256], out[256] = "";
	size_t n;
	FILE *p;

	if (access("/usr/bin/curl", X_OK))
		skip();
	snprintf(cmd, sizeof(cmd),
		 "/usr/bin/curl -sS --max-time 3 -w ' %%{http_code}' "
		 "'http://127.0.0.1:%d/hello' 'http://127.0.0.1:%d/hello?q=1' 2>&1",
		 s->port, s->port);
	p = popen(cmd, "r");
	assert_non_null(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	assert_int_equal(pclose(p), 0);
	assert_string_equal(out, "hello world\n 200hello world\n 200");
	assert_int_equal(atomic_load(&s->requests), 2);
}

static void test_query_get(void **state)
{
	char buf[16];

	(void)state;
	assert_int_equal(sonde_http_query_get("seconds=30&x=1", "seconds", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "30");
	assert_int_equal(sonde_http_query_get("seconds=30&x=1", "x", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "1");
	assert_int_equal(sonde_http_query_get("seconds=30", "second", buf, sizeof(buf)), 0);
	assert_int_equal(sonde_http_query_get("xseconds=3", "seconds", buf, sizeof(buf)), 0);
	assert_int_equal(sonde_http_query_get("", "seconds", buf, sizeof(buf)), 0);
	assert_int_equal(sonde_http_query_get("p=%2Fusr%2fbin", "p", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "/usr/bin");
	assert_int_equal(sonde_http_query_get("q=a+b%2Bc", "q", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "a b+c");
	assert_int_equal(sonde_http_query_get("a=1&a=2", "a", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "1");
	assert_int_equal(sonde_http_query_get("flag&b=2", "flag", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "");
	assert_int_equal(sonde_http_query_get("e=&b=2", "e", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "");
	/* 15 characters fit with the NUL in 16 bytes, 16 do not. */
	assert_int_equal(sonde_http_query_get("v=123456789012345", "v", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "123456789012345");
	assert_int_equal(sonde_http_query_get("v=1234567890123456", "v", buf, sizeof(buf)),
			 -ENAMETOOLONG);
	assert_int_equal(sonde_http_query_get("v=%zz", "v", buf, sizeof(buf)), -EINVAL);
	assert_int_equal(sonde_http_query_get("v=ab%4", "v", buf, sizeof(buf)), -EINVAL);
	assert_int_equal(sonde_http_query_get("v=%00", "v", buf, sizeof(buf)), -EINVAL);
	/* A bad escape in another key does not matter. */
	assert_int_equal(sonde_http_query_get("w=%zz&v=ok", "v", buf, sizeof(buf)), 1);
	assert_string_equal(buf, "ok");
}

/* The parser on a buffer says what the server does on a connection. */
static void test_parse_head(void **state)
{
	char ok[] = "\r\nHEAD /a%20b?x=1+2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /next";
	char part[] = "GET /hello HTTP/1.1\r\nHost: x\r\n";
	char post[] = "POST / HTTP/1.1\n\n";
	char nul[] = "GET /x HTTP/1.1\r\nX: a\0b\r\n\r\n";
	struct sonde_http_head h;

	(void)state;
	assert_int_equal(sonde_http_parse_head(ok, sizeof(ok) - 1, &h), 0);
	assert_int_equal(h.status, 0);
	assert_int_equal(h.len, sizeof(ok) - 1 - strlen("GET /next"));
	assert_string_equal(h.req.method, "HEAD");
	assert_string_equal(h.req.path, "/a b");
	assert_string_equal(h.req.query, "x=1+2");
	assert_true(h.keep_alive);
	assert_null(h.error);

	assert_int_equal(sonde_http_parse_head(part, sizeof(part) - 1, &h), -EAGAIN);
	assert_int_equal(sonde_http_parse_head(post, sizeof(post) - 1, &h), 0);
	assert_int_equal(h.status, 405);
	assert_string_equal(h.error, "only GET and HEAD are allowed");
	assert_null(h.req.path);
	assert_int_equal(sonde_http_parse_head(nul, sizeof(nul) - 1, &h), 0);
	assert_int_equal(h.status, 400);
	assert_string_equal(h.error, "NUL byte in request head");
}

static void test_addresses(void **state)
{
	static const char *const bad[] = {
		"nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:8o",
		"[::1", "[::1]80", "::1:80", "[]:80", "999.1.1.1:80",
	};
	struct sonde_loop *loop = sonde_loop__new();
	struct sonde_http *a, *b;
	char addr[64];
	size_t i;
	int fd;

	(void)state;
	assert_non_null(loop);
	a = sonde_http__new(loop, "127.0.0.1:0", handler, NULL);
	assert_non_null(a);
	assert_int_equal(strncmp(sonde_http__addr(a), "127.0.0.1:", 10), 0);
	assert_true(port_of(sonde_http__addr(a)) > 0);

	snprintf(addr, sizeof(addr), "%s", sonde_http__addr(a));
	errno = 0;
	b = sonde_http__new(loop, addr, handler, NULL);
	assert_null(b);
	assert_int_equal(errno, EADDRINUSE);
	sonde_http__free(a);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 0;
		b = sonde_http__new(loop, bad[i], handler, NULL);
		if (b)
			fail_msg("'%s' was accepted as %s", bad[i], sonde_http__addr(b));
		if (errno != EINVAL)
			fail_msg("'%s': errno %d, want EINVAL", bad[i], errno);
	}

	/* All interfaces: reachable over IPv4 even when bound dual-stack. */
	a = sonde_http__new(loop, ":0", handler, NULL);
	assert_non_null(a);
	assert_true(!strncmp(sonde_http__addr(a), "[::]:", 5) ||
		    !strncmp(sonde_http__addr(a), "0.0.0.0:", 8));
	fd = connect_to(port_of(sonde_http__addr(a)), 0);
	close(fd);
	sonde_http__free(a);

	b = sonde_http__new(loop, "[::1]:0", handler, NULL);
	if (b) { /* absent where IPv6 is off */
		assert_int_equal(strncmp(sonde_http__addr(b), "[::1]:", 6), 0);
		sonde_http__free(b);
	}
	sonde_loop__free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_query_get),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_parse_head),
		cmocka_unit_test_setup_teardown(test_get_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_head_has_no_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handler_error_404, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keep_alive_two_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_http10_closes_unless_keep_alive, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_deferred_answer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_while_deferred, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_calls_on_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_answer_is_500, setup, teardown),
		cmocka_unit_test_setup_teardown(test_head_too_large_431, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_path_decoded_query_raw, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_body_arrives_whole, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connection_limit_evicts_oldest_idle, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_curl_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_partial_head_closed, setup_idle,
						teardown),
		cmocka_unit_test_setup_teardown(test_idle_spares_deferred, setup_idle, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
