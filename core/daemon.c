// SPDX-License-Identifier: MIT
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf_host.h"
#include "control.h"
#include "daemon_priv.h"
#include "export.h"
#include "http.h"
#include "interp.h"
#include "log.h"
#include "loop.h"
#include "plugin.h"
#include "policy.h"
#include "proc.h"
#include "publish.h"
#include "script.h"
#include "sideband.h"
#include "store.h"
#include "strbuf.h"
#include "symbolize.h"
#include "tagwait.h"

#define DRAIN_INTERVAL_MS 100
#define GRACE_NS (30ULL * 1000000000ULL) /* how long exited processes are remembered */
#define STORE_RETENTION_NS (15ULL * 60 * 1000000000ULL)
#define STORE_MAX_BYTES (16u << 20)
/* A tagged sample waits this long for its tag's labels (a request's route
 * is known when the request ends); at most TAG_WAIT_MAX of them wait. */
#define TAG_WAIT_NS (10ULL * 1000000000ULL)
#define TAG_WAIT_MAX 16384
#define MAX_TAG_LABELS 4

uint64_t daemon_period_ns(const struct sonde_daemon *d)
{
	return 1000000000ULL / d->cfg.hz;
}

/* ---- samples ---------------------------------------------------------- */

/*
 * An interpreter frame (a kind some plugin registered): two words, named
 * later by that plugin. False when no plugin owns the kind (then the word
 * is an ordinary, if odd, address).
 */
static bool resolve_interp_frame(struct sonde_daemon *d, const struct sonde_sample *s,
				 uint32_t j, struct sonde_profile_frame *f)
{
	uint64_t word = s->frames[s->kstack_len + j], payload;
	int err;

	if (SONDE_FRAME_KIND(word) == SONDE_FRAME_NATIVE || !d->interp)
		return false;
	payload = j + 1 < s->ustack_len ? s->frames[s->kstack_len + j + 1] : 0;
	err = sonde_interp__frame(d->interp, s->hdr.pid, word, payload, &f->obj, &f->vaddr);
	if (err == -ENOENT)
		return false;
	f->flags = 0;
	if (err) {
		f->obj = d->unknown;
		f->vaddr = word;
		d->counters.frames_unmapped++;
	}
	return true;
}

static uint32_t resolve_user_frames(struct sonde_daemon *d, struct sonde_proc *proc,
				    const struct sonde_sample *s, uint32_t n)
{
	uint32_t j;

	for (j = 0; j < s->ustack_len && n < SONDE_MAX_FRAMES; j++) {
		uint64_t addr = s->frames[s->kstack_len + j];
		bool exact = j == 0 && (s->flags & SONDE_SAMPLE_USER_MODE);
		const struct sonde_mapping *m = NULL;
		struct sonde_profile_frame *f = &d->frames[n++];

		if (resolve_interp_frame(d, s, j, f)) {
			j++; /* its payload */
			continue;
		}
		f->flags = exact ? 0 : SONDE_PROFILE_FRAME_RETURN;
		if (proc)
			m = sonde_procs__find_mapping(d->procs, proc, addr, s->hdr.time_ns);
		if (m && m->obj) {
			f->obj = m->obj;
			f->vaddr = sonde_object__to_vaddr(m->obj, m->start, m->pgoff, addr);
		} else {
			f->obj = d->unknown;
			f->vaddr = addr;
			d->counters.frames_unmapped++;
		}
	}
	return n;
}

static void add_to_profiles(struct sonde_daemon *d, const struct sonde_profile_labels *labels,
			    uint32_t n)
{
	struct pending_profile *pp;

	if (sonde_profile__add(d->window, labels, d->frames, n, 1))
		d->counters.samples_lost_memory++;
	for (pp = d->pending; pp; pp = pp->next)
		if (sonde_profile__wants(pp->profile, labels) &&
		    sonde_profile__add(pp->profile, labels, d->frames, n, 1))
			d->counters.samples_lost_memory++;
}

/* The decision for a process first seen through one of its samples. */
static const struct sonde_policy_entry *policy_of(struct sonde_daemon *d, struct sonde_proc *proc)
{
	const struct sonde_policy_entry *pe = sonde_policy__get(d->policy, proc->pid);

	if (pe)
		return pe;
	sonde_policy__decide(d->policy, proc);
	return sonde_policy__get(d->policy, proc->pid);
}

/* Script labels, then the labels of the sample's thread tag, as many as fit. */
static uint32_t merge_extra(struct sonde_profile_label *out, const struct sonde_policy_entry *pe,
			    const struct sonde_plugin_label *tags, int ntags)
{
	uint32_t n = 0, i;

	for (i = 0; pe && i < pe->nlabels && n < SONDE_PROFILE_MAX_EXTRA; i++)
		out[n++] = pe->labels[i];
	for (i = 0; i < (uint32_t)ntags && n < SONDE_PROFILE_MAX_EXTRA; i++)
		out[n++] = (struct sonde_profile_label){ .key = tags[i].key, .value = tags[i].value };
	return n;
}

static void add_sample(struct sonde_daemon *d, const struct sonde_sample *s,
		       const struct sonde_plugin_label *tags, int ntags)
{
	struct sonde_profile_labels labels = { .pid = s->hdr.pid };
	struct sonde_profile_label extra[SONDE_PROFILE_MAX_EXTRA];
	const struct sonde_policy_entry *pe = NULL;
	struct sonde_proc *proc;
	char comm[SONDE_COMM_LEN + 1];
	uint32_t n = 0, i;

	proc = sonde_procs__get(d->procs, s->hdr.pid);
	if (proc) {
		labels.comm = proc->comm;
		labels.exe = proc->exe;
		labels.container_id = proc->container_id;
		pe = policy_of(d, proc);
	} else {
		memcpy(comm, s->comm, SONDE_COMM_LEN);
		comm[SONDE_COMM_LEN] = '\0';
		labels.comm = comm;
		d->counters.samples_unknown_process++;
	}
	if (pe) {
		if (!pe->profiled) /* sampled before the kernel learnt it */
			return;
		if (pe->comm) /* relabeled by the script; "" drops it */
			labels.comm = pe->comm;
		if (pe->exe)
			labels.exe = pe->exe;
		if (pe->container_id)
			labels.container_id = pe->container_id;
	}
	labels.extra = extra;
	labels.nextra = merge_extra(extra, pe, tags, ntags);
	for (i = 0; i < s->kstack_len; i++)
		d->frames[n++] = (struct sonde_profile_frame){
			.obj = d->kernel,
			.vaddr = s->frames[i],
			.flags = i ? SONDE_PROFILE_FRAME_RETURN : 0,
		};
	n = resolve_user_frames(d, proc, s, n);
	if (s->flags & (SONDE_SAMPLE_USTACK_TRUNCATED | SONDE_SAMPLE_KSTACK_TRUNCATED))
		d->counters.stacks_truncated++;
	add_to_profiles(d, &labels, n);
}

/*
 * Adds the sample with its thread tag's labels, unless the plugin that set
 * the tag cannot name it yet and the sample has waited less than
 * TAG_WAIT_NS: false then, and the caller holds it.
 */
static bool place_sample(struct sonde_daemon *d, const struct sonde_sample *s, uint64_t held_ns)
{
	struct sonde_plugin_label tags[MAX_TAG_LABELS];
	int ntags = 0;

	if (s->tag) {
		ntags = sonde_plugins__tag_labels(d->plugins, s->hdr.pid, s->tag, tags,
						  MAX_TAG_LABELS);
		if (ntags == 0 && held_ns < TAG_WAIT_NS)
			return false;
		if (ntags == 0)
			d->counters.samples_tag_late++;
		if (ntags < 0) {
			d->counters.samples_tag_unknown++;
			ntags = 0;
		}
	}
	add_sample(d, s, tags, ntags);
	return true;
}

static void handle_sample(struct sonde_daemon *d, const struct sonde_sample *s, size_t size)
{
	if (size < SONDE_SAMPLE_HDR_SIZE ||
	    size < SONDE_SAMPLE_HDR_SIZE + 8 * ((size_t)s->kstack_len + s->ustack_len) ||
	    (size_t)s->kstack_len + s->ustack_len > SONDE_MAX_FRAMES) {
		d->counters.records_malformed++;
		return;
	}
	d->counters.samples_received++;
	if (place_sample(d, s, 0))
		return;
	if (!sonde_tagwait__hold(d->tagwait, s, size, sonde_now_ns()))
		return;
	d->counters.samples_tag_full++;
	add_sample(d, s, NULL, 0);
}

static bool retry_held(void *ctx, const void *record, size_t size, uint64_t held_ns)
{
	return place_sample(ctx, record, held_ns);
}

/* Gives held samples another chance to be named; all go when final. */
static void release_held(struct sonde_daemon *d, bool final)
{
	if (!sonde_tagwait__count(d->tagwait))
		return;
	sonde_tagwait__retry(d->tagwait, final ? UINT64_MAX : sonde_now_ns(), retry_held, d);
}

static void publish_proc(struct sonde_daemon *d, uint32_t pid, bool exited)
{
	struct sonde_proc *proc = sonde_procs__get(d->procs, pid);

	if (proc && d->publisher)
		sonde_publisher__proc(d->publisher, proc, sonde_policy__get(d->policy, pid), exited);
}

static void handle_lifecycle(struct sonde_daemon *d, const struct sonde_event_hdr *hdr,
			     size_t size)
{
	struct sonde_proc *proc;

	switch (hdr->type) {
	case SONDE_EV_EXEC:
		if (size < sizeof(struct sonde_exec_event))
			break;
		sonde_procs__on_exec(d->procs, (const void *)hdr);
		proc = sonde_procs__get(d->procs, hdr->pid);
		if (proc)
			sonde_policy__decide(d->policy, proc);
		publish_proc(d, hdr->pid, false);
		return;
	case SONDE_EV_FORK:
		if (size < sizeof(struct sonde_fork_event))
			break;
		sonde_procs__on_fork(d->procs, (const void *)hdr);
		proc = sonde_procs__get(d->procs, hdr->pid);
		if (proc)
			sonde_policy__decide(d->policy, proc);
		publish_proc(d, hdr->pid, false);
		return;
	case SONDE_EV_EXIT:
		if (size < sizeof(struct sonde_exit_event))
			break;
		publish_proc(d, hdr->pid, true);
		sonde_procs__on_exit(d->procs, (const void *)hdr);
		sonde_policy__exited(d->policy, hdr->pid, hdr->time_ns);
		return;
	}
	d->counters.records_malformed++;
}

static int on_event(void *ctx, void *data, size_t size)
{
	struct sonde_daemon *d = ctx;
	const struct sonde_event_hdr *hdr = data;

	if (size < sizeof(*hdr)) {
		d->counters.records_malformed++;
		return 0;
	}
	if (hdr->type == SONDE_EV_SAMPLE)
		handle_sample(d, data, size);
	else
		handle_lifecycle(d, hdr, size);
	return 0;
}

/* Side-band first: a sample must never meet an address space older than itself. */
void daemon_drain(struct sonde_daemon *d)
{
	int n;

	if (d->sideband) {
		n = sonde_sideband__drain(d->sideband);
		if (n < 0)
			sonde_debug("side-band drain: %s", strerror(-n));
	}
	n = sonde_bpf_host__consume(d->host);
	if (n < 0 && n != -EINTR)
		sonde_warn("reading the events ringbuf: %s", strerror(-n));
	release_held(d, false);
}

static void on_ring(void *ctx, int fd, uint32_t revents)
{
	daemon_drain(ctx);
}

static void on_sideband(void *ctx, int fd, uint32_t revents)
{
	struct sonde_daemon *d = ctx;

	sonde_sideband__drain(d->sideband);
}

static void on_drain_timer(void *ctx)
{
	daemon_drain(ctx);
}

/* ---- windows ---------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const uint8_t *data, size_t len)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	size_t off = 0;
	int fd, err = 0;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (close(fd) && !err)
		err = -errno;
	if (!err && rename(tmp, path))
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

static void write_window(struct sonde_daemon *d)
{
	char name[64];
	struct tm tm;
	time_t now = time(NULL);
	uint8_t *data = NULL;
	size_t len = 0;
	int err;

	gmtime_r(&now, &tm);
	strftime(name, sizeof(name), "cpu-%Y%m%dT%H%M%SZ.pb.gz", &tm);
	err = sonde_profile__pprof(d->window, &data, &len);
	if (!err)
		err = write_file(d->cfg.output_dir, name, data, len);
	free(data);
	if (err) {
		d->counters.window_write_errors++;
		sonde_warn("cannot write the profile window %s/%s: %s", d->cfg.output_dir, name,
			   strerror(-err));
		return;
	}
	d->counters.windows_written++;
	sonde_debug("wrote %s/%s (%zu bytes, %llu samples)", d->cfg.output_dir, name, len,
		    (unsigned long long)sonde_profile__samples(d->window));
}

/* Ends the window: files, exports and the script, then the store keeps it. */
static void flush_window(struct sonde_daemon *d)
{
	struct sonde_profile_opts opts = { .period_ns = daemon_period_ns(d) };
	struct sonde_profile *next;
	int err;

	daemon_drain(d);
	sonde_profile__close(d->window);
	if (d->cfg.output_dir)
		write_window(d);
	err = sonde_publisher__window(d->publisher, d->window, daemon_period_ns(d), d->script);
	if (err == -EINVAL && d->script)
		sonde_warn("script: on_window: %s", sonde_script__last_error(d->script));
	next = sonde_profile__new(&opts);
	if (next) {
		if (sonde_store__push(d->store, d->window))
			sonde_debug("the store is out of memory: window dropped");
		d->window = next;
	} else {
		sonde_profile__reset(d->window); /* keep sampling, lose the history */
	}
	sonde_procs__reap(d->procs, sonde_now_ns());
	sonde_policy__reap(d->policy, sonde_now_ns(), GRACE_NS);
}

static void on_window_timer(void *ctx)
{
	flush_window(ctx);
}

/* ---- pending profiles ------------------------------------------------- */

void daemon_pending_forget(struct sonde_daemon *d, struct pending_profile *target)
{
	struct pending_profile **pp;

	for (pp = &d->pending; *pp; pp = &(*pp)->next) {
		if (*pp == target) {
			*pp = target->next;
			break;
		}
	}
	sonde_loop__cancel_timer(d->loop, target->timer);
	sonde_profile__free(target->profile);
	free(target);
}

static void on_pending_due(void *ctx)
{
	struct pending_profile *p = ctx;
	struct sonde_daemon *d = p->d;

	daemon_drain(d);
	sonde_profile__close(p->profile);
	p->done(p);
	daemon_pending_forget(d, p);
}

struct pending_profile *daemon_pending_new(struct sonde_daemon *d, unsigned long seconds,
					   const struct sonde_profile_opts *filter,
					   void (*done)(struct pending_profile *p))
{
	struct sonde_profile_opts opts = *filter;
	struct pending_profile *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	opts.period_ns = daemon_period_ns(d);
	p->d = d;
	p->done = done;
	p->profile = sonde_profile__new(&opts);
	if (p->profile)
		p->timer = sonde_loop__add_timer(d->loop, seconds * 1000, 0, on_pending_due, p);
	if (!p->timer) {
		sonde_profile__free(p->profile);
		free(p);
		return NULL;
	}
	p->next = d->pending;
	d->pending = p;
	return p;
}

/* ---- the script ------------------------------------------------------- */

static struct sonde_script *load_script(const struct sonde_daemon_opts *opts, char *err,
					size_t errlen)
{
	struct sonde_script_opts so = { .allow_unsafe = opts->unsafe_script };

	return sonde_script__load(opts->script, &so, err, errlen);
}

/* The command line wins over the script, the script over the defaults. */
static void merge_config(struct sonde_daemon *d)
{
	const struct sonde_daemon_opts *o = d->opts;
	const struct sonde_script_config *sc = d->script ? sonde_script__config(d->script) : NULL;

	d->cfg.hz = o->hz ? o->hz : sc && sc->hz ? sc->hz : 19;
	d->cfg.window_s = o->window_s ? o->window_s : sc && sc->window_s ? sc->window_s : 10;
	d->cfg.output_dir = o->output_dir ? o->output_dir : sc ? sc->output_dir : NULL;
	d->cfg.http_addr = o->http_set ? o->http_addr
			   : sc && sc->http_set ? sc->http_addr
						: "127.0.0.1:7470";
	d->cfg.export_url = o->export_set ? o->export_url
			    : sc && sc->export_url ? sc->export_url
						   : SONDE_EXPORT_DEFAULT_URL;
	d->cfg.control_url = o->control_set ? o->control_url
			     : sc && sc->control_url ? sc->control_url
						     : SONDE_CONTROL_URL_DEFAULT;
}

static void redecide(void *ctx, struct sonde_proc *proc)
{
	struct sonde_daemon *d = ctx;

	if (!proc->exit_ns)
		sonde_policy__decide(d->policy, proc);
}

int daemon_reload(struct sonde_daemon *d, char *err, size_t errlen)
{
	const struct sonde_script_config *now, *next_cfg;
	struct sonde_script *next;

	if (!d->opts->script) {
		snprintf(err, errlen, "sonded runs without a script (--script FILE)");
		return -ENOENT;
	}
	next = load_script(d->opts, err, errlen);
	if (!next) {
		d->script_reload_failures++;
		return -errno;
	}
	now = d->script ? sonde_script__config(d->script) : NULL;
	next_cfg = sonde_script__config(next);
	if (now && (now->hz != next_cfg->hz || now->window_s != next_cfg->window_s ||
		    now->nplugins != next_cfg->nplugins))
		sonde_warn("script %s: sampling and plugins take effect at the next start",
			   d->opts->script);
	sonde_policy__set_script(d->policy, next);
	sonde_script__free(d->script);
	d->script = next;
	sonde_procs__for_each(d->procs, redecide, d);
	d->script_reloads++;
	sonde_info("reloaded %s", d->opts->script);
	return 0;
}

/* ---- signals ---------------------------------------------------------- */

static void on_signal(void *ctx, int fd, uint32_t revents)
{
	struct sonde_daemon *d = ctx;
	struct signalfd_siginfo si;
	char err[512];

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			if (daemon_reload(d, err, sizeof(err)))
				sonde_err("reload failed, the old script stays: %s", err);
			continue;
		}
		sonde_info("%s: flushing the window and stopping", strsignal(si.ssi_signo));
		sonde_loop__stop(d->loop);
	}
}

static int setup_signals(struct sonde_daemon *d)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGPIPE);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		return -errno;
	sigdelset(&set, SIGPIPE);
	d->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (d->sigfd < 0)
		return -errno;
	return sonde_loop__add_fd(d->loop, d->sigfd, EPOLLIN, on_signal, d);
}

/* ---- start-up and shutdown -------------------------------------------- */

static void daemon_free(struct sonde_daemon *d)
{
	while (d->pending) {
		struct pending_profile *p = d->pending;

		if (p->conn)
			sonde_http_conn__error(p->conn, 503, "sonded is stopping");
		if (p->req)
			sonde_control_req__fail(p->req, "sonded is stopping");
		daemon_pending_forget(d, p);
	}
	sonde_control__free(d->control);
	sonde_http__free(d->http);
	sonde_publisher__free(d->publisher);
	sonde_export__free(d->export);
	sonde_policy__free(d->policy);
	sonde_interp__free(d->interp);
	sonde_plugins__free(d->plugins);
	sonde_bpf_host__free(d->host);
	sonde_sideband__free(d->sideband);
	sonde_store__free(d->store);
	sonde_profile__free(d->window);
	sonde_tagwait__free(d->tagwait);
	sonde_procs__free(d->procs);
	sonde_symbolizer__free(d->sym);
	sonde_script__free(d->script);
	if (d->sigfd >= 0)
		close(d->sigfd);
	sonde_loop__free(d->loop);
	free(d);
}

static int publish_for_plugins(void *ctx, const char *topic, const void *msgpack, size_t len)
{
	struct sonde_daemon *d = ctx;

	return d->export ? sonde_export__publish(d->export, topic, msgpack, len) : -ENOTCONN;
}

/* A plugin's hook into the script (plugin.h, script_hook): a failure is the
 * script's, logged as on_process's are and counted in its stats. */
static int script_hook_for_plugins(void *ctx, const char *hook,
				   const struct sonde_plugin_label *fields, int nfields, char *out,
				   size_t outlen)
{
	struct sonde_script_label labels[16];
	struct sonde_daemon *d = ctx;
	struct sonde_script_stats st;
	int i, rc;

	if (!d->script)
		return -ENOENT;
	if (nfields < 0 || nfields > 16)
		return -E2BIG;
	for (i = 0; i < nfields; i++)
		labels[i] = (struct sonde_script_label){ fields[i].key, fields[i].value };
	rc = sonde_script__hook(d->script, hook, labels, (size_t)nfields, out, outlen);
	if (rc == -EINVAL) {
		sonde_script__stats(d->script, &st);
		if (st.errors <= 10 || st.errors % 1000 == 0)
			sonde_warn("script: on_%s: %s%s", hook, sonde_script__last_error(d->script),
				   st.errors == 10 ? " (from now on one failure in 1000 is logged; all "
						     "are counted in sonde_script_errors_total)"
						   : "");
	}
	return rc;
}

static uint64_t script_generation_for_plugins(void *ctx)
{
	struct sonde_daemon *d = ctx;

	return d->script ? sonde_script__generation(d->script) : 0;
}

/* Loads the plugins the script names; a required one that fails stops the start. */
static int load_plugins(struct sonde_daemon *d)
{
	const struct sonde_script_config *sc = d->script ? sonde_script__config(d->script) : NULL;
	struct sonde_plugin_services svc = {
		.loop = d->loop,
		.bpf = d->host,
		.plugin_dir = d->opts->plugin_dir ? d->opts->plugin_dir : SONDE_PLUGIN_DIR,
		.publish = publish_for_plugins,
		.publish_ctx = d,
		.script_hook = script_hook_for_plugins,
		.script_generation = script_generation_for_plugins,
		.script_ctx = d,
	};
	struct sonde_plugin_kv kvs[64];
	char err[512];
	size_t i, k;
	int rc;

	d->plugins = sonde_plugins__new(&svc);
	if (!d->plugins)
		return -errno;
	for (i = 0; sc && i < sc->nplugins; i++) {
		const struct sonde_script_plugin *sp = &sc->plugins[i];

		for (k = 0; k < sp->nkvs && k < 64; k++)
			kvs[k] = (struct sonde_plugin_kv){ sp->kvs[k].key, sp->kvs[k].value };
		rc = sonde_plugins__load(d->plugins, sp->name, kvs, k, err, sizeof(err));
		if (!rc) {
			sonde_info("plugin %s loaded", sp->name);
			continue;
		}
		if (sp->required) {
			sonde_err("%s (the script requires plugin %s)", err, sp->name);
			return rc;
		}
		sonde_warn("%s: going on without plugin %s", err, sp->name);
	}
	return 0;
}

static int open_sockets(struct sonde_daemon *d)
{
	struct sonde_control_handlers handlers = { .ctx = d, .handle = daemon_on_control };
	char err[512];
	int rc;

	if (d->cfg.http_addr) {
		d->http = sonde_http__new(d->loop, d->cfg.http_addr, daemon_on_http, d);
		if (!d->http) {
			rc = -errno;
			sonde_err("cannot listen on %s: %s%s", d->cfg.http_addr, strerror(-rc),
				  rc == -EADDRINUSE ? " (another sonded running? choose --http ADDR)"
						    : "");
			return rc;
		}
	}
	if (d->cfg.export_url && strcmp(d->cfg.export_url, "none") != 0) {
		d->export = sonde_export__new(d->cfg.export_url, err, sizeof(err));
		if (!d->export) {
			sonde_err("export socket: %s (--export URL or 'none' chooses another)", err);
			return -EINVAL;
		}
	}
	if (d->cfg.control_url && strcmp(d->cfg.control_url, "none") != 0) {
		d->control = sonde_control__new(d->loop, d->cfg.control_url, &handlers, err,
						sizeof(err));
		if (!d->control) {
			sonde_err("control socket: %s (--control URL or 'none' chooses another)", err);
			return -EINVAL;
		}
	}
	return 0;
}

static void decide_at_start(void *ctx, struct sonde_proc *proc)
{
	struct sonde_daemon *d = ctx;

	sonde_policy__decide(d->policy, proc);
}

static int daemon_start(struct sonde_daemon *d)
{
	struct sonde_bpf_host_opts host_opts = { .on_event = on_event, .ctx = d };
	struct sonde_profile_opts window_opts;
	char err[512];
	int rc;

	if (d->opts->script) {
		d->script = load_script(d->opts, err, sizeof(err));
		if (!d->script) {
			sonde_err("%s", err);
			return -EINVAL;
		}
	}
	merge_config(d);
	if (d->cfg.output_dir) {
		struct stat st;

		if (stat(d->cfg.output_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
			sonde_err("output directory %s: not a directory", d->cfg.output_dir);
			return -ENOTDIR;
		}
	}
	window_opts = (struct sonde_profile_opts){ .period_ns = daemon_period_ns(d) };
	host_opts.hz = d->cfg.hz;

	d->loop = sonde_loop__new();
	d->sym = sonde_symbolizer__new(NULL);
	d->window = sonde_profile__new(&window_opts);
	d->store = sonde_store__new(STORE_RETENTION_NS, STORE_MAX_BYTES);
	d->tagwait = sonde_tagwait__new(TAG_WAIT_MAX);
	if (!d->loop || !d->sym || !d->window || !d->store || !d->tagwait)
		goto nomem;
	d->kernel = sonde_symbolizer__kernel(d->sym);
	d->unknown = sonde_symbolizer__unknown(d->sym);
	d->procs = sonde_procs__new(d->sym, NULL);
	if (!d->kernel || !d->unknown || !d->procs)
		goto nomem;
	rc = setup_signals(d);
	if (rc) {
		sonde_err("cannot set up signal handling: %s", strerror(-rc));
		return rc;
	}

	d->host = sonde_bpf_host__load(&host_opts);
	if (!d->host)
		return -errno;
	rc = load_plugins(d);
	if (rc)
		return rc;
	d->interp = sonde_interp__new(d->sym, d->plugins);
	if (!d->interp)
		goto nomem;
	d->policy = sonde_policy__new(d->host, d->plugins);
	if (!d->policy)
		goto nomem;
	sonde_policy__set_script(d->policy, d->script);
	if (!d->opts->check) {
		rc = open_sockets(d);
		if (rc)
			return rc;
	}
	d->publisher = sonde_publisher__new(d->export);
	if (!d->publisher)
		goto nomem;

	/* Side-band before the /proc scan: nothing mapped in between is missed. */
	d->sideband = sonde_sideband__new(d->procs, 0);
	if (!d->sideband)
		sonde_warn("perf side-band records are unavailable (%s): short-lived processes "
			   "may keep unnamed frames",
			   strerror(errno));
	rc = sonde_procs__scan(d->procs);
	if (rc)
		sonde_warn("cannot scan /proc: %s", strerror(-rc));
	sonde_procs__for_each(d->procs, decide_at_start, d);
	rc = sonde_bpf_host__attach(d->host);
	if (rc)
		return rc;

	rc = sonde_loop__add_fd(d->loop, sonde_bpf_host__ring_fd(d->host), EPOLLIN, on_ring, d);
	if (!rc && d->sideband)
		rc = sonde_loop__add_fd(d->loop, sonde_sideband__fd(d->sideband), EPOLLIN,
					on_sideband, d);
	if (rc) {
		sonde_err("cannot watch the event buffers: %s", strerror(-rc));
		return rc;
	}
	d->drain_timer = sonde_loop__add_timer(d->loop, DRAIN_INTERVAL_MS, DRAIN_INTERVAL_MS,
					       on_drain_timer, d);
	d->window_timer = sonde_loop__add_timer(d->loop, d->cfg.window_s * 1000ULL,
						d->cfg.window_s * 1000ULL, on_window_timer, d);
	if (!d->drain_timer || !d->window_timer)
		goto nomem;
	return 0;
nomem:
	sonde_err("out of memory while starting");
	return -ENOMEM;
}

/* ---- --check ---------------------------------------------------------- */

static volatile uint64_t check_sink;

/* The function --check expects to find in its own samples. */
__attribute__((noinline)) static void sonde_check_spin(uint64_t until_ns)
{
	while (sonde_now_ns() < until_ns)
		check_sink++;
}

static void on_check_done(void *ctx)
{
	sonde_loop__stop(ctx);
}

static void collect_only(struct pending_profile *p)
{
}

static int run_check(struct sonde_daemon *d)
{
	uint64_t stats[SONDE_STAT__COUNT];
	struct sonde_profile_opts opts = { 0 };
	struct pending_profile *child_profile;
	pid_t child;
	uint64_t child_samples;
	int status, err;

	child = fork();
	if (child < 0)
		return -errno;
	if (child == 0) {
		sonde_check_spin(sonde_now_ns() + 1000000000ULL);
		_exit(0);
	}
	opts.pid = child;
	child_profile = daemon_pending_new(d, 3600, &opts, collect_only);
	if (!child_profile || !sonde_loop__add_timer(d->loop, 1500, 0, on_check_done, d->loop))
		return -ENOMEM;
	sonde_loop__run(d->loop);
	waitpid(child, &status, 0);
	daemon_drain(d);
	child_samples = sonde_profile__samples(child_profile->profile);

	err = sonde_bpf_host__stats(d->host, stats);
	if (err)
		return err;
	printf("check: sampler attached on %u CPUs at %u Hz\n", sonde_bpf_host__cpus(d->host),
	       d->cfg.hz);
	printf("check: lifecycle hooks attached: %u of 3\n", sonde_bpf_host__hooks(d->host));
	printf("check: side-band records: %s\n", d->sideband ? "on" : "off");
	printf("check: samples taken %llu, received %llu, of the spinning child %llu\n",
	       (unsigned long long)stats[SONDE_STAT_SAMPLES],
	       (unsigned long long)d->counters.samples_received, (unsigned long long)child_samples);
	if (child_samples == 0) {
		printf("check: FAILED: no sample of the spinning child arrived\n");
		return -EIO;
	}
	printf("check: ok\n");
	return 0;
}

int sonde_daemon_run(const struct sonde_daemon_opts *opts)
{
	struct sonde_daemon *d = calloc(1, sizeof(*d));
	int err;

	if (!d)
		return -ENOMEM;
	d->opts = opts;
	d->sigfd = -1;
	d->started_ns = sonde_now_ns();
	sonde_log_libbpf();
	err = daemon_start(d);
	if (err)
		goto out;
	if (opts->check) {
		err = run_check(d);
		goto out;
	}
	sonde_info("sampling %u CPUs at %u Hz; %u lifecycle hooks; %s%s%s%s%s",
		   sonde_bpf_host__cpus(d->host), d->cfg.hz, sonde_bpf_host__hooks(d->host),
		   d->http ? "serving http://" : "no HTTP", d->http ? sonde_http__addr(d->http) : "",
		   d->export ? "; exports on " : "", d->export ? sonde_export__url(d->export) : "",
		   d->cfg.output_dir ? "; writing windows" : "");
	err = sonde_loop__run(d->loop);
	if (err)
		sonde_err("the event loop failed: %s", strerror(-err));
	daemon_drain(d);
	release_held(d, true);
	flush_window(d);
out:
	daemon_free(d);
	return err;
}
