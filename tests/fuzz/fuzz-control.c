// SPDX-License-Identifier: MIT
/*
 * The control socket's request check (sonde_control__check_request, what
 * the listener runs on every nng message before a handler sees it) on
 * arbitrary bytes, followed by a handler that only reads its arguments the
 * way sonded's does (sonde_control__arg and the types of docs/control.md).
 * A request is refused with one of the documented texts or reaches the
 * handler as a map with v=1 and a usable cmd; never a crash, a leak or a
 * read past the message.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "fuzz.h"

/* docs/control.md, "Malformed requests". */
static const char *const refusals[] = {
	"malformed request: not one msgpack object",
	"malformed request: not a msgpack map",
	"unsupported protocol version: this sonded speaks v=1",
	"malformed request: no \"cmd\" string",
	"malformed request: \"cmd\" is not a command name",
};

static bool is_str(const msgpack_object *o, const char *s)
{
	size_t len = strlen(s);

	return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == len &&
	       !memcmp(o->via.str.ptr, s, len);
}

/* An integer argument in [lo, hi]: 0 absent, 1 good, -1 bad. */
static int arg_int(const msgpack_object *args, const char *key, int64_t lo, int64_t hi)
{
	const msgpack_object *o = sonde_control__arg(args, key);
	int64_t v;

	if (!o)
		return 0;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX)
		v = (int64_t)o->via.u64;
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		v = o->via.i64;
	else
		return -1;
	return v >= lo && v <= hi ? 1 : -1;
}

/* The profile command's argument rules; true when they hold. */
static bool profile_args_ok(const msgpack_object *args)
{
	const msgpack_object *fmt = sonde_control__arg(args, "format");
	const msgpack_object *comm = sonde_control__arg(args, "comm");
	int seconds = arg_int(args, "seconds", 1, 3600);
	int since = arg_int(args, "since", 0, INT64_MAX / 1000000000LL);
	int until = arg_int(args, "until", 0, INT64_MAX / 1000000000LL);
	int pid = arg_int(args, "pid", 1, UINT32_MAX);
	char comm_buf[16];

	if (seconds < 0 || since < 0 || until < 0 || pid < 0)
		return false;
	if (fmt && !is_str(fmt, "pprof") && !is_str(fmt, "folded"))
		return false;
	if (comm) {
		if (comm->type != MSGPACK_OBJECT_STR || comm->via.str.size >= sizeof(comm_buf))
			return false;
		memcpy(comm_buf, comm->via.str.ptr, comm->via.str.size);
		comm_buf[comm->via.str.size] = '\0';
	}
	return (seconds == 1) != (since == 1 || until == 1) && since == until;
}

/* Every string key finds its first occurrence through sonde_control__arg. */
static void check_keys(const msgpack_object *map)
{
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object_kv *kv = &map->via.map.ptr[i];
		const msgpack_object *found;
		char *key;

		/* An empty str may come with a NULL pointer: no mem* call on it. */
		if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size > 256 ||
		    (kv->key.via.str.size &&
		     memchr(kv->key.via.str.ptr, '\0', kv->key.via.str.size)))
			continue;
		key = kv->key.via.str.size ? strndup(kv->key.via.str.ptr, kv->key.via.str.size)
					   : strdup("");
		CHECK(key);
		found = sonde_control__arg(map, key);
		CHECK(found);
		CHECK(found >= &map->via.map.ptr[0].val && found <= &kv->val);
		free(key);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char cmd[SONDE_CONTROL_CMD_MAX];
	const msgpack_object *v, *c;
	msgpack_unpacked unp;
	const char *bad;
	size_t i;

	msgpack_unpacked_init(&unp);
	bad = sonde_control__check_request(data, size, &unp, cmd);
	if (bad) {
		for (i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
			if (bad == refusals[i] || !strcmp(bad, refusals[i]))
				break;
		CHECK(i < sizeof(refusals) / sizeof(refusals[0]));
	} else {
		CHECK(unp.data.type == MSGPACK_OBJECT_MAP);
		v = sonde_control__arg(&unp.data, "v");
		CHECK(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		      v->via.u64 == SONDE_CONTROL_VERSION);
		c = sonde_control__arg(&unp.data, "cmd");
		CHECK(c && c->type == MSGPACK_OBJECT_STR);
		CHECK(strlen(cmd) == c->via.str.size && c->via.str.size > 0 &&
		      c->via.str.size < SONDE_CONTROL_CMD_MAX);
		CHECK(!memcmp(cmd, c->via.str.ptr, c->via.str.size));
		check_keys(&unp.data);
		if (!strcmp(cmd, "profile"))
			(void)profile_args_ok(&unp.data);
	}
	msgpack_unpacked_destroy(&unp);
	return 0;
}
