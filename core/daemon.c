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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf_host.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "proc.h"
#include "profile.h"
#include "sideband.h"
#include "sonde/abi.h"
#include "strbuf.h"
#include "symbolize.h"

#define DRAIN_INTERVAL_MS 100
#define MAX_PROFILE_SECONDS 3600

struct pending_profile {
	struct sonde_daemon *d;
	struct sonde_http_conn *conn;
	struct sonde_profile *profile;
	struct sonde_loop_timer *timer;
	struct pending_profile *next;
};

struct sonde_daemon {
	const struct sonde_daemon_opts *opts;
	struct sonde_loop *loop;
	struct sonde_symbolizer *sym;
	struct sonde_object *kernel;
	struct sonde_object *unknown;
	struct sonde_procs *procs;
	struct sonde_sideband *sideband;
	struct sonde_bpf_host *host;
	struct sonde_http *http;
	struct sonde_profile *window;
	struct pending_profile *pending;
	struct sonde_loop_timer *drain_timer, *window_timer;
	int sigfd;
	struct sonde_daemon_counters counters;
	struct sonde_profile_frame frames[SONDE_MAX_FRAMES];
};

/* ---- samples ---------------------------------------------------------- */

static uint32_t resolve_user_frames(struct sonde_daemon *d, struct sonde_proc *proc,
				    const struct sonde_sample *s, uint32_t n)
{
	uint32_t j;

	for (j = 0; j < s->ustack_len && n < SONDE_MAX_FRAMES; j++) {
		uint64_t addr = s->frames[s->kstack_len + j];
		bool exact = j == 0 && (s->flags & SONDE_SAMPLE_USER_MODE);
		const struct sonde_mapping *m = NULL;
		struct sonde_profile_frame *f = &d->frames[n++];

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

static void handle_sample(struct sonde_daemon *d, const struct sonde_sample *s, size_t size)
{
	struct sonde_profile_labels labels = { .pid = s->hdr.pid };
	struct sonde_proc *proc;
	char comm[SONDE_COMM_LEN + 1];
	uint32_t n = 0, i;

	if (size < SONDE_SAMPLE_HDR_SIZE ||
	    size < SONDE_SAMPLE_HDR_SIZE + 8 * ((size_t)s->kstack_len + s->ustack_len) ||
	    (size_t)s->kstack_len + s->ustack_len > SONDE_MAX_FRAMES) {
		d->counters.records_malformed++;
		return;
	}
	d->counters.samples_received++;
	proc = sonde_procs__get(d->procs, s->hdr.pid);
	if (proc) {
		labels.comm = proc->comm;
		labels.exe = proc->exe;
		labels.container_id = proc->container_id;
	} else {
		memcpy(comm, s->comm, SONDE_COMM_LEN);
		comm[SONDE_COMM_LEN] = '\0';
		labels.comm = comm;
		d->counters.samples_unknown_process++;
	}
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

static int on_event(void *ctx, void *data, size_t size)
{
	struct sonde_daemon *d = ctx;
	const struct sonde_event_hdr *hdr = data;

	if (size < sizeof(*hdr)) {
		d->counters.records_malformed++;
		return 0;
	}
	switch (hdr->type) {
	case SONDE_EV_SAMPLE:
		handle_sample(d, data, size);
		break;
	case SONDE_EV_EXEC:
		if (size >= sizeof(struct sonde_exec_event))
			sonde_procs__on_exec(d->procs, data);
		break;
	case SONDE_EV_FORK:
		if (size >= sizeof(struct sonde_fork_event))
			sonde_procs__on_fork(d->procs, data);
		break;
	case SONDE_EV_EXIT:
		if (size >= sizeof(struct sonde_exit_event))
			sonde_procs__on_exit(d->procs, data);
		break;
	default:
		d->counters.records_malformed++;
	}
	return 0;
}

/* Side-band first: a sample must never meet an address space older than itself. */
static void drain(struct sonde_daemon *d)
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
}

static void on_ring(void *ctx, int fd, uint32_t revents)
{
	drain(ctx);
}

static void on_sideband(void *ctx, int fd, uint32_t revents)
{
	struct sonde_daemon *d = ctx;

	sonde_sideband__drain(d->sideband);
}

static void on_drain_timer(void *ctx)
{
	drain(ctx);
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
		err = write_file(d->opts->output_dir, name, data, len);
	free(data);
	if (err) {
		d->counters.window_write_errors++;
		sonde_warn("cannot write the profile window %s/%s: %s", d->opts->output_dir, name,
			   strerror(-err));
		return;
	}
	d->counters.windows_written++;
	sonde_debug("wrote %s/%s (%zu bytes, %llu samples)", d->opts->output_dir, name, len,
		    (unsigned long long)sonde_profile__samples(d->window));
}

static void flush_window(struct sonde_daemon *d)
{
	drain(d);
	if (d->opts->output_dir)
		write_window(d);
	sonde_profile__reset(d->window);
	sonde_procs__reap(d->procs, sonde_now_ns());
}

static void on_window_timer(void *ctx)
{
	flush_window(ctx);
}

/* ---- HTTP ------------------------------------------------------------- */

static void forget_pending(struct sonde_daemon *d, struct pending_profile *target)
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

static void on_profile_client_gone(void *ctx)
{
	struct pending_profile *p = ctx;

	forget_pending(p->d, p);
}

static void on_profile_due(void *ctx)
{
	struct pending_profile *p = ctx;
	struct sonde_daemon *d = p->d;
	uint8_t *data = NULL;
	size_t len = 0;
	int err;

	drain(d);
	err = sonde_profile__pprof(p->profile, &data, &len);
	if (err)
		sonde_http_conn__error(p->conn, 500, "cannot encode the profile");
	else
		sonde_http_conn__respond(p->conn, 200, "application/octet-stream", data, len);
	free(data);
	forget_pending(d, p);
}

static void serve_profile(struct sonde_daemon *d, struct sonde_http_conn *conn, const char *query)
{
	struct sonde_profile_opts opts = { .period_ns = 1000000000ULL / d->opts->hz };
	char value[64], comm[SONDE_COMM_LEN];
	unsigned long seconds = 30, pid = 0;
	struct pending_profile *p;
	char *end;
	int r;

	r = sonde_http_query_get(query, "seconds", value, sizeof(value));
	if (r == 1) {
		errno = 0;
		seconds = strtoul(value, &end, 10);
		if (errno || end == value || *end || seconds < 1 || seconds > MAX_PROFILE_SECONDS) {
			sonde_http_conn__error(conn, 400, "seconds must be a whole number from 1 to 3600");
			return;
		}
	}
	r = sonde_http_query_get(query, "pid", value, sizeof(value));
	if (r == 1) {
		errno = 0;
		pid = strtoul(value, &end, 10);
		if (errno || end == value || *end || pid < 1 || pid > UINT32_MAX) {
			sonde_http_conn__error(conn, 400, "pid must be a process id");
			return;
		}
		opts.pid = pid;
	}
	r = sonde_http_query_get(query, "comm", comm, sizeof(comm));
	if (r < 0) {
		sonde_http_conn__error(conn, 400, "comm must be a command name of at most 15 bytes");
		return;
	}
	if (r == 1)
		opts.comm = comm;

	p = calloc(1, sizeof(*p));
	if (!p)
		goto fail;
	p->d = d;
	p->conn = conn;
	p->profile = sonde_profile__new(&opts);
	if (!p->profile)
		goto fail;
	p->timer = sonde_loop__add_timer(d->loop, seconds * 1000, 0, on_profile_due, p);
	if (!p->timer)
		goto fail;
	p->next = d->pending;
	d->pending = p;
	sonde_http_conn__defer(conn, on_profile_client_gone, p);
	return;
fail:
	if (p)
		sonde_profile__free(p->profile);
	free(p);
	sonde_http_conn__error(conn, 503, "out of memory");
}

static void serve_metrics(struct sonde_daemon *d, struct sonde_http_conn *conn)
{
	struct sonde_strbuf sb = SONDE_STRBUF_INIT;
	struct sonde_metrics_sources src = {
		.host = d->host,
		.sym = d->sym,
		.procs = d->procs,
		.sideband = d->sideband,
		.counters = &d->counters,
	};

	sonde_metrics_write(&src, &sb);
	if (sonde_strbuf__error(&sb))
		sonde_http_conn__error(conn, 503, "out of memory");
	else
		sonde_http_conn__respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
					 sb.data, sb.len);
	sonde_strbuf__release(&sb);
}

static const char index_page[] =
	"sonded " SONDE_VERSION "\n"
	"\n"
	"/metrics                 Prometheus self metrics\n"
	"/debug/pprof/profile     CPU profile of the node: ?seconds=N (default 30),\n"
	"                         &pid=N or &comm=NAME to narrow it;\n"
	"                         go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=10\n";

static void on_http(void *ctx, struct sonde_http_conn *conn, const struct sonde_http_request *req)
{
	struct sonde_daemon *d = ctx;

	if (strcmp(req->path, "/metrics") == 0)
		serve_metrics(d, conn);
	else if (strcmp(req->path, "/debug/pprof/profile") == 0)
		serve_profile(d, conn, req->query);
	else if (strcmp(req->path, "/") == 0 || strcmp(req->path, "/debug/pprof/") == 0)
		sonde_http_conn__respond(conn, 200, NULL, index_page, sizeof(index_page) - 1);
	else
		sonde_http_conn__error(conn, 404, "not found: see / for what sonded serves");
}

/* ---- signals, start-up, shutdown -------------------------------------- */

static void on_signal(void *ctx, int fd, uint32_t revents)
{
	struct sonde_daemon *d = ctx;
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			sonde_info("SIGHUP: nothing to reload yet");
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

static void daemon_free(struct sonde_daemon *d)
{
	while (d->pending) {
		sonde_http_conn__error(d->pending->conn, 503, "sonded is stopping");
		forget_pending(d, d->pending);
	}
	sonde_http__free(d->http);
	sonde_bpf_host__free(d->host);
	sonde_sideband__free(d->sideband);
	sonde_profile__free(d->window);
	sonde_procs__free(d->procs);
	sonde_symbolizer__free(d->sym);
	if (d->sigfd >= 0)
		close(d->sigfd);
	sonde_loop__free(d->loop);
	free(d);
}

static int daemon_start(struct sonde_daemon *d)
{
	struct sonde_bpf_host_opts host_opts = {
		.hz = d->opts->hz,
		.on_event = on_event,
		.ctx = d,
	};
	struct sonde_profile_opts window_opts = { .period_ns = 1000000000ULL / d->opts->hz };
	int err;

	d->loop = sonde_loop__new();
	d->sym = sonde_symbolizer__new(NULL);
	d->window = sonde_profile__new(&window_opts);
	if (!d->loop || !d->sym || !d->window)
		goto nomem;
	d->kernel = sonde_symbolizer__kernel(d->sym);
	d->unknown = sonde_symbolizer__unknown(d->sym);
	d->procs = sonde_procs__new(d->sym, NULL);
	if (!d->kernel || !d->unknown || !d->procs)
		goto nomem;
	err = setup_signals(d);
	if (err) {
		sonde_err("cannot set up signal handling: %s", strerror(-err));
		return err;
	}

	d->host = sonde_bpf_host__load(&host_opts);
	if (!d->host)
		return -errno;
	/* Side-band before the /proc scan: nothing mapped in between is missed. */
	d->sideband = sonde_sideband__new(d->procs, 0);
	if (!d->sideband)
		sonde_warn("perf side-band records are unavailable (%s): short-lived processes "
			   "may keep unnamed frames",
			   strerror(errno));
	err = sonde_procs__scan(d->procs);
	if (err)
		sonde_warn("cannot scan /proc: %s", strerror(-err));
	err = sonde_bpf_host__attach(d->host);
	if (err)
		return err;

	err = sonde_loop__add_fd(d->loop, sonde_bpf_host__ring_fd(d->host), EPOLLIN, on_ring, d);
	if (!err && d->sideband)
		err = sonde_loop__add_fd(d->loop, sonde_sideband__fd(d->sideband), EPOLLIN,
					 on_sideband, d);
	if (err) {
		sonde_err("cannot watch the event buffers: %s", strerror(-err));
		return err;
	}
	d->drain_timer = sonde_loop__add_timer(d->loop, DRAIN_INTERVAL_MS, DRAIN_INTERVAL_MS,
					       on_drain_timer, d);
	d->window_timer = sonde_loop__add_timer(d->loop, d->opts->window_s * 1000ULL,
						d->opts->window_s * 1000ULL, on_window_timer, d);
	if (!d->drain_timer || !d->window_timer)
		goto nomem;

	if (d->opts->http_addr && !d->opts->check) {
		d->http = sonde_http__new(d->loop, d->opts->http_addr, on_http, d);
		if (!d->http) {
			err = -errno;
			sonde_err("cannot listen on %s: %s%s", d->opts->http_addr, strerror(-err),
				  err == -EADDRINUSE ? " (another sonded running? choose --http ADDR)"
						     : "");
			return err;
		}
	}
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

static int run_check(struct sonde_daemon *d)
{
	uint64_t stats[SONDE_STAT__COUNT];
	struct sonde_profile_opts opts = { .period_ns = 1000000000ULL / d->opts->hz };
	struct sonde_profile *child_profile;
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
	child_profile = sonde_profile__new(&opts);
	if (!child_profile)
		return -ENOMEM;
	/* A pending profile without a connection: only collects. */
	d->pending = &(struct pending_profile){ .d = d, .profile = child_profile };
	if (!sonde_loop__add_timer(d->loop, 1500, 0, on_check_done, d->loop)) {
		d->pending = NULL;
		sonde_profile__free(child_profile);
		return -errno;
	}
	sonde_loop__run(d->loop);
	waitpid(child, &status, 0);
	drain(d);
	d->pending = NULL;
	child_samples = sonde_profile__samples(child_profile);
	sonde_profile__free(child_profile);

	err = sonde_bpf_host__stats(d->host, stats);
	if (err)
		return err;
	printf("check: sampler attached on %u CPUs at %u Hz\n", sonde_bpf_host__cpus(d->host),
	       d->opts->hz);
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
	sonde_log_libbpf();
	err = daemon_start(d);
	if (err)
		goto out;
	if (opts->check) {
		err = run_check(d);
		goto out;
	}
	sonde_info("sampling %u CPUs at %u Hz; %u lifecycle hooks; %s%s%s",
		   sonde_bpf_host__cpus(d->host), opts->hz, sonde_bpf_host__hooks(d->host),
		   d->http ? "serving http://" : "no HTTP", d->http ? sonde_http__addr(d->http) : "",
		   opts->output_dir ? "; writing windows" : "");
	err = sonde_loop__run(d->loop);
	if (err)
		sonde_err("the event loop failed: %s", strerror(-err));
	flush_window(d);
out:
	daemon_free(d);
	return err;
}
