// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>

#include "export.h"

/*
 * The schema as docs/export.md writes it. test_docs_match_schema holds the
 * document to this table, and check_map() holds every message to it: a
 * field sent but not listed, a required field missing or a type that
 * differs fails.
 */
struct field {
	const char *schema;
	const char *name; /* "*": any other key */
	const char *type; /* int, float, str, map<SCHEMA>, array<SCHEMA or type> */
	bool required;
};

static const struct field schema[] = {
	{"proc", "v", "int", true},
	{"proc", "event", "str", true},
	{"proc", "time", "float", true},
	{"proc", "pid", "int", true},
	{"proc", "ppid", "int", false},
	{"proc", "comm", "str", false},
	{"proc", "exe", "str", false},
	{"proc", "cmdline", "str", false},
	{"proc", "cgroup", "str", false},
	{"proc", "container_id", "str", false},
	{"proc", "labels", "map<proc.labels>", false},
	{"proc.labels", "*", "str", false},
	{"profile", "v", "int", true},
	{"profile", "start", "float", true},
	{"profile", "duration", "float", true},
	{"profile", "period_ns", "int", true},
	{"profile", "sample_type", "str", true},
	{"profile", "samples", "int", true},
	{"profile", "stacks", "array<profile.stack>", true},
	{"profile", "frames", "array<profile.frame>", true},
	{"profile.stack", "count", "int", true},
	{"profile.stack", "labels", "map<profile.labels>", true},
	{"profile.stack", "frames", "array<int>", true},
	{"profile.labels", "pid", "int", false},
	{"profile.labels", "comm", "str", false},
	{"profile.labels", "exe", "str", false},
	{"profile.labels", "container_id", "str", false},
	{"profile.labels", "*", "str", false},
	{"profile.frame", "function", "str", true},
	{"profile.frame", "kind", "str", true},
	{"profile.frame", "file", "str", false},
	{"profile.frame", "line", "int", false},
	{"profile.frame", "module", "str", false},
	{"profile.frame", "addr", "int", false},
};
#define NR_FIELDS (sizeof(schema) / sizeof(schema[0]))

/* ---- the document ---- */

/* Strips blanks and the backticks around a table cell. */
static char *cell(char *s)
{
	char *e;

	while (*s == ' ' || *s == '`')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '`'))
		*--e = '\0';
	return s;
}

static void test_docs_match_schema(void **state)
{
	char line[1024], current[64] = "";
	bool matched[NR_FIELDS] = {false};
	FILE *f = fopen(SONDE_SOURCE_DIR "/docs/export.md", "r");
	int rows = 0, version = 0;
	size_t i;

	(void)state;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		char *cols[3], *save = NULL, *name, *type, *req;
		int n;

		if (sscanf(line, "<!-- schema: %63[^ ] -->", current) == 1)
			continue;
		sscanf(line, "# The export socket: framing and schema, version %d", &version);
		if (line[0] != '|') {
			if (line[0] == '\n')
				current[0] = '\0';
			continue;
		}
		if (!current[0] || strstr(line, "| field |") || strstr(line, "|---"))
			continue;
		/* | `name` | `type` | yes | meaning | */
		for (n = 0; n < 3; n++) {
			cols[n] = strtok_r(n ? NULL : line, "|", &save);
			assert_non_null(cols[n]);
		}
		name = cell(cols[0]);
		type = cell(cols[1]);
		req = cell(cols[2]);
		for (i = 0; i < NR_FIELDS; i++)
			if (!strcmp(schema[i].schema, current) && !strcmp(schema[i].name, name))
				break;
		if (i == NR_FIELDS)
			fail_msg("docs/export.md: %s.%s is not in the test's schema", current, name);
		if (strcmp(type, schema[i].type))
			fail_msg("docs/export.md: %s.%s is %s, the test says %s", current, name, type,
				 schema[i].type);
		if (strcmp(req, schema[i].required ? "yes" : "no"))
			fail_msg("docs/export.md: %s.%s required: %s", current, name, req);
		assert_false(matched[i]);
		matched[i] = true;
		rows++;
	}
	fclose(f);
	for (i = 0; i < NR_FIELDS; i++)
		if (!matched[i])
			fail_msg("docs/export.md lacks %s.%s", schema[i].schema, schema[i].name);
	assert_int_equal(rows, NR_FIELDS);
	assert_int_equal(version, SONDE_EXPORT_SCHEMA_VERSION);
}

/* ---- checking a message against the schema ---- */

static void check_map(const msgpack_object *o, const char *name, const char *path);

static void check_type(const msgpack_object *o, const char *type, const char *path)
{
	char sub[64], elem[256];
	uint32_t i;

	if (!strcmp(type, "int")) {
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    o->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
			fail_msg("%s: not an int (msgpack type %d)", path, o->type);
	} else if (!strcmp(type, "float")) {
		if (o->type != MSGPACK_OBJECT_FLOAT64)
			fail_msg("%s: not a float64 (msgpack type %d)", path, o->type);
	} else if (!strcmp(type, "str")) {
		if (o->type != MSGPACK_OBJECT_STR)
			fail_msg("%s: not a str (msgpack type %d)", path, o->type);
	} else if (sscanf(type, "map<%63[^>]>", sub) == 1) {
		check_map(o, sub, path);
	} else if (sscanf(type, "array<%63[^>]>", sub) == 1) {
		if (o->type != MSGPACK_OBJECT_ARRAY)
			fail_msg("%s: not an array (msgpack type %d)", path, o->type);
		for (i = 0; i < o->via.array.size; i++) {
			snprintf(elem, sizeof(elem), "%s[%u]", path, i);
			if (strchr(sub, '.') || !strcmp(sub, "proc") || !strcmp(sub, "profile"))
				check_map(&o->via.array.ptr[i], sub, elem);
			else
				check_type(&o->via.array.ptr[i], sub, elem);
		}
	} else {
		fail_msg("unknown schema type %s", type);
	}
}

static bool key_is(const msgpack_object *k, const char *name)
{
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(name) &&
	       !memcmp(k->via.str.ptr, name, k->via.str.size);
}

static void check_map(const msgpack_object *o, const char *name, const char *path)
{
	const struct field *wild = NULL;
	char sub[256];
	uint32_t i, j;
	size_t f;

	if (o->type != MSGPACK_OBJECT_MAP)
		fail_msg("%s: not a map (msgpack type %d)", path, o->type);
	for (f = 0; f < NR_FIELDS; f++) {
		bool found = false;

		if (strcmp(schema[f].schema, name))
			continue;
		if (!strcmp(schema[f].name, "*")) {
			wild = &schema[f];
			continue;
		}
		for (i = 0; i < o->via.map.size; i++)
			found |= key_is(&o->via.map.ptr[i].key, schema[f].name);
		if (schema[f].required && !found)
			fail_msg("%s: required field %s missing", path, schema[f].name);
	}
	for (i = 0; i < o->via.map.size; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		const struct field *fd = wild;

		if (kv->key.type != MSGPACK_OBJECT_STR)
			fail_msg("%s: a key that is not a str", path);
		for (j = 0; j < i; j++)
			if (o->via.map.ptr[j].key.via.str.size == kv->key.via.str.size &&
			    !memcmp(o->via.map.ptr[j].key.via.str.ptr, kv->key.via.str.ptr,
				    kv->key.via.str.size))
				fail_msg("%s: key %.*s twice", path, (int)kv->key.via.str.size,
					 kv->key.via.str.ptr);
		for (f = 0; f < NR_FIELDS; f++)
			if (!strcmp(schema[f].schema, name) && key_is(&kv->key, schema[f].name))
				fd = &schema[f];
		snprintf(sub, sizeof(sub), "%s.%.*s", path, (int)kv->key.via.str.size,
			 kv->key.via.str.ptr);
		if (!fd)
			fail_msg("%s: not in the schema of %s", sub, name);
		check_type(&kv->val, fd->type, sub);
	}
}

/* ---- reading values ---- */

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
	uint32_t i;

	assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
	for (i = 0; i < map->via.map.size; i++)
		if (key_is(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

static void expect_str(const msgpack_object *map, const char *key, const char *want)
{
	const msgpack_object *o = get(map, key);

	if (!o)
		fail_msg("%s missing", key);
	assert_int_equal(o->type, MSGPACK_OBJECT_STR);
	if (o->via.str.size != strlen(want) || memcmp(o->via.str.ptr, want, o->via.str.size))
		fail_msg("%s: \"%.*s\", wanted \"%s\"", key, (int)o->via.str.size, o->via.str.ptr,
			 want);
}

static int64_t get_int(const msgpack_object *map, const char *key)
{
	const msgpack_object *o = get(map, key);

	if (!o)
		fail_msg("%s missing", key);
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		return (int64_t)o->via.u64;
	assert_int_equal(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
	return o->via.i64;
}

static double get_float(const msgpack_object *map, const char *key)
{
	const msgpack_object *o = get(map, key);

	if (!o)
		fail_msg("%s missing", key);
	assert_int_equal(o->type, MSGPACK_OBJECT_FLOAT64);
	return o->via.f64;
}

/* ---- the messages the test publishes ---- */

static const struct sonde_export_label proc_labels[] = {
	{"team", "edge"},
	{"tier", "web"},
};

static const struct sonde_export_proc start_msg = {
	.event = SONDE_EXPORT_PROC_START,
	.time = 1718000000.25,
	.pid = 4242,
	.ppid = 1,
	.comm = "nginx",
	.exe = "/usr/sbin/nginx",
	.cmdline = "nginx: worker process",
	.cgroup = "/system.slice/nginx.service",
	.labels = proc_labels,
	.nr_labels = 2,
};

static void encode_proc(const struct sonde_export_proc *p, msgpack_sbuffer *sb)
{
	msgpack_sbuffer_init(sb);
	assert_int_equal(sonde_export_encode_proc(p, sb), 0);
}

static void check_proc(const msgpack_object *o)
{
	const msgpack_object *labels;

	check_map(o, "proc", "proc");
	assert_int_equal(o->via.map.size, 10); /* all but container_id */
	assert_int_equal(get_int(o, "v"), 1);
	expect_str(o, "event", "start");
	assert_true(get_float(o, "time") == 1718000000.25);
	assert_int_equal(get_int(o, "pid"), 4242);
	assert_int_equal(get_int(o, "ppid"), 1);
	expect_str(o, "comm", "nginx");
	expect_str(o, "exe", "/usr/sbin/nginx");
	expect_str(o, "cmdline", "nginx: worker process");
	expect_str(o, "cgroup", "/system.slice/nginx.service");
	assert_null(get(o, "container_id"));
	labels = get(o, "labels");
	assert_non_null(labels);
	assert_int_equal(labels->via.map.size, 2);
	expect_str(labels, "team", "edge");
	expect_str(labels, "tier", "web");
}

static const struct sonde_export_frame frames[] = {
	{.function = "memcpy", .kind = "native", .module = "/usr/lib/libc.so.6", .addr = 0x1234},
	{.function = "ngx_http_process_request", .kind = "native", .file = "ngx_http_request.c",
	 .line = 2051, .module = "/usr/sbin/nginx"},
	{.function = "main", .kind = "native", .module = "/usr/sbin/nginx"},
	{.function = "do_syscall_64", .kind = "kernel", .module = "[kernel]"},
	/* Same name, another line: another frame. */
	{.function = "ngx_http_process_request", .kind = "native", .file = "ngx_http_request.c",
	 .line = 2052, .module = "/usr/sbin/nginx"},
};

static void build_profile(struct sonde_export_profile *b, msgpack_sbuffer *sb)
{
	static const struct sonde_export_label extra[] = {{"team", "edge"}};
	const struct sonde_export_profile_info info = {
		.start = 1718000000.0, .duration = 10.0, .period_ns = 10101010,
	};
	const struct sonde_export_stack_labels l1 = {
		.pid = 4242, .comm = "nginx", .exe = "/usr/sbin/nginx",
	};
	const struct sonde_export_stack_labels l2 = {
		.pid = 4242, .comm = "nginx", .container_id = "abc123", .extra = extra, .nr_extra = 1,
	};
	int idx[5], again;
	uint32_t s1[3], s2[3];
	size_t i;

	assert_int_equal(sonde_export_profile__begin(b, &info), 0);
	for (i = 0; i < 5; i++) {
		idx[i] = sonde_export_profile__add_frame(b, &frames[i]);
		assert_int_equal(idx[i], i);
	}
	/* The same frame again: the same index, no new entry. */
	again = sonde_export_profile__add_frame(b, &frames[2]);
	assert_int_equal(again, idx[2]);
	s1[0] = idx[0], s1[1] = idx[1], s1[2] = again;
	s2[0] = idx[3], s2[1] = idx[4], s2[2] = idx[2];
	assert_int_equal(sonde_export_profile__add_stack(b, 3, &l1, s1, 3), 0);
	assert_int_equal(sonde_export_profile__add_stack(b, 2, &l2, s2, 3), 0);
	msgpack_sbuffer_init(sb);
	assert_int_equal(sonde_export_profile__end(b, sb), 0);
}

static void check_frames(const msgpack_object *stack, const int64_t *want, uint32_t n)
{
	const msgpack_object *fr = get(stack, "frames");
	uint32_t i;

	assert_non_null(fr);
	assert_int_equal(fr->via.array.size, n);
	for (i = 0; i < n; i++)
		assert_int_equal(fr->via.array.ptr[i].via.u64, want[i]);
}

static void check_profile(const msgpack_object *o)
{
	static const int64_t want1[] = {0, 1, 2}, want2[] = {3, 4, 2};
	const msgpack_object *stacks, *fr, *l;
	uint32_t i;

	check_map(o, "profile", "profile");
	assert_int_equal(get_int(o, "v"), 1);
	assert_true(get_float(o, "start") == 1718000000.0);
	assert_true(get_float(o, "duration") == 10.0);
	assert_int_equal(get_int(o, "period_ns"), 10101010);
	expect_str(o, "sample_type", "cpu");
	assert_int_equal(get_int(o, "samples"), 5);

	stacks = get(o, "stacks");
	assert_int_equal(stacks->via.array.size, 2);
	assert_int_equal(get_int(&stacks->via.array.ptr[0], "count"), 3);
	check_frames(&stacks->via.array.ptr[0], want1, 3);
	l = get(&stacks->via.array.ptr[0], "labels");
	assert_int_equal(l->via.map.size, 3);
	assert_int_equal(get_int(l, "pid"), 4242);
	expect_str(l, "comm", "nginx");
	expect_str(l, "exe", "/usr/sbin/nginx");
	assert_int_equal(get_int(&stacks->via.array.ptr[1], "count"), 2);
	check_frames(&stacks->via.array.ptr[1], want2, 3);
	l = get(&stacks->via.array.ptr[1], "labels");
	assert_int_equal(l->via.map.size, 4);
	expect_str(l, "container_id", "abc123");
	expect_str(l, "team", "edge");
	assert_null(get(l, "exe"));

	fr = get(o, "frames");
	assert_int_equal(fr->via.array.size, 5); /* 6 added, 5 distinct */
	for (i = 0; i < 5; i++) {
		const msgpack_object *f = &fr->via.array.ptr[i];

		expect_str(f, "function", frames[i].function);
		expect_str(f, "kind", frames[i].kind);
		expect_str(f, "module", frames[i].module);
		if (frames[i].file) {
			expect_str(f, "file", frames[i].file);
			assert_int_equal(get_int(f, "line"), frames[i].line);
		} else {
			assert_null(get(f, "file"));
			assert_null(get(f, "line"));
		}
		if (frames[i].addr)
			assert_int_equal(get_int(f, "addr"), frames[i].addr);
		else
			assert_null(get(f, "addr"));
	}
}

static void unpack_all(const void *data, size_t len, msgpack_unpacked *u)
{
	size_t off = 0;

	msgpack_unpacked_init(u);
	assert_int_equal(msgpack_unpack_next(u, data, len, &off), MSGPACK_UNPACK_SUCCESS);
	assert_int_equal(off, len); /* exactly one map */
}

/* ---- encoders alone ---- */

static void test_encode_proc(void **state)
{
	const struct sonde_export_proc exit_msg = {
		.event = SONDE_EXPORT_PROC_EXIT, .time = 5.5, .pid = 7, .ppid = -1,
	};
	const struct sonde_export_label dup[] = {{"a", "1"}, {"a", "2"}};
	struct sonde_export_proc bad = start_msg;
	msgpack_sbuffer sb;
	msgpack_unpacked u;

	(void)state;
	encode_proc(&start_msg, &sb);
	unpack_all(sb.data, sb.size, &u);
	check_proc(&u.data);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);

	/* Absent fields are left out, not sent as nil. */
	encode_proc(&exit_msg, &sb);
	unpack_all(sb.data, sb.size, &u);
	check_map(&u.data, "proc", "proc");
	assert_int_equal(u.data.via.map.size, 4);
	expect_str(&u.data, "event", "exit");
	assert_int_equal(get_int(&u.data, "pid"), 7);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);

	msgpack_sbuffer_init(&sb);
	bad.event = 7;
	assert_int_equal(sonde_export_encode_proc(&bad, &sb), -EINVAL);
	bad = start_msg;
	bad.labels = dup;
	assert_int_equal(sonde_export_encode_proc(&bad, &sb), -EINVAL);
	assert_int_equal(sb.size, 0);
	msgpack_sbuffer_destroy(&sb);
}

static void test_profile_builder(void **state)
{
	struct sonde_export_profile *b = sonde_export_profile__new();
	const struct sonde_export_profile_info info = {.start = 1, .duration = 2, .period_ns = 3,
						       .sample_type = "cpu"};
	const struct sonde_export_label bad_extra[] = {{"pid", "1"}};
	const struct sonde_export_stack_labels l = {.pid = -1};
	const struct sonde_export_stack_labels lbad = {.pid = 1, .extra = bad_extra,
						       .nr_extra = 1};
	const struct sonde_export_frame nofn = {.kind = "native"};
	msgpack_sbuffer sb;
	msgpack_unpacked u;
	uint32_t fi = 0, oob = 1;
	int i;

	(void)state;
	assert_non_null(b);
	msgpack_sbuffer_init(&sb);
	/* Nothing before begin. */
	assert_int_equal(sonde_export_profile__add_frame(b, &frames[0]), -EINVAL);
	assert_int_equal(sonde_export_profile__end(b, &sb), -EINVAL);

	/* Twice, to show the builder starts clean after end(). */
	for (i = 0; i < 2; i++) {
		build_profile(b, &sb);
		unpack_all(sb.data, sb.size, &u);
		check_profile(&u.data);
		msgpack_unpacked_destroy(&u);
		msgpack_sbuffer_clear(&sb);
	}

	assert_int_equal(sonde_export_profile__begin(b, &info), 0);
	assert_int_equal(sonde_export_profile__add_frame(b, &nofn), -EINVAL);
	assert_int_equal(sonde_export_profile__add_frame(b, &frames[3]), 0);
	assert_int_equal(sonde_export_profile__add_stack(b, 1, &l, &oob, 1), -EINVAL);
	assert_int_equal(sonde_export_profile__add_stack(b, 0, &l, &fi, 1), -EINVAL);
	assert_int_equal(sonde_export_profile__add_stack(b, 1, &lbad, &fi, 1), -EINVAL);
	assert_int_equal(sonde_export_profile__add_stack(b, 4, &l, &fi, 1), 0);
	assert_int_equal(sonde_export_profile__end(b, &sb), 0);
	unpack_all(sb.data, sb.size, &u);
	check_map(&u.data, "profile", "profile");
	assert_int_equal(get_int(&u.data, "samples"), 4); /* the refused stacks count nothing */
	assert_int_equal(get(&u.data, "stacks")->via.array.size, 1);
	/* pid < 0: no labels at all, but the map is there. */
	assert_int_equal(get(&get(&u.data, "stacks")->via.array.ptr[0], "labels")->via.map.size, 0);
	assert_int_equal(get(&u.data, "frames")->via.array.size, 1);
	msgpack_unpacked_destroy(&u);

	/* An empty window is a valid message. */
	msgpack_sbuffer_clear(&sb);
	assert_int_equal(sonde_export_profile__begin(b, &info), 0);
	assert_int_equal(sonde_export_profile__end(b, &sb), 0);
	unpack_all(sb.data, sb.size, &u);
	check_map(&u.data, "profile", "profile");
	assert_int_equal(get_int(&u.data, "samples"), 0);
	msgpack_unpacked_destroy(&u);

	msgpack_sbuffer_destroy(&sb);
	sonde_export_profile__free(b);
	sonde_export_profile__free(NULL);
}

/* ---- over a real socket ---- */

static char tmpdir[] = "/tmp/sonde-test-export-XXXXXX";

static int setup_dir(void **state)
{
	(void)state;
	umask(022);
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) ? -1 : 0;
}

static nng_socket subscriber(const char *url, const char *const *topics, int recvbuf)
{
	nng_socket s;
	size_t i;

	assert_int_equal(nng_sub0_open(&s), 0);
	for (i = 0; topics[i]; i++)
		assert_int_equal(nng_socket_set(s, NNG_OPT_SUB_SUBSCRIBE, topics[i],
						strlen(topics[i]) + 1), 0);
	assert_int_equal(nng_socket_set(s, NNG_OPT_SUB_SUBSCRIBE, "hello", 6), 0);
	assert_int_equal(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000), 0);
	if (recvbuf)
		assert_int_equal(nng_socket_set_int(s, NNG_OPT_RECVBUF, recvbuf), 0);
	assert_int_equal(nng_dial(s, url, NULL, 0), 0);
	return s;
}

/*
 * A subscriber only gets what is published after the pub side has its
 * pipe, which happens after the dial returns: publish "hello" until one
 * arrives. Returns how many were published.
 */
static int wait_joined(struct sonde_export *ex, nng_socket s)
{
	nng_msg *m;
	int i;

	for (i = 1; i <= 250; i++) {
		assert_int_equal(sonde_export__publish(ex, "hello", "\x80", 1), 0);
		usleep(20 * 1000);
		if (!nng_recvmsg(s, &m, NNG_FLAG_NONBLOCK)) {
			nng_msg_free(m);
			return i;
		}
	}
	fail_msg("the subscriber never joined");
	return 0;
}

/* The next message that is not a "hello": its topic and its one map. */
static void receive(nng_socket s, char *topic, size_t topic_len, msgpack_unpacked *u)
{
	nng_msg *m;
	const char *body, *nul;

	for (;;) {
		assert_int_equal(nng_recvmsg(s, &m, 0), 0);
		body = nng_msg_body(m);
		nul = memchr(body, '\0', nng_msg_len(m));
		assert_non_null(nul); /* framing: the topic ends at a NUL */
		if (strcmp(body, "hello"))
			break;
		nng_msg_free(m);
	}
	assert_true((size_t)(nul - body) < topic_len);
	strcpy(topic, body);
	unpack_all(nul + 1, nng_msg_len(m) - (size_t)(nul + 1 - body), u);
	/* The object points into the zone, not into m, so m can go. */
	nng_msg_free(m);
}

static void publish_and_receive(const char *url)
{
	static const char *const topics[] = {"proc", "profile", NULL};
	struct sonde_export_profile *b = sonde_export_profile__new();
	msgpack_sbuffer proc_sb, profile_sb;
	char err[256], topic[80];
	struct sonde_export *ex;
	msgpack_unpacked u;
	nng_socket s;
	int hellos;

	ex = sonde_export__new(url, err, sizeof(err));
	if (!ex)
		fail_msg("%s: %s", url, err);
	s = subscriber(sonde_export__url(ex), topics, 0);
	hellos = wait_joined(ex, s);

	encode_proc(&start_msg, &proc_sb);
	build_profile(b, &profile_sb);
	/* "process" starts with "proc" but is not "proc": it must not arrive. */
	assert_int_equal(sonde_export__publish(ex, "process", proc_sb.data, proc_sb.size), 0);
	assert_int_equal(sonde_export__publish(ex, "proc", proc_sb.data, proc_sb.size), 0);
	assert_int_equal(sonde_export__publish(ex, "profile", profile_sb.data, profile_sb.size), 0);

	receive(s, topic, sizeof(topic), &u);
	assert_string_equal(topic, "proc");
	check_proc(&u.data);
	msgpack_unpacked_destroy(&u);
	receive(s, topic, sizeof(topic), &u);
	assert_string_equal(topic, "profile");
	check_profile(&u.data);
	msgpack_unpacked_destroy(&u);

	assert_int_equal(sonde_export__sent(ex), hellos + 3);
	assert_int_equal(sonde_export__dropped(ex), 0);
	/* Bad topics are refused and counted nowhere. */
	assert_int_equal(sonde_export__publish(ex, "", "\x80", 1), -EINVAL);
	assert_int_equal(sonde_export__publish(ex, "two words", "\x80", 1), -EINVAL);
	assert_int_equal(sonde_export__publish(ex, NULL, "\x80", 1), -EINVAL);
	assert_int_equal(sonde_export__sent(ex) + sonde_export__dropped(ex), hellos + 3);

	nng_close(s);
	msgpack_sbuffer_destroy(&proc_sb);
	msgpack_sbuffer_destroy(&profile_sb);
	sonde_export_profile__free(b);
	sonde_export__free(ex);
}

static void test_ipc(void **state)
{
	char url[300], path[256], dir[128];
	struct stat st;

	(void)state;
	/* The directory does not exist yet: the module makes it. */
	snprintf(dir, sizeof(dir), "%s/run/sonde", tmpdir);
	snprintf(path, sizeof(path), "%s/export.ipc", dir);
	snprintf(url, sizeof(url), "ipc://%s", path);
	{
		char err[256];
		struct sonde_export *ex = sonde_export__new(url, err, sizeof(err));

		if (!ex)
			fail_msg("%s", err);
		assert_string_equal(sonde_export__url(ex), url);
		assert_int_equal(stat(dir, &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		assert_int_equal(st.st_mode & 07777, 0755);
		assert_int_equal(stat(path, &st), 0);
		assert_true(S_ISSOCK(st.st_mode));
		assert_int_equal(st.st_mode & 07777, 0600);
		sonde_export__free(ex);
		/* Closing removes the socket file. */
		assert_int_equal(stat(path, &st), -1);
	}
	publish_and_receive(url);
}

static void test_tcp(void **state)
{
	char err[256];
	struct sonde_export *ex;
	int port = 0;

	(void)state;
	ex = sonde_export__new("tcp://127.0.0.1:0", err, sizeof(err));
	if (!ex)
		fail_msg("%s", err);
	/* Port 0: the URL tells which port the kernel chose. */
	assert_int_equal(sscanf(sonde_export__url(ex), "tcp://127.0.0.1:%d", &port), 1);
	assert_true(port > 0 && port < 65536);
	sonde_export__free(ex);
	publish_and_receive("tcp://127.0.0.1:0");
}

/*
 * A subscriber that stops reading altogether: a plain TCP socket that does
 * the SP handshake as a sub0 peer would (8 bytes: 0, "SP", 0, protocol
 * 0x0021, 0, 0) with a small receive buffer, and then reads nothing, so the
 * kernel's buffers fill and nng's queue for it too. (An nng sub0 socket
 * would not do: it keeps reading and drops on its own side.)
 */
static int stalled_subscriber(const char *url)
{
	static const unsigned char sub_hdr[8] = {0, 'S', 'P', 0, 0x00, 0x21, 0, 0};
	static const unsigned char pub_hdr[8] = {0, 'S', 'P', 0, 0x00, 0x20, 0, 0};
	struct sockaddr_in sa = {.sin_family = AF_INET};
	unsigned char hdr[8];
	int fd, port = 0, rcvbuf = 4096;

	assert_int_equal(sscanf(url, "tcp://127.0.0.1:%d", &port), 1);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, sub_hdr, sizeof(sub_hdr)), sizeof(sub_hdr));
	assert_int_equal(read(fd, hdr, sizeof(hdr)), sizeof(hdr));
	assert_memory_equal(hdr, pub_hdr, sizeof(hdr));
	return fd;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_slow_subscriber_does_not_block(void **state)
{
	static const char *const topics[] = {"proc", NULL};
	static char payload[4096];
	struct pollfd pfd = {.events = POLLIN};
	struct sonde_export *ex;
	msgpack_sbuffer proc_sb;
	msgpack_unpacked u;
	char err[256], topic[80], drain[4096];
	nng_socket fast;
	double t0, elapsed;
	int i, ret, hellos;
	uint64_t ok = 0, refused = 0;

	(void)state;
	ex = sonde_export__new("tcp://127.0.0.1:0", err, sizeof(err));
	if (!ex)
		fail_msg("%s", err);
	fast = subscriber(sonde_export__url(ex), topics, 0);
	hellos = wait_joined(ex, fast);
	pfd.fd = stalled_subscriber(sonde_export__url(ex));
	/* Joined once the first hello reaches it; after this it reads nothing. */
	for (i = 0; i < 250 && poll(&pfd, 1, 0) == 0; i++) {
		assert_int_equal(sonde_export__publish(ex, "hello", "\x80", 1), 0);
		hellos++;
		poll(&pfd, 1, 20);
	}
	assert_true(pfd.revents & POLLIN);
	assert_true(recv(pfd.fd, drain, sizeof(drain), MSG_DONTWAIT) > 0);
	payload[0] = (char)0x80;

	t0 = now();
	for (i = 0; i < 10000; i++) {
		ret = sonde_export__publish(ex, "profile", payload, sizeof(payload));
		if (ret == 0)
			ok++;
		else if (ret == -EAGAIN)
			refused++;
		else
			fail_msg("publish %d: %d", i, ret);
	}
	elapsed = now() - t0;
	/* 40 MB offered to a reader that takes nothing: it must not wait for it. */
	if (elapsed > 5.0)
		fail_msg("10000 publishes took %.1f s", elapsed);
	assert_int_equal(sonde_export__sent(ex), ok + hellos);
	assert_int_equal(sonde_export__dropped(ex), refused);
	assert_int_equal(ok + refused, 10000);

	/* The stalled one does not hold back a subscriber that reads. */
	encode_proc(&start_msg, &proc_sb);
	assert_int_equal(sonde_export__publish(ex, "proc", proc_sb.data, proc_sb.size), 0);
	receive(fast, topic, sizeof(topic), &u);
	assert_string_equal(topic, "proc");
	check_proc(&u.data);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&proc_sb);

	nng_close(fast);
	sonde_export__free(ex);
	close(pfd.fd);
}

static void expect_new_error(const char *url, int want_errno, const char *want_err)
{
	struct sonde_export *ex;
	char err[512];

	errno = 0;
	ex = sonde_export__new(url, err, sizeof(err));
	if (ex)
		fail_msg("%s: accepted", url);
	if (errno != want_errno || strcmp(err, want_err))
		fail_msg("%s: errno %d \"%s\", wanted %d \"%s\"", url, errno, err, want_errno,
			 want_err);
}

static void test_bad_urls(void **state)
{
	char url[300], want[600], path[256];
	struct sonde_export *ex, *ex2;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char err[256];
	FILE *f;
	int fd;

	(void)state;
	expect_new_error("foo://bar", EPROTONOSUPPORT,
			 "export: cannot listen on foo://bar: Not supported "
			 "(want ipc://PATH or tcp://HOST:PORT)");
	expect_new_error("not a url", EINVAL,
			 "export: not a URL: \"not a url\" (want ipc://PATH or tcp://HOST:PORT)");
	expect_new_error("tcp://256.0.0.1:5", EINVAL,
			 "export: cannot listen on tcp://256.0.0.1:5: Address invalid");
	expect_new_error("ipc://", EINVAL, "export: ipc://: no socket path after ipc://");

	/* A port already taken. */
	ex = sonde_export__new("tcp://127.0.0.1:0", err, sizeof(err));
	assert_non_null(ex);
	snprintf(want, sizeof(want), "export: cannot listen on %s: Address in use (is another sonded running?)",
		 sonde_export__url(ex));
	expect_new_error(sonde_export__url(ex), EADDRINUSE, want);
	sonde_export__free(ex);

	/* A live ipc socket is not taken over... */
	snprintf(url, sizeof(url), "ipc://%s/live.ipc", tmpdir);
	ex = sonde_export__new(url, err, sizeof(err));
	assert_non_null(ex);
	snprintf(want, sizeof(want), "export: cannot listen on %s: Address in use (is another sonded running?)", url);
	expect_new_error(url, EADDRINUSE, want);
	sonde_export__free(ex);

	/* ...a dead one is replaced... */
	snprintf(path, sizeof(path), "%s/stale.ipc", tmpdir);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	snprintf(url, sizeof(url), "ipc://%s", path);
	ex2 = sonde_export__new(url, err, sizeof(err));
	if (!ex2)
		fail_msg("stale socket: %s", err);
	sonde_export__free(ex2);

	/* ...and anything else at the path is left alone. */
	snprintf(path, sizeof(path), "%s/file", tmpdir);
	f = fopen(path, "w");
	assert_non_null(f);
	fclose(f);
	snprintf(url, sizeof(url), "ipc://%s", path);
	snprintf(want, sizeof(want), "export: %s exists and is not a socket", path);
	expect_new_error(url, EEXIST, want);
	assert_int_equal(access(path, F_OK), 0);

	/* A directory that cannot be made. */
	snprintf(url, sizeof(url), "ipc://%s/file/sub/x.ipc", tmpdir);
	snprintf(want, sizeof(want), "export: cannot create %s/file/sub: Not a directory", tmpdir);
	expect_new_error(url, ENOTDIR, want);

	sonde_export__free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_docs_match_schema),
		cmocka_unit_test(test_encode_proc),
		cmocka_unit_test(test_profile_builder),
		cmocka_unit_test(test_ipc),
		cmocka_unit_test(test_tcp),
		cmocka_unit_test(test_slow_subscriber_does_not_block),
		cmocka_unit_test(test_bad_urls),
	};
	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
