/* SPDX-License-Identifier: MIT */
/*
 * The control socket: an nng req/rep (rep0) listener that sondectl talks to.
 * The wire protocol (versioned msgpack maps) is written down in
 * docs/control.md; this module frames it, validates requests and hands each
 * one to a handler on the loop thread.
 *
 * Threading: sonde_control__new/__free and everything a handler does with a
 * request run on the loop thread. nng's own threads receive and send; they
 * pass requests to the loop through an eventfd, so handlers never run
 * concurrently with anything else on the loop.
 */
#ifndef SONDE_CONTROL_H
#define SONDE_CONTROL_H

#include <stddef.h>

#include <msgpack.h>

#include "loop.h"

/* The protocol version carried as "v" in every request and reply. */
#define SONDE_CONTROL_VERSION	  1
#define SONDE_CONTROL_URL_DEFAULT "ipc:///run/sonde/control.ipc"

struct sonde_control;
/* A request being answered; the handler answers it now or later. */
struct sonde_control_req;

struct sonde_control_handlers {
	void *ctx;
	/*
	 * Called on the loop thread for each well-formed request: cmd is the
	 * request's "cmd" (NUL-terminated), args the whole request map
	 * (type MSGPACK_OBJECT_MAP, "v" and "cmd" included). Both stay valid
	 * until the request is answered. The handler must answer exactly once,
	 * with sonde_control_req__reply() or __fail(), now or later on the
	 * loop thread; req is invalid after that. Unknown commands are the
	 * handler's to refuse (__fail "unknown command ...").
	 */
	void (*handle)(void *ctx, struct sonde_control_req *req, const char *cmd,
		       const msgpack_object *args);
};

/*
 * Listens on url (any nng URL; normally ipc://PATH). For ipc:// the parent
 * directory is created (0755) if missing and the socket file gets mode 0600,
 * so only root talks to sonded. Up to SONDE_CONTROL_SLOTS requests are
 * outstanding at once; more wait in nng until one is answered.
 *
 * Malformed requests are answered {v=1, ok=false, error=...} here, without
 * reaching the handler (exact texts in docs/control.md).
 *
 * h is copied. NULL and errno on failure, with a message in err (may be
 * NULL) such as "cannot listen on ipc:///run/sonde/control.ipc: Address in
 * use".
 */
struct sonde_control *sonde_control__new(struct sonde_loop *loop, const char *url,
					 const struct sonde_control_handlers *h, char *err,
					 size_t errlen);

/*
 * Answers every request the handler still holds with {v=1, ok=false,
 * error="sonded is stopping"}, closes the socket (removing the ipc file) and
 * unregisters from the loop. Call on the loop thread, not from inside a
 * handler. Accepts NULL.
 */
void sonde_control__free(struct sonde_control *c);

#define SONDE_CONTROL_SLOTS 16
/* Room for a request's "cmd" and its NUL: a longer one is refused. */
#define SONDE_CONTROL_CMD_MAX 64

/*
 * Answers req with a map: {v=1, ok=true} followed by what fill adds. fill
 * (may be NULL) packs an even number of objects (key, value, key, value...)
 * with pk and returns how many PAIRS it packed, or a negative errno to give
 * up: then nothing is sent, req stays open (answer it with __fail) and the
 * error is returned. fill must not pack "v" or "ok".
 *
 * 0 or -errno (-ENOMEM, or what fill returned). If the client went away
 * meanwhile the reply is silently dropped and 0 returned.
 */
int sonde_control_req__reply(struct sonde_control_req *req,
			     int (*fill)(void *ctx, msgpack_packer *pk), void *ctx);

/* Answers req with {v=1, ok=false, error=<formatted text>}. 0 or -errno. */
__attribute__((format(printf, 2, 3))) int sonde_control_req__fail(struct sonde_control_req *req,
								  const char *fmt, ...);

/*
 * The value of the string key `key` in map (first match), or NULL if map is
 * not a map or has no such key. For handlers reading their arguments.
 */
const msgpack_object *sonde_control__arg(const msgpack_object *map, const char *key);

/*
 * The listener's check of one request body data[0..len), before a handler
 * sees it; public for the fuzzer and tests. unp is the caller's
 * (msgpack_unpacked_init before, msgpack_unpacked_destroy after, whatever
 * the result); on success unp->data is the request map, which may point
 * into data, and cmd holds its "cmd". Returns NULL when the request goes to
 * the handler, else the static error text it is answered with (the table
 * in docs/control.md).
 */
const char *sonde_control__check_request(const void *data, size_t len, msgpack_unpacked *unp,
					 char cmd[SONDE_CONTROL_CMD_MAX]);

/* Packs a NUL-terminated string as a msgpack str: for fill callbacks. */
void sonde_control__pack_str(msgpack_packer *pk, const char *s);

#endif /* SONDE_CONTROL_H */
