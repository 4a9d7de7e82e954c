// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "control.h"
#include "loop.h"

/*
 * The daemon side runs a real loop in a thread; clients are plain blocking
 * nng req0 sockets with timeouts (one per client thread), so a bug fails a
 * test instead of hanging it. Handler state is loop-thread only, except the
 * atomics the test thread polls.
 */

struct server {
	char dir[64];
	char url[128];
	char path[100];
	struct sonde_loop *loop;
	struct sonde_control *control;
	pthread_t thread;
	pthread_t loop_tid; /* set by the loop thread itself */
	int stop_fd;

	atomic_int handled;
	atomic_int off_loop; /* handler calls not on the loop thread */
	atomic_int held_count;
	int fill_ret;
	/* loop thread only */
	struct sonde_control_req *later;
	struct sonde_loop_timer *later_timer;
	struct sonde_control_req *held;
};

static struct server *srv_of(void **state)
{
	return *state;
}

/* ---- the handlers --------------------------------------------------- */

struct fill_echo {
	const char *cmd;
	bool on_loop;
};

static int fill_echo(void *ctx, msgpack_packer *pk)
{
	struct fill_echo *f = ctx;

	sonde_control__pack_str(pk, "cmd");
	sonde_control__pack_str(pk, f->cmd);
	sonde_control__pack_str(pk, "on_loop");
	if (f->on_loop)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	return 2;
}

static int fill_fails(void *ctx, msgpack_packer *pk)
{
	sonde_control__pack_str(pk, "half");
	return -ENOSPC;
}

static void on_later(void *ctx)
{
	struct server *s = ctx;
	struct fill_echo f = {"later", pthread_equal(pthread_self(), s->loop_tid)};

	sonde_loop__cancel_timer(s->loop, s->later_timer);
	s->later_timer = NULL;
	assert_int_equal(sonde_control_req__reply(s->later, fill_echo, &f), 0);
	s->later = NULL;
}

static void handle(void *ctx, struct sonde_control_req *req, const char *cmd,
		   const msgpack_object *args)
{
	struct server *s = ctx;
	bool on_loop = pthread_equal(pthread_self(), s->loop_tid);
	struct fill_echo f = {cmd, on_loop};

	if (!on_loop)
		atomic_fetch_add(&s->off_loop, 1);
	if (args->type != MSGPACK_OBJECT_MAP)
		atomic_fetch_add(&s->off_loop, 1000);

	if (!strcmp(cmd, "echo")) {
		sonde_control_req__reply(req, fill_echo, &f);
	} else if (!strcmp(cmd, "later")) {
		s->later = req;
		s->later_timer = sonde_loop__add_timer(s->loop, 200, 0, on_later, s);
	} else if (!strcmp(cmd, "hold")) {
		s->held = req;
		atomic_fetch_add(&s->held_count, 1);
	} else if (!strcmp(cmd, "fillerr")) {
		s->fill_ret = sonde_control_req__reply(req, fill_fails, NULL);
		sonde_control_req__fail(req, "fill said %d", s->fill_ret);
	} else if (!strcmp(cmd, "arg")) {
		const msgpack_object *n = sonde_control__arg(args, "n");

		if (n && n->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			sonde_control_req__fail(req, "n is %d", (int)n->via.u64);
		else
			sonde_control_req__fail(req, "no n");
	} else {
		sonde_control_req__fail(req, "unknown command \"%s\"", cmd);
	}
	/* Counted last: a test that saw the count sees the answer too. */
	atomic_fetch_add(&s->handled, 1);
}

static void on_stop(void *ctx, int fd, uint32_t revents)
{
	struct server *s = ctx;
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0)
		return;
	sonde_loop__stop(s->loop);
}

static void *loop_main(void *arg)
{
	struct server *s = arg;

	s->loop_tid = pthread_self();
	sonde_loop__run(s->loop);
	return NULL;
}

static void stop_loop(struct server *s)
{
	uint64_t one = 1;

	assert_int_equal(write(s->stop_fd, &one, sizeof(one)), sizeof(one));
	pthread_join(s->thread, NULL);
	s->thread = 0;
}

static int setup(void **state)
{
	struct sonde_control_handlers h = {.handle = handle};
	struct server *s = calloc(1, sizeof(*s));
	char err[256] = "";

	assert_non_null(s);
	snprintf(s->dir, sizeof(s->dir), "/tmp/sonde-control-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	/* "run" does not exist: the control socket creates it. */
	snprintf(s->path, sizeof(s->path), "%s/run/control.ipc", s->dir);
	snprintf(s->url, sizeof(s->url), "ipc://%s", s->path);
	s->loop = sonde_loop__new();
	assert_non_null(s->loop);
	s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(s->stop_fd >= 0);
	assert_int_equal(sonde_loop__add_fd(s->loop, s->stop_fd, EPOLLIN, on_stop, s), 0);
	h.ctx = s;
	s->control = sonde_control__new(s->loop, s->url, &h, err, sizeof(err));
	if (!s->control)
		fail_msg("sonde_control__new: %s", err);
	assert_int_equal(pthread_create(&s->thread, NULL, loop_main, s), 0);
	*state = s;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int teardown(void **state)
{
	struct server *s = *state;

	if (s->thread)
		stop_loop(s);
	sonde_control__free(s->control);
	sonde_loop__del_fd(s->loop, s->stop_fd);
	close(s->stop_fd);
	sonde_loop__free(s->loop);
	nftw(s->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(s);
	return 0;
}

/* ---- the client ------------------------------------------------------ */

struct call {
	const char *url;
	char req[256];
	size_t req_len;
	int rv; /* nng error of the exchange */
	nng_msg *msg;
	msgpack_unpacked unp;
	uint64_t done_ns;
	pthread_t thread;
};

static void *call_main(void *arg)
{
	struct call *c = arg;
	nng_socket sock;
	size_t off = 0;

	msgpack_unpacked_init(&c->unp);
	c->rv = nng_req0_open(&sock);
	if (c->rv)
		return NULL;
	nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, 5000);
	nng_socket_set_ms(sock, NNG_OPT_SENDTIMEO, 5000);
	c->rv = nng_dial(sock, c->url, NULL, 0);
	if (!c->rv)
		c->rv = nng_send(sock, c->req, c->req_len, 0);
	if (!c->rv)
		c->rv = nng_recvmsg(sock, &c->msg, 0);
	c->done_ns = sonde_now_ns();
	if (!c->rv && msgpack_unpack_next(&c->unp, nng_msg_body(c->msg), nng_msg_len(c->msg),
					  &off) != MSGPACK_UNPACK_SUCCESS)
		c->rv = NNG_EINVAL;
	nng_close(sock);
	return NULL;
}

static int sbuf_write(void *data, const char *buf, size_t len)
{
	return msgpack_sbuffer_write(data, buf, len);
}

/* A well-formed request {v=1, cmd=cmd}, plus {n=n} when n >= 0. */
static void set_request(struct call *c, const char *cmd, int n)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, sbuf_write);
	msgpack_pack_map(&pk, n >= 0 ? 3 : 2);
	sonde_control__pack_str(&pk, "v");
	msgpack_pack_int(&pk, 1);
	sonde_control__pack_str(&pk, "cmd");
	sonde_control__pack_str(&pk, cmd);
	if (n >= 0) {
		sonde_control__pack_str(&pk, "n");
		msgpack_pack_int(&pk, n);
	}
	assert_true(sb.size <= sizeof(c->req));
	memcpy(c->req, sb.data, sb.size);
	c->req_len = sb.size;
	msgpack_sbuffer_destroy(&sb);
}

static void call_start(struct call *c, struct server *s)
{
	c->url = s->url;
	assert_int_equal(pthread_create(&c->thread, NULL, call_main, c), 0);
}

static void call_wait(struct call *c)
{
	pthread_join(c->thread, NULL);
	assert_int_equal(c->rv, 0);
	assert_int_equal(c->unp.data.type, MSGPACK_OBJECT_MAP);
}

static void call_free(struct call *c)
{
	msgpack_unpacked_destroy(&c->unp);
	if (c->msg)
		nng_msg_free(c->msg);
}

static const msgpack_object *field(struct call *c, const char *key)
{
	return sonde_control__arg(&c->unp.data, key);
}

static void assert_str_field(struct call *c, const char *key, const char *want)
{
	const msgpack_object *o = field(c, key);
	char buf[256];

	assert_non_null(o);
	assert_int_equal(o->type, MSGPACK_OBJECT_STR);
	assert_true(o->via.str.size < sizeof(buf));
	memcpy(buf, o->via.str.ptr, o->via.str.size);
	buf[o->via.str.size] = '\0';
	assert_string_equal(buf, want);
}

/* The envelope every reply has: v=1 first, then ok. */
static void assert_envelope(struct call *c, bool ok, uint32_t npairs)
{
	const msgpack_object *m = &c->unp.data;

	assert_int_equal(m->via.map.size, npairs);
	assert_int_equal(m->via.map.ptr[0].key.type, MSGPACK_OBJECT_STR);
	assert_memory_equal(m->via.map.ptr[0].key.via.str.ptr, "v", 1);
	assert_int_equal(m->via.map.ptr[0].val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
	assert_int_equal(m->via.map.ptr[0].val.via.u64, 1);
	assert_non_null(field(c, "ok"));
	assert_int_equal(field(c, "ok")->type, MSGPACK_OBJECT_BOOLEAN);
	assert_int_equal(field(c, "ok")->via.boolean, ok);
}

static void wait_for(atomic_int *v, int want)
{
	for (int i = 0; i < 500 && atomic_load(v) < want; i++)
		usleep(10 * 1000);
	assert_int_equal(atomic_load(v), want);
}

/* ---- tests ------------------------------------------------------------ */

static void test_answer_at_once(void **state)
{
	struct server *s = srv_of(state);
	struct call c = {0};

	set_request(&c, "echo", -1);
	call_start(&c, s);
	call_wait(&c);
	assert_envelope(&c, true, 4);
	assert_str_field(&c, "cmd", "echo");
	assert_true(field(&c, "on_loop")->via.boolean);
	/* the handler counts after it answered: the answer may come first */
	wait_for(&s->handled, 1);
	assert_int_equal(atomic_load(&s->off_loop), 0);
	call_free(&c);
}

static void test_fail_and_args(void **state)
{
	struct server *s = srv_of(state);
	struct call a = {0}, b = {0}, u = {0};

	set_request(&a, "arg", 42);
	call_start(&a, s);
	call_wait(&a);
	assert_envelope(&a, false, 3);
	assert_str_field(&a, "error", "n is 42");

	set_request(&b, "arg", -1);
	call_start(&b, s);
	call_wait(&b);
	assert_str_field(&b, "error", "no n");

	set_request(&u, "frobnicate", -1);
	call_start(&u, s);
	call_wait(&u);
	assert_envelope(&u, false, 3);
	assert_str_field(&u, "error", "unknown command \"frobnicate\"");
	call_free(&a);
	call_free(&b);
	call_free(&u);
}

static void test_two_outstanding(void **state)
{
	struct server *s = srv_of(state);
	struct call slow = {0}, fast = {0};
	uint64_t t0 = sonde_now_ns();

	set_request(&slow, "later", -1);
	set_request(&fast, "echo", -1);
	call_start(&slow, s);
	/* "later" is with its handler (and its timer) before "echo" is sent. */
	wait_for(&s->handled, 1);
	call_start(&fast, s);
	call_wait(&fast);
	call_wait(&slow);

	assert_str_field(&fast, "cmd", "echo");
	assert_str_field(&slow, "cmd", "later");
	assert_true(field(&slow, "on_loop")->via.boolean);
	assert_true(fast.done_ns < slow.done_ns);
	assert_true(fast.done_ns - t0 < 200 * 1000000ULL);
	assert_true(slow.done_ns - t0 >= 200 * 1000000ULL);
	assert_int_equal(atomic_load(&s->off_loop), 0);
	call_free(&slow);
	call_free(&fast);
}

static void test_fill_error_keeps_request_open(void **state)
{
	struct server *s = srv_of(state);
	struct call c = {0};

	set_request(&c, "fillerr", -1);
	call_start(&c, s);
	call_wait(&c);
	assert_envelope(&c, false, 3);
	char want[64];

	snprintf(want, sizeof(want), "fill said %d", -ENOSPC);
	assert_str_field(&c, "error", want);
	call_free(&c);
}

struct malformed {
	const char *what;
	const char *bytes;
	size_t len;
	const char *error;
};

static void test_malformed(void **state)
{
	struct server *s = srv_of(state);
	/* msgpack by hand: 0x8N fixmap, 0xaN fixstr, 0x9N fixarray. */
	static const struct malformed cases[] = {
		{"empty", "", 0, "malformed request: not one msgpack object"},
		{"not msgpack", "\xc1", 1, "malformed request: not one msgpack object"},
		{"truncated map", "\x82\xa1v\x01", 4, "malformed request: not one msgpack object"},
		{"two objects", "\x81\xa1v\x01\x01", 5,
		 "malformed request: not one msgpack object"},
		{"array", "\x92\x01\x02", 3, "malformed request: not a msgpack map"},
		{"no v",
		 "\x81\xa3"
		 "cmd\xa4"
		 "echo",
		 10, "unsupported protocol version: this sonded speaks v=1"},
		{"v=2",
		 "\x82\xa1v\x02\xa3"
		 "cmd\xa4"
		 "echo",
		 13, "unsupported protocol version: this sonded speaks v=1"},
		{"v string",
		 "\x82\xa1v\xa1"
		 "1\xa3"
		 "cmd\xa4"
		 "echo",
		 14, "unsupported protocol version: this sonded speaks v=1"},
		{"no cmd", "\x81\xa1v\x01", 4, "malformed request: no \"cmd\" string"},
		{"cmd int",
		 "\x82\xa1v\x01\xa3"
		 "cmd\x05",
		 9, "malformed request: no \"cmd\" string"},
		{"cmd with NUL",
		 "\x82\xa1v\x01\xa3"
		 "cmd\xa3"
		 "a\0b",
		 12, "malformed request: \"cmd\" is not a command name"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct call c = {0};

		memcpy(c.req, cases[i].bytes, cases[i].len);
		c.req_len = cases[i].len;
		call_start(&c, s);
		call_wait(&c);
		print_message("%s\n", cases[i].what);
		assert_envelope(&c, false, 3);
		assert_str_field(&c, "error", cases[i].error);
		call_free(&c);
	}
	assert_int_equal(atomic_load(&s->handled), 0);

	/* And the slots keep cycling: more requests than slots still work. */
	for (int i = 0; i < SONDE_CONTROL_SLOTS + 4; i++) {
		struct call c = {0};

		set_request(&c, "echo", -1);
		call_start(&c, s);
		call_wait(&c);
		assert_envelope(&c, true, 4);
		call_free(&c);
	}
	wait_for(&s->handled, SONDE_CONTROL_SLOTS + 4); /* counted after answering */
}

static void test_socket_file_modes(void **state)
{
	struct server *s = srv_of(state);
	char dir[160];
	struct stat st;

	assert_int_equal(stat(s->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(dir, sizeof(dir), "%s/run", s->dir);
	assert_int_equal(stat(dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0755);
}

static void test_address_in_use(void **state)
{
	struct server *s = srv_of(state);
	struct sonde_control_handlers h = {.ctx = s, .handle = handle};
	char err[256] = "", want[300];
	struct sonde_control *second;

	/* The loop is not thread-safe: take it from its thread first. */
	stop_loop(s);
	second = sonde_control__new(s->loop, s->url, &h, err, sizeof(err));
	assert_null(second);
	assert_int_equal(errno, EADDRINUSE);
	snprintf(want, sizeof(want),
		 "cannot listen on %s: Address in use (is another sonded running?)", s->url);
	assert_string_equal(err, want);
}

static void test_free_answers_outstanding(void **state)
{
	struct server *s = srv_of(state);
	struct call held = {0};
	struct stat st;

	set_request(&held, "hold", -1);
	call_start(&held, s);
	wait_for(&s->held_count, 1);
	stop_loop(s);
	sonde_control__free(s->control);
	s->control = NULL;
	call_wait(&held);
	assert_envelope(&held, false, 3);
	assert_str_field(&held, "error", "sonded is stopping");
	/* The socket file goes with the listener. */
	assert_int_equal(stat(s->path, &st), -1);
	call_free(&held);
}

/* A socket file left by a daemon that died does not block the next start. */
static void test_stale_socket_file(void **state)
{
	struct sonde_control_handlers h = {.handle = handle};
	struct server *s = srv_of(state);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char path[100], url[128], err[256] = "";
	struct sonde_control *c;
	int fd;

	snprintf(path, sizeof(path), "%s/stale.ipc", s->dir);
	snprintf(url, sizeof(url), "ipc://%s", path);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);

	stop_loop(s);
	h.ctx = s;
	c = sonde_control__new(s->loop, url, &h, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	sonde_control__free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_answer_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fail_and_args, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_outstanding, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fill_error_keeps_request_open, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_socket_file_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_address_in_use, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_answers_outstanding, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_socket_file, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
