// SPDX-License-Identifier: MIT
#include "script.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_msgpack.h"

#define DEFAULT_MEMORY_CAP ((size_t)32 << 20)
#define DEFAULT_BUDGET	   10000000L
#define HOOK_EVERY	   1000
#define NAME_MAX_LEN	   64
#define LABEL_KEY_MAX	   128
#define LABEL_VALUE_MAX	   1024
#define LOG_MAX		   4096

struct sonde_script {
	lua_State *L;
	char *path;
	bool unsafe;

	/* the sandbox: bytes held against the cap, instructions against the budget */
	size_t cap, used;
	long budget, spent;
	int step;	     /* instructions between two hook calls */
	bool tripped;	     /* the budget ran out during this call */
	bool refused;	     /* the cap refused an allocation during this call */
	bool loading;	     /* the main chunk runs: the configuration functions work */
	bool running;	     /* inside run() */
	char oom_where[128]; /* where the cap refused, for "not enough memory" */

	struct sonde_script_config cfg;
	struct sonde_script_plugin *plugins;
	const char *defaults[SONDE_SCRIPT_MAX_UNWINDERS];
	void **owned; /* what the configuration points to, freed with the script */
	size_t nowned, owned_cap;

	int on_process, on_window, on_http_route; /* registry references, or LUA_NOREF */
	char process_where[128], window_where[128], route_where[128];
	uint64_t generation; /* sonde_script__generation */

	/* during sonde_script__window only */
	const struct sonde_script_window *window;
	unsigned long window_gen;
	sonde_script_publish_fn publish;
	void *publish_ctx;
	msgpack_sbuffer sbuf;

	char last_error[512];
	struct sonde_script_stats stats;
};

static struct sonde_script *script_of(lua_State *L)
{
	void *ud;

	lua_getallocf(L, &ud);
	return ud;
}

/*
 * Lua's "not enough memory" carries no position, so the allocator notes the
 * innermost Lua line when it refuses (reading the call chain allocates
 * nothing). Only inside run(): not while the state is made or closed.
 */
static void refuse(struct sonde_script *s)
{
	lua_Debug ar;
	int level;

	s->refused = true;
	if (!s->running)
		return;
	for (level = 0; lua_getstack(s->L, level, &ar); level++) {
		if (lua_getinfo(s->L, "Sl", &ar) && ar.currentline > 0) {
			snprintf(s->oom_where, sizeof(s->oom_where), "%s:%d", ar.short_src,
				 ar.currentline);
			return;
		}
	}
}

/* Shrinking always succeeds (Lua counts on it); growing past the cap fails
 * the way an exhausted malloc would, so Lua raises "not enough memory". */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct sonde_script *s = ud;
	size_t old = ptr ? osize : 0;
	void *p;

	if (nsize == 0) {
		free(ptr);
		s->used -= old;
		return NULL;
	}
	if (nsize > old && s->used - old + nsize > s->cap) {
		refuse(s);
		return NULL;
	}
	p = realloc(ptr, nsize);
	if (!p) {
		refuse(s);
		return NULL;
	}
	s->used = s->used - old + nsize;
	return p;
}

/*
 * Once the budget is spent, the hook fires on every instruction and fails
 * each time: a pcall in the script catches one error, and its caller's next
 * instruction raises the next one, so the whole callback unwinds.
 */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
	struct sonde_script *s = script_of(L);

	if (!s->tripped) {
		/* a thread keeps its own hook count: add what this one ran */
		s->spent += lua_gethookcount(L);
		if (lua_gethookcount(L) != s->step)
			lua_sethook(L, budget_hook, LUA_MASKCOUNT, s->step);
		if (s->spent <= s->budget)
			return;
		s->tripped = true;
		lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
	}
	lua_getinfo(L, "Sl", ar);
	lua_pushfstring(L, "%s:%d: instruction budget of %I exhausted", ar->short_src,
			ar->currentline, (lua_Integer)s->budget);
	lua_error(L);
}

static void arm(struct sonde_script *s)
{
	s->spent = 0;
	s->tripped = false;
	s->refused = false;
	lua_sethook(s->L, budget_hook, LUA_MASKCOUNT, s->step);
}

/* The configuration keeps C copies: Lua strings could be collected. */
static void *own(lua_State *L, struct sonde_script *s, void *p)
{
	if (!p)
		luaL_error(L, "out of memory");
	if (s->nowned == s->owned_cap) {
		size_t cap = s->owned_cap ? s->owned_cap * 2 : 16;
		void **v = realloc(s->owned, cap * sizeof(*v));

		if (!v) {
			free(p);
			luaL_error(L, "out of memory");
		}
		s->owned = v;
		s->owned_cap = cap;
	}
	s->owned[s->nowned++] = p;
	return p;
}

static const char *keep(lua_State *L, struct sonde_script *s, const char *str)
{
	return own(L, s, strdup(str));
}

/* Plugin, unwinder and topic names: [a-z][a-z0-9_.-]*, at most 64 bytes. */
static bool valid_name(const char *n, size_t len)
{
	size_t i;

	if (len == 0 || len > NAME_MAX_LEN || n[0] < 'a' || n[0] > 'z')
		return false;
	for (i = 1; i < len; i++) {
		char c = n[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
		      c == '-'))
			return false;
	}
	return true;
}

/* Prometheus label names: [a-zA-Z_][a-zA-Z0-9_]*. Also plugin setting keys. */
static bool valid_key(const char *k, size_t len)
{
	size_t i;

	if (len == 0 || (k[0] >= '0' && k[0] <= '9'))
		return false;
	for (i = 0; i < len; i++) {
		char c = k[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return true;
}

static void check_loading(lua_State *L, const char *fn)
{
	if (!script_of(L)->loading)
		luaL_error(L, "%s: only the main chunk can call it, not a callback", fn);
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
	check_loading(L, fn);
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

static int l_sampling(lua_State *L)
{
	static const char *const keys[] = {"hz", "window", NULL};
	struct sonde_script *s = script_of(L);
	unsigned int v;

	check_keys(L, "sampling", keys);
	v = uint_field(L, "sampling", "hz", 1, 100000);
	if (v)
		s->cfg.hz = v;
	v = uint_field(L, "sampling", "window", 1, 3600);
	if (v)
		s->cfg.window_s = v;
	return 0;
}

static int l_http(lua_State *L)
{
	static const char *const keys[] = {"listen", NULL};
	struct sonde_script *s = script_of(L);

	check_keys(L, "http", keys);
	lua_getfield(L, 1, "listen");
	if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
		s->cfg.http_addr = NULL;
	else if (lua_type(L, -1) == LUA_TSTRING)
		s->cfg.http_addr = keep(L, s, lua_tostring(L, -1));
	else
		return luaL_error(
			L, "http: listen must be an address like \"127.0.0.1:7470\", or false");
	s->cfg.http_set = true;
	return 0;
}

static int l_output(lua_State *L)
{
	static const char *const keys[] = {"dir", NULL};
	struct sonde_script *s = script_of(L);

	check_keys(L, "output", keys);
	lua_getfield(L, 1, "dir");
	if (lua_type(L, -1) != LUA_TSTRING)
		return luaL_error(L, "output: dir must be a directory path");
	s->cfg.output_dir = keep(L, s, lua_tostring(L, -1));
	return 0;
}

/* An nng URL: scheme://rest, the scheme in lowercase letters, digits and '+'. */
static bool looks_like_url(const char *u)
{
	const char *sep = strstr(u, "://");
	const char *c;

	if (!sep || sep == u || !sep[3])
		return false;
	for (c = u; c < sep; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '+'))
			return false;
	return true;
}

static int set_listen(lua_State *L, const char *fn, const char *example, const char **dst)
{
	static const char *const keys[] = {"listen", NULL};
	struct sonde_script *s = script_of(L);

	check_keys(L, fn, keys);
	lua_getfield(L, 1, "listen");
	if (lua_type(L, -1) != LUA_TSTRING || !looks_like_url(lua_tostring(L, -1)))
		return luaL_error(L, "%s: listen must be an nng URL like \"%s\"", fn, example);
	*dst = keep(L, s, lua_tostring(L, -1));
	return 0;
}

static int l_export(lua_State *L)
{
	return set_listen(L, "export", "ipc:///run/sonde/export.ipc",
			  &script_of(L)->cfg.export_url);
}

static int l_control(lua_State *L)
{
	return set_listen(L, "control", "ipc:///run/sonde/control.ipc",
			  &script_of(L)->cfg.control_url);
}

static int compare_kv(const void *a, const void *b)
{
	return strcmp(((const struct sonde_script_kv *)a)->key,
		      ((const struct sonde_script_kv *)b)->key);
}

/* The settings table at index t for plugin i; a second table replaces the first. */
static void plugin_settings(lua_State *L, struct sonde_script *s, lua_Integer i, int t)
{
	struct sonde_script_plugin *p = &s->plugins[i];
	struct sonde_script_kv *kvs;
	bool required = false;
	size_t n = 0;

	if (lua_type(L, t) != LUA_TTABLE)
		luaL_error(L, "plugin '%s': settings must be a table like { required = true }",
			   p->name);
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		n++;
	}
	kvs = own(L, s, calloc(n ? n : 1, sizeof(*kvs)));
	n = 0;
	lua_pushnil(L);
	while (lua_next(L, t)) {
		const char *key;
		size_t len;

		if (lua_type(L, -2) != LUA_TSTRING)
			luaL_error(L, "plugin '%s': settings are key = value pairs", p->name);
		key = lua_tolstring(L, -2, &len);
		if (!valid_key(key, len))
			luaL_error(L, "plugin '%s': '%s' is not a setting name", p->name, key);
		if (strcmp(key, "required") == 0) {
			if (lua_type(L, -1) != LUA_TBOOLEAN)
				luaL_error(L, "plugin '%s': required must be true or false",
					   p->name);
			required = lua_toboolean(L, -1);
			lua_pop(L, 1);
			continue;
		}
		kvs[n].key = keep(L, s, key);
		switch (lua_type(L, -1)) {
		case LUA_TBOOLEAN:
			kvs[n].value = lua_toboolean(L, -1) ? "true" : "false";
			break;
		case LUA_TNUMBER: /* converted on the value only: the key stays for lua_next */
		case LUA_TSTRING:
			kvs[n].value = keep(L, s, lua_tostring(L, -1));
			break;
		default:
			luaL_error(L, "plugin '%s': %s must be a string, a number or a boolean",
				   p->name, key);
		}
		n++;
		lua_pop(L, 1);
	}
	qsort(kvs, n, sizeof(*kvs), compare_kv);
	p->kvs = kvs;
	p->nkvs = n;
	p->required = required;
}

static int l_plugin_settings(lua_State *L)
{
	check_loading(L, "plugin");
	plugin_settings(L, script_of(L), lua_tointeger(L, lua_upvalueindex(1)), 1);
	return 0;
}

/* plugin "name" { ... }, plugin("name"), plugin("name", { ... }) */
static int l_plugin(lua_State *L)
{
	struct sonde_script *s = script_of(L);
	struct sonde_script_plugin *v;
	const char *name;
	size_t len, i;

	check_loading(L, "plugin");
	name = luaL_checklstring(L, 1, &len);
	/* a name, or the absolute path of a .so (then known by its descriptor's name) */
	if (!valid_name(name, len) && !(name[0] == '/' && strlen(name) == len))
		return luaL_error(L,
				  "plugin: '%s' is not a plugin name (lowercase letters, digits, "
				  "'-', '_' and '.', starting with a letter) or an absolute path",
				  name);
	for (i = 0; i < s->cfg.nplugins; i++)
		if (strcmp(s->plugins[i].name, name) == 0)
			return luaL_error(L, "plugin: '%s' is declared twice", name);
	v = realloc(s->plugins, (s->cfg.nplugins + 1) * sizeof(*v));
	if (!v)
		return luaL_error(L, "out of memory");
	s->plugins = v;
	s->cfg.plugins = v;
	memset(&v[i], 0, sizeof(v[i]));
	v[i].name = keep(L, s, name);
	s->cfg.nplugins++;
	if (lua_gettop(L) >= 2) {
		plugin_settings(L, s, (lua_Integer)i, 2);
		return 0;
	}
	lua_pushinteger(L, (lua_Integer)i);
	lua_pushcclosure(L, l_plugin_settings, 1);
	return 1;
}

/*
 * The list of unwinder names at index t (a sequence of at most
 * SONDE_SCRIPT_MAX_UNWINDERS distinct names) into out, pointing into the
 * table's strings. what prefixes the errors.
 */
static size_t read_unwinders(lua_State *L, int t, const char *what, const char **out)
{
	/* "unwinders" or "plugins": the last word of what, for the messages */
	const char *noun = strrchr(what, ' ') ? strrchr(what, ' ') + 1 : what;
	size_t n = 0, i, j;

	if (lua_type(L, t) != LUA_TTABLE)
		luaL_error(L, "%s: expected a list of names like { \"native\" }", what);
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		n++;
	}
	if (n > SONDE_SCRIPT_MAX_UNWINDERS)
		luaL_error(L, "%s: more than %d %s", what, SONDE_SCRIPT_MAX_UNWINDERS, noun);
	for (i = 0; i < n; i++) {
		size_t len;

		if (lua_rawgeti(L, t, (lua_Integer)i + 1) != LUA_TSTRING)
			luaL_error(L, "%s: expected a list of names like { \"native\" }", what);
		out[i] = lua_tolstring(L, -1, &len);
		lua_pop(L, 1); /* the table keeps the string */
		if (!valid_name(out[i], len))
			luaL_error(L, "%s: '%s' is not %s name", what, out[i],
				   strcmp(noun, "plugins") == 0 ? "a plugin" : "an unwinder");
		for (j = 0; j < i; j++)
			if (strcmp(out[j], out[i]) == 0)
				luaL_error(L, "%s: '%s' is listed twice", what, out[i]);
	}
	return n;
}

static int l_unwinders(lua_State *L)
{
	struct sonde_script *s = script_of(L);
	const char *names[SONDE_SCRIPT_MAX_UNWINDERS];
	size_t n, i;

	check_loading(L, "unwinders");
	n = read_unwinders(L, 1, "unwinders", names);
	for (i = 0; i < n; i++)
		s->defaults[i] = keep(L, s, names[i]);
	s->cfg.default_unwinders = s->defaults;
	s->cfg.ndefault_unwinders = n;
	return 0;
}

/* Remembers the callback and where it is defined, for errors without a
 * position. A second one is an error, or with replace takes the first's place. */
static int set_callback(lua_State *L, const char *fn, int *ref, char *where, size_t wlen,
			bool replace)
{
	lua_Debug ar;

	check_loading(L, fn);
	luaL_checktype(L, 1, LUA_TFUNCTION);
	if (*ref != LUA_NOREF && !replace)
		return luaL_error(L, "%s: a callback is already set (at %s)", fn, where);
	if (*ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, *ref);
		*ref = LUA_NOREF;
	}
	lua_settop(L, 1);
	lua_pushvalue(L, 1);
	lua_getinfo(L, ">S", &ar);
	if (ar.linedefined > 0) {
		snprintf(where, wlen, "%s:%d", ar.short_src, ar.linedefined);
	} else { /* a C function: where it was set */
		size_t len;
		const char *w;

		luaL_where(L, 1);
		w = lua_tolstring(L, -1, &len);
		snprintf(where, wlen, "%.*s", len >= 2 ? (int)len - 2 : 0, w);
		lua_pop(L, 1);
	}
	*ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static int l_on_process(lua_State *L)
{
	struct sonde_script *s = script_of(L);

	return set_callback(L, "on_process", &s->on_process, s->process_where,
			    sizeof(s->process_where), false);
}

static int l_on_window(lua_State *L)
{
	struct sonde_script *s = script_of(L);

	return set_callback(L, "on_window", &s->on_window, s->window_where,
			    sizeof(s->window_where), false);
}

/* A plugin's hook: a script built from parts may set it again, the last one counts. */
static int l_on_http_route(lua_State *L)
{
	struct sonde_script *s = script_of(L);

	return set_callback(L, "on_http_route", &s->on_http_route, s->route_where,
			    sizeof(s->route_where), true);
}

/* log(...) and print(...): one info line in the daemon log, with the caller's position. */
static int l_log(lua_State *L)
{
	int n = lua_gettop(L), i;
	const char *msg;
	luaL_Buffer b;
	lua_Debug ar;
	size_t len;

	luaL_buffinit(L, &b);
	for (i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, ' ');
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	msg = lua_tolstring(L, -1, &len);
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
		sonde_info("%s:%d: %.*s", ar.short_src, ar.currentline,
			   (int)(len > LOG_MAX ? LOG_MAX : len), msg);
	else
		sonde_info("%s: %.*s", script_of(L)->path, (int)(len > LOG_MAX ? LOG_MAX : len),
			   msg);
	return 0;
}

static bool reserved_topic(const char *t)
{
	static const char *const core[] = {"profile", "proc", "red", NULL};
	const char *const *c;

	for (c = core; *c; c++) {
		size_t n = strlen(*c);

		if (strncmp(t, *c, n) == 0 && (t[n] == '\0' || t[n] == '.'))
			return true;
	}
	return false;
}

/* publish(topic, table): true, or nil and why when the transport refused it. */
static int l_publish(lua_State *L)
{
	struct sonde_script *s = script_of(L);
	msgpack_packer pk;
	const char *topic;
	char why[256];
	size_t len;
	int rc;

	topic = luaL_checklstring(L, 1, &len);
	luaL_checktype(L, 2, LUA_TTABLE);
	if (!s->window)
		return luaL_error(L, "publish: only on_window can publish");
	if (!valid_name(topic, len))
		return luaL_error(L,
				  "publish: '%s' is not a topic name (lowercase letters, digits, "
				  "'-', '_' and '.', starting with a letter, at most %d)",
				  topic, NAME_MAX_LEN);
	if (reserved_topic(topic))
		return luaL_error(L,
				  "publish: topic '%s' is the core's (profile, proc and red are "
				  "reserved)",
				  topic);
	if (!s->publish) {
		lua_pushnil(L);
		lua_pushliteral(L, "publishing is off");
		return 2;
	}
	/* one buffer per script, reused: nothing to free if the encoder raises */
	msgpack_sbuffer_clear(&s->sbuf);
	msgpack_packer_init(&pk, &s->sbuf, msgpack_sbuffer_write);
	why[0] = '\0';
	if (sonde_lua_to_msgpack(L, 2, &pk, why, sizeof(why)))
		return luaL_error(L, "publish: %s", why[0] ? why : "cannot encode the table");
	rc = s->publish(s->publish_ctx, topic, s->sbuf.data, s->sbuf.size);
	if (rc < 0) {
		lua_pushnil(L);
		lua_pushstring(L, strerror(-rc));
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

static void open_sandbox(lua_State *L, struct sonde_script *s)
{
	static const luaL_Reg libs[] = {
		{LUA_GNAME, luaopen_base},	  {LUA_TABLIBNAME, luaopen_table},
		{LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
		{LUA_UTF8LIBNAME, luaopen_utf8},  {NULL, NULL},
	};
	static const luaL_Reg unsafe_libs[] = {
		{LUA_OSLIBNAME, luaopen_os},
		{LUA_IOLIBNAME, luaopen_io},
		{LUA_LOADLIBNAME, luaopen_package},
		{NULL, NULL},
	};
	static const char *const removed[] = {"dofile", "loadfile", "load", "collectgarbage", NULL};
	static const luaL_Reg funcs[] = {
		{"sampling", l_sampling},
		{"http", l_http},
		{"output", l_output},
		{"export", l_export},
		{"control", l_control},
		{"plugin", l_plugin},
		{"unwinders", l_unwinders},
		{"on_process", l_on_process},
		{"on_window", l_on_window},
		{"on_http_route", l_on_http_route},
		{"publish", l_publish},
		{"log", l_log},
		{"print", l_log},
		{NULL, NULL},
	};
	const char *const *r;
	const luaL_Reg *f;

	for (f = libs; f->func; f++) {
		luaL_requiref(L, f->name, f->func, 1);
		lua_pop(L, 1);
	}
	/* collectgarbage("stop") would defeat the cap's emergency collections */
	for (r = s->unsafe ? removed + 3 : removed; *r; r++) {
		lua_pushnil(L);
		lua_setglobal(L, *r);
	}
	if (s->unsafe) {
		for (f = unsafe_libs; f->func; f++) {
			luaL_requiref(L, f->name, f->func, 1);
			lua_pop(L, 1);
		}
	}
	for (f = funcs; f->func; f++)
		lua_register(L, f->name, f->func);
}

/* As lua.c does: any error object becomes a message with a traceback. */
static int msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	if (!msg) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			return 1;
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Whether msg starts with "SOMETHING:DIGITS:", the way Lua positions errors. */
static bool has_position(const char *msg, size_t len)
{
	const char *colon = memchr(msg, ':', len);
	const char *d;

	if (!colon || colon == msg)
		return false;
	for (d = colon + 1; d < msg + len && *d >= '0' && *d <= '9'; d++)
		;
	return d > colon + 1 && d < msg + len && *d == ':';
}

/* The error on top of the stack into last_error: its first line, positioned. */
static void set_error(struct sonde_script *s, const char *where)
{
	const char *msg = lua_tostring(s->L, -1);
	const char *nl;
	size_t len;

	if (!msg)
		msg = "unknown error";
	nl = strchr(msg, '\n');
	len = nl ? (size_t)(nl - msg) : strlen(msg);
	if (where && !has_position(msg, len))
		snprintf(s->last_error, sizeof(s->last_error), "%s: %.*s", where, (int)len, msg);
	else
		snprintf(s->last_error, sizeof(s->last_error), "%.*s", (int)len, msg);
	if (nl)
		sonde_debug("%s: %s", s->path, msg);
}

/* Runs fn(arg) protected, under the budget; the result stays on the stack
 * until the next call (it anchors the strings a decision points to). */
static int run(struct sonde_script *s, lua_CFunction fn, void *arg, const char *where)
{
	lua_State *L = s->L;
	int status;

	lua_settop(L, 0);
	s->last_error[0] = '\0';
	s->oom_where[0] = '\0';
	arm(s);
	lua_pushcfunction(L, msghandler);
	lua_pushcfunction(L, fn);
	lua_pushlightuserdata(L, arg);
	s->running = true;
	status = lua_pcall(L, 1, 1, 1);
	s->running = false;
	if (status == LUA_OK)
		return 0;
	if (status == LUA_ERRMEM && s->oom_where[0])
		where = s->oom_where;
	else if (status == LUA_ERRMEM && !where)
		where = s->path;
	set_error(s, where);
	s->stats.errors++;
	if (s->tripped)
		s->stats.budget_overruns++;
	if (s->refused || status == LUA_ERRMEM) {
		s->stats.memory_overruns++;
		lua_settop(L, 0);
		/* give the next callback back what this one left behind */
		lua_gc(L, LUA_GCCOLLECT);
	}
	return -EINVAL;
}

static int load_protected(lua_State *L)
{
	struct sonde_script *s = lua_touserdata(L, 1);

	open_sandbox(L, s);
	if (luaL_loadfilex(L, s->path, "t") != LUA_OK)
		return lua_error(L);
	lua_call(L, 0, 0);
	return 0;
}

/* Scripts are numbered across the process: a reload never gives a number back. */
static uint64_t last_generation;

struct sonde_script *sonde_script__load(const char *path, const struct sonde_script_opts *opts,
					char *err, size_t errlen)
{
	struct sonde_script *s;
	int rc;

	if (err && errlen)
		err[0] = '\0';
	s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(path))) {
		free(s);
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", path);
		errno = ENOMEM;
		return NULL;
	}
	s->unsafe = opts && opts->allow_unsafe;
	s->cap = opts && opts->memory_cap ? opts->memory_cap : DEFAULT_MEMORY_CAP;
	s->budget = opts && opts->budget > 0 ? opts->budget : DEFAULT_BUDGET;
	s->step = s->budget < HOOK_EVERY ? (int)s->budget : HOOK_EVERY;
	s->on_process = LUA_NOREF;
	s->on_window = LUA_NOREF;
	s->on_http_route = LUA_NOREF;
	s->generation = __atomic_add_fetch(&last_generation, 1, __ATOMIC_RELAXED);
	msgpack_sbuffer_init(&s->sbuf);
	s->L = lua_newstate(capped_alloc, s);
	if (!s->L) {
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", path);
		sonde_script__free(s);
		errno = ENOMEM;
		return NULL;
	}
	s->loading = true;
	rc = run(s, load_protected, s, NULL);
	s->loading = false;
	if (rc) {
		if (err && errlen)
			snprintf(err, errlen, "%s", s->last_error);
		sonde_script__free(s);
		errno = EINVAL;
		return NULL;
	}
	lua_settop(s->L, 0);
	memset(&s->stats, 0, sizeof(s->stats));
	return s;
}

void sonde_script__free(struct sonde_script *s)
{
	size_t i;

	if (!s)
		return;
	if (s->L) {
		arm(s); /* finalizers the script set run under a fresh budget */
		lua_close(s->L);
	}
	for (i = 0; i < s->nowned; i++)
		free(s->owned[i]);
	free(s->owned);
	free(s->plugins);
	msgpack_sbuffer_destroy(&s->sbuf);
	free(s->path);
	free(s);
}

const struct sonde_script_config *sonde_script__config(const struct sonde_script *s)
{
	return &s->cfg;
}

const char *sonde_script__path(const struct sonde_script *s)
{
	return s->path;
}

static void default_decision(const struct sonde_script *s, struct sonde_script_decision *out)
{
	size_t i;

	memset(out, 0, sizeof(*out));
	out->profile = true;
	for (i = 0; i < s->cfg.ndefault_unwinders; i++)
		out->unwinders[i] = s->defaults[i];
	out->nunwinders = s->cfg.ndefault_unwinders;
}

static void push_string_field(lua_State *L, const char *key, const char *value)
{
	if (!value)
		return;
	lua_pushstring(L, value);
	lua_setfield(L, -2, key);
}

static int compare_label(const void *a, const void *b)
{
	return strcmp(((const struct sonde_script_label *)a)->key,
		      ((const struct sonde_script_label *)b)->key);
}

static void read_labels(lua_State *L, int t, struct sonde_script_decision *out)
{
	if (lua_type(L, t) != LUA_TTABLE)
		luaL_error(L, "on_process: labels must be a table like { team = \"web\" }");
	lua_pushnil(L);
	while (lua_next(L, t)) {
		size_t klen, vlen;
		const char *k;

		if (lua_type(L, -2) != LUA_TSTRING)
			luaL_error(L, "on_process: label names must be strings, not %s",
				   luaL_typename(L, -2));
		k = lua_tolstring(L, -2, &klen);
		if (!valid_key(k, klen) || klen > LABEL_KEY_MAX)
			luaL_error(L,
				   "on_process: '%s' is not a label name (letters, digits and _, "
				   "not starting with a digit)",
				   k);
		if (k[0] == '_' && k[1] == '_')
			luaL_error(L,
				   "on_process: label '%s' is reserved (names starting with __ "
				   "are the core's)",
				   k);
		if (strcmp(k, "pid") == 0)
			luaL_error(L, "on_process: label 'pid' is the process id; it cannot be "
				      "relabeled");
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "on_process: label '%s' must be a string, not %s", k,
				   luaL_typename(L, -1));
		lua_tolstring(L, -1, &vlen);
		if (vlen > LABEL_VALUE_MAX)
			luaL_error(L, "on_process: label '%s' is longer than %d bytes", k,
				   LABEL_VALUE_MAX);
		if (out->nlabels == SONDE_SCRIPT_MAX_LABELS)
			luaL_error(L, "on_process: more than %d labels", SONDE_SCRIPT_MAX_LABELS);
		out->labels[out->nlabels].key = k;
		out->labels[out->nlabels].value = lua_tostring(L, -1);
		out->nlabels++;
		lua_pop(L, 1);
	}
	qsort(out->labels, out->nlabels, sizeof(out->labels[0]), compare_label);
}

/* The callback's answer at index r into out (already the default decision). */
static void read_decision(lua_State *L, int r, struct sonde_script_decision *out)
{
	switch (lua_type(L, r)) {
	case LUA_TNIL:
	case LUA_TBOOLEAN:
		out->profile = lua_toboolean(L, r);
		if (!out->profile)
			out->nunwinders = out->nplugins = 0;
		return;
	case LUA_TTABLE:
		break;
	default:
		luaL_error(L, "on_process: return true, false or a table, not %s",
			   luaL_typename(L, r));
	}
	lua_pushnil(L);
	while (lua_next(L, r)) {
		const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;

		lua_pop(L, 1);
		if (!k || (strcmp(k, "unwinders") != 0 && strcmp(k, "plugins") != 0 &&
			   strcmp(k, "labels") != 0))
			luaL_error(L,
				   "on_process: unknown key %s%s%s in the returned table "
				   "(expected unwinders, plugins, labels)",
				   k ? "'" : "a ", k ? k : luaL_typename(L, -1), k ? "'" : "");
	}
	lua_pushliteral(L, "unwinders");
	if (lua_rawget(L, r) != LUA_TNIL)
		out->nunwinders =
			read_unwinders(L, lua_gettop(L), "on_process: unwinders", out->unwinders);
	lua_pushliteral(L, "plugins");
	if (lua_rawget(L, r) != LUA_TNIL)
		out->nplugins =
			read_unwinders(L, lua_gettop(L), "on_process: plugins", out->plugins);
	lua_pushliteral(L, "labels");
	if (lua_rawget(L, r) != LUA_TNIL)
		read_labels(L, lua_gettop(L), out);
}

struct decide_call {
	struct sonde_script *s;
	const struct sonde_script_process *p;
	struct sonde_script_decision *out;
};

static int decide_protected(lua_State *L)
{
	struct decide_call *c = lua_touserdata(L, 1);
	const struct sonde_script_process *p = c->p;

	lua_rawgeti(L, LUA_REGISTRYINDEX, c->s->on_process);
	lua_createtable(L, 0, 7);
	lua_pushinteger(L, p->pid);
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, p->ppid);
	lua_setfield(L, -2, "ppid");
	push_string_field(L, "comm", p->comm);
	push_string_field(L, "exe", p->exe);
	push_string_field(L, "cmdline", p->cmdline);
	push_string_field(L, "cgroup", p->cgroup);
	push_string_field(L, "container_id", p->container_id);
	lua_call(L, 1, 1);
	read_decision(L, lua_gettop(L), c->out);
	lua_settop(L, 2);
	return 1; /* the answer: it holds the strings *out points to */
}

int sonde_script__decide(struct sonde_script *s, const struct sonde_script_process *p,
			 struct sonde_script_decision *out)
{
	struct decide_call c = {.s = s, .p = p, .out = out};
	int rc;

	default_decision(s, out);
	if (s->on_process == LUA_NOREF) {
		lua_settop(s->L, 0);
		return 0;
	}
	rc = run(s, decide_protected, &c, s->process_where);
	if (rc)
		default_decision(s, out);
	return rc;
}

/* w.stacks, built on first access from the window of the current call. The
 * upvalue is that call's generation: a w kept past its call finds it stale. */
static int window_index(lua_State *L)
{
	struct sonde_script *s = script_of(L);
	const struct sonde_script_window *w = s->window;
	size_t i, j;

	if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "stacks") != 0)
		return 0;
	if (!w || (unsigned long)lua_tointeger(L, lua_upvalueindex(1)) != s->window_gen)
		return luaL_error(L, "w.stacks: this window is over (copy what you need from it "
				     "during on_window)");
	lua_createtable(L, w->nstacks > INT32_MAX ? 0 : (int)w->nstacks, 0);
	for (i = 0; i < w->nstacks; i++) {
		const struct sonde_script_stack *st = &w->stacks[i];

		lua_createtable(L, 0, 3);
		lua_pushinteger(L, (lua_Integer)st->count);
		lua_setfield(L, -2, "count");
		lua_createtable(L, 0, st->nlabels > INT32_MAX ? 0 : (int)st->nlabels);
		for (j = 0; j < st->nlabels; j++) {
			if (!st->labels[j].key || !st->labels[j].value)
				continue;
			lua_pushstring(L, st->labels[j].value);
			lua_setfield(L, -2, st->labels[j].key);
		}
		lua_setfield(L, -2, "labels");
		lua_createtable(L, st->nframes > INT32_MAX ? 0 : (int)st->nframes, 0);
		for (j = 0; j < st->nframes; j++) {
			lua_pushstring(L, st->frames[j] ? st->frames[j] : "?");
			lua_rawseti(L, -2, (lua_Integer)j + 1);
		}
		lua_setfield(L, -2, "frames");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_pushliteral(L, "stacks");
	lua_pushvalue(L, -2);
	lua_rawset(L, 1);
	return 1;
}

static int window_protected(lua_State *L)
{
	struct sonde_script *s = lua_touserdata(L, 1);
	const struct sonde_script_window *w = s->window;

	lua_rawgeti(L, LUA_REGISTRYINDEX, s->on_window);
	lua_createtable(L, 0, 4);
	lua_pushnumber(L, w->start);
	lua_setfield(L, -2, "start");
	lua_pushnumber(L, w->duration);
	lua_setfield(L, -2, "duration");
	lua_pushinteger(L, (lua_Integer)w->samples);
	lua_setfield(L, -2, "samples");
	lua_createtable(L, 0, 1);
	lua_pushinteger(L, (lua_Integer)s->window_gen);
	lua_pushcclosure(L, window_index, 1);
	lua_setfield(L, -2, "__index");
	lua_setmetatable(L, -2);
	lua_call(L, 1, 0);
	return 0;
}

bool sonde_script__wants_windows(const struct sonde_script *s)
{
	return s->on_window != LUA_NOREF;
}

int sonde_script__window(struct sonde_script *s, const struct sonde_script_window *w,
			 sonde_script_publish_fn publish, void *ctx)
{
	int rc;

	if (s->on_window == LUA_NOREF) {
		lua_settop(s->L, 0);
		return 0;
	}
	s->window = w;
	s->window_gen++;
	s->publish = publish;
	s->publish_ctx = ctx;
	rc = run(s, window_protected, s, s->window_where);
	s->window = NULL;
	s->publish = NULL;
	s->publish_ctx = NULL;
	return rc;
}

struct hook_call {
	struct sonde_script *s;
	const struct sonde_script_label *fields;
	size_t nfields;
	char *out;
	int verdict;
};

/* on_http_route(r): the answer is checked here, inside the protected call,
 * so that a bad one is an error like any other (counted, positioned at the
 * callback). */
static int route_protected(lua_State *L)
{
	struct hook_call *c = lua_touserdata(L, 1);
	const char *r;
	size_t i, len;

	lua_rawgeti(L, LUA_REGISTRYINDEX, c->s->on_http_route);
	lua_createtable(L, 0, c->nfields > 16 ? 16 : (int)c->nfields);
	for (i = 0; i < c->nfields; i++)
		if (c->fields[i].key)
			push_string_field(L, c->fields[i].key, c->fields[i].value);
	lua_call(L, 1, 1);
	switch (lua_type(L, -1)) {
	case LUA_TNIL:
		c->verdict = SONDE_SCRIPT_HOOK_KEEP;
		return 0;
	case LUA_TSTRING:
		break;
	case LUA_TBOOLEAN:
		if (!lua_toboolean(L, -1)) {
			c->verdict = SONDE_SCRIPT_HOOK_DROP;
			return 0;
		}
		/* fall through */
	default:
		return luaL_error(L,
				  "on_http_route: return a route (a string), false (drop) or nil "
				  "(keep), not %s",
				  lua_type(L, -1) == LUA_TBOOLEAN ? "true" : luaL_typename(L, -1));
	}
	r = lua_tolstring(L, -1, &len);
	if (len > SONDE_SCRIPT_ROUTE_MAX)
		return luaL_error(L, "on_http_route: the route is %I bytes, more than %d",
				  (lua_Integer)len, SONDE_SCRIPT_ROUTE_MAX);
	if (r[0] != '/' && strcmp(r, "_OTHER") != 0)
		return luaL_error(L, "on_http_route: route '%s' must start with '/' or be \"_OTHER\"",
				  r);
	for (i = 0; i < len; i++)
		if ((unsigned char)r[i] < 0x20 || r[i] == 0x7f)
			return luaL_error(L,
					  "on_http_route: the route holds a control character "
					  "(byte %I)",
					  (lua_Integer)i + 1);
	memcpy(c->out, r, len + 1);
	c->verdict = SONDE_SCRIPT_HOOK_REPLACE;
	return 0;
}

int sonde_script__hook(struct sonde_script *s, const char *hook,
		       const struct sonde_script_label *fields, size_t nfields, char *out,
		       size_t outlen)
{
	struct hook_call c = {.s = s, .fields = fields, .nfields = nfields, .out = out};
	int rc;

	if (!hook || strcmp(hook, "http_route") != 0 || s->on_http_route == LUA_NOREF)
		return -ENOENT;
	if (!out || outlen < SONDE_SCRIPT_ROUTE_MAX + 1)
		return -ENOBUFS;
	if (nfields && !fields)
		return -EFAULT;
	out[0] = '\0';
	s->stats.http_route_calls++;
	rc = run(s, route_protected, &c, s->route_where);
	lua_settop(s->L, 0); /* out is a copy: nothing to anchor */
	if (rc) {
		out[0] = '\0';
		return rc;
	}
	return c.verdict;
}

uint64_t sonde_script__generation(const struct sonde_script *s)
{
	return s->generation;
}

const char *sonde_script__last_error(const struct sonde_script *s)
{
	return s->last_error;
}

void sonde_script__stats(const struct sonde_script *s, struct sonde_script_stats *out)
{
	*out = s->stats;
}
