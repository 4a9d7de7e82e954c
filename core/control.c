// SPDX-License-Identifier: MIT
#include "control.h"
#include "nng_listen.h"
#include "lua_msgpack.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

/*
 * Each slot is one rep0 context with its own aio, cycling through
 * RECV -> QUEUED -> HELD -> SEND -> RECV. nng's threads own a slot while an
 * operation is pending (RECV, SEND); the loop thread owns it while QUEUED or
 * HELD. The state is read and written under the mutex because __free() looks
 * at every slot while nng's threads may still complete receives.
 */
enum slot_state {
	SLOT_IDLE,   /* no operation: not started, or stopped while closing */
	SLOT_RECV,   /* nng_ctx_recv pending */
	SLOT_QUEUED, /* received, waiting for the loop thread */
	SLOT_HELD,   /* given to the handler (or being validated) */
	SLOT_SEND,   /* nng_ctx_send pending */
};

/* Requests are a few hundred bytes; anything this big is not sondectl. */
#define CONTROL_RECVMAXSZ (64 * 1024)

struct sonde_control_req {
	struct sonde_control *c;
	nng_ctx ctx;
	nng_aio *aio;
	enum slot_state state;
	/* The request while QUEUED/HELD: args point into msg (zero-copy unpack). */
	nng_msg *msg;
	msgpack_unpacked unp;
	bool unpacked;
	char cmd[SONDE_CONTROL_CMD_MAX];
	struct sonde_control_req *next; /* queue link */
};

struct sonde_control {
	struct sonde_loop *loop;
	struct sonde_control_handlers h;
	nng_socket sock;
	bool sock_open;
	int efd;
	bool efd_added;
	pthread_mutex_t mtx;
	bool closing;
	struct sonde_control_req *qhead;
	struct sonde_control_req **qtail;
	struct sonde_control_req slots[SONDE_CONTROL_SLOTS];
};

static void wake_loop(struct sonde_control *c)
{
	uint64_t one = 1;
	ssize_t n;

	/* EAGAIN means the counter is already non-zero: the loop will wake. */
	do
		n = write(c->efd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
}

/* Runs on nng's threads. Decides under the mutex, calls nng outside it. */
static void slot_cb(void *arg)
{
	struct sonde_control_req *r = arg;
	struct sonde_control *c = r->c;
	int rv = nng_aio_result(r->aio);
	nng_msg *drop = NULL;
	bool rearm = false, wake = false;

	pthread_mutex_lock(&c->mtx);
	switch (r->state) {
	case SLOT_RECV:
		if (rv != 0) {
			/* Closed or stopped: done. Anything else is one bad peer. */
			if (c->closing || rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				r->state = SLOT_IDLE;
			else
				rearm = true;
			break;
		}
		if (c->closing) {
			drop = nng_aio_get_msg(r->aio);
			r->state = SLOT_IDLE;
			break;
		}
		r->msg = nng_aio_get_msg(r->aio);
		r->state = SLOT_QUEUED;
		r->next = NULL;
		*c->qtail = r;
		c->qtail = &r->next;
		wake = true;
		break;
	case SLOT_SEND:
		/* A failed send leaves the message with us. */
		if (rv != 0)
			drop = nng_aio_get_msg(r->aio);
		if (c->closing) {
			r->state = SLOT_IDLE;
		} else {
			r->state = SLOT_RECV;
			rearm = true;
		}
		break;
	default:
		break;
	}
	pthread_mutex_unlock(&c->mtx);

	if (drop)
		nng_msg_free(drop);
	if (rearm)
		nng_ctx_recv(r->ctx, r->aio);
	if (wake)
		wake_loop(c);
}

static void release_request(struct sonde_control_req *r)
{
	if (r->unpacked) {
		msgpack_unpacked_destroy(&r->unp);
		r->unpacked = false;
	}
	if (r->msg) {
		nng_msg_free(r->msg);
		r->msg = NULL;
	}
	r->cmd[0] = '\0';
}

/* Hands the reply (an nng_msg we own) to nng. Loop thread. */
static int send_reply(struct sonde_control_req *r, nng_msg *reply)
{
	struct sonde_control *c = r->c;

	pthread_mutex_lock(&c->mtx);
	if (r->state != SLOT_HELD) {
		pthread_mutex_unlock(&c->mtx);
		nng_msg_free(reply);
		return -EINVAL;
	}
	r->state = SLOT_SEND;
	pthread_mutex_unlock(&c->mtx);

	release_request(r);
	/* rep0 drops the reply itself when the requester's pipe is gone. */
	nng_aio_set_msg(r->aio, reply);
	nng_ctx_send(r->ctx, r->aio);
	return 0;
}

static int sbuf_write(void *data, const char *buf, size_t len)
{
	return msgpack_sbuffer_write(data, buf, len);
}

/* head = map header + v + ok, then body (count pairs already packed). */
static nng_msg *build_reply(bool ok, size_t extra_pairs, const char *body, size_t body_len)
{
	msgpack_sbuffer head;
	msgpack_packer pk;
	nng_msg *msg = NULL;

	msgpack_sbuffer_init(&head);
	msgpack_packer_init(&pk, &head, sbuf_write);
	if (msgpack_pack_map(&pk, 2 + extra_pairs) || msgpack_pack_str_with_body(&pk, "v", 1) ||
	    msgpack_pack_int(&pk, SONDE_CONTROL_VERSION) ||
	    msgpack_pack_str_with_body(&pk, "ok", 2) ||
	    (ok ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk)))
		goto cleanup;
	if (nng_msg_alloc(&msg, 0))
		goto cleanup;
	if (nng_msg_append(msg, head.data, head.size) ||
	    (body_len && nng_msg_append(msg, body, body_len))) {
		nng_msg_free(msg);
		msg = NULL;
	}
cleanup:
	msgpack_sbuffer_destroy(&head);
	return msg;
}

int sonde_control_req__reply(struct sonde_control_req *req,
			     int (*fill)(void *ctx, msgpack_packer *pk), void *ctx)
{
	msgpack_sbuffer body;
	msgpack_packer pk;
	nng_msg *msg;
	int pairs = 0;

	msgpack_sbuffer_init(&body);
	msgpack_packer_init(&pk, &body, sbuf_write);
	if (fill) {
		pairs = fill(ctx, &pk);
		if (pairs < 0) {
			msgpack_sbuffer_destroy(&body);
			return pairs;
		}
	}
	msg = build_reply(true, (size_t)pairs, body.data, body.size);
	msgpack_sbuffer_destroy(&body);
	if (!msg)
		return -ENOMEM;
	return send_reply(req, msg);
}

static nng_msg *build_error(const char *text)
{
	msgpack_sbuffer body;
	msgpack_packer pk;
	nng_msg *msg = NULL;

	msgpack_sbuffer_init(&body);
	msgpack_packer_init(&pk, &body, sbuf_write);
	if (!msgpack_pack_str_with_body(&pk, "error", 5) &&
	    !msgpack_pack_str_with_body(&pk, text, strlen(text)))
		msg = build_reply(false, 1, body.data, body.size);
	msgpack_sbuffer_destroy(&body);
	return msg;
}

int sonde_control_req__fail(struct sonde_control_req *req, const char *fmt, ...)
{
	char *text = NULL;
	nng_msg *msg;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	msg = build_error(text);
	free(text);
	if (!msg)
		return -ENOMEM;
	return send_reply(req, msg);
}

const msgpack_object *sonde_control__arg(const msgpack_object *map, const char *key)
{
	size_t klen = strlen(key);

	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object_kv *kv = &map->via.map.ptr[i];

		/* msgpack-c gives an empty str a NULL ptr, which memcmp must not see. */
		if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == klen &&
		    (!klen || !memcmp(kv->key.via.str.ptr, key, klen)))
			return &kv->val;
	}
	return NULL;
}

void sonde_control__pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

const char *sonde_control__check_request(const void *data, size_t len, msgpack_unpacked *unp,
					 char cmd[SONDE_CONTROL_CMD_MAX])
{
	const msgpack_object *v, *c;
	size_t off = 0;
	char why[128];
	int ret;

	cmd[0] = '\0';
	/* the guarded unpack: a request cannot make msgpack-c reserve gigabytes */
	ret = sonde_msgpack_unpack(unp, data, len, &off, why, sizeof(why));
	if (ret != 0 || off != len)
		return "malformed request: not one msgpack object";
	if (unp->data.type != MSGPACK_OBJECT_MAP)
		return "malformed request: not a msgpack map";
	v = sonde_control__arg(&unp->data, "v");
	if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 != SONDE_CONTROL_VERSION)
		return "unsupported protocol version: this sonded speaks v=1";
	c = sonde_control__arg(&unp->data, "cmd");
	if (!c || c->type != MSGPACK_OBJECT_STR || c->via.str.size == 0)
		return "malformed request: no \"cmd\" string";
	if (c->via.str.size >= SONDE_CONTROL_CMD_MAX ||
	    memchr(c->via.str.ptr, '\0', c->via.str.size))
		return "malformed request: \"cmd\" is not a command name";
	memcpy(cmd, c->via.str.ptr, c->via.str.size);
	cmd[c->via.str.size] = '\0';
	return NULL;
}

/* NULL if the handler may have r, else the error text to answer. */
static const char *validate(struct sonde_control_req *r)
{
	msgpack_unpacked_init(&r->unp);
	r->unpacked = true;
	return sonde_control__check_request(nng_msg_body(r->msg), nng_msg_len(r->msg), &r->unp,
					    r->cmd);
}

static void on_wake(void *ctx, int fd, uint32_t revents)
{
	struct sonde_control *c = ctx;
	struct sonde_control_req *r, *next;
	uint64_t count;
	ssize_t n;

	do
		n = read(fd, &count, sizeof(count));
	while (n < 0 && errno == EINTR);

	pthread_mutex_lock(&c->mtx);
	r = c->qhead;
	c->qhead = NULL;
	c->qtail = &c->qhead;
	for (struct sonde_control_req *it = r; it; it = it->next)
		it->state = SLOT_HELD;
	pthread_mutex_unlock(&c->mtx);

	for (; r; r = next) {
		const char *bad;

		/* __free() cannot run meanwhile: it runs on this thread too. */
		next = r->next;
		r->next = NULL;
		bad = validate(r);
		if (bad) {
			nng_msg *msg = build_error(bad);

			if (msg) {
				send_reply(r, msg);
				continue;
			}
			/* Out of memory: no answer (the client times out), but the
			   slot must keep cycling. */
			release_request(r);
			pthread_mutex_lock(&c->mtx);
			r->state = SLOT_RECV;
			pthread_mutex_unlock(&c->mtx);
			nng_ctx_recv(r->ctx, r->aio);
			continue;
		}
		c->h.handle(c->h.ctx, r, r->cmd, &r->unp.data);
	}
}

struct sonde_control *sonde_control__new(struct sonde_loop *loop, const char *url,
					 const struct sonde_control_handlers *h, char *err,
					 size_t errlen)
{
	char dummy[1];
	struct sonde_control *c = NULL;
	int rv, e = 0;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	if (!loop || !url || !h || !h->handle) {
		snprintf(err, errlen, "invalid arguments");
		errno = EINVAL;
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->loop = loop;
	c->h = *h;
	c->efd = -1;
	c->qtail = &c->qhead;
	pthread_mutex_init(&c->mtx, NULL);
	for (int i = 0; i < SONDE_CONTROL_SLOTS; i++)
		c->slots[i].c = c;

	c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->efd < 0) {
		e = errno;
		snprintf(err, errlen, "eventfd: %s", strerror(e));
		goto cleanup;
	}
	rv = sonde_loop__add_fd(loop, c->efd, EPOLLIN, on_wake, c);
	if (rv) {
		e = -rv;
		snprintf(err, errlen, "cannot watch the control eventfd: %s", strerror(e));
		goto cleanup;
	}
	c->efd_added = true;

	rv = nng_rep0_open(&c->sock);
	if (rv) {
		e = sonde_nng_errno(rv);
		snprintf(err, errlen, "cannot open the control socket: %s", nng_strerror(rv));
		goto cleanup;
	}
	c->sock_open = true;
	nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, CONTROL_RECVMAXSZ);

	rv = sonde_nng_listen(c->sock, url, NULL, err, errlen);
	if (rv) {
		e = -rv;
		goto cleanup;
	}

	for (int i = 0; i < SONDE_CONTROL_SLOTS; i++) {
		struct sonde_control_req *r = &c->slots[i];

		rv = nng_aio_alloc(&r->aio, slot_cb, r);
		if (!rv) {
			rv = nng_ctx_open(&r->ctx, c->sock);
			if (rv) {
				nng_aio_free(r->aio);
				r->aio = NULL;
			}
		}
		if (rv) {
			e = sonde_nng_errno(rv);
			snprintf(err, errlen, "cannot set up the control socket: %s",
				 nng_strerror(rv));
			goto cleanup;
		}
		pthread_mutex_lock(&c->mtx);
		r->state = SLOT_RECV;
		pthread_mutex_unlock(&c->mtx);
		nng_ctx_recv(r->ctx, r->aio);
	}
	return c;

cleanup:
	sonde_control__free(c);
	errno = e ? e : EIO;
	return NULL;
}

void sonde_control__free(struct sonde_control *c)
{
	struct sonde_control_req *held[SONDE_CONTROL_SLOTS];
	int nheld = 0;

	if (!c)
		return;

	/*
	 * From here on completed receives are dropped, not queued, so the set
	 * of requests we hold can only shrink while we answer them.
	 */
	pthread_mutex_lock(&c->mtx);
	c->closing = true;
	for (int i = 0; i < SONDE_CONTROL_SLOTS; i++) {
		struct sonde_control_req *r = &c->slots[i];

		if (r->state == SLOT_QUEUED || r->state == SLOT_HELD) {
			r->state = SLOT_HELD;
			held[nheld++] = r;
		}
	}
	c->qhead = NULL;
	c->qtail = &c->qhead;
	pthread_mutex_unlock(&c->mtx);

	/* The send puts the reply on the wire before the socket goes away. */
	for (int i = 0; i < nheld; i++) {
		nng_msg *msg = build_error("sonded is stopping");

		if (msg && send_reply(held[i], msg) == 0)
			nng_aio_wait(held[i]->aio);
		release_request(held[i]);
	}

	if (c->efd_added)
		sonde_loop__del_fd(c->loop, c->efd);
	if (c->sock_open)
		nng_close(c->sock);
	for (int i = 0; i < SONDE_CONTROL_SLOTS; i++) {
		struct sonde_control_req *r = &c->slots[i];

		/* Stops the aio and waits for its callback to be done. */
		if (r->aio)
			nng_aio_free(r->aio);
		release_request(r);
	}
	if (c->efd >= 0)
		close(c->efd);
	pthread_mutex_destroy(&c->mtx);
	free(c);
}
