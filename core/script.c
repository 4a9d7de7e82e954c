// SPDX-License-Identifier: MIT
#include "script.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MEMORY_CAP (16u << 20)
#define INSTRUCTION_BUDGET 10000000
#define HOOK_EVERY 1000

struct sandbox {
	size_t used;
	long instructions;
	struct sonde_script_config *cfg;
};

/* The allocator refuses to grow past MEMORY_CAP. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct sandbox *sb = ud;
	size_t old = ptr ? osize : 0;
	void *p;

	if (nsize == 0) {
		free(ptr);
		sb->used -= old;
		return NULL;
	}
	if (nsize > old && sb->used - old + nsize > MEMORY_CAP)
		return NULL;
	p = realloc(ptr, nsize);
	if (p)
		sb->used = sb->used - old + nsize;
	return p;
}

/* Fires every HOOK_EVERY instructions; once over budget it errors each
 * time, so a pcall inside the script cannot swallow it. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
	struct sandbox *sb;

	lua_getallocf(L, (void **)&sb);
	sb->instructions += HOOK_EVERY;
	if (sb->instructions <= INSTRUCTION_BUDGET)
		return;
	lua_getinfo(L, "Sl", ar);
	lua_pushfstring(L, "%s:%d: instruction budget of %d exhausted", ar->short_src,
			ar->currentline, INSTRUCTION_BUDGET);
	lua_error(L);
}

static struct sandbox *sandbox_of(lua_State *L)
{
	struct sandbox *sb;

	lua_getallocf(L, (void **)&sb);
	return sb;
}

/* The integer field key of the table at index 1, in [lo, hi]; 0 if absent. */
static unsigned int uint_field(lua_State *L, const char *fn, const char *key, lua_Integer lo,
			       lua_Integer hi)
{
	lua_Integer v;
	int isnum;

	lua_getfield(L, 1, key);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return 0;
	}
	v = lua_tointegerx(L, -1, &isnum);
	if (!isnum || v < lo || v > hi)
		luaL_error(L, "%s: %s must be a whole number from %d to %d", fn, key, (int)lo,
			   (int)hi);
	lua_pop(L, 1);
	return (unsigned int)v;
}

static void check_keys(lua_State *L, const char *fn, const char *const *allowed)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_pushnil(L);
	while (lua_next(L, 1)) {
		const char *const *a;

		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "%s: keys must be names", fn);
		for (a = allowed; *a; a++)
			if (strcmp(*a, lua_tostring(L, -1)) == 0)
				break;
		if (!*a)
			luaL_error(L, "%s: unknown option '%s'", fn, lua_tostring(L, -1));
	}
}

static int set_string(lua_State *L, char **dst, const char *s)
{
	char *copy = strdup(s);

	if (!copy)
		return luaL_error(L, "out of memory");
	free(*dst);
	*dst = copy;
	return 0;
}

static int l_sampling(lua_State *L)
{
	static const char *const keys[] = { "hz", "window", NULL };
	struct sonde_script_config *cfg = sandbox_of(L)->cfg;
	unsigned int v;

	check_keys(L, "sampling", keys);
	v = uint_field(L, "sampling", "hz", 1, 100000);
	if (v)
		cfg->hz = v;
	v = uint_field(L, "sampling", "window", 1, 3600);
	if (v)
		cfg->window_s = v;
	return 0;
}

static int l_http(lua_State *L)
{
	static const char *const keys[] = { "listen", NULL };
	struct sonde_script_config *cfg = sandbox_of(L)->cfg;

	check_keys(L, "http", keys);
	lua_getfield(L, 1, "listen");
	if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
		free(cfg->http_addr);
		cfg->http_addr = NULL;
	} else if (lua_type(L, -1) == LUA_TSTRING) {
		set_string(L, &cfg->http_addr, lua_tostring(L, -1));
	} else {
		return luaL_error(L, "http: listen must be an address like \"127.0.0.1:7470\", or false");
	}
	cfg->http_set = true;
	return 0;
}

static int l_output(lua_State *L)
{
	static const char *const keys[] = { "dir", NULL };
	struct sonde_script_config *cfg = sandbox_of(L)->cfg;

	check_keys(L, "output", keys);
	lua_getfield(L, 1, "dir");
	if (lua_type(L, -1) != LUA_TSTRING)
		return luaL_error(L, "output: dir must be a directory path");
	return set_string(L, &cfg->output_dir, lua_tostring(L, -1));
}

static void open_sandbox(lua_State *L)
{
	static const luaL_Reg libs[] = {
		{ LUA_GNAME, luaopen_base },     { LUA_TABLIBNAME, luaopen_table },
		{ LUA_STRLIBNAME, luaopen_string }, { LUA_MATHLIBNAME, luaopen_math },
		{ LUA_UTF8LIBNAME, luaopen_utf8 }, { NULL, NULL },
	};
	static const char *const removed[] = { "dofile", "loadfile", "load", "require",
					       "collectgarbage", NULL };
	const luaL_Reg *lib;
	const char *const *r;

	for (lib = libs; lib->func; lib++) {
		luaL_requiref(L, lib->name, lib->func, 1);
		lua_pop(L, 1);
	}
	for (r = removed; *r; r++) {
		lua_pushnil(L);
		lua_setglobal(L, *r);
	}
	lua_register(L, "sampling", l_sampling);
	lua_register(L, "http", l_http);
	lua_register(L, "output", l_output);
}

static int traceback(lua_State *L)
{
	luaL_traceback(L, L, lua_tostring(L, 1), 1);
	return 1;
}

int sonde_script_load(const char *path, struct sonde_script_config *cfg, char *err,
		      size_t errlen)
{
	struct sandbox sb = { .cfg = cfg };
	lua_State *L;
	int rc = 0;

	memset(cfg, 0, sizeof(*cfg));
	L = lua_newstate(capped_alloc, &sb);
	if (!L) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	open_sandbox(L);
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
	lua_pushcfunction(L, traceback);
	if (luaL_loadfilex(L, path, "t") != LUA_OK || lua_pcall(L, 0, 0, 1) != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		const char *nl = msg ? strchr(msg, '\n') : NULL;

		/* the first line says file:line and what; the traceback goes to debug */
		snprintf(err, errlen, "%.*s", nl ? (int)(nl - msg) : (int)strlen(msg ? msg : ""),
			 msg ? msg : "unknown error");
		rc = -EINVAL;
	}
	lua_close(L);
	if (rc)
		sonde_script_config_free(cfg);
	return rc;
}

void sonde_script_config_free(struct sonde_script_config *cfg)
{
	free(cfg->http_addr);
	free(cfg->output_dir);
	memset(cfg, 0, sizeof(*cfg));
}
