/* SPDX-License-Identifier: MIT */
/*
 * The daemon's state, shared by daemon.c (start-up, samples, windows,
 * signals), daemon_http.c and daemon_control.c. Private to those files.
 */
#ifndef SONDE_DAEMON_PRIV_H
#define SONDE_DAEMON_PRIV_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon.h"
#include "metrics.h"
#include "profile.h"
#include "sonde/abi.h"

struct sonde_bpf_host;
struct sonde_control;
struct sonde_control_req;
struct sonde_export;
struct sonde_http;
struct sonde_http_conn;
struct sonde_interp;
struct sonde_loop;
struct sonde_loop_timer;
struct sonde_tagwait;
struct sonde_object;
struct sonde_plugins;
struct sonde_policy;
struct sonde_procs;
struct sonde_publisher;
struct sonde_script;
struct sonde_sideband;
struct sonde_store;
struct sonde_strbuf;
struct sonde_symbolizer;

/*
 * A profile being collected for someone who asked for the next N seconds
 * (HTTP or the control socket); done() answers when the timer fires.
 */
struct pending_profile {
	struct sonde_daemon *d;
	struct sonde_profile *profile;
	struct sonde_loop_timer *timer;
	void (*done)(struct pending_profile *p);
	struct sonde_http_conn *conn;   /* HTTP */
	struct sonde_control_req *req;  /* control */
	bool folded;                    /* control: folded stacks, not pprof */
	struct pending_profile *next;
};

/* The options in force: the command line over the script over defaults. */
struct daemon_config {
	unsigned int hz;
	unsigned int window_s;
	const char *output_dir;
	const char *http_addr;
	const char *export_url;
	const char *control_url;
};

struct sonde_daemon {
	const struct sonde_daemon_opts *opts;
	struct daemon_config cfg;
	uint64_t started_ns;
	struct sonde_loop *loop;
	struct sonde_symbolizer *sym;
	struct sonde_object *kernel;
	struct sonde_object *unknown;
	struct sonde_procs *procs;
	struct sonde_sideband *sideband;
	struct sonde_bpf_host *host;
	struct sonde_script *script;
	struct sonde_plugins *plugins;
	struct sonde_interp *interp;
	struct sonde_policy *policy;
	struct sonde_export *export;
	struct sonde_publisher *publisher;
	struct sonde_store *store;
	struct sonde_http *http;
	struct sonde_control *control;
	struct sonde_profile *window;
	struct sonde_tagwait *tagwait; /* samples waiting for their tag's labels */
	struct pending_profile *pending;
	struct sonde_loop_timer *drain_timer, *window_timer;
	int sigfd;
	struct sonde_daemon_counters counters;
	uint64_t script_reloads, script_reload_failures;
	struct sonde_profile_frame frames[SONDE_MAX_FRAMES];
};

/* daemon.c */
void daemon_drain(struct sonde_daemon *d);
uint64_t daemon_period_ns(const struct sonde_daemon *d);
/* Starts collecting the next seconds into a pending profile with that
 * filter; done() is called when they have passed. NULL on ENOMEM. */
struct pending_profile *daemon_pending_new(struct sonde_daemon *d, unsigned long seconds,
					   const struct sonde_profile_opts *filter,
					   void (*done)(struct pending_profile *p));
void daemon_pending_forget(struct sonde_daemon *d, struct pending_profile *p);
/* Reloads the script; 0, or -errno with the reason in err (old one kept). */
int daemon_reload(struct sonde_daemon *d, char *err, size_t errlen);

/* daemon_http.c: the sonde_http_handler */
struct sonde_http_request;
void daemon_on_http(void *ctx, struct sonde_http_conn *conn, const struct sonde_http_request *req);

/* daemon_control.c: the control socket's handler */
struct msgpack_object;
void daemon_on_control(void *ctx, struct sonde_control_req *req, const char *cmd,
		       const struct msgpack_object *args);

#endif /* SONDE_DAEMON_PRIV_H */
