/* SPDX-License-Identifier: MIT */
/*
 * The export pub socket and the encoders of the core topics. The wire
 * format is a contract, written in docs/export.md and held to it by
 * tests/unit/test-export.c; change both with the code, and bump
 * SONDE_EXPORT_SCHEMA_VERSION for anything a subscriber could trip on
 * (a field removed, renamed or retyped; adding an optional field is not).
 *
 * Framing: each nng message is the topic in ASCII, one NUL byte, then one
 * msgpack map. Subscribers subscribe to "<topic>\0" (sub0 prefix matching),
 * so "proc" never matches "process".
 *
 * Threading: a struct sonde_export and a profile builder belong to one
 * thread (the daemon's loop). nng runs its own threads inside; publishing
 * never waits on them.
 */
#ifndef SONDE_EXPORT_H
#define SONDE_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

/* The `v` field of every message of the core topics. */
#define SONDE_EXPORT_SCHEMA_VERSION 1

/* What the daemon listens on unless told otherwise. */
#define SONDE_EXPORT_DEFAULT_URL "ipc:///run/sonde/export.ipc"

/* Topics are 1..SONDE_EXPORT_TOPIC_MAX bytes of [A-Za-z0-9_.-]. */
#define SONDE_EXPORT_TOPIC_MAX 64

struct sonde_export;

/*
 * Listens on url with an nng pub0 socket. ipc:// creates missing parent
 * directories (mode 0755) and makes the socket file mode 0600 (root's
 * subscribers only); a stale socket file from a dead daemon is replaced,
 * anything else at the path is refused (EEXIST). tcp:// is allowed too,
 * port 0 picks a free port (see sonde_export__url).
 * Returns NULL with errno set and a one-line reason in err, e.g.
 * "export: cannot listen on tcp://127.0.0.1:4000: Address in use"
 * (EADDRINUSE), EPROTONOSUPPORT for a scheme nng does not know, EINVAL for
 * a malformed URL.
 */
struct sonde_export *sonde_export__new(const char *url, char *err, size_t errlen);
void sonde_export__free(struct sonde_export *ex);

/*
 * The URL actually listened on: for tcp:// with port 0, the port the
 * kernel chose. Valid until sonde_export__free().
 */
const char *sonde_export__url(const struct sonde_export *ex);

/*
 * Sends topic "\0" msgpack[0..len) to every subscriber of topic. Never
 * blocks: nng queues per subscriber (SONDE_EXPORT_SENDBUF messages) and a
 * subscriber that falls behind loses its oldest queued messages inside
 * nng, which nng does not report. What this function can see is counted:
 * a message nng accepted is sent (even with no subscriber), one nng
 * refused (EAGAIN, ENOMEM) is dropped. The bytes are copied.
 * 0, -EINVAL (bad topic), or -EAGAIN/-ENOMEM (counted as dropped).
 */
int sonde_export__publish(struct sonde_export *ex, const char *topic, const void *msgpack,
			  size_t len);

#define SONDE_EXPORT_SENDBUF 128

uint64_t sonde_export__sent(const struct sonde_export *ex);
uint64_t sonde_export__dropped(const struct sonde_export *ex);

/* ---- topic "proc" ---- */

enum sonde_export_proc_event {
	SONDE_EXPORT_PROC_START,
	SONDE_EXPORT_PROC_EXIT,
};

/* A script-defined label; both strings are sent as given. */
struct sonde_export_label {
	const char *key;
	const char *value;
};

/* NULL strings and ppid < 0 are left out of the message. */
struct sonde_export_proc {
	enum sonde_export_proc_event event;
	double time; /* unix seconds */
	int32_t pid;
	int32_t ppid;
	const char *comm;
	const char *exe;
	const char *cmdline; /* arguments joined by spaces */
	const char *cgroup;
	const char *container_id;
	const struct sonde_export_label *labels; /* nr_labels of them; 0: no "labels" */
	size_t nr_labels;
};

/*
 * Appends one "proc" map (without the topic framing) to out.
 * 0, -EINVAL (an event out of range, a label with a NULL key or value,
 * two labels with the same key) or
 * -ENOMEM. On error out may hold a partial map: reset it.
 */
int sonde_export_encode_proc(const struct sonde_export_proc *p, msgpack_sbuffer *out);

/* ---- topic "profile" ---- */

/*
 * One frame. function is never NULL: a frame nothing names is called
 * "module+0xoffset", as in pprof. kind is "native", "kernel", "python",
 * "jit", ... (free text, never NULL). Two frames are the same frame when
 * every field is equal.
 */
struct sonde_export_frame {
	const char *function;
	const char *file;   /* NULL: unknown */
	uint32_t line;      /* 0: unknown */
	const char *module; /* NULL: unknown */
	const char *kind;
	uint64_t addr; /* address relative to module, for tools that resymbolize; 0: not sent */
};

/*
 * The labels of one stack; NULL strings and pid < 0 are left out. Extra
 * keys must be distinct and not one of pid, comm, exe, container_id.
 */
struct sonde_export_stack_labels {
	int32_t pid;
	const char *comm;
	const char *exe;
	const char *container_id;
	const struct sonde_export_label *extra; /* nr_extra of them, after the above */
	size_t nr_extra;
};

struct sonde_export_profile_info {
	double start;    /* unix seconds */
	double duration; /* seconds */
	uint64_t period_ns;
	const char *sample_type; /* NULL: "cpu" */
};

/*
 * Builds one "profile" message: begin, add frames (deduplicated: the same
 * frame added twice gets the same index) and stacks, end. The builder
 * copies everything it is given and can be reused after end() for the next
 * window. A failed add_frame/add_stack changes nothing (the message so far
 * stays valid); end() always finishes the message, so the next one starts
 * with begin().
 */
struct sonde_export_profile;

struct sonde_export_profile *sonde_export_profile__new(void);
void sonde_export_profile__free(struct sonde_export_profile *b);

/* Starts a message, dropping anything a previous unfinished one held. 0 or -ENOMEM. */
int sonde_export_profile__begin(struct sonde_export_profile *b,
				const struct sonde_export_profile_info *info);
/*
 * The frame's index in this message's "frames" (>= 0), or -EINVAL (no
 * begin, NULL function or kind), -E2BIG or -ENOMEM.
 */
int sonde_export_profile__add_frame(struct sonde_export_profile *b,
				    const struct sonde_export_frame *f);
/*
 * count samples of frames[0..n) (indexes from add_frame, leaf first).
 * 0, -EINVAL (an index never returned, count 0, a label NULL key/value, no
 * begin) or -ENOMEM.
 */
int sonde_export_profile__add_stack(struct sonde_export_profile *b, uint64_t count,
				    const struct sonde_export_stack_labels *labels,
				    const uint32_t *frames, size_t n);
/*
 * Appends the finished map to out; samples is the sum of the counts.
 * 0, -EINVAL (no begin) or -ENOMEM (out is left as it was).
 */
int sonde_export_profile__end(struct sonde_export_profile *b, msgpack_sbuffer *out);

#endif /* SONDE_EXPORT_H */
