// SPDX-License-Identifier: MIT
/*
 * sonde-red-metrics: HTTP/1.x server RED metrics (rate, errors, duration)
 * for the processes the script gives it, from syscall tracepoints. The BPF
 * side (red.bpf.c) finds heads and counts bytes; red_agg.c pairs them and
 * keeps the histograms this plugin writes on /metrics.
 *
 * The tracepoints are attached once at init and filter on the `targets`
 * map, which attach_process/detach_process keep: a process the script did
 * not choose costs one hash lookup per hooked syscall.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
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
};

/* The self counters, in the order of struct sonde_red_agg_stats, then the
 * BPF side's enum red_stat. */
static const char *const counter_names[][2] = {
	{"requests", "HTTP server requests counted in the histograms."},
	{"forced-next", "Requests ended by the next request on the connection: length unknown."},
	{"forced-close", "Requests ended by the connection's close: length unknown or short."},
	{"aborted", "Requests whose connection closed before a response: not counted."},
	{"unpaired",
	 "Requests pushed out of a full pipeline queue before any response: not counted."},
	{"bad-heads", "Captured heads that did not parse as HTTP/1.x."},
	{"route-overflow", "Requests folded into http_route=\"_OTHER\" by the per-service cap."},
	{"ringbuf-drops", "Records lost because the plugin's ringbuf was full."},
	{"read-faults", "Heads that could not be read from the process's memory."},
	{"connections", "Connections accepted by watched processes."},
	{"untagged-threads",
	 "Requests whose thread could not be tagged for the profiles: thread_tags was full."},
};
#define N_AGG_COUNTERS 7
#define N_COUNTERS     (sizeof(counter_names) / sizeof(counter_names[0]))
_Static_assert(N_AGG_COUNTERS * sizeof(uint64_t) == sizeof(struct sonde_red_agg_stats),
	       "one counter per field of sonde_red_agg_stats");
_Static_assert(N_COUNTERS == N_AGG_COUNTERS + RED_STAT__COUNT, "one counter per red_stat");

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
	uint64_t *counters[N_COUNTERS];
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

static int on_record(void *ctx, void *data, size_t size)
{
	struct red *r = ctx;

	sonde_red_agg__event(r->agg, data, size);
	return 0;
}

static void on_ringbuf(void *ctx, int fd, uint32_t revents)
{
	struct red *r = ctx;

	(void)fd;
	(void)revents;
	ring_buffer__consume(r->rb);
	sync_agg_counters(r);
}

static void on_timer(void *ctx)
{
	struct red *r = ctx;

	ring_buffer__consume(r->rb);
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

	ring_buffer__consume(r->rb);
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

	bpf_map__set_max_entries(r->skel->maps.thread_tags, 1); /* unless reused below */
	if (!s->profile_labels)
		return 0;
	if (api->size < offsetof(struct sonde_host_api, register_sample_tags) +
				sizeof(api->register_sample_tags)) {
		api->log(r->host, SONDE_PLUGIN_LOG_WARN,
			 "this sonded cannot label samples (host ABI %u.%u < 1.3): "
			 "profiles will not carry http_route", api->abi_major, api->abi_minor);
		return 0;
	}
	fd = api->map_fd(r->host, "thread_tags");
	if (fd < 0)
		return fd;
	err = bpf_map__reuse_fd(r->skel->maps.thread_tags, fd);
	if (err)
		return err;
	id = api->register_sample_tags(r->host, "http", tag_labels);
	if (id < 0)
		return id;
	r->skel->rodata->tag_provider = (uint64_t)id;
	return 0;
}

static void *red_init(const struct sonde_host_api *api, struct sonde_host *host,
		      const void *settings, char *err, size_t errlen)
{
	const struct red_settings *s = settings;
	struct sonde_red_agg_opts opts = {0};
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
	r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->api = api;
	r->host = host;
	r->rb_fd = -1;
	opts.max_routes = (unsigned int)s->max_routes;
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
	rc = red_bpf__load(r->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the BPF object: %s", strerror(-rc));
		goto fail;
	}
	rc = red_bpf__attach(r->skel);
	if (rc) {
		snprintf(err, errlen, "cannot attach the syscall tracepoints: %s", strerror(-rc));
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
	api->log(host, SONDE_PLUGIN_LOG_INFO,
		 "watching HTTP/1.x servers, max %lld routes per service",
		 (long long)s->max_routes);
	return r;
fail:
	red_fini(r);
	return NULL;
}

static const char *basename_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* Sets or clears tgid's bit in the targets bitmap (only this thread writes it). */
static int set_target(struct red *r, uint32_t tgid, int on)
{
	int fd = bpf_map__fd(r->skel->maps.targets);
	uint32_t word = tgid / 64;
	uint64_t bits = 0;

	if (word >= RED_TARGET_WORDS)
		return -ERANGE;
	if (bpf_map_lookup_elem(fd, &word, &bits))
		return -errno;
	if (on)
		bits |= 1ULL << (tgid % 64);
	else
		bits &= ~(1ULL << (tgid % 64));
	return bpf_map_update_elem(fd, &word, &bits, BPF_ANY) ? -errno : 0;
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
	ring_buffer__consume(r->rb);
	set_target(r, pid, 0);
	sonde_red_agg__forget(r->agg, pid);
}

static int red_write_metrics(void *state, FILE *out)
{
	struct red *r = state;

	ring_buffer__consume(r->rb); /* a scrape sees every request before it */
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
	{SONDE_SETTING_END},
};

extern const struct sonde_plugin sonde_plugin;
const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "red-metrics",
	.version = "0.2",
	.description = "HTTP/1.x server and client RED metrics from syscall tracepoints",
	.settings = red_settings_table,
	.settings_size = sizeof(struct red_settings),
	.init = red_init,
	.fini = red_fini,
	.attach_process = red_attach,
	.detach_process = red_detach,
	.write_metrics = red_write_metrics,
};
