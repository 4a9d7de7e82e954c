// SPDX-License-Identifier: MIT
/*
 * Both directions walk the value recursively; recursion is bounded by
 * SONDE_LUA_MSGPACK_MAX_DEPTH, which is also msgpack-c's own unpack limit
 * (MSGPACK_EMBED_STACK_SIZE), so whatever we pack a subscriber using
 * msgpack-c can unpack. Errors restore the Lua stack with lua_settop() so no
 * path through here leaks stack slots.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_msgpack.h"

/* Long enough for any error worth reading; longer paths are cut with "...". */
#define PATH_MAX_LEN 256
/* A key longer than this is shown cut, so one huge key cannot hide the rest. */
#define KEY_SHOWN_MAX 64

struct path {
	char buf[PATH_MAX_LEN];
	size_t len;
};

struct conv {
	lua_State *L;
	char *err;
	size_t errlen;
	struct path path;
	int depth;
	const void *seen[SONDE_LUA_MSGPACK_MAX_DEPTH]; /* tables on the current path */
};

static void path_raw(struct path *p, const char *s, size_t n)
{
	size_t room = sizeof(p->buf) - 1 - p->len;

	if (n > room) {
		n = room;
		if (room >= 3)
			memcpy(p->buf + sizeof(p->buf) - 4, "...", 3);
	}
	memcpy(p->buf + p->len, s, n);
	p->len += n;
	p->buf[p->len] = '\0';
}

/* Pushes ".key" (or "key" at the top); returns the old length for path_pop. */
static size_t path_push_str(struct path *p, const char *key, size_t n)
{
	size_t old = p->len;
	char shown[KEY_SHOWN_MAX] = "";
	size_t i, m = n < sizeof(shown) ? n : sizeof(shown);

	/* Keys are arbitrary bytes; an error message should stay one readable line. */
	for (i = 0; i < m; i++)
		shown[i] = key[i] >= 0x20 && key[i] < 0x7f ? key[i] : '?';
	if (p->len)
		path_raw(p, ".", 1);
	path_raw(p, shown, m);
	if (m < n)
		path_raw(p, "...", 3);
	return old;
}

static size_t path_push_int(struct path *p, int64_t key)
{
	size_t old = p->len;
	char tmp[32];
	int n = snprintf(tmp, sizeof(tmp), "[%" PRId64 "]", key);

	path_raw(p, tmp, (size_t)n);
	return old;
}

static void path_pop(struct path *p, size_t old)
{
	p->len = old;
	p->buf[old] = '\0';
}

__attribute__((format(printf, 3, 4))) static int fail(struct conv *c, int ret, const char *fmt,
						      ...)
{
	va_list ap;
	int n = 0;

	if (!c->errlen)
		return ret;
	if (c->path.len)
		n = snprintf(c->err, c->errlen, "%s: ", c->path.buf);
	if (n >= 0 && (size_t)n < c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return ret;
}

/* lua_typename, except that a float is called a float: the rules hinge on it. */
static const char *type_name(lua_State *L, int idx)
{
	if (lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx))
		return "float";
	return luaL_typename(L, idx);
}

/* ---- Lua -> msgpack ---- */

static int pack_value(struct conv *c, msgpack_packer *pk, int idx);

/* msgpack-c returns -1 only when the writer (sbuffer realloc, ...) failed. */
static int packed(int rc)
{
	return rc ? -ENOMEM : 0;
}

static int pack_string(msgpack_packer *pk, const char *s, size_t n)
{
	if (n > UINT32_MAX)
		return -E2BIG;
	if (msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n))
		return -ENOMEM;
	return 0;
}

static int pack_table(struct conv *c, msgpack_packer *pk, int idx)
{
	lua_State *L = c->L;
	const void *self = lua_topointer(L, idx);
	lua_Integer max = 0;
	bool sequence = true;
	size_t n = 0, old;
	int i, ret, top;

	if (c->depth >= SONDE_LUA_MSGPACK_MAX_DEPTH)
		return fail(c, -E2BIG, "tables nested deeper than %d", SONDE_LUA_MSGPACK_MAX_DEPTH);
	for (i = 0; i < c->depth; i++)
		if (c->seen[i] == self)
			return fail(c, -ELOOP, "table contains itself");
	if (!lua_checkstack(L, 4))
		return fail(c, -ENOMEM, "Lua stack exhausted");

	/*
	 * First pass: count the keys, decide array or map, and reject bad keys
	 * before anything of this table is written.
	 */
	top = lua_gettop(L);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		n++;
		if (lua_isinteger(L, -2)) {
			lua_Integer k = lua_tointeger(L, -2);

			if (k < 1)
				sequence = false;
			else if (k > max)
				max = k;
		} else {
			sequence = false;
			if (lua_type(L, -2) != LUA_TSTRING) {
				ret = fail(c, -EINVAL, "map key must be a string or integer, not a %s",
					   type_name(L, -2));
				lua_settop(L, top);
				return ret;
			}
		}
		lua_pop(L, 1);
	}
	if (n > UINT32_MAX)
		return fail(c, -E2BIG, "table has more than 2^32-1 entries");

	c->seen[c->depth++] = self;
	ret = 0;
	/* Keys all integers >= 1, as many as the largest: exactly 1..n. */
	if (sequence && n > 0 && (lua_Unsigned)max == n) {
		if (msgpack_pack_array(pk, n)) {
			ret = -ENOMEM;
			goto cleanup;
		}
		for (i = 1; (size_t)i <= n; i++) {
			lua_rawgeti(L, idx, i);
			old = path_push_int(&c->path, i);
			ret = pack_value(c, pk, lua_gettop(L));
			path_pop(&c->path, old);
			lua_settop(L, top);
			if (ret)
				goto cleanup;
		}
		goto cleanup;
	}

	if (msgpack_pack_map(pk, n)) {
		ret = -ENOMEM;
		goto cleanup;
	}
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_isinteger(L, -2)) {
			lua_Integer k = lua_tointeger(L, -2);

			ret = packed(msgpack_pack_int64(pk, k));
			old = path_push_int(&c->path, k);
		} else {
			size_t len;
			/* A string key (checked above), so lua_tolstring converts nothing. */
			const char *s = lua_tolstring(L, -2, &len);

			ret = pack_string(pk, s, len);
			old = path_push_str(&c->path, s, len);
		}
		if (!ret)
			ret = pack_value(c, pk, lua_gettop(L));
		else if (ret == -E2BIG)
			fail(c, ret, "key longer than 2^32-1 bytes");
		path_pop(&c->path, old);
		lua_pop(L, 1);
		if (ret)
			break;
	}
cleanup:
	c->depth--;
	lua_settop(L, top);
	return ret;
}

static int pack_value(struct conv *c, msgpack_packer *pk, int idx)
{
	lua_State *L = c->L;
	const char *s;
	size_t len;
	int ret;

	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return packed(msgpack_pack_nil(pk));
	case LUA_TBOOLEAN:
		return packed(lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			return packed(msgpack_pack_int64(pk, lua_tointeger(L, idx)));
		return packed(msgpack_pack_double(pk, lua_tonumber(L, idx)));
	case LUA_TSTRING:
		s = lua_tolstring(L, idx, &len);
		ret = pack_string(pk, s, len);
		if (ret == -E2BIG)
			return fail(c, ret, "string longer than 2^32-1 bytes");
		return ret;
	case LUA_TTABLE:
		return pack_table(c, pk, idx);
	default:
		return fail(c, -EINVAL, "cannot send a %s", type_name(L, idx));
	}
}

int sonde_lua_to_msgpack(lua_State *L, int index, msgpack_packer *pk, char *err, size_t errlen)
{
	struct conv c = {.L = L, .err = err, .errlen = errlen};
	int ret;

	if (errlen)
		err[0] = '\0';
	ret = pack_value(&c, pk, lua_absindex(L, index));
	/* The only failure that does not format its own message. */
	if (ret == -ENOMEM && errlen && !err[0])
		fail(&c, ret, "out of memory while packing");
	return ret;
}

/* ---- msgpack -> Lua ---- */

static int push_object(struct conv *c, const msgpack_object *o);

/* Pushes a map key; only the keys Lua -> msgpack can produce are accepted. */
static int push_key(struct conv *c, const msgpack_object *k, size_t *old)
{
	lua_State *L = c->L;

	switch (k->type) {
	case MSGPACK_OBJECT_STR:
		lua_pushlstring(L, k->via.str.ptr, k->via.str.size);
		*old = path_push_str(&c->path, k->via.str.ptr, k->via.str.size);
		return 0;
	case MSGPACK_OBJECT_BIN:
		lua_pushlstring(L, k->via.bin.ptr, k->via.bin.size);
		*old = path_push_str(&c->path, k->via.bin.ptr, k->via.bin.size);
		return 0;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (k->via.u64 > INT64_MAX)
			return fail(c, -EINVAL, "map key %" PRIu64 " does not fit a Lua integer",
				    k->via.u64);
		lua_pushinteger(L, (lua_Integer)k->via.u64);
		*old = path_push_int(&c->path, (int64_t)k->via.u64);
		return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		lua_pushinteger(L, k->via.i64);
		*old = path_push_int(&c->path, k->via.i64);
		return 0;
	case MSGPACK_OBJECT_NIL:
		return fail(c, -EINVAL, "map key must be a string or integer, not nil");
	case MSGPACK_OBJECT_BOOLEAN:
		return fail(c, -EINVAL, "map key must be a string or integer, not a boolean");
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return fail(c, -EINVAL, "map key must be a string or integer, not a float");
	case MSGPACK_OBJECT_ARRAY:
		return fail(c, -EINVAL, "map key must be a string or integer, not an array");
	case MSGPACK_OBJECT_MAP:
		return fail(c, -EINVAL, "map key must be a string or integer, not a map");
	case MSGPACK_OBJECT_EXT:
		return fail(c, -EINVAL, "map key must be a string or integer, not an ext");
	}
	return fail(c, -EINVAL, "unknown msgpack type %d", (int)k->type);
}

static int push_container(struct conv *c, const msgpack_object *o)
{
	lua_State *L = c->L;
	int top = lua_gettop(L), ret = 0;
	size_t old = 0;
	uint32_t i, n;

	if (c->depth >= SONDE_LUA_MSGPACK_MAX_DEPTH)
		return fail(c, -E2BIG, "containers nested deeper than %d",
			    SONDE_LUA_MSGPACK_MAX_DEPTH);
	if (!lua_checkstack(L, 4))
		return fail(c, -ENOMEM, "Lua stack exhausted");
	c->depth++;

	/* The size is only a hint; an int cast of a 2^31+ count must not go negative. */
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		n = o->via.array.size;
		lua_createtable(L, n > 1u << 16 ? 1 << 16 : (int)n, 0);
		for (i = 0; i < n; i++) {
			old = path_push_int(&c->path, (int64_t)i + 1);
			ret = push_object(c, &o->via.array.ptr[i]);
			path_pop(&c->path, old);
			if (ret)
				goto cleanup;
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
	} else {
		n = o->via.map.size;
		lua_createtable(L, 0, n > 1u << 16 ? 1 << 16 : (int)n);
		for (i = 0; i < n; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];

			ret = push_key(c, &kv->key, &old);
			if (ret)
				goto cleanup;
			ret = push_object(c, &kv->val);
			path_pop(&c->path, old);
			if (ret)
				goto cleanup;
			lua_rawset(L, -3);
		}
	}
cleanup:
	c->depth--;
	if (ret)
		lua_settop(L, top);
	return ret;
}

static int push_object(struct conv *c, const msgpack_object *o)
{
	lua_State *L = c->L;

	if (!lua_checkstack(L, 1))
		return fail(c, -ENOMEM, "Lua stack exhausted");
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		lua_pushnil(L);
		return 0;
	case MSGPACK_OBJECT_BOOLEAN:
		lua_pushboolean(L, o->via.boolean);
		return 0;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > INT64_MAX)
			lua_pushnumber(L, (lua_Number)o->via.u64);
		else
			lua_pushinteger(L, (lua_Integer)o->via.u64);
		return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		lua_pushinteger(L, o->via.i64);
		return 0;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		lua_pushnumber(L, o->via.f64);
		return 0;
	case MSGPACK_OBJECT_STR:
		lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
		return 0;
	case MSGPACK_OBJECT_BIN:
		lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
		return 0;
	case MSGPACK_OBJECT_ARRAY:
	case MSGPACK_OBJECT_MAP:
		return push_container(c, o);
	case MSGPACK_OBJECT_EXT:
		return fail(c, -EINVAL, "ext type %d is not supported", (int)o->via.ext.type);
	}
	return fail(c, -EINVAL, "unknown msgpack type %d", (int)o->type);
}

int sonde_msgpack_to_lua(lua_State *L, const msgpack_object *obj, char *err, size_t errlen)
{
	struct conv c = {.L = L, .err = err, .errlen = errlen};

	if (errlen)
		err[0] = '\0';
	return push_object(&c, obj);
}

/* ---- untrusted bytes ---- */

static uint64_t be(const unsigned char *p, size_t n)
{
	uint64_t v = 0;

	while (n--)
		v = v << 8 | *p++;
	return v;
}

/*
 * The size of the item at p[0..left) without its elements: header plus
 * payload bytes in *skip and, for a container, its element count (a map
 * counts keys and values) in *items. False for 0xc1 or a header cut short.
 */
static bool item_size(const unsigned char *p, size_t left, uint64_t *skip, uint64_t *items)
{
	unsigned char b = p[0];
	size_t lenbytes = 0, extra = 0, fixed = 0;

	*items = 0;
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
		*skip = 1;
		return true;
	}
	if (b >= 0x80 && b <= 0x8f) {
		*skip = 1;
		*items = 2ULL * (b & 0x0f);
		return true;
	}
	if (b >= 0x90 && b <= 0x9f) {
		*skip = 1;
		*items = b & 0x0f;
		return true;
	}
	if (b >= 0xa0 && b <= 0xbf) {
		*skip = 1 + (uint64_t)(b & 0x1f);
		return true;
	}
	switch (b) {
	case 0xc4: case 0xd9: lenbytes = 1; break; /* bin8, str8 */
	case 0xc5: case 0xda: lenbytes = 2; break;
	case 0xc6: case 0xdb: lenbytes = 4; break;
	case 0xc7: lenbytes = 1, extra = 1; break; /* ext8: length, then a type byte */
	case 0xc8: lenbytes = 2, extra = 1; break;
	case 0xc9: lenbytes = 4, extra = 1; break;
	case 0xca: fixed = 4; break;
	case 0xcb: fixed = 8; break;
	case 0xcc: case 0xd0: fixed = 1; break;
	case 0xcd: case 0xd1: fixed = 2; break;
	case 0xce: case 0xd2: fixed = 4; break;
	case 0xcf: case 0xd3: fixed = 8; break;
	case 0xd4: fixed = 2; break; /* fixext: type byte and 1..16 bytes */
	case 0xd5: fixed = 3; break;
	case 0xd6: fixed = 5; break;
	case 0xd7: fixed = 9; break;
	case 0xd8: fixed = 17; break;
	case 0xdc: case 0xdd: case 0xde: case 0xdf:
		lenbytes = b == 0xdc || b == 0xde ? 2 : 4;
		if (left < 1 + lenbytes)
			return false;
		*skip = 1 + lenbytes;
		*items = be(p + 1, lenbytes) * (b >= 0xde ? 2 : 1);
		return true;
	default: /* 0xc1, never used */
		return false;
	}
	if (fixed) {
		*skip = 1 + fixed;
		return true;
	}
	if (left < 1 + lenbytes)
		return false;
	*skip = 1 + lenbytes + extra + be(p + 1, lenbytes);
	return true;
}

int sonde_msgpack_unpack(msgpack_unpacked *out, const void *data, size_t len, size_t *used,
			 char *err, size_t errlen)
{
	struct conv c = {.err = err, .errlen = errlen};
	const unsigned char *p = data;
	uint64_t left[SONDE_LUA_MSGPACK_MAX_DEPTH + 1], pending = 1, skip, items, rest;
	size_t pos = 0, off = 0;
	int top = 0;

	if (errlen)
		err[0] = '\0';
	left[0] = 1;
	while (top >= 0) {
		if (!left[top]) {
			top--;
			continue;
		}
		if (pos >= len)
			return fail(&c, -EINVAL, "truncated at offset %zu", pos);
		if (!item_size(p + pos, len - pos, &skip, &items)) {
			if (p[pos] == 0xc1)
				return fail(&c, -EINVAL, "byte 0xc1 at offset %zu is not msgpack", pos);
			return fail(&c, -EINVAL, "truncated at offset %zu", pos);
		}
		if (skip > len - pos)
			return fail(&c, -EINVAL, "truncated at offset %zu", pos);
		left[top]--;
		pending--;
		rest = len - pos - skip;
		/* Every element still owed takes at least a byte of what is left. */
		if (pending > rest)
			return fail(&c, -EINVAL, "truncated at offset %zu", len);
		if (items > rest - pending) {
			bool map = (p[pos] & 0xf0) == 0x80 || p[pos] == 0xde || p[pos] == 0xdf;

			return fail(&c, -EINVAL,
				    "%s at offset %zu declares %" PRIu64 " %s, only %" PRIu64
				    " bytes follow",
				    map ? "map" : "array", pos, map ? items / 2 : items,
				    map ? "entries" : "elements", rest);
		}
		pos += skip;
		if (items) {
			if (top >= SONDE_LUA_MSGPACK_MAX_DEPTH)
				return fail(&c, -E2BIG, "containers nested deeper than %d",
					    SONDE_LUA_MSGPACK_MAX_DEPTH);
			left[++top] = items;
			pending += items;
		}
	}
	switch (msgpack_unpack_next(out, data, len, &off)) {
	case MSGPACK_UNPACK_SUCCESS:
	case MSGPACK_UNPACK_EXTRA_BYTES:
		break;
	case MSGPACK_UNPACK_NOMEM_ERROR:
		return fail(&c, -ENOMEM, "out of memory while unpacking");
	default: /* the walk above accepts nothing msgpack-c refuses */
		return fail(&c, -EINVAL, "msgpack-c refused the document");
	}
	*used = off;
	return 0;
}
