// SPDX-License-Identifier: MIT
/*
 * msgpack bytes -> msgpack_object (sonde_msgpack_unpack) -> Lua -> msgpack ->
 * Lua -> msgpack.
 *
 * The first conversion may refuse (ext, odd keys) and may change the value
 * in documented ways (bin becomes str, nil map values vanish, {} and [] meet,
 * a map with keys 1..n becomes an array). After one round trip the value is
 * in the form Lua gives it, so a second round trip must give the same
 * document again, up to map order: that, and no crash, leak or sanitizer
 * report, is what this target checks. Anything converted from msgpack must
 * also be convertible back, since Lua -> msgpack accepts every key and value
 * msgpack -> Lua produces.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_msgpack.h"
#include "fuzz.h"

static bool same(const msgpack_object *a, const msgpack_object *b);

static bool same_map(const msgpack_object *a, const msgpack_object *b)
{
	uint32_t i, j;

	if (a->via.map.size != b->via.map.size)
		return false;
	for (i = 0; i < a->via.map.size; i++) {
		const msgpack_object_kv *kv = &a->via.map.ptr[i];

		for (j = 0; j < b->via.map.size; j++)
			if (same(&kv->key, &b->via.map.ptr[j].key))
				break;
		if (j == b->via.map.size || !same(&kv->val, &b->via.map.ptr[j].val))
			return false;
	}
	return true;
}

/* Equal as documents: map order ignored, floats compared bit for bit (NaN, -0.0). */
static bool same(const msgpack_object *a, const msgpack_object *b)
{
	uint32_t i;

	if (a->type != b->type)
		return false;
	switch (a->type) {
	case MSGPACK_OBJECT_NIL:
		return true;
	case MSGPACK_OBJECT_BOOLEAN:
		return a->via.boolean == b->via.boolean;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return a->via.u64 == b->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return a->via.i64 == b->via.i64;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return !memcmp(&a->via.f64, &b->via.f64, sizeof(double));
	case MSGPACK_OBJECT_STR:
		/* An empty str may come with a NULL pointer, which memcmp must not see. */
		return a->via.str.size == b->via.str.size &&
		       (!a->via.str.size || !memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size));
	case MSGPACK_OBJECT_ARRAY:
		if (a->via.array.size != b->via.array.size)
			return false;
		for (i = 0; i < a->via.array.size; i++)
			if (!same(&a->via.array.ptr[i], &b->via.array.ptr[i]))
				return false;
		return true;
	case MSGPACK_OBJECT_MAP:
		return same_map(a, b);
	default:
		return false; /* Lua never makes bin or ext */
	}
}

/* Packs the value on top of L into sb and unpacks it into u; both must succeed. */
static void pack_unpack(lua_State *L, msgpack_sbuffer *sb, msgpack_unpacked *u)
{
	msgpack_packer pk;
	char err[256];
	size_t off = 0;
	int top = lua_gettop(L);

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	if (sonde_lua_to_msgpack(L, -1, &pk, err, sizeof(err))) {
		fprintf(stderr, "Lua -> msgpack refused what msgpack -> Lua made: %s\n", err);
		abort();
	}
	CHECK(lua_gettop(L) == top);
	if (sonde_msgpack_unpack(u, sb->data, sb->size, &off, err, sizeof(err))) {
		fprintf(stderr, "sonde_msgpack_unpack refused what Lua -> msgpack made: %s\n", err);
		abort();
	}
	CHECK(off == sb->size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static lua_State *L;
	msgpack_unpacked u1, u2, u3;
	msgpack_sbuffer b2, b3;
	char err[256];
	size_t off = 0;
	int ret;

	if (!L) {
		L = luaL_newstate();
		CHECK(L);
	}
	lua_settop(L, 0);
	msgpack_unpacked_init(&u1);
	msgpack_unpacked_init(&u2);
	msgpack_unpacked_init(&u3);
	msgpack_sbuffer_init(&b2);
	msgpack_sbuffer_init(&b3);

	/* The guarded unpack: msgpack_unpack_next() alone allocates what the bytes declare. */
	ret = sonde_msgpack_unpack(&u1, data, size, &off, err, sizeof(err));
	if (ret) {
		CHECK(err[0] != '\0');
		goto cleanup;
	}
	CHECK(off <= size);
	ret = sonde_msgpack_to_lua(L, &u1.data, err, sizeof(err));
	if (ret) {
		/* Refused: nothing pushed, and a reason given. */
		CHECK(lua_gettop(L) == 0);
		CHECK(err[0] != '\0');
		goto cleanup;
	}
	CHECK(lua_gettop(L) == 1);

	pack_unpack(L, &b2, &u2);
	ret = sonde_msgpack_to_lua(L, &u2.data, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "msgpack -> Lua refused what Lua -> msgpack made: %s\n", err);
		abort();
	}
	pack_unpack(L, &b3, &u3);
	CHECK(same(&u2.data, &u3.data));
	/* The same value: the same bytes, up to map order, so the same length. */
	CHECK(b2.size == b3.size);

cleanup:
	lua_settop(L, 0);
	msgpack_unpacked_destroy(&u1);
	msgpack_unpacked_destroy(&u2);
	msgpack_unpacked_destroy(&u3);
	msgpack_sbuffer_destroy(&b2);
	msgpack_sbuffer_destroy(&b3);
	return 0;
}
