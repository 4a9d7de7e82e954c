// SPDX-License-Identifier: MIT
/*
 * sondectl: the command-line client of sonded's control socket (nng req0,
 * msgpack maps; docs/control.md) and of its export socket (nng sub0).
 *
 * It links nng and msgpack only, never the daemon's core, so it needs no
 * BPF and no privileges beyond access to the sockets.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>

/* Only its macros: sondectl links none of the core. */
#include "control.h"
#include "export.h" /* only for SONDE_EXPORT_DEFAULT_URL */

#define EXIT_FAIL  1
#define EXIT_USAGE 2

#define DEFAULT_TIMEOUT_S 5.0
#define DEFAULT_SECONDS	  10
#define DEFAULT_INTERVAL  2
#define DEFAULT_ROWS	  20

static const char usage_text[] =
	"Usage: sondectl [OPTIONS] COMMAND [ARGS]\n"
	"\n"
	"Talks to sonded over its control socket (nng req/rep, msgpack maps; the\n"
	"protocol is docs/control.md) and reads its export socket.\n"
	"\n"
	"Commands:\n"
	"  status          version, uptime, sampling, script, plugins, counters\n"
	"  ps              processes: unwinders (+other plugins), container, declines\n"
	"  top             live top functions by self samples, refreshed like perf top\n"
	"  record -o FILE  write a pprof profile (gzip'd protobuf) to FILE\n"
	"  folded          folded stacks on stdout (\"root;...;leaf count\"), for\n"
	"                  flamegraph.pl and speedscope\n"
	"  tail TOPIC      print the messages of an export topic, one JSON line each\n"
	"\n"
	"Options:\n"
	"  --control URL   control socket (default " SONDE_CONTROL_URL_DEFAULT ")\n"
	"  --export URL    export socket for tail (default " SONDE_EXPORT_DEFAULT_URL ")\n"
	"  --timeout S     seconds to wait for a reply beyond the profile's own\n"
	"                  duration (default 5); tail: give up after S seconds\n"
	"                  without a message (default: wait forever)\n"
	"  --json          status, ps: print the whole reply as one JSON document\n"
	"  --pid N         top, record, folded: only samples of process N\n"
	"  --comm NAME     top, record, folded: only samples of processes named NAME\n"
	"  --seconds N     record, folded: profile the next N seconds (default 10)\n"
	"  --last S        record, folded: the past S seconds, from the windows\n"
	"                  sonded keeps in memory\n"
	"  --since T, --until T\n"
	"                  record, folded: the same between two unix times\n"
	"  --interval S    top: refresh every S seconds (default 2)\n"
	"  --rows N        top: functions per block (default: fit the terminal, or 20)\n"
	"  --once          top: print one block and exit\n"
	"  -o, --output FILE  record: the pprof file to write\n"
	"  --count N       tail: exit after N messages\n"
	"  -h, --help      print this help\n"
	"  -V, --version   print sondectl's version\n"
	"\n"
	"JSON output: msgpack bin values are written as base64 strings.\n"
	"Exit status: 0 success, 1 sonded unreachable or the request failed,\n"
	"2 usage error.\n";

enum opt_id {
	OPT_CONTROL = 1,
	OPT_EXPORT,
	OPT_TIMEOUT,
	OPT_JSON,
	OPT_PID,
	OPT_COMM,
	OPT_SECONDS,
	OPT_LAST,
	OPT_SINCE,
	OPT_UNTIL,
	OPT_INTERVAL,
	OPT_ROWS,
	OPT_ONCE,
	OPT_OUTPUT,
	OPT_COUNT,
	OPT_HELP,
	OPT_VERSION,
	OPT__MAX,
};

#define BIT(o)	    (1u << (o))
#define WINDOW_OPTS (BIT(OPT_SECONDS) | BIT(OPT_LAST) | BIT(OPT_SINCE) | BIT(OPT_UNTIL))
#define FILTER_OPTS (BIT(OPT_PID) | BIT(OPT_COMM))

static const struct option long_opts[] = {
	{"control", required_argument, NULL, OPT_CONTROL},
	{"export", required_argument, NULL, OPT_EXPORT},
	{"timeout", required_argument, NULL, OPT_TIMEOUT},
	{"json", no_argument, NULL, OPT_JSON},
	{"pid", required_argument, NULL, OPT_PID},
	{"comm", required_argument, NULL, OPT_COMM},
	{"seconds", required_argument, NULL, OPT_SECONDS},
	{"last", required_argument, NULL, OPT_LAST},
	{"since", required_argument, NULL, OPT_SINCE},
	{"until", required_argument, NULL, OPT_UNTIL},
	{"interval", required_argument, NULL, OPT_INTERVAL},
	{"rows", required_argument, NULL, OPT_ROWS},
	{"once", no_argument, NULL, OPT_ONCE},
	{"output", required_argument, NULL, OPT_OUTPUT},
	{"count", required_argument, NULL, OPT_COUNT},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	{0},
};

struct opts {
	const char *control_url;
	const char *export_url;
	double timeout_s;
	bool timeout_set;
	bool json;
	int64_t pid;
	const char *comm;
	int64_t seconds;
	int64_t last;
	int64_t since;
	int64_t until;
	int64_t interval;
	int64_t rows;
	bool once;
	const char *output;
	int64_t count;
	unsigned int seen; /* BIT(opt) of every option given */
};

__attribute__((format(printf, 1, 2))) static void errmsg(const char *fmt, ...)
{
	va_list ap;

	fputs("sondectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static const char *opt_name(int id)
{
	for (const struct option *o = long_opts; o->name; o++)
		if (o->val == id)
			return o->name;
	return "?";
}

static int parse_int(const char *s, int64_t min, int64_t max, int id, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		errmsg("--%s wants an integer from %" PRId64 " to %" PRId64 ", not \"%s\"",
		       opt_name(id), min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int parse_seconds(const char *s, int id, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > 86400 * 365) {
		errmsg("--%s wants a positive number of seconds, not \"%s\"", opt_name(id), s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* ---- JSON output of msgpack objects ---------------------------------- */

static void json_escape(FILE *f, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	fputc('"', f);
	while (p < end) {
		unsigned char ch = *p;
		uint32_t cp;
		size_t len;

		if (ch < 0x80) {
			switch (ch) {
			case '"':
				fputs("\\\"", f);
				break;
			case '\\':
				fputs("\\\\", f);
				break;
			case '\n':
				fputs("\\n", f);
				break;
			case '\r':
				fputs("\\r", f);
				break;
			case '\t':
				fputs("\\t", f);
				break;
			case '\b':
				fputs("\\b", f);
				break;
			case '\f':
				fputs("\\f", f);
				break;
			default:
				if (ch < 0x20 || ch == 0x7f)
					fprintf(f, "\\u%04x", ch);
				else
					fputc(ch, f);
			}
			p++;
			continue;
		}
		/* Valid UTF-8 passes through; each bad byte becomes U+FFFD. */
		if (ch >= 0xc2 && ch <= 0xdf) {
			len = 2;
			cp = ch & 0x1f;
		} else if (ch >= 0xe0 && ch <= 0xef) {
			len = 3;
			cp = ch & 0x0f;
		} else if (ch >= 0xf0 && ch <= 0xf4) {
			len = 4;
			cp = ch & 0x07;
		} else {
			len = 0;
			cp = 0;
		}
		if (len && (size_t)(end - p) >= len) {
			size_t i;

			for (i = 1; i < len; i++) {
				if ((p[i] & 0xc0) != 0x80)
					break;
				cp = (cp << 6) | (p[i] & 0x3f);
			}
			/* Reject overlongs, surrogates and beyond U+10FFFF. */
			if (i == len && !(len == 3 && cp < 0x800) && !(len == 4 && cp < 0x10000) &&
			    !(cp >= 0xd800 && cp <= 0xdfff) && cp <= 0x10ffff) {
				fwrite(p, 1, len, f);
				p += len;
				continue;
			}
		}
		fputs("\\ufffd", f);
		p++;
	}
	fputc('"', f);
}

static void base64(FILE *f, const unsigned char *p, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

	fputc('"', f);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		fputc(tab[(v >> 18) & 63], f);
		fputc(tab[(v >> 12) & 63], f);
		fputc(i + 1 < n ? tab[(v >> 6) & 63] : '=', f);
		fputc(i + 2 < n ? tab[v & 63] : '=', f);
	}
	fputc('"', f);
}

static void json_write(FILE *f, const msgpack_object *o);

static void json_key(FILE *f, const msgpack_object *k)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *mem;

	if (k->type == MSGPACK_OBJECT_STR) {
		json_escape(f, k->via.str.ptr, k->via.str.size);
		return;
	}
	/* JSON keys are strings: a non-string key becomes its JSON text. */
	mem = open_memstream(&buf, &len);
	if (!mem) {
		fputs("\"?\"", f);
		return;
	}
	json_write(mem, k);
	fclose(mem);
	json_escape(f, buf, len);
	free(buf);
}

static void json_write(FILE *f, const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		fputs("null", f);
		break;
	case MSGPACK_OBJECT_BOOLEAN:
		fputs(o->via.boolean ? "true" : "false", f);
		break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		fprintf(f, "%" PRIu64, o->via.u64);
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		fprintf(f, "%" PRId64, o->via.i64);
		break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (isfinite(o->via.f64))
			fprintf(f, "%.17g", o->via.f64);
		else
			fputs("null", f);
		break;
	case MSGPACK_OBJECT_STR:
		json_escape(f, o->via.str.ptr, o->via.str.size);
		break;
	case MSGPACK_OBJECT_BIN:
		base64(f, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
		break;
	case MSGPACK_OBJECT_EXT:
		fprintf(f, "{\"ext_type\":%d,\"base64\":", o->via.ext.type);
		base64(f, (const unsigned char *)o->via.ext.ptr, o->via.ext.size);
		fputc('}', f);
		break;
	case MSGPACK_OBJECT_ARRAY:
		fputc('[', f);
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			if (i)
				fputc(',', f);
			json_write(f, &o->via.array.ptr[i]);
		}
		fputc(']', f);
		break;
	case MSGPACK_OBJECT_MAP:
		fputc('{', f);
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			if (i)
				fputc(',', f);
			json_key(f, &o->via.map.ptr[i].key);
			fputc(':', f);
			json_write(f, &o->via.map.ptr[i].val);
		}
		fputc('}', f);
		break;
	default:
		fputs("null", f);
	}
}

/* ---- msgpack helpers --------------------------------------------------- */

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
	size_t klen = strlen(key);

	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
		    !memcmp(k->via.str.ptr, key, klen))
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

static bool get_int(const msgpack_object *map, const char *key, int64_t *out)
{
	const msgpack_object *o = get(map, key);

	if (!o)
		return false;
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		*out = o->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)o->via.u64;
		return true;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		*out = o->via.i64;
		return true;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		*out = (int64_t)o->via.f64;
		return true;
	default:
		return false;
	}
}

/* A str or bin value as bytes; NULL if absent or of another type. */
static const char *get_bytes(const msgpack_object *map, const char *key, size_t *len)
{
	const msgpack_object *o = get(map, key);

	if (o && o->type == MSGPACK_OBJECT_STR) {
		*len = o->via.str.size;
		return o->via.str.ptr;
	}
	if (o && o->type == MSGPACK_OBJECT_BIN) {
		*len = o->via.bin.size;
		return o->via.bin.ptr;
	}
	return NULL;
}

/* Prints a str value (or fallback) with at most max bytes, "%.*s" style. */
static void print_str(const msgpack_object *o, const char *fallback, int width, size_t max)
{
	if (o && o->type == MSGPACK_OBJECT_STR && o->via.str.size) {
		int n = (int)(o->via.str.size < max ? o->via.str.size : max);

		printf("%-*.*s", width > n ? width : n, n, o->via.str.ptr);
	} else {
		printf("%-*s", width, fallback);
	}
}

/* Numbers as the daemon sent them: integers plainly, floats with %g. */
static void print_num(const msgpack_object *o)
{
	if (!o)
		fputs("?", stdout);
	else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		printf("%" PRIu64, o->via.u64);
	else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		printf("%" PRId64, o->via.i64);
	else if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
		printf("%g", o->via.f64);
	else
		fputs("?", stdout);
}

static int sbuf_write(void *data, const char *buf, size_t len)
{
	return msgpack_sbuffer_write(data, buf, len);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* ---- the control connection ------------------------------------------- */

struct reply {
	nng_msg *msg;
	msgpack_unpacked unp;
	const msgpack_object *map;
};

static void reply_free(struct reply *r)
{
	msgpack_unpacked_destroy(&r->unp);
	if (r->msg)
		nng_msg_free(r->msg);
	r->msg = NULL;
}

/*
 * nng reports a missing ipc path as "connection refused", which reads as if
 * something were there: look at the path ourselves.
 */
static const char *dial_reason(const char *url, int rv)
{
	struct stat st;

	if ((rv == NNG_ECONNREFUSED || rv == NNG_ENOENT) && !strncmp(url, "ipc://", 6)) {
		if (stat(url + 6, &st) && errno == ENOENT)
			return "no such socket (is sonded running?)";
		if (!stat(url + 6, &st) && !S_ISSOCK(st.st_mode))
			return "not a socket";
	}
	switch (rv) {
	case NNG_ENOENT:
		return "no such socket (is sonded running?)";
	case NNG_ECONNREFUSED:
		return "connection refused (is sonded running?)";
	case NNG_EPERM:
		return "permission denied (the socket is root's: run sondectl as root)";
	default:
		return nng_strerror(rv);
	}
}

static int ms_of(double s)
{
	double ms = s * 1000.0;

	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/*
 * Args of a request beyond v and cmd, packed by the caller into `args`
 * (nargs pairs). wait_s is how long the request takes by design (a profile
 * of N seconds); the timeout comes on top.
 */
static int request(const struct opts *o, const char *cmd, const msgpack_sbuffer *args,
		   uint32_t nargs, double wait_s, struct reply *rep)
{
	double timeout = o->timeout_set ? o->timeout_s : DEFAULT_TIMEOUT_S;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	nng_socket sock;
	nng_msg *msg = NULL;
	const msgpack_object *v, *ok;
	size_t off = 0;
	int rv, ret = -1;

	memset(rep, 0, sizeof(*rep));
	msgpack_unpacked_init(&rep->unp);
	msgpack_sbuffer_init(&sb);

	rv = nng_req0_open(&sock);
	if (rv) {
		errmsg("cannot open an nng req socket: %s", nng_strerror(rv));
		msgpack_sbuffer_destroy(&sb);
		return -1;
	}
	/* A profile reply may take minutes: never let req0 resend (and restart it). */
	nng_socket_set_ms(sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, 0);
	nng_socket_set_ms(sock, NNG_OPT_SENDTIMEO, ms_of(timeout));
	nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, ms_of(timeout + wait_s));

	rv = nng_dial(sock, o->control_url, NULL, 0);
	if (rv) {
		errmsg("cannot reach sonded at %s: %s", o->control_url,
		       dial_reason(o->control_url, rv));
		goto cleanup;
	}

	msgpack_packer_init(&pk, &sb, sbuf_write);
	msgpack_pack_map(&pk, 2 + nargs);
	pack_str(&pk, "v");
	msgpack_pack_int(&pk, SONDE_CONTROL_VERSION);
	pack_str(&pk, "cmd");
	pack_str(&pk, cmd);
	if (args && args->size)
		msgpack_sbuffer_write(&sb, args->data, args->size);

	rv = nng_send(sock, sb.data, sb.size, 0);
	if (!rv)
		rv = nng_recvmsg(sock, &msg, 0);
	if (rv == NNG_ETIMEDOUT) {
		errmsg("no reply from sonded at %s within %g s", o->control_url, timeout + wait_s);
		goto cleanup;
	}
	if (rv) {
		errmsg("talking to sonded at %s: %s", o->control_url, nng_strerror(rv));
		goto cleanup;
	}
	rep->msg = msg;
	if (msgpack_unpack_next(&rep->unp, nng_msg_body(msg), nng_msg_len(msg), &off) !=
		    MSGPACK_UNPACK_SUCCESS ||
	    rep->unp.data.type != MSGPACK_OBJECT_MAP) {
		errmsg("sonded at %s sent a reply that is not a msgpack map", o->control_url);
		goto cleanup;
	}
	rep->map = &rep->unp.data;
	v = get(rep->map, "v");
	if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
	    v->via.u64 != SONDE_CONTROL_VERSION) {
		errmsg("sonded speaks another control protocol version (this sondectl: v=%d)",
		       SONDE_CONTROL_VERSION);
		goto cleanup;
	}
	ok = get(rep->map, "ok");
	if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean) {
		const msgpack_object *e = get(rep->map, "error");

		if (e && e->type == MSGPACK_OBJECT_STR)
			errmsg("sonded: %.*s", (int)e->via.str.size, e->via.str.ptr);
		else
			errmsg("sonded: request \"%s\" failed", cmd);
		goto cleanup;
	}
	ret = 0;
cleanup:
	if (ret)
		reply_free(rep);
	msgpack_sbuffer_destroy(&sb);
	nng_close(sock);
	return ret;
}

/* ---- status, ps ------------------------------------------------------- */

static void print_duration(int64_t s)
{
	int64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;

	if (d)
		printf("%" PRId64 "d %" PRId64 "h %" PRId64 "m %" PRId64 "s", d, h, m, sec);
	else if (h)
		printf("%" PRId64 "h %" PRId64 "m %" PRId64 "s", h, m, sec);
	else if (m)
		printf("%" PRId64 "m %" PRId64 "s", m, sec);
	else
		printf("%" PRId64 "s", sec);
}

static int cmd_status(const struct opts *o)
{
	const msgpack_object *m, *plugins;
	struct reply rep;
	int64_t up;

	if (request(o, "status", NULL, 0, 0, &rep))
		return EXIT_FAIL;
	m = rep.map;
	if (o->json) {
		json_write(stdout, m);
		putchar('\n');
		reply_free(&rep);
		return 0;
	}
	fputs("sonded ", stdout);
	print_str(get(m, "version"), "?", 0, 64);
	if (get_int(m, "uptime", &up)) {
		fputs(", up ", stdout);
		print_duration(up);
	}
	fputs("\nsampling:  ", stdout);
	print_num(get(m, "hz"));
	fputs(" Hz on ", stdout);
	print_num(get(m, "cpus"));
	fputs(" CPUs, ", stdout);
	print_num(get(m, "window"));
	fputs(" s windows\nscript:    ", stdout);
	print_str(get(m, "script"), "-", 0, 4096);
	fputs("\nplugins:   ", stdout);
	plugins = get(m, "plugins");
	if (!plugins || plugins->type != MSGPACK_OBJECT_ARRAY || !plugins->via.array.size) {
		fputs("none", stdout);
	} else {
		for (uint32_t i = 0; i < plugins->via.array.size; i++) {
			const msgpack_object *p = &plugins->via.array.ptr[i];

			if (i)
				fputs(", ", stdout);
			print_str(get(p, "name"), "?", 0, 256);
			if (get(p, "version")) {
				putchar(' ');
				print_str(get(p, "version"), "?", 0, 64);
			}
		}
	}
	fputs("\nsamples:   ", stdout);
	print_num(get(m, "samples"));
	fputs(" (dropped ", stdout);
	print_num(get(m, "dropped"));
	fputs(")\nprocesses: ", stdout);
	print_num(get(m, "processes"));
	putchar('\n');
	reply_free(&rep);
	return 0;
}

static int cmp_pid(const void *a, const void *b)
{
	int64_t pa = 0, pb = 0;

	get_int(*(const msgpack_object *const *)a, "pid", &pa);
	get_int(*(const msgpack_object *const *)b, "pid", &pb);
	return (pa > pb) - (pa < pb);
}

static int cmd_ps(const struct opts *o)
{
	const msgpack_object *procs, **rows = NULL;
	struct reply rep;
	uint32_t n;
	int ret = EXIT_FAIL;

	if (request(o, "ps", NULL, 0, 0, &rep))
		return EXIT_FAIL;
	if (o->json) {
		json_write(stdout, rep.map);
		putchar('\n');
		ret = 0;
		goto cleanup;
	}
	procs = get(rep.map, "processes");
	if (!procs || procs->type != MSGPACK_OBJECT_ARRAY) {
		errmsg("sonded's ps reply has no \"processes\" array");
		goto cleanup;
	}
	n = procs->via.array.size;
	rows = calloc(n ? n : 1, sizeof(*rows));
	if (!rows) {
		errmsg("out of memory");
		goto cleanup;
	}
	for (uint32_t i = 0; i < n; i++)
		rows[i] = &procs->via.array.ptr[i];
	qsort(rows, n, sizeof(*rows), cmp_pid);

	printf("%-8s %-16s %-24s %s\n", "PID", "COMM", "UNWINDERS", "CONTAINER");
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *p = rows[i], *unw = get(p, "unwinders");
		const msgpack_object *prof = get(p, "profiled"), *declined = get(p, "declined");
		const msgpack_object *notes;
		char unwbuf[256] = "";
		size_t used = 0;
		int64_t pid = 0;

		get_int(p, "pid", &pid);
		if (prof && prof->type == MSGPACK_OBJECT_BOOLEAN && !prof->via.boolean) {
			snprintf(unwbuf, sizeof(unwbuf), "(not profiled)");
		} else {
			/* the unwinders, then "+plugin" for the others watching it */
			const msgpack_object *lists[2] = { unw, get(p, "plugins") };

			for (int l = 0; l < 2; l++) {
				if (!lists[l] || lists[l]->type != MSGPACK_OBJECT_ARRAY)
					continue;
				for (uint32_t j = 0; j < lists[l]->via.array.size; j++) {
					const msgpack_object *u = &lists[l]->via.array.ptr[j];

					if (u->type != MSGPACK_OBJECT_STR || used >= sizeof(unwbuf))
						continue;
					used += snprintf(unwbuf + used, sizeof(unwbuf) - used,
							 "%s%s%.*s", used ? "," : "", l ? "+" : "",
							 (int)u->via.str.size, u->via.str.ptr);
				}
			}
		}
		if (!unwbuf[0])
			snprintf(unwbuf, sizeof(unwbuf), "-");
		printf("%-8" PRId64 " ", pid);
		print_str(get(p, "comm"), "?", 16, 16);
		printf(" %-24s ", unwbuf);
		/* Container ids are 64 hex digits; 12 tell them apart, as docker ps. */
		print_str(get(p, "container_id"), "-", 0, 12);
		putchar('\n');
		if (declined && declined->type == MSGPACK_OBJECT_ARRAY) {
			for (uint32_t j = 0; j < declined->via.array.size; j++) {
				const msgpack_object *d = &declined->via.array.ptr[j];

				fputs("         declined by ", stdout);
				print_str(get(d, "plugin"), "?", 0, 256);
				fputs(": ", stdout);
				print_str(get(d, "reason"), "no reason given", 0, 4096);
				putchar('\n');
			}
		}
		notes = get(p, "notes");
		if (notes && notes->type == MSGPACK_OBJECT_ARRAY) {
			for (uint32_t j = 0; j < notes->via.array.size; j++) {
				const msgpack_object *note = &notes->via.array.ptr[j];

				fputs("         ", stdout);
				print_str(get(note, "plugin"), "?", 0, 256);
				fputs(": ", stdout);
				print_str(get(note, "note"), "", 0, 4096);
				putchar('\n');
			}
		}
	}
	ret = 0;
cleanup:
	free(rows);
	reply_free(&rep);
	return ret;
}

/* ---- profiles: record, folded, top ------------------------------------ */

/*
 * The "profile" request: a window (seconds, or since/until) and filters.
 * Returns how long the daemon takes by design through *wait_s.
 */
static uint32_t pack_profile_args(const struct opts *o, msgpack_sbuffer *sb, const char *format,
				  int64_t seconds, double *wait_s)
{
	msgpack_packer pk;
	uint32_t n = 1;

	msgpack_packer_init(&pk, sb, sbuf_write);
	pack_str(&pk, "format");
	pack_str(&pk, format);
	*wait_s = 0;
	if (o->seen & (BIT(OPT_SINCE) | BIT(OPT_UNTIL) | BIT(OPT_LAST))) {
		int64_t now = time(NULL);
		int64_t since = o->seen & BIT(OPT_LAST) ? now - o->last : o->since;
		int64_t until = o->seen & BIT(OPT_LAST) ? now : o->until;

		pack_str(&pk, "since");
		msgpack_pack_int64(&pk, since);
		pack_str(&pk, "until");
		msgpack_pack_int64(&pk, until);
		n += 2;
	} else {
		pack_str(&pk, "seconds");
		msgpack_pack_int64(&pk, seconds);
		*wait_s = (double)seconds;
		n++;
	}
	if (o->seen & BIT(OPT_PID)) {
		pack_str(&pk, "pid");
		msgpack_pack_int64(&pk, o->pid);
		n++;
	}
	if (o->comm) {
		pack_str(&pk, "comm");
		pack_str(&pk, o->comm);
		n++;
	}
	return n;
}

static int profile(const struct opts *o, const char *format, int64_t seconds, struct reply *rep,
		   const char **data, size_t *len)
{
	msgpack_sbuffer sb;
	uint32_t n;
	double wait_s;
	int ret;

	msgpack_sbuffer_init(&sb);
	n = pack_profile_args(o, &sb, format, seconds, &wait_s);
	ret = request(o, "profile", &sb, n, wait_s, rep);
	msgpack_sbuffer_destroy(&sb);
	if (ret)
		return -1;
	*data = get_bytes(rep->map, "data", len);
	if (!*data) {
		errmsg("sonded's profile reply has no \"data\"");
		reply_free(rep);
		return -1;
	}
	return 0;
}

static int cmd_record(const struct opts *o)
{
	struct reply rep;
	const char *data;
	size_t len, done = 0;
	int64_t samples;
	int fd, ret = EXIT_FAIL;

	if (profile(o, "pprof", o->seconds, &rep, &data, &len))
		return EXIT_FAIL;
	fd = open(o->output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		errmsg("cannot write %s: %s", o->output, strerror(errno));
		goto cleanup;
	}
	while (done < len) {
		ssize_t w = write(fd, data + done, len - done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			errmsg("cannot write %s: %s", o->output, strerror(errno));
			close(fd);
			goto cleanup;
		}
		done += (size_t)w;
	}
	if (close(fd)) {
		errmsg("cannot write %s: %s", o->output, strerror(errno));
		goto cleanup;
	}
	if (get_int(rep.map, "samples", &samples))
		printf("wrote %s (%" PRId64 " samples, %zu bytes)\n", o->output, samples, len);
	else
		printf("wrote %s (%zu bytes)\n", o->output, len);
	ret = 0;
cleanup:
	reply_free(&rep);
	return ret;
}

static int cmd_folded(const struct opts *o)
{
	struct reply rep;
	const char *data;
	size_t len;

	if (profile(o, "folded", o->seconds, &rep, &data, &len))
		return EXIT_FAIL;
	fwrite(data, 1, len, stdout);
	if (len && data[len - 1] != '\n')
		putchar('\n');
	reply_free(&rep);
	return fflush(stdout) ? EXIT_FAIL : 0;
}

/*
 * top: self and total samples per function of one folded profile. A
 * function counts once per stack toward total even when it recurses: the
 * entry remembers the last line that counted it.
 */
struct fn {
	char *name;
	uint64_t self;
	uint64_t total;
	size_t last_line;
};

struct fn_table {
	struct fn *slots;
	size_t cap;
	size_t len;
};

static uint64_t hash_str(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
	return h;
}

static struct fn *fn_get(struct fn_table *t, const char *name, size_t n)
{
	size_t i;

	if ((t->len + 1) * 2 > t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 256;
		struct fn *ns = calloc(ncap, sizeof(*ns));

		if (!ns)
			return NULL;
		for (size_t j = 0; j < t->cap; j++) {
			struct fn *e = &t->slots[j];

			if (!e->name)
				continue;
			i = hash_str(e->name, strlen(e->name)) & (ncap - 1);
			while (ns[i].name)
				i = (i + 1) & (ncap - 1);
			ns[i] = *e;
		}
		free(t->slots);
		t->slots = ns;
		t->cap = ncap;
	}
	i = hash_str(name, n) & (t->cap - 1);
	while (t->slots[i].name) {
		if (!strncmp(t->slots[i].name, name, n) && t->slots[i].name[n] == '\0')
			return &t->slots[i];
		i = (i + 1) & (t->cap - 1);
	}
	t->slots[i].name = strndup(name, n);
	if (!t->slots[i].name)
		return NULL;
	t->len++;
	return &t->slots[i];
}

static void fn_table_free(struct fn_table *t)
{
	for (size_t i = 0; i < t->cap; i++)
		free(t->slots[i].name);
	free(t->slots);
	memset(t, 0, sizeof(*t));
}

/* Parses folded text into t; returns the total sample count or -1 (ENOMEM). */
static int64_t fold_count(struct fn_table *t, const char *data, size_t len)
{
	const char *p = data, *end = data + len;
	size_t line_no = 0;
	int64_t total = 0;

	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *sp, *f;
		char numbuf[24];
		uint64_t count;
		size_t nlen;
		char *nend;

		if (!eol)
			eol = end;
		line_no++;
		/* The count follows the last space: frames may hold spaces. */
		for (sp = eol; sp > p && sp[-1] != ' '; sp--)
			;
		nlen = (size_t)(eol - sp);
		if (sp == p || nlen == 0 || nlen >= sizeof(numbuf))
			goto next;
		memcpy(numbuf, sp, nlen);
		numbuf[nlen] = '\0';
		count = strtoull(numbuf, &nend, 10);
		if (*nend || !count)
			goto next;
		total += (int64_t)count;
		for (f = p; f < sp - 1;) {
			const char *semi = memchr(f, ';', (size_t)(sp - 1 - f));
			const char *fend = semi ? semi : sp - 1;
			struct fn *e = fn_get(t, f, (size_t)(fend - f));

			if (!e)
				return -1;
			if (e->last_line != line_no) {
				e->total += count;
				e->last_line = line_no;
			}
			if (!semi) {
				e->self += count;
				break;
			}
			f = semi + 1;
		}
	next:
		p = eol + 1;
	}
	return total;
}

static int cmp_fn(const void *a, const void *b)
{
	const struct fn *x = *(const struct fn *const *)a, *y = *(const struct fn *const *)b;

	if (x->self != y->self)
		return x->self < y->self ? 1 : -1;
	if (x->total != y->total)
		return x->total < y->total ? 1 : -1;
	return strcmp(x->name, y->name);
}

static int top_block(const struct opts *o, bool tty)
{
	struct fn_table t = {0};
	struct fn **order = NULL;
	struct reply rep;
	const char *data;
	size_t len, k = 0;
	int64_t total, rows = o->rows;
	int ret = -1;

	if (profile(o, "folded", o->interval, &rep, &data, &len))
		return -1;
	total = fold_count(&t, data, len);
	if (total < 0) {
		errmsg("out of memory");
		goto cleanup;
	}
	order = calloc(t.len ? t.len : 1, sizeof(*order));
	if (!order) {
		errmsg("out of memory");
		goto cleanup;
	}
	for (size_t i = 0; i < t.cap; i++)
		if (t.slots[i].name)
			order[k++] = &t.slots[i];
	qsort(order, k, sizeof(*order), cmp_fn);

	if (!(o->seen & BIT(OPT_ROWS))) {
		struct winsize ws;

		rows = DEFAULT_ROWS;
		if (tty && !ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) && ws.ws_row > 4)
			rows = ws.ws_row - 4;
	}
	if (tty)
		fputs("\033[H\033[2J", stdout);
	printf("%" PRId64 " samples in %" PRId64 " s", total, o->interval);
	if (o->seen & BIT(OPT_PID))
		printf(", pid %" PRId64, o->pid);
	if (o->comm)
		printf(", comm %s", o->comm);
	printf("\n\n%7s %7s %9s  %s\n", "SELF%", "TOTAL%", "SAMPLES", "FUNCTION");
	for (size_t i = 0; i < k && (int64_t)i < rows; i++) {
		if (!order[i]->self)
			break;
		printf("%6.2f%% %6.2f%% %9" PRIu64 "  %s\n", 100.0 * order[i]->self / total,
		       100.0 * order[i]->total / total, order[i]->self, order[i]->name);
	}
	if (!tty)
		putchar('\n');
	fflush(stdout);
	ret = 0;
cleanup:
	free(order);
	fn_table_free(&t);
	reply_free(&rep);
	return ret;
}

static int cmd_top(const struct opts *o)
{
	bool tty = isatty(STDOUT_FILENO);

	do {
		if (top_block(o, tty))
			return EXIT_FAIL;
	} while (!o->once);
	return 0;
}

/* ---- tail --------------------------------------------------------------- */

static int cmd_tail(const struct opts *o, const char *topic)
{
	size_t tlen = strlen(topic);
	nng_socket sock;
	int64_t seen = 0;
	int rv, ret = EXIT_FAIL;

	rv = nng_sub0_open(&sock);
	if (rv) {
		errmsg("cannot open an nng sub socket: %s", nng_strerror(rv));
		return EXIT_FAIL;
	}
	/* Topic framing: the topic, one NUL, then the msgpack map. */
	rv = nng_socket_set(sock, NNG_OPT_SUB_SUBSCRIBE, topic, tlen + 1);
	if (rv) {
		errmsg("cannot subscribe to %s: %s", topic, nng_strerror(rv));
		goto cleanup;
	}
	nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, 0);
	if (o->timeout_set)
		nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, ms_of(o->timeout_s));
	rv = nng_dial(sock, o->export_url, NULL, 0);
	if (rv) {
		errmsg("cannot reach sonded's export socket at %s: %s", o->export_url,
		       dial_reason(o->export_url, rv));
		goto cleanup;
	}
	while (!(o->seen & BIT(OPT_COUNT)) || seen < o->count) {
		msgpack_unpacked unp;
		nng_msg *msg;
		const char *body;
		size_t len, off = tlen + 1;

		rv = nng_recvmsg(sock, &msg, 0);
		if (rv == NNG_ETIMEDOUT) {
			errmsg("no message on topic \"%s\" within %g s", topic, o->timeout_s);
			goto cleanup;
		}
		if (rv) {
			errmsg("reading %s: %s", o->export_url, nng_strerror(rv));
			goto cleanup;
		}
		body = nng_msg_body(msg);
		len = nng_msg_len(msg);
		msgpack_unpacked_init(&unp);
		if (len < off || memcmp(body, topic, tlen) || body[tlen] != '\0' ||
		    msgpack_unpack_next(&unp, body, len, &off) != MSGPACK_UNPACK_SUCCESS) {
			errmsg("skipped a malformed message on topic \"%s\"", topic);
		} else {
			json_write(stdout, &unp.data);
			putchar('\n');
			fflush(stdout);
			seen++;
		}
		msgpack_unpacked_destroy(&unp);
		nng_msg_free(msg);
	}
	ret = 0;
cleanup:
	nng_close(sock);
	return ret;
}

/* ---- main --------------------------------------------------------------- */

struct command {
	const char *name;
	unsigned int allowed; /* options beyond the global ones */
	int nargs;
};

#define GLOBAL_OPTS                                                                                \
	(BIT(OPT_CONTROL) | BIT(OPT_EXPORT) | BIT(OPT_TIMEOUT) | BIT(OPT_HELP) | BIT(OPT_VERSION))

static const struct command commands[] = {
	{"status", BIT(OPT_JSON), 0},
	{"ps", BIT(OPT_JSON), 0},
	{"top", FILTER_OPTS | BIT(OPT_INTERVAL) | BIT(OPT_ROWS) | BIT(OPT_ONCE), 0},
	{"record", FILTER_OPTS | WINDOW_OPTS | BIT(OPT_OUTPUT), 0},
	{"folded", FILTER_OPTS | WINDOW_OPTS, 0},
	{"tail", BIT(OPT_COUNT), 1},
};

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("sondectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'sondectl --help'.\n", stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	struct opts o = {
		.control_url = SONDE_CONTROL_URL_DEFAULT,
		.export_url = SONDE_EXPORT_DEFAULT_URL,
		.seconds = DEFAULT_SECONDS,
		.interval = DEFAULT_INTERVAL,
		.rows = DEFAULT_ROWS,
	};
	const struct command *cmd = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "ho:V", long_opts, NULL)) != -1) {
		int id = c == 'h' ? OPT_HELP : c == 'V' ? OPT_VERSION : c == 'o' ? OPT_OUTPUT : c;
		int bad = 0;

		/* getopt has said what was wrong. */
		if (id <= 0 || id >= OPT__MAX) {
			fputs("Try 'sondectl --help'.\n", stderr);
			return EXIT_USAGE;
		}
		o.seen |= BIT(id);
		switch (id) {
		case OPT_CONTROL:
			o.control_url = optarg;
			break;
		case OPT_EXPORT:
			o.export_url = optarg;
			break;
		case OPT_TIMEOUT:
			bad = parse_seconds(optarg, id, &o.timeout_s);
			o.timeout_set = true;
			break;
		case OPT_JSON:
			o.json = true;
			break;
		case OPT_PID:
			bad = parse_int(optarg, 1, INT32_MAX, id, &o.pid);
			break;
		case OPT_COMM:
			o.comm = optarg;
			break;
		case OPT_SECONDS:
			bad = parse_int(optarg, 1, 86400, id, &o.seconds);
			break;
		case OPT_LAST:
			bad = parse_int(optarg, 1, 86400 * 366, id, &o.last);
			break;
		case OPT_SINCE:
			bad = parse_int(optarg, 0, INT64_MAX / 2, id, &o.since);
			break;
		case OPT_UNTIL:
			bad = parse_int(optarg, 0, INT64_MAX / 2, id, &o.until);
			break;
		case OPT_INTERVAL:
			bad = parse_int(optarg, 1, 3600, id, &o.interval);
			break;
		case OPT_ROWS:
			bad = parse_int(optarg, 1, 100000, id, &o.rows);
			break;
		case OPT_ONCE:
			o.once = true;
			break;
		case OPT_OUTPUT:
			o.output = optarg;
			break;
		case OPT_COUNT:
			bad = parse_int(optarg, 1, INT64_MAX, id, &o.count);
			break;
		}
		if (bad) {
			fputs("Try 'sondectl --help'.\n", stderr);
			return EXIT_USAGE;
		}
	}
	if (o.seen & BIT(OPT_HELP)) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (o.seen & BIT(OPT_VERSION)) {
		printf("sondectl %s (control protocol v%d)\n", SONDE_VERSION,
		       SONDE_CONTROL_VERSION);
		return 0;
	}
	if (optind >= argc)
		return usage_error("which command? (status, ps, top, record, folded, tail)");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[optind], commands[i].name))
			cmd = &commands[i];
	if (!cmd)
		return usage_error("unknown command \"%s\"", argv[optind]);
	if (argc - optind - 1 != cmd->nargs) {
		if (cmd->nargs)
			return usage_error("%s wants a topic: sondectl %s TOPIC", cmd->name,
					   cmd->name);
		return usage_error("%s takes no arguments (\"%s\"?)", cmd->name, argv[optind + 1]);
	}
	for (int id = 1; id < OPT__MAX; id++)
		if ((o.seen & BIT(id)) && !((GLOBAL_OPTS | cmd->allowed) & BIT(id)))
			return usage_error("--%s does not apply to %s", opt_name(id), cmd->name);
	if ((o.seen & BIT(OPT_SECONDS)) &&
	    (o.seen & (BIT(OPT_LAST) | BIT(OPT_SINCE) | BIT(OPT_UNTIL))))
		return usage_error("--seconds collects the next seconds; it does not mix with "
				   "--last/--since/--until");
	if ((o.seen & BIT(OPT_LAST)) && (o.seen & (BIT(OPT_SINCE) | BIT(OPT_UNTIL))))
		return usage_error("--last does not mix with --since/--until");
	if (!!(o.seen & BIT(OPT_SINCE)) != !!(o.seen & BIT(OPT_UNTIL)))
		return usage_error("--since and --until go together");
	if ((o.seen & BIT(OPT_SINCE)) && o.until <= o.since)
		return usage_error("--until must be after --since");

	if (!strcmp(cmd->name, "status"))
		return cmd_status(&o);
	if (!strcmp(cmd->name, "ps"))
		return cmd_ps(&o);
	if (!strcmp(cmd->name, "top"))
		return cmd_top(&o);
	if (!strcmp(cmd->name, "record")) {
		if (!o.output)
			return usage_error("record wants a file: sondectl record -o FILE");
		return cmd_record(&o);
	}
	if (!strcmp(cmd->name, "folded"))
		return cmd_folded(&o);
	return cmd_tail(&o, argv[optind + 1]);
}
