// SPDX-License-Identifier: MIT
/*
 * sonde-red-metrics: HTTP/1.x server RED metrics (rate, errors, duration)
 * for the processes the script gives it, and with watch = "listeners" for
 * every process that accepts TCP connections, from syscall tracepoints.
 * The BPF side (red.bpf.c) finds heads and counts bytes; red_agg.c pairs
 * them and keeps the histograms this plugin writes on /metrics.
 *
 * The tracepoints are attached once at init and filter on the `targets`
 * bitmap, which attach_process/detach_process keep (and BPF itself, for
 * forked children and listeners): a process nobody chose costs one array
 * lookup per hooked syscall. The script's on_http_route reaches the
 * aggregator's route cache through the host's script_hook (ABI 1.5).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sonde/plugin.h>

#include "red.h"
#include "red_agg.h"
#include "red.skel.h"

struct red_settings {
	int64_t max_routes;
	int64_t ringbuf_mb;
	int64_t window_s;
	int profile_labels;
	const char *routes;
	int64_t series_ttl_s;
	const char *watch;
	const char *listen_ports;
	const char *capture;
};

/* The self counters, in the order of struct sonde_red_agg_stats, then the
 * BPF side's enum red_stat, then this file's own. */
static const char *const counter_names[][2] = {
	{"requests", "HTTP server requests counted in the histograms."},
	{"forced-next", "Requests ended by the next request on the connection: length unknown."},
	{"forced-close", "Requests ended by the connection's close: length unknown or short."},
	{"aborted", "Requests whose connection closed before a response: not counted."},
	{"unpaired",
	 "Requests pushed out of a full pipeline queue before any response: not counted."},
	{"bad-heads", "Captured heads that did not parse as HTTP/1.x."},
	{"route-overflow", "Requests folded into http_route=\"_OTHER\" by the per-service cap."},
	{"series-expired", "Series dropped after series_ttl_s without a request."},
	{"dropped-by-script", "Requests the script's on_http_route dropped: not counted."},
	{"script-route-calls",
	 "Calls of the script's on_http_route: one per route cache miss, never per request."},
	{"route-cache-resets", "Times the full route cache was emptied."},
	{"ringbuf-drops", "Records lost because the plugin's ringbuf was full."},
	{"read-faults", "Heads that could not be read from the process's memory."},
	{"connections", "Connections accepted by watched processes."},
	{"untagged-threads",
	 "Requests whose thread could not be tagged for the profiles: no memory for its tag."},
	{"listeners", "Processes watched because they listen on TCP (watch = \"listeners\")."},
};
#define N_AGG_COUNTERS 11
#define N_COUNTERS     (sizeof(counter_names) / sizeof(counter_names[0]))
#define C_LISTENERS    (N_AGG_COUNTERS + RED_STAT__COUNT)
_Static_assert(N_AGG_COUNTERS * sizeof(uint64_t) == sizeof(struct sonde_red_agg_stats),
	       "one counter per field of sonde_red_agg_stats");
_Static_assert(N_COUNTERS == C_LISTENERS + 1, "one counter per red_stat, then the plugin's");

struct red {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	struct red_bpf *skel;
	struct ring_buffer *rb;
	struct sonde_red_agg *agg;
	void *timer;
	void *window_timer;
	struct timespec window_start; /* CLOCK_REALTIME */
	int rb_fd;
	unsigned int ticks;	      /* of timer */
	uint64_t *targets;	      /* the targets map, mapped (RED_TARGET_WORDS words) */
	int listeners;		      /* watch = "listeners" */
	int any_port;		      /* with listeners: no listen_ports filter */
	uint64_t ports[RED_PORT_WORDS]; /* listen_ports, a bitmap */
	struct sonde_red_patterns patterns;
	uint64_t *counters[N_COUNTERS];
	int has_hook;	     /* the host has script_hook (ABI 1.5) */
	uint64_t script_gen; /* the script's generation the route cache holds answers of */
};

/* Syscall tracepoints need tracefs for their ids; mount it where libbpf
 * looks when nothing did (minimal hosts and containers). */
static int ensure_tracefs(struct red *r)
{
	struct stat st;

	if (!stat("/sys/kernel/tracing/events/syscalls", &st) ||
	    !stat("/sys/kernel/debug/tracing/events/syscalls", &st))
		return 0;
	if (mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, NULL))
		return -errno;
	r->api->log(r->host, SONDE_PLUGIN_LOG_INFO, "mounted tracefs on /sys/kernel/tracing");
	return 0;
}

/* The route cache holds the answers of one script: a reload empties it. One
 * call per batch of records, not per record: a batch is milliseconds. */
static void consume(struct red *r)
{
	uint64_t gen;

	if (r->has_hook) {
		gen = r->api->script_generation(r->host);
		if (gen != r->script_gen) {
			r->script_gen = gen;
			sonde_red_agg__script_changed(r->agg);
		}
	}
	ring_buffer__consume(r->rb);
}

/* The aggregator's route hook: on_http_route, through the core. */
static int route_hook(void *ctx, const struct sonde_red_route_query *q, char *out, size_t outlen)
{
	struct red *r = ctx;
	struct sonde_plugin_label fields[5] = {
		{"method", q->method}, {"route", q->route},
		{"path", q->path},     {"service", q->service},
		{"server_address", q->server_address},
	};
	int rc;

	rc = r->api->script_hook(r->host, "http_route", fields, 5, out, outlen);
	switch (rc) {
	case SONDE_HOOK_REPLACE:
		return SONDE_RED_HOOK_REPLACE;
	case SONDE_HOOK_DROP:
		return SONDE_RED_HOOK_DROP;
	default:
		return rc < 0 ? rc : SONDE_RED_HOOK_KEEP;
	}
}

static void sync_agg_counters(struct red *r)
{
	const uint64_t *agg = (const uint64_t *)sonde_red_agg__stats(r->agg);
	size_t i;

	for (i = 0; i < N_AGG_COUNTERS; i++)
		*r->counters[i] = agg[i];
}

/* The BPF side's counters cost a syscall: on the timer only. */
static void sync_counters(struct red *r)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t *vals;
	uint32_t k;

	sync_agg_counters(r);
	if (ncpu <= 0)
		return;
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return;
	for (k = 0; k < RED_STAT__COUNT; k++) {
		uint64_t sum = 0;
		int c;

		if (bpf_map_lookup_elem(bpf_map__fd(r->skel->maps.red_stats), &k, vals))
			continue;
		for (c = 0; c < ncpu; c++)
			sum += vals[c];
		*r->counters[N_AGG_COUNTERS + k] = sum;
	}
	free(vals);
}

static const char *basename_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

static uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* bpf_ktime_get_ns's clock */
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The service_name of a process the script did not name: its comm, else
 * its executable's name (what the core gives attach_process). */
static void name_process(struct red *r, uint32_t tgid)
{
	char path[64], name[256] = "", exe[4096];
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%u/comm", tgid);
	f = fopen(path, "re");
	if (f) {
		if (fgets(name, sizeof(name), f))
			name[strcspn(name, "\n")] = '\0';
		fclose(f);
	}
	if (!name[0]) {
		snprintf(path, sizeof(path), "/proc/%u/exe", tgid);
		n = readlink(path, exe, sizeof(exe) - 1);
		if (n > 0) {
			exe[n] = '\0';
			snprintf(name, sizeof(name), "%.255s", basename_of(exe));
		}
	}
	/* ENOMEM: its requests go to unknown_service */
	sonde_red_agg__set_service(r->agg, tgid, name[0] ? name : "unknown_service");
}

static int on_record(void *ctx, void *data, size_t size)
{
	const struct red_proc_event *pe = data;
	struct red *r = ctx;

	if (size < sizeof(*pe) || pe->type != RED_EV_PROC) {
		sonde_red_agg__event(r->agg, data, size);
		return 0;
	}
	if (pe->what == RED_PROC_LISTENER) {
		name_process(r, pe->tgid);
		(*r->counters[C_LISTENERS])++;
	} else if (pe->what == RED_PROC_EXIT) {
		sonde_red_agg__forget(r->agg, pe->tgid);
	}
	return 0;
}

static void on_ringbuf(void *ctx, int fd, uint32_t revents)
{
	struct red *r = ctx;

	(void)fd;
	(void)revents;
	consume(r);
	sync_agg_counters(r);
}

static void on_timer(void *ctx)
{
	struct red *r = ctx;

	consume(r);
	if (++r->ticks % 10 == 0) /* once a second: the TTL is in seconds */
		sonde_red_agg__expire(r->agg, monotonic_ns());
	sync_counters(r);
}

/* The window's series on the `red` topic; with exports off (-ENOTCONN) the
 * window just starts over. */
static void on_window(void *ctx)
{
	struct red *r = ctx;
	struct timespec now;
	double start, duration;
	size_t len;
	void *buf;
	int rc;

	consume(r);
	clock_gettime(CLOCK_REALTIME, &now);
	start = (double)r->window_start.tv_sec + (double)r->window_start.tv_nsec / 1e9;
	duration = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - start;
	if (sonde_red_agg__window(r->agg, start, duration, &buf, &len))
		return; /* out of memory: this window goes into the next */
	r->window_start = now;
	rc = r->api->publish(r->host, "red", buf, len);
	if (rc && rc != -ENOTCONN)
		r->api->log(r->host, SONDE_PLUGIN_LOG_WARN, "cannot publish on red: %s",
			    strerror(-rc));
	free(buf);
}

/* Sets or clears tgid's bit in the targets bitmap, atomically: BPF sets
 * and clears bits of the same words (forked children, listeners). */
static int set_target(struct red *r, uint32_t tgid, int on)
{
	uint64_t bit = 1ULL << (tgid % 64);

	if (tgid / 64 >= RED_TARGET_WORDS)
		return -ERANGE;
	if (on)
		__atomic_fetch_or(&r->targets[tgid / 64], bit, __ATOMIC_RELAXED);
	else
		__atomic_fetch_and(&r->targets[tgid / 64], ~bit, __ATOMIC_RELAXED);
	return 0;
}

static bool is_separator(char c)
{
	return c == ' ' || c == ',' || c == '\t' || c == '\n';
}

/* listen_ports: "" any port, else port numbers separated by spaces or commas. */
static int parse_ports(struct red *r, const char *spec, char *err, size_t errlen)
{
	const char *p = spec ? spec : "";
	unsigned long v;
	char *end;
	size_t n;

	r->any_port = 1;
	for (;;) {
		while (is_separator(*p))
			p++;
		if (!*p)
			return 0;
		n = strcspn(p, " ,\t\n");
		v = isdigit((unsigned char)*p) ? strtoul(p, &end, 10) : 0;
		if (v < 1 || v > 65535 || end != p + n) {
			snprintf(err, errlen, "listen_ports: '%.*s' is not a port number (1..65535)",
				 (int)(n < 32 ? n : 32), p);
			return -EINVAL;
		}
		r->ports[v / 64] |= 1ULL << (v % 64);
		r->any_port = 0;
		p += n;
	}
}

/* Whether pid is still running (not gone, not a zombie: its exit hook ran). */
static bool process_alive(uint32_t pid)
{
	char path[64], buf[512], *paren;
	bool alive = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	if (fgets(buf, sizeof(buf), f)) {
		paren = strrchr(buf, ')');
		alive = paren && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
	}
	fclose(f);
	return alive;
}

/* A process listening at start: watched as BPF watches those that accept,
 * through the listeners map, so that its exit ends it. */
static void watch_listening_pid(struct red *r, uint32_t pid)
{
	int fd = bpf_map__fd(r->skel->maps.listeners);
	uint8_t one = 1;

	if (bpf_map_update_elem(fd, &pid, &one, BPF_NOEXIST))
		return; /* BPF saw it accept since the attach, or the map is full */
	set_target(r, pid, 1);
	name_process(r, pid);
	if (!process_alive(pid)) {
		/* it may have exited before its entry was there to be removed */
		bpf_map_delete_elem(fd, &pid);
		set_target(r, pid, 0);
		sonde_red_agg__forget(r->agg, pid);
		return;
	}
	(*r->counters[C_LISTENERS])++;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct inodes {
	uint64_t *v;
	size_t n, cap;
};

/* Appends the inodes of path's (/proc/net/tcp or tcp6) LISTEN sockets on
 * a port of listen_ports. A missing file (no IPv6) holds none. */
static int listening_inodes(const struct red *r, const char *path, struct inodes *in)
{
	unsigned long long inode;
	unsigned int port, st;
	char line[512];
	int rc = 0;
	FILE *f;

	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? 0 : -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*x:%*x %*x:%*x %*x "
				 "%*u %*u %llu", &port, &st, &inode) != 3)
			continue; /* the header */
		if (st != 0x0A /* TCP_LISTEN */ || !inode || port > 65535 ||
		    (!r->any_port && !((r->ports[port / 64] >> (port % 64)) & 1)))
			continue;
		if (in->n == in->cap) {
			size_t cap = in->cap ? in->cap * 2 : 64;
			uint64_t *v = realloc(in->v, cap * sizeof(*v));

			if (!v) {
				rc = -ENOMEM;
				break;
			}
			in->v = v;
			in->cap = cap;
		}
		in->v[in->n++] = inode;
	}
	fclose(f);
	return rc;
}

/*
 * watch = "listeners", at start: the processes listening on TCP now (their
 * LISTEN sockets' inodes among the links of /proc/PID/fd) are watched from
 * the start, so that connections they accepted before sonded started are
 * adopted at their next request. Only sonded's network namespace has its
 * sockets in /proc/net; processes of other namespaces are found at their
 * next accept. Returns how many, or -errno.
 */
static int watch_current_listeners(struct red *r)
{
	struct inodes in = {0};
	char path[64], link[64];
	struct dirent *de, *fe;
	DIR *proc = NULL, *fds;
	unsigned long long ino;
	uint32_t self = (uint32_t)getpid(), pid;
	int rc, found = 0;
	ssize_t n;

	rc = listening_inodes(r, "/proc/net/tcp", &in);
	if (!rc)
		rc = listening_inodes(r, "/proc/net/tcp6", &in);
	if (rc || !in.n)
		goto cleanup;
	qsort(in.v, in.n, sizeof(*in.v), cmp_u64);
	proc = opendir("/proc");
	if (!proc) {
		rc = -errno;
		goto cleanup;
	}
	while ((de = readdir(proc))) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		pid = (uint32_t)strtoul(de->d_name, NULL, 10);
		if (pid == self)
			continue;
		snprintf(path, sizeof(path), "/proc/%u/fd", pid);
		fds = opendir(path);
		if (!fds)
			continue; /* gone, or a kernel thread */
		while ((fe = readdir(fds))) {
			if (fe->d_name[0] == '.')
				continue;
			n = readlinkat(dirfd(fds), fe->d_name, link, sizeof(link) - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			if (sscanf(link, "socket:[%llu]", &ino) == 1 &&
			    bsearch(&(uint64_t){ino}, in.v, in.n, sizeof(*in.v), cmp_u64)) {
				watch_listening_pid(r, pid);
				found++;
				break;
			}
		}
		closedir(fds);
	}
cleanup:
	if (proc)
		closedir(proc);
	free(in.v);
	return rc ? rc : found;
}

static void red_fini(void *state)
{
	struct red *r = state;

	if (!r)
		return;
	if (r->timer)
		r->api->cancel_timer(r->host, r->timer);
	if (r->window_timer)
		r->api->cancel_timer(r->host, r->window_timer);
	if (r->rb_fd >= 0)
		r->api->unwatch_fd(r->host, r->rb_fd);
	ring_buffer__free(r->rb);
	if (r->targets)
		munmap(r->targets, RED_TARGET_WORDS * sizeof(uint64_t));
	red_bpf__destroy(r->skel);
	sonde_red_agg__free(r->agg);
	free(r);
}

/* The labels of a thread tag: the exchange it stands for, once its record
 * came (plugin.h, sonde_plugin_tag_fn). */
static int tag_labels(void *state, uint32_t pid, uint64_t tag, struct sonde_plugin_label *labels,
		      int max)
{
	struct red *r = state;
	const char *method, *route;

	if (max < 2)
		return -ENOENT;
	if (!sonde_red_agg__exchange(r->agg, pid, tag & RED_TAG_MASK, &method, &route))
		return 0;
	if (!route)
		return -ENOENT; /* the script dropped the request */
	labels[0] = (struct sonde_plugin_label){"http_route", route};
	labels[1] = (struct sonde_plugin_label){"http_request_method", method};
	return 2;
}

/*
 * Before load: the BPF side tags threads in the core's thread_tags map,
 * under the id the host gives. A sonded without the service (ABI < 1.3)
 * or the map gets no labels, and says so; the metrics work the same.
 */
static int setup_thread_tags(struct red *r, const struct red_settings *s)
{
	const struct sonde_host_api *api = r->api;
	int fd, id, err;

	bpf_map__set_max_entries(r->skel->maps.thread_tags_ended, 1); /* unless reused below */
	if (!s->profile_labels)
		return 0;
	if (api->abi_minor < 6) {
		api->log(r->host, SONDE_PLUGIN_LOG_WARN,
			 "this sonded cannot label samples (host ABI %u.%u < 1.6): "
			 "profiles will not carry http_route", api->abi_major, api->abi_minor);
		return 0;
	}
	fd = api->map_fd(r->host, "thread_tags");
	if (fd < 0)
		return fd;
	err = bpf_map__reuse_fd(r->skel->maps.thread_tags, fd);
	if (err)
		return err;
	fd = api->map_fd(r->host, "thread_tags_ended");
	if (fd < 0)
		return fd;
	err = bpf_map__reuse_fd(r->skel->maps.thread_tags_ended, fd);
	if (err)
		return err;
	id = api->register_sample_tags(r->host, "http", tag_labels);
	if (id < 0)
		return id;
	r->skel->rodata->tag_provider = (uint64_t)id;
	return 0;
}

/* Whether the kernel whose BTF is btf has the tracepoint named name (it
 * declares btf_trace_NAME). */
static int has_tracepoint(const struct btf *btf, const char *name)
{
	char type[128];

	snprintf(type, sizeof(type), "btf_trace_%s", name);
	return btf__find_by_name_kind(btf, type, BTF_KIND_TYPEDEF) > 0;
}

/*
 * The hooks that see the I/O: the sock tracepoints where the kernel has
 * both (typed, for sockets only) unless capture = "syscalls", else the
 * syscall exits (Debian 12's 6.1 has no sock_send_length). Returns the
 * hooks' name for the log, or NULL with err filled.
 */
static const char *choose_capture(struct red *r, const char *capture, char *err, size_t errlen)
{
	struct red_bpf *k = r->skel;
	struct bpf_program *sys[] = {
		k->progs.sys_exit_read,	   k->progs.sys_exit_recvfrom, k->progs.sys_exit_readv,
		k->progs.sys_exit_recvmsg, k->progs.sys_exit_write,    k->progs.sys_exit_sendto,
		k->progs.sys_exit_sendmsg, k->progs.sys_exit_writev,   k->progs.sys_exit_sendfile64,
	};
	struct btf *btf;
	int sock = 0;
	size_t i;

	if (!strcmp(capture, "auto")) {
		btf = btf__load_vmlinux_btf();
		if (!btf) {
			snprintf(err, errlen, "cannot read the kernel's BTF: %s", strerror(errno));
			return NULL;
		}
		sock = has_tracepoint(btf, "sock_recv_length") &&
		       has_tracepoint(btf, "sock_send_length");
		btf__free(btf);
	}
	bpf_program__set_autoload(k->progs.sock_recv_length, sock);
	bpf_program__set_autoload(k->progs.sock_send_length, sock);
	for (i = 0; i < sizeof(sys) / sizeof(sys[0]); i++)
		bpf_program__set_autoload(sys[i], !sock);
	return sock ? "the sock_recv_length/sock_send_length tracepoints"
		    : "the syscall exits of read, write and the like";
}

static void *red_init(const struct sonde_host_api *api, struct sonde_host *host,
		      const void *settings, char *err, size_t errlen)
{
	const struct red_settings *s = settings;
	struct sonde_red_agg_opts opts = {0};
	const char *hooks;
	struct red *r;
	size_t i;
	int rc;

	if (api->size < offsetof(struct sonde_host_api, publish) + sizeof(api->publish)) {
		snprintf(err, errlen, "this sonded's host API is too old (ABI %u.%u)",
			 api->abi_major, api->abi_minor);
		return NULL;
	}
	if (s->max_routes < 1 || s->max_routes > 100000 || s->ringbuf_mb < 1 ||
	    s->ringbuf_mb > 1024 || (s->ringbuf_mb & (s->ringbuf_mb - 1)) || s->window_s < 1 ||
	    s->window_s > 3600) {
		snprintf(err, errlen, "max_routes must be 1..100000, ringbuf_mb a power of 2 in "
				      "1..1024 and window_s 1..3600");
		return NULL;
	}
	if (s->series_ttl_s < 0 || s->series_ttl_s > 31536000) {
		snprintf(err, errlen, "series_ttl_s must be 0 (never) .. 31536000 (a year)");
		return NULL;
	}
	if (!s->capture || (strcmp(s->capture, "auto") && strcmp(s->capture, "syscalls"))) {
		snprintf(err, errlen, "capture must be \"auto\" or \"syscalls\", not \"%.32s\"",
			 s->capture ? s->capture : "");
		return NULL;
	}
	if (!s->watch || (strcmp(s->watch, "script") && strcmp(s->watch, "listeners"))) {
		snprintf(err, errlen, "watch must be \"script\" or \"listeners\", not \"%.32s\"",
			 s->watch ? s->watch : "");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->api = api;
	r->host = host;
	r->rb_fd = -1;
	r->listeners = !strcmp(s->watch, "listeners");
	if (sonde_red_patterns_parse(s->routes, &r->patterns, err, errlen) ||
	    parse_ports(r, s->listen_ports, err, errlen))
		goto fail;
	opts.max_routes = (unsigned int)s->max_routes;
	opts.patterns = &r->patterns;
	opts.series_ttl_ns = (uint64_t)s->series_ttl_s * 1000000000ULL;
	/* on_http_route, where the host has it (ABI 1.5) */
	r->has_hook = api->size >= offsetof(struct sonde_host_api, script_generation) +
					   sizeof(api->script_generation) &&
		      api->script_hook && api->script_generation;
	if (r->has_hook) {
		opts.route_hook = route_hook;
		opts.route_hook_ctx = r;
		r->script_gen = api->script_generation(host);
	}
	r->agg = sonde_red_agg__new(&opts);
	if (!r->agg) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (i = 0; i < N_COUNTERS; i++) {
		r->counters[i] = api->counter(host, counter_names[i][0], counter_names[i][1]);
		if (!r->counters[i]) {
			snprintf(err, errlen, "cannot register counter %s", counter_names[i][0]);
			goto fail;
		}
	}
	rc = ensure_tracefs(r);
	if (rc) {
		snprintf(err, errlen, "no tracefs for the syscall tracepoints: %s", strerror(-rc));
		goto fail;
	}
	r->skel = red_bpf__open();
	if (!r->skel) {
		snprintf(err, errlen, "cannot open the BPF object: %s", strerror(errno));
		goto fail;
	}
	bpf_map__set_max_entries(r->skel->maps.red_events, (uint32_t)s->ringbuf_mb << 20);
	/* wake the loop at an eighth full; the 100 ms timer drains the rest */
	r->skel->rodata->wakeup_bytes = (uint64_t)s->ringbuf_mb << 17;
	rc = setup_thread_tags(r, s);
	if (rc) {
		snprintf(err, errlen, "cannot tag threads for the profiles' labels: %s "
			 "(profile_labels = false goes without)", strerror(-rc));
		goto fail;
	}
	hooks = choose_capture(r, s->capture, err, errlen);
	if (!hooks)
		goto fail;
	r->skel->rodata->watch_listeners = (uint8_t)r->listeners;
	r->skel->rodata->listen_any = (uint8_t)r->any_port;
	r->skel->rodata->self_tgid = (uint32_t)getpid();
	if (!r->listeners) {
		bpf_map__set_max_entries(r->skel->maps.listeners, 1);
		bpf_map__set_max_entries(r->skel->maps.listen_ports, 1);
	}
	rc = red_bpf__load(r->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the BPF object: %s", strerror(-rc));
		goto fail;
	}
	r->targets = mmap(NULL, RED_TARGET_WORDS * sizeof(uint64_t), PROT_READ | PROT_WRITE,
			  MAP_SHARED, bpf_map__fd(r->skel->maps.targets), 0);
	if (r->targets == MAP_FAILED) {
		r->targets = NULL;
		snprintf(err, errlen, "cannot map the targets bitmap: %s", strerror(errno));
		goto fail;
	}
	for (i = 0; r->listeners && !r->any_port && i < RED_PORT_WORDS; i++) {
		uint32_t word = (uint32_t)i;

		if (r->ports[i] &&
		    bpf_map_update_elem(bpf_map__fd(r->skel->maps.listen_ports), &word,
					&r->ports[i], BPF_ANY)) {
			snprintf(err, errlen, "cannot fill listen_ports: %s", strerror(errno));
			goto fail;
		}
	}
	rc = red_bpf__attach(r->skel);
	if (rc) {
		snprintf(err, errlen, "cannot attach the tracepoints: %s", strerror(-rc));
		goto fail;
	}
	r->rb = ring_buffer__new(bpf_map__fd(r->skel->maps.red_events), on_record, r, NULL);
	if (!r->rb) {
		snprintf(err, errlen, "cannot open the ringbuf: %s", strerror(errno));
		goto fail;
	}
	rc = api->watch_fd(host, ring_buffer__epoll_fd(r->rb), EPOLLIN, on_ringbuf, r);
	if (rc) {
		snprintf(err, errlen, "cannot watch the ringbuf: %s", strerror(-rc));
		goto fail;
	}
	r->rb_fd = ring_buffer__epoll_fd(r->rb);
	r->timer = api->add_timer(host, 100, 100, on_timer, r);
	if (!r->timer) {
		snprintf(err, errlen, "cannot add a timer");
		goto fail;
	}
	clock_gettime(CLOCK_REALTIME, &r->window_start);
	r->window_timer = api->add_timer(host, (uint64_t)s->window_s * 1000,
					 (uint64_t)s->window_s * 1000, on_window, r);
	if (!r->window_timer) {
		snprintf(err, errlen, "cannot add a timer");
		goto fail;
	}
	if (r->listeners) {
		rc = watch_current_listeners(r);
		if (rc < 0) {
			snprintf(err, errlen, "cannot list the processes listening on TCP: %s",
				 strerror(-rc));
			goto fail;
		}
		api->log(host, SONDE_PLUGIN_LOG_INFO,
			 "watching the processes that accept TCP connections (%s%s), %d listening "
			 "now", r->any_port ? "any port" : "listen_ports ",
			 r->any_port ? "" : s->listen_ports, rc);
	}
	api->log(host, SONDE_PLUGIN_LOG_INFO,
		 "watching HTTP/1.x servers through %s, max %lld routes per service, %u route "
		 "patterns, series TTL %lld s", hooks, (long long)s->max_routes, r->patterns.count,
		 (long long)s->series_ttl_s);
	return r;
fail:
	red_fini(r);
	return NULL;
}

static int red_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		      size_t reasonlen)
{
	struct red *r = state;
	const char *name = proc->comm && *proc->comm ? proc->comm
			   : proc->exe && *proc->exe ? basename_of(proc->exe)
						     : "unknown_service";
	uint32_t tgid = proc->pid;
	int rc;

	rc = sonde_red_agg__set_service(r->agg, tgid, name);
	if (rc)
		return rc;
	rc = set_target(r, tgid, 1);
	if (rc) {
		snprintf(reason, reasonlen, "cannot watch pid %u: %s", tgid, strerror(-rc));
		sonde_red_agg__forget(r->agg, tgid);
		return rc;
	}
	return 0;
}

static void red_detach(void *state, uint32_t pid)
{
	struct red *r = state;

	/* Records of pid still in the ringbuf come first. */
	consume(r);
	set_target(r, pid, 0);
	sonde_red_agg__forget(r->agg, pid);
}

static int red_write_metrics(void *state, FILE *out)
{
	struct red *r = state;

	consume(r); /* a scrape sees every request before it */
	sonde_red_agg__expire(r->agg, monotonic_ns());
	sync_counters(r);
	return sonde_red_agg__write(r->agg, out);
}

static const struct sonde_plugin_setting red_settings_table[] = {
	{SONDE_SETTING_INT, "max_routes", "100", offsetof(struct red_settings, max_routes),
	 "distinct http_route values per service; the rest become _OTHER"},
	{SONDE_SETTING_INT, "ringbuf_mb", "4", offsetof(struct red_settings, ringbuf_mb),
	 "size of the plugin's ringbuf in MiB (a power of 2)"},
	{SONDE_SETTING_INT, "window_s", "10", offsetof(struct red_settings, window_s),
	 "seconds between two messages on the export socket's red topic"},
	{SONDE_SETTING_BOOL, "profile_labels", "true", offsetof(struct red_settings, profile_labels),
	 "label the CPU samples of a thread serving a request with its http_route and "
	 "http_request_method"},
	{SONDE_SETTING_STRING, "routes", "", offsetof(struct red_settings, routes),
	 "route patterns tried before the heuristic, separated by spaces or commas: "
	 "/users/{id} matches one segment, a trailing /* the rest"},
	{SONDE_SETTING_INT, "series_ttl_s", "300", offsetof(struct red_settings, series_ttl_s),
	 "seconds without a request after which a series is dropped; 0: never"},
	{SONDE_SETTING_STRING, "watch", "script", offsetof(struct red_settings, watch),
	 "\"script\": the processes the script gives the plugin; \"listeners\": also every "
	 "process that accepts TCP connections"},
	{SONDE_SETTING_STRING, "listen_ports", "", offsetof(struct red_settings, listen_ports),
	 "with watch = \"listeners\": only those listening on these ports (space-separated); "
	 "\"\": any"},
	{SONDE_SETTING_STRING, "capture", "auto", offsetof(struct red_settings, capture),
	 "\"auto\": socket I/O seen by the sock_recv_length/sock_send_length tracepoints "
	 "where the kernel has them (6.18: cheaper, sockets only), else by the syscall "
	 "exits; \"syscalls\": always the syscall exits"},
	{SONDE_SETTING_END},
};

extern const struct sonde_plugin sonde_plugin;
const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "red-metrics",
	.version = "0.4",
	.description = "HTTP/1.x server and client RED metrics from syscall tracepoints",
	.settings = red_settings_table,
	.settings_size = sizeof(struct red_settings),
	.init = red_init,
	.fini = red_fini,
	.attach_process = red_attach,
	.detach_process = red_detach,
	.write_metrics = red_write_metrics,
};
