// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_msgpack.h"

/* Deep equality that tells 1 from 1.0 and 0.0 from -0.0, and NaN equals NaN. */
static const char deq_lua[] =
	"function deq(a, b)\n"
	"  if type(a) ~= type(b) then return false end\n"
	"  if type(a) == 'number' then\n"
	"    if math.type(a) ~= math.type(b) then return false end\n"
	"    if a ~= a then return b ~= b end\n"
	"    if a == 0 and math.type(a) == 'float' then return 1/a == 1/b end\n"
	"    return a == b\n"
	"  end\n"
	"  if type(a) ~= 'table' then return a == b end\n"
	"  for k, v in pairs(a) do if not deq(v, b[k]) then return false end end\n"
	"  for k in pairs(b) do if rawget(a, k) == nil then return false end end\n"
	"  return true\n"
	"end\n";

static int setup(void **state)
{
	lua_State *L = luaL_newstate();

	if (!L)
		return -1;
	luaL_openlibs(L);
	if (luaL_dostring(L, deq_lua))
		return -1;
	*state = L;
	return 0;
}

static int teardown(void **state)
{
	lua_close(*state);
	return 0;
}

/* Pushes the value of a Lua expression. */
static void push_expr(lua_State *L, const char *expr)
{
	char chunk[4096];

	snprintf(chunk, sizeof(chunk), "return %s", expr);
	if (luaL_loadstring(L, chunk) || lua_pcall(L, 0, 1, 0))
		fail_msg("%s: %s", expr, lua_tostring(L, -1));
}

/* Packs the expression's value; returns the converter's result, bytes in sb. */
static int pack_expr(lua_State *L, const char *expr, msgpack_sbuffer *sb, char *err,
		     size_t errlen)
{
	msgpack_packer pk;
	int top, ret;

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	push_expr(L, expr);
	top = lua_gettop(L);
	ret = sonde_lua_to_msgpack(L, -1, &pk, err, errlen);
	assert_int_equal(lua_gettop(L), top); /* the stack is left as it was */
	lua_pop(L, 1);
	return ret;
}

static void expect_bytes(lua_State *L, const char *expr, const void *want, size_t len)
{
	msgpack_sbuffer sb;
	char err[256];
	int ret = pack_expr(L, expr, &sb, err, sizeof(err));

	if (ret)
		fail_msg("%s: %d %s", expr, ret, err);
	if (sb.size != len || memcmp(sb.data, want, len)) {
		size_t i;

		for (i = 0; i < sb.size; i++)
			print_message("%02x ", (unsigned char)sb.data[i]);
		fail_msg("%s: %zu bytes, wanted %zu", expr, sb.size, len);
	}
	msgpack_sbuffer_destroy(&sb);
}

#define EXPECT(L, expr, ...)                                                              \
	do {                                                                              \
		static const unsigned char want_[] = {__VA_ARGS__};                       \
		expect_bytes(L, expr, want_, sizeof(want_));                              \
	} while (0)

static void test_integers_smallest_encoding(void **state)
{
	lua_State *L = *state;

	EXPECT(L, "0", 0x00);
	EXPECT(L, "127", 0x7f);
	EXPECT(L, "128", 0xcc, 0x80);
	EXPECT(L, "255", 0xcc, 0xff);
	EXPECT(L, "256", 0xcd, 0x01, 0x00);
	EXPECT(L, "65536", 0xce, 0x00, 0x01, 0x00, 0x00);
	EXPECT(L, "1 << 32", 0xcf, 0, 0, 0, 1, 0, 0, 0, 0);
	EXPECT(L, "math.maxinteger", 0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
	EXPECT(L, "-1", 0xff);
	EXPECT(L, "-32", 0xe0);
	EXPECT(L, "-33", 0xd0, 0xdf);
	EXPECT(L, "-129", 0xd1, 0xff, 0x7f);
	EXPECT(L, "math.mininteger", 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0);
}

static void test_floats_are_float64(void **state)
{
	lua_State *L = *state;

	EXPECT(L, "0.5", 0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0);
	EXPECT(L, "1.0", 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0); /* a float, not the int 1 */
	EXPECT(L, "-0.0", 0xcb, 0x80, 0, 0, 0, 0, 0, 0, 0);
	EXPECT(L, "math.huge", 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0);
}

static void test_scalars_and_strings(void **state)
{
	lua_State *L = *state;

	EXPECT(L, "nil", 0xc0);
	EXPECT(L, "true", 0xc3);
	EXPECT(L, "false", 0xc2);
	EXPECT(L, "''", 0xa0);
	EXPECT(L, "'a\\0b'", 0xa3, 'a', 0, 'b');
	/* Not UTF-8, still str, unchanged. */
	EXPECT(L, "'\\xff\\xfe'", 0xa2, 0xff, 0xfe);
}

static void test_tables_arrays_and_maps(void **state)
{
	lua_State *L = *state;

	EXPECT(L, "{}", 0x80);			     /* empty table: an empty map */
	EXPECT(L, "{1, 2, 3}", 0x93, 1, 2, 3);	     /* keys 1..n: array */
	EXPECT(L, "{[1] = 'a'}", 0x91, 0xa1, 'a');   /* written as a map, still 1..1 */
	EXPECT(L, "{[2] = 7}", 0x81, 0x02, 0x07);    /* a hole: map with an int key */
	EXPECT(L, "{[0] = 7}", 0x81, 0x00, 0x07);    /* 0 is not an array index */
	EXPECT(L, "{[-1] = 7}", 0x81, 0xff, 0x07);
	EXPECT(L, "{x = 1}", 0x81, 0xa1, 'x', 0x01);
	EXPECT(L, "{{}, {{1}}}", 0x92, 0x80, 0x91, 0x91, 0x01);
	/* Metatables are not followed. */
	EXPECT(L, "setmetatable({}, {__index = function() return 1 end})", 0x80);
	/* The same table twice is not a cycle. */
	EXPECT(L, "(function() local s = {1}; return {s, s} end)()", 0x92, 0x91, 1, 0x91, 1);

	/* Mixed keys: a map of 3, checked after decoding (order is unspecified). */
	{
		msgpack_sbuffer sb;
		msgpack_unpacked u;
		char err[128];
		size_t off = 0;
		uint32_t i;
		int seen = 0;

		assert_int_equal(pack_expr(L, "{1, 2, x = 3}", &sb, err, sizeof(err)), 0);
		msgpack_unpacked_init(&u);
		assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off),
				 MSGPACK_UNPACK_SUCCESS);
		assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
		assert_int_equal(u.data.via.map.size, 3);
		for (i = 0; i < 3; i++) {
			const msgpack_object_kv *kv = &u.data.via.map.ptr[i];

			if (kv->key.type == MSGPACK_OBJECT_STR) {
				assert_memory_equal(kv->key.via.str.ptr, "x", 1);
				assert_int_equal(kv->val.via.u64, 3);
				seen |= 4;
			} else {
				assert_int_equal(kv->key.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
				assert_int_equal(kv->val.via.u64, kv->key.via.u64);
				seen |= 1 << (kv->key.via.u64 - 1);
			}
		}
		assert_int_equal(seen, 7);
		msgpack_unpacked_destroy(&u);
		msgpack_sbuffer_destroy(&sb);
	}
}

/* Lua -> msgpack -> Lua gives back an equal value (deq). */
static void round_trip(lua_State *L, const char *expr)
{
	msgpack_sbuffer sb;
	msgpack_unpacked u;
	char err[256];
	size_t off = 0;
	int ret, top = lua_gettop(L);

	ret = pack_expr(L, expr, &sb, err, sizeof(err));
	if (ret)
		fail_msg("%s: %s", expr, err);
	msgpack_unpacked_init(&u);
	assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
	assert_int_equal(off, sb.size);
	lua_getglobal(L, "deq");
	push_expr(L, expr);
	ret = sonde_msgpack_to_lua(L, &u.data, err, sizeof(err));
	if (ret)
		fail_msg("%s: back: %s", expr, err);
	assert_int_equal(lua_pcall(L, 2, 1, 0), 0);
	if (!lua_toboolean(L, -1))
		fail_msg("%s: round trip changed the value", expr);
	lua_settop(L, top);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

static void test_round_trips(void **state)
{
	static const char *const exprs[] = {
		"nil", "true", "false", "0", "1", "-1", "math.maxinteger", "math.mininteger",
		"0.5", "-0.0", "0.0", "1.0", "-1.5e300", "math.huge", "-math.huge", "0/0",
		"2^63", "''", "'a\\0b\\0'", "'\\xff\\xfe\\0'", "string.rep('x', 70000)", "{}",
		"{1, 2.0, 'three', false}", "{a = {b = {c = {1, {2, {3}}}}}}",
		"{[1] = 'a', [3] = 'c'}", "{[-5] = 1, [0] = 2, x = {}}",
		"{[math.mininteger] = 1, [math.maxinteger] = 2}",
		"{['a\\0b'] = 'k with NUL', [''] = 'empty key'}",
		"{labels = {team = 'x', pid = 12}, stacks = {{count = 3, frames = {0, 1}}}}",
	};
	size_t i;

	for (i = 0; i < sizeof(exprs) / sizeof(exprs[0]); i++)
		round_trip(*state, exprs[i]);
}

static void expect_pack_error(lua_State *L, const char *expr, int want_ret, const char *want_err)
{
	msgpack_sbuffer sb;
	char err[256];
	int ret = pack_expr(L, expr, &sb, err, sizeof(err));

	if (ret != want_ret || strcmp(err, want_err))
		fail_msg("%s: got %d \"%s\", wanted %d \"%s\"", expr, ret, err, want_ret,
			 want_err);
	msgpack_sbuffer_destroy(&sb);
}

static void test_lua_errors(void **state)
{
	lua_State *L = *state;
	char expr[512], want[512];
	int i;

	expect_pack_error(L, "{labels = {team = print}}", -EINVAL,
			  "labels.team: cannot send a function");
	expect_pack_error(L, "print", -EINVAL, "cannot send a function");
	expect_pack_error(L, "coroutine.create(print)", -EINVAL, "cannot send a thread");
	expect_pack_error(L, "io.stdout", -EINVAL, "cannot send a userdata");
	expect_pack_error(L, "{1, {2, print}}", -EINVAL, "[2][2]: cannot send a function");
	expect_pack_error(L, "{x = {[7] = {y = print}}}", -EINVAL,
			  "x[7].y: cannot send a function");
	expect_pack_error(L, "{['\\1k'] = print}", -EINVAL, "?k: cannot send a function");
	expect_pack_error(L, "{[true] = 1}", -EINVAL,
			  "map key must be a string or integer, not a boolean");
	expect_pack_error(L, "{x = {[0.5] = 1}}", -EINVAL,
			  "x: map key must be a string or integer, not a float");
	expect_pack_error(L, "{{}, {[{}] = 1}}", -EINVAL,
			  "[2]: map key must be a string or integer, not a table");
	expect_pack_error(L, "{[print] = 1}", -EINVAL,
			  "map key must be a string or integer, not a function");
	expect_pack_error(L, "(function() local t = {}; t.self = t; return t end)()", -ELOOP,
			  "self: table contains itself");
	expect_pack_error(L, "(function() local t = {}; t[1] = {t}; return t end)()", -ELOOP,
			  "[1][1]: table contains itself");

	/* 32 nested tables pass, 33 do not. */
	strcpy(expr, "{a=");
	for (i = 1; i < 32; i++)
		strcat(expr, "{a=");
	strcat(expr, "1");
	for (i = 0; i < 32; i++)
		strcat(expr, "}");
	round_trip(L, expr);
	strcpy(expr, "{a=");
	want[0] = '\0';
	for (i = 1; i < 33; i++) {
		strcat(expr, "{a=");
		strcat(want, i > 1 ? ".a" : "a");
	}
	strcat(expr, "1");
	for (i = 0; i < 33; i++)
		strcat(expr, "}");
	strcat(want, ": tables nested deeper than 32");
	expect_pack_error(L, expr, -E2BIG, want);
}

/* Unpacks one document made by fill() into u. */
static void unpack_one(msgpack_sbuffer *sb, msgpack_unpacked *u)
{
	size_t off = 0;

	msgpack_unpacked_init(u);
	assert_int_equal(msgpack_unpack_next(u, sb->data, sb->size, &off),
			 MSGPACK_UNPACK_SUCCESS);
}

static void pack_s(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Runs the Lua predicate `check` on the converted value. */
static void expect_lua(lua_State *L, const msgpack_object *o, const char *check)
{
	char err[256], chunk[1024];
	int top = lua_gettop(L);

	snprintf(chunk, sizeof(chunk), "local v = ...; return %s", check);
	assert_int_equal(luaL_loadstring(L, chunk), 0);
	if (sonde_msgpack_to_lua(L, o, err, sizeof(err)))
		fail_msg("%s: %s", check, err);
	assert_int_equal(lua_gettop(L), top + 2);
	assert_int_equal(lua_pcall(L, 1, 1, 0), 0);
	if (!lua_toboolean(L, -1))
		fail_msg("not true: %s", check);
	lua_settop(L, top);
}

static void test_msgpack_to_lua(void **state)
{
	lua_State *L = *state;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked u;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 10);
	msgpack_pack_uint64(&pk, UINT64_MAX);	     /* beyond int64: a float */
	msgpack_pack_uint64(&pk, (uint64_t)INT64_MAX); /* still an integer */
	msgpack_pack_int64(&pk, INT64_MIN);
	msgpack_pack_float(&pk, 1.5f);		     /* float32 */
	msgpack_pack_bin_with_body(&pk, "b\0n", 3);  /* bin: a string */
	msgpack_pack_map(&pk, 2);		     /* duplicate keys: the last wins */
	pack_s(&pk, "k");
	msgpack_pack_int(&pk, 1);
	pack_s(&pk, "k");
	msgpack_pack_int(&pk, 2);
	msgpack_pack_map(&pk, 1);		     /* a nil value vanishes */
	pack_s(&pk, "gone");
	msgpack_pack_nil(&pk);
	msgpack_pack_array(&pk, 0);		     /* empty array: empty table */
	msgpack_pack_map(&pk, 1);		     /* bin key: string key */
	msgpack_pack_bin_with_body(&pk, "bk", 2);
	msgpack_pack_true(&pk);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_int(&pk, -3);
	pack_s(&pk, "neg");
	unpack_one(&sb, &u);

	expect_lua(L, &u.data, "#v == 10");
	expect_lua(L, &u.data, "math.type(v[1]) == 'float' and v[1] == 2^64");
	expect_lua(L, &u.data, "math.type(v[2]) == 'integer' and v[2] == math.maxinteger");
	expect_lua(L, &u.data, "v[3] == math.mininteger");
	expect_lua(L, &u.data, "math.type(v[4]) == 'float' and v[4] == 1.5");
	expect_lua(L, &u.data, "v[5] == 'b\\0n'");
	expect_lua(L, &u.data, "v[6].k == 2 and next(v[6], 'k') == nil");
	expect_lua(L, &u.data, "next(v[7]) == nil");
	expect_lua(L, &u.data, "type(v[8]) == 'table' and next(v[8]) == nil");
	expect_lua(L, &u.data, "v[9].bk == true");
	expect_lua(L, &u.data, "v[10][-3] == 'neg'");
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

static void expect_unpack_error(lua_State *L, msgpack_sbuffer *sb, int want_ret,
				const char *want_err)
{
	msgpack_unpacked u;
	char err[256];
	int top = lua_gettop(L), ret;

	unpack_one(sb, &u);
	ret = sonde_msgpack_to_lua(L, &u.data, err, sizeof(err));
	if (ret != want_ret || strcmp(err, want_err))
		fail_msg("got %d \"%s\", wanted %d \"%s\"", ret, err, want_ret, want_err);
	assert_int_equal(lua_gettop(L), top); /* nothing pushed */
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_clear(sb);
}

static void test_msgpack_errors(void **state)
{
	lua_State *L = *state;
	msgpack_object deep[SONDE_LUA_MSGPACK_MAX_DEPTH + 1];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char err[256];
	int i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

	msgpack_pack_map(&pk, 1);
	pack_s(&pk, "a");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_ext_with_body(&pk, "xy", 2, 5);
	expect_unpack_error(L, &sb, -EINVAL, "a[2]: ext type 5 is not supported");

	msgpack_pack_map(&pk, 1);
	msgpack_pack_true(&pk);
	msgpack_pack_int(&pk, 1);
	expect_unpack_error(L, &sb, -EINVAL, "map key must be a string or integer, not a boolean");

	msgpack_pack_map(&pk, 1);
	pack_s(&pk, "m");
	msgpack_pack_map(&pk, 1);
	msgpack_pack_nil(&pk);
	msgpack_pack_int(&pk, 1);
	expect_unpack_error(L, &sb, -EINVAL, "m: map key must be a string or integer, not nil");

	msgpack_pack_map(&pk, 1);
	msgpack_pack_double(&pk, 2.0);
	msgpack_pack_int(&pk, 1);
	expect_unpack_error(L, &sb, -EINVAL, "map key must be a string or integer, not a float");

	msgpack_pack_map(&pk, 1);
	msgpack_pack_array(&pk, 0);
	msgpack_pack_int(&pk, 1);
	expect_unpack_error(L, &sb, -EINVAL, "map key must be a string or integer, not an array");

	msgpack_pack_map(&pk, 1);
	msgpack_pack_uint64(&pk, UINT64_MAX);
	msgpack_pack_int(&pk, 1);
	expect_unpack_error(L, &sb, -EINVAL,
			    "map key 18446744073709551615 does not fit a Lua integer");

	/* 33 nested arrays, built by hand: msgpack-c's unpacker stops at 32 itself. */
	for (i = 0; i <= SONDE_LUA_MSGPACK_MAX_DEPTH; i++) {
		deep[i].type = MSGPACK_OBJECT_ARRAY;
		deep[i].via.array.size = i < SONDE_LUA_MSGPACK_MAX_DEPTH ? 1 : 0;
		deep[i].via.array.ptr = i < SONDE_LUA_MSGPACK_MAX_DEPTH ? &deep[i + 1] : NULL;
	}
	assert_int_equal(sonde_msgpack_to_lua(L, &deep[1], err, sizeof(err)), 0);
	lua_pop(L, 1);
	assert_int_equal(sonde_msgpack_to_lua(L, &deep[0], err, sizeof(err)), -E2BIG);
	assert_string_equal(err, "[1][1][1][1][1][1][1][1][1][1][1][1][1][1][1][1][1][1][1][1]"
				 "[1][1][1][1][1][1][1][1][1][1][1][1]: containers nested deeper "
				 "than 32");
	msgpack_sbuffer_destroy(&sb);
}

/* msgpack -> Lua -> msgpack is the identity on documents in the canonical form. */
static void test_msgpack_round_trip_bytes(void **state)
{
	static const unsigned char doc[] = {
		0x81, 0xa6, 's', 't', 'a', 'c', 'k', 's',	  /* {"stacks": */
		0x92,						  /* [ */
		0x81, 0xa5, 'c', 'o', 'u', 'n', 't', 0xcd, 0x01, 0x00, /* {"count": 256}, */
		0x93, 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0,		  /* [INT64_MIN, */
		0xcb, 0x80, 0, 0, 0, 0, 0, 0, 0,		  /* -0.0, */
		0xa3, 'a', 0, 'b',				  /* "a\0b"]]} */
	};
	lua_State *L = *state;
	msgpack_unpacked u;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char err[256];
	size_t off = 0;

	msgpack_unpacked_init(&u);
	assert_int_equal(msgpack_unpack_next(&u, (const char *)doc, sizeof(doc), &off),
			 MSGPACK_UNPACK_SUCCESS);
	assert_int_equal(sonde_msgpack_to_lua(L, &u.data, err, sizeof(err)), 0);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	assert_int_equal(sonde_lua_to_msgpack(L, -1, &pk, err, sizeof(err)), 0);
	assert_int_equal(sb.size, sizeof(doc));
	assert_memory_equal(sb.data, doc, sizeof(doc));
	lua_pop(L, 1);
	msgpack_sbuffer_destroy(&sb);
	msgpack_unpacked_destroy(&u);
}

static void expect_guard(const void *data, size_t len, int want_ret, const char *want_err)
{
	msgpack_unpacked u;
	char err[256];
	size_t used = 12345;
	int ret;

	msgpack_unpacked_init(&u);
	ret = sonde_msgpack_unpack(&u, data, len, &used, err, sizeof(err));
	if (ret != want_ret || strcmp(err, want_err))
		fail_msg("got %d \"%s\", wanted %d \"%s\"", ret, err, want_ret, want_err);
	assert_int_equal(used, 12345); /* untouched on error */
	msgpack_unpacked_destroy(&u);
}

static void test_unpack_untrusted(void **state)
{
	/* Found by fuzz-msgpack-lua: map32 declaring 0x91919191 entries. */
	static const unsigned char huge_map[] = {0xdf, 0x91, 0x91, 0x91, 0x91, 0x91, 0x90};
	static const unsigned char huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
	static const unsigned char doc[] = {0x92, 0xa1, 'x', 0x81, 0x01, 0xc0, 0xff, 0xff};
	unsigned char deep[SONDE_LUA_MSGPACK_MAX_DEPTH + 2];
	msgpack_unpacked u;
	char err[256];
	size_t used = 0;

	(void)state;
	expect_guard(huge_map, sizeof(huge_map), -EINVAL,
		     "map at offset 0 declares 2442236305 entries, only 2 bytes follow");
	expect_guard(huge_array, sizeof(huge_array), -EINVAL,
		     "array at offset 0 declares 4294967295 elements, only 1 bytes follow");
	/* Two elements declared, the first string eats the bytes the second needs. */
	expect_guard("\x92\xa2xy", 4, -EINVAL, "truncated at offset 4");
	expect_guard("\x91", 1, -EINVAL, "array at offset 0 declares 1 elements, only 0 bytes follow");
	expect_guard("", 0, -EINVAL, "truncated at offset 0");
	expect_guard("\xcd\x01", 2, -EINVAL, "truncated at offset 0");
	expect_guard("\x91\xc1", 2, -EINVAL, "byte 0xc1 at offset 1 is not msgpack");
	/* 32 nested arrays pass, 33 do not. */
	memset(deep, 0x91, sizeof(deep));
	deep[SONDE_LUA_MSGPACK_MAX_DEPTH] = 0x00;
	msgpack_unpacked_init(&u);
	assert_int_equal(sonde_msgpack_unpack(&u, deep, SONDE_LUA_MSGPACK_MAX_DEPTH + 1, &used,
					      err, sizeof(err)), 0);
	assert_int_equal(used, SONDE_LUA_MSGPACK_MAX_DEPTH + 1);
	msgpack_unpacked_destroy(&u);
	deep[SONDE_LUA_MSGPACK_MAX_DEPTH] = 0x91;
	deep[SONDE_LUA_MSGPACK_MAX_DEPTH + 1] = 0x00;
	expect_guard(deep, sizeof(deep), -E2BIG, "containers nested deeper than 32");

	/* A good document, with bytes after it that are the caller's. */
	msgpack_unpacked_init(&u);
	assert_int_equal(sonde_msgpack_unpack(&u, doc, sizeof(doc), &used, err, sizeof(err)), 0);
	assert_int_equal(used, 6);
	assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
	assert_int_equal(u.data.via.array.size, 2);
	assert_int_equal(u.data.via.array.ptr[1].via.map.ptr[0].val.type, MSGPACK_OBJECT_NIL);
	msgpack_unpacked_destroy(&u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_integers_smallest_encoding),
		cmocka_unit_test(test_floats_are_float64),
		cmocka_unit_test(test_scalars_and_strings),
		cmocka_unit_test(test_tables_arrays_and_maps),
		cmocka_unit_test(test_round_trips),
		cmocka_unit_test(test_lua_errors),
		cmocka_unit_test(test_msgpack_to_lua),
		cmocka_unit_test(test_msgpack_errors),
		cmocka_unit_test(test_msgpack_round_trip_bytes),
		cmocka_unit_test(test_unpack_untrusted),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
