// SPDX-License-Identifier: MIT
#include "plugin.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <sonde/abi.h>

#include "bpf_host.h"
#include "hash.h"
#include "log.h"
#include "loop.h"
#include "strbuf.h"

#define DEFAULT_PLUGIN_DIR "/usr/lib/sonde"
#define MAX_FRAME_KINDS	   256
#define MAX_TAG_PROVIDERS  16 /* ids 1..15: a few plugins tag threads */
/* A settings table this long has lost its END entry. */
#define MAX_SETTINGS 1024

#define offsetofend(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/*
 * The descriptor bytes the core reads of a plugin of each minor: a plugin
 * must be at least that large for the minor it declares. A new minor adds
 * its fields here and to the copy in check_descriptor().
 */
static const size_t descriptor_min_size[SONDE_PLUGIN_ABI_MINOR + 1] = {
	[0] = offsetofend(struct sonde_plugin, detach_process),
	[1] = offsetofend(struct sonde_plugin, write_metrics),
	[2] = offsetofend(struct sonde_plugin, write_metrics), /* 1.2 grew the host api only */
	[3] = offsetofend(struct sonde_plugin, write_metrics), /* so did 1.3, */
	[4] = offsetofend(struct sonde_plugin, write_metrics), /* 1.4 */
	[5] = offsetofend(struct sonde_plugin, write_metrics), /* 1.5 */
	[6] = offsetofend(struct sonde_plugin, write_metrics), /* and 1.6 (thread_tags' type) */
};

struct counter {
	uint64_t value; /* the plugin holds &value: counters never move */
	char *name;
	char *help;
	struct counter *next;
};

struct watch {
	int fd;
	struct watch *next;
};

struct timer {
	struct sonde_loop_timer *timer;
	struct timer *next;
};

/* One loaded plugin; its address is the struct sonde_host the plugin sees. */
struct sonde_host {
	struct sonde_plugins *ps;
	struct sonde_plugin desc; /* the checked prefix of its descriptor */
	char *path;
	void *dl;
	void *state;
	void *settings;
	char **strings; /* STRING settings we strdup'd */
	size_t nstrings;
	struct counter *counters, **counters_tail;
	struct watch *watches;
	struct timer *timers;
	int unwinder_slot;
};

struct frame_kind {
	struct sonde_host *owner; /* NULL: free, or its plugin is gone */
	char *name;
	sonde_plugin_symbolize_fn symbolize;
};

struct tag_provider {
	struct sonde_host *owner; /* NULL: free, or its plugin is gone */
	sonde_plugin_tag_fn fn;
};

struct decision {
	uint32_t pid;
	bool attached;
	struct sonde_host *plugin;
	struct decision *next;
	char reason[];
};

struct sonde_plugins {
	struct sonde_loop *loop;
	struct sonde_bpf_host *bpf;
	int (*publish)(void *ctx, const char *topic, const void *msgpack, size_t len);
	void *publish_ctx;
	int (*script_hook)(void *ctx, const char *hook, const struct sonde_plugin_label *fields,
			   int nfields, char *out, size_t outlen);
	uint64_t (*script_generation)(void *ctx);
	void *script_ctx;
	char *dir;
	struct sonde_host **plugins;
	size_t nplugins, cap;
	/* Kinds are never handed out twice, so a frame recorded for a plugin
	 * that went away is never named by another. */
	struct frame_kind kinds[MAX_FRAME_KINDS];
	unsigned int next_kind;
	/* Likewise for tag providers: a tag left in a sample is never read by
	 * another plugin than the one that set it. */
	struct tag_provider taggers[MAX_TAG_PROVIDERS];
	unsigned int next_tagger;
	struct decision **buckets; /* pid -> decisions, each chain in the order made */
	size_t nbuckets, ndecisions;
};

/* err is one line: reasons from dlerror() or a plugin may hold newlines. */
__attribute__((format(printf, 3, 4))) static void say(char *err, size_t errlen, const char *fmt,
						      ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	for (p = err; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

static bool valid_name(const char *name)
{
	const char *p;

	if (!name || !*name)
		return false;
	for (p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return false;
	return true;
}

static struct sonde_host *find_plugin(const struct sonde_plugins *ps, const char *name)
{
	size_t i;

	for (i = 0; i < ps->nplugins; i++)
		if (!strcmp(ps->plugins[i]->desc.name, name))
			return ps->plugins[i];
	return NULL;
}

/* --- the host API ------------------------------------------------------------------------ */

__attribute__((format(printf, 3, 4))) static void
host_log(struct sonde_host *h, enum sonde_plugin_log_level level, const char *fmt, ...)
{
	enum sonde_log_level mine =
		level > SONDE_PLUGIN_LOG_DEBUG ? SONDE_LOG_DEBUG : (enum sonde_log_level)level;
	char *msg = NULL, *p;
	va_list ap;
	int n;

	if (mine > sonde_log_level())
		return;
	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	/* One line per message: a trailing newline goes, inner ones become spaces. */
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	for (p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	sonde_log(mine, "plugin %s: %s", h->desc.name, msg);
	free(msg);
}

static int host_map_fd(struct sonde_host *h, const char *name)
{
	if (!name)
		return -EINVAL;
	if (!h->ps->bpf)
		return -ENOENT;
	return sonde_bpf_host__map_fd(h->ps->bpf, name);
}

/*
 * ABI 1.0 tells the daemon one slot per plugin (attach_process hands it
 * back for the process), so a second unwinder could never be chosen: refuse
 * it rather than keep a program nobody tail-calls.
 */
static int host_register_unwinder(struct sonde_host *h, const char *name, int prog_fd)
{
	int slot;

	if (!h->ps->bpf)
		return -ENOTSUP;
	if (h->unwinder_slot >= 0) {
		sonde_warn("plugin %s: unwinder %s refused: it already has one in slot %d",
			   h->desc.name, name ? name : "?", h->unwinder_slot);
		return -EEXIST;
	}
	slot = sonde_bpf_host__add_unwinder(h->ps->bpf, prog_fd);
	if (slot < 0)
		return slot;
	h->unwinder_slot = slot;
	sonde_debug("plugin %s: unwinder %s in slot %d", h->desc.name, name ? name : "?", slot);
	return slot;
}

static int host_register_frame_kind(struct sonde_host *h, const char *name,
				    sonde_plugin_symbolize_fn symbolize)
{
	struct sonde_plugins *ps = h->ps;
	struct frame_kind *k;
	char *copy;

	if (!name || !symbolize)
		return -EINVAL;
	if (ps->next_kind >= MAX_FRAME_KINDS)
		return -ENOSPC;
	copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	k = &ps->kinds[ps->next_kind];
	k->owner = h;
	k->name = copy;
	k->symbolize = symbolize;
	sonde_debug("plugin %s: frame kind %u is %s", h->desc.name, ps->next_kind, name);
	return (int)ps->next_kind++;
}

static int host_register_sample_tags(struct sonde_host *h, const char *name,
				     sonde_plugin_tag_fn fn)
{
	struct sonde_plugins *ps = h->ps;
	unsigned int id;

	if (!fn)
		return -EINVAL;
	if (!ps->bpf)
		return -ENOTSUP;
	for (id = 1; id < ps->next_tagger; id++)
		if (ps->taggers[id].owner == h)
			return -EEXIST;
	if (ps->next_tagger >= MAX_TAG_PROVIDERS)
		return -ENOSPC;
	id = ps->next_tagger++;
	ps->taggers[id].owner = h;
	ps->taggers[id].fn = fn;
	sonde_bpf_host__enable_tags(ps->bpf);
	sonde_debug("plugin %s: tags threads as %s (id %u)", h->desc.name, name ? name : "?", id);
	return (int)id;
}

static int host_set_handover(struct sonde_host *h, uint32_t pid, const uint64_t *ranges, int n)
{
	if (!h->ps->bpf)
		return -ENOTSUP;
	if (h->unwinder_slot <= 0)
		return -ENOENT;
	return sonde_bpf_host__set_handover(h->ps->bpf, pid, (uint32_t)h->unwinder_slot, ranges, n);
}

static uint64_t *host_counter(struct sonde_host *h, const char *name, const char *help)
{
	struct counter *c;

	if (!name || !*name) {
		errno = EINVAL;
		return NULL;
	}
	for (c = h->counters; c; c = c->next)
		if (!strcmp(c->name, name))
			return &c->value;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->name = strdup(name);
	if (help)
		c->help = strdup(help);
	else if (asprintf(&c->help, "Counter %s of plugin %s.", name, h->desc.name) < 0)
		c->help = NULL;
	if (!c->name || !c->help) {
		free(c->name);
		free(c->help);
		free(c);
		errno = ENOMEM;
		return NULL;
	}
	*h->counters_tail = c;
	h->counters_tail = &c->next;
	return &c->value;
}

/* Only the plugin's own registrations can be removed through it: the
 * core's fds are not a plugin's to drop. */
static int host_watch_fd(struct sonde_host *h, int fd, uint32_t events,
			 void (*cb)(void *ctx, int fd, uint32_t revents), void *ctx)
{
	struct watch *w;
	int err;

	if (!cb || fd < 0)
		return -EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	err = sonde_loop__add_fd(h->ps->loop, fd, events, cb, ctx);
	if (err) {
		free(w);
		return err;
	}
	w->fd = fd;
	w->next = h->watches;
	h->watches = w;
	return 0;
}

static int host_unwatch_fd(struct sonde_host *h, int fd)
{
	struct watch **pp, *w;

	for (pp = &h->watches; *pp; pp = &(*pp)->next) {
		if ((*pp)->fd != fd)
			continue;
		w = *pp;
		*pp = w->next;
		free(w);
		return sonde_loop__del_fd(h->ps->loop, fd);
	}
	return -ENOENT;
}

static void *host_add_timer(struct sonde_host *h, uint64_t first_ms, uint64_t interval_ms,
			    void (*cb)(void *ctx), void *ctx)
{
	struct timer *t;

	if (!cb) {
		errno = EINVAL;
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->timer = sonde_loop__add_timer(h->ps->loop, first_ms, interval_ms, cb, ctx);
	if (!t->timer) {
		int err = errno;

		free(t);
		errno = err;
		return NULL;
	}
	t->next = h->timers;
	h->timers = t;
	return t->timer;
}

/* A timer the plugin does not own (cancelled twice, or made up) is ignored:
 * handing it to the loop would free what is not there. */
static void host_cancel_timer(struct sonde_host *h, void *timer)
{
	struct timer **pp, *t;

	for (pp = &h->timers; *pp; pp = &(*pp)->next) {
		if ((*pp)->timer != timer)
			continue;
		t = *pp;
		*pp = t->next;
		sonde_loop__cancel_timer(h->ps->loop, t->timer);
		free(t);
		return;
	}
	if (timer)
		sonde_debug("plugin %s: cancel of a timer it does not have", h->desc.name);
}

static ssize_t read_proc_mem(uint32_t pid, uint64_t addr, void *buf, size_t len)
{
	char path[32];
	ssize_t n;
	int fd, err;

	if (addr > (uint64_t)INT64_MAX)
		return -EFAULT;
	snprintf(path, sizeof(path), "/proc/%u/mem", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	n = pread(fd, buf, len, (off_t)addr);
	err = errno;
	close(fd);
	if (n >= 0)
		return n;
	/* The file says EIO where process_vm_readv says EFAULT: one answer. */
	return err == EIO ? -EFAULT : -err;
}

/*
 * process_vm_readv needs no open per read; /proc/PID/mem is the way left when
 * the syscall is missing (ENOSYS) or refused (EPERM, e.g. a seccomp policy).
 */
static ssize_t host_read_memory(struct sonde_host *h, uint32_t pid, uint64_t addr, void *buf,
				size_t len)
{
	struct iovec local = {.iov_base = buf, .iov_len = len};
	struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
	ssize_t n;

	if (!len)
		return 0;
	if (!buf)
		return -EINVAL;
	n = process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
	if (n >= 0)
		return n;
	if (errno != ENOSYS && errno != EPERM)
		return -errno;
	return read_proc_mem(pid, addr, buf, len);
}

static int host_publish(struct sonde_host *host, const char *topic, const void *msgpack,
			size_t len)
{
	struct sonde_plugins *ps = host->ps;

	if (!ps->publish)
		return -ENOTCONN;
	return ps->publish(ps->publish_ctx, topic, msgpack, len);
}

static void remember(struct sonde_plugins *ps, uint32_t pid, struct sonde_host *h, bool attached,
		     const char *reason);

static void host_process_status(struct sonde_host *host, uint32_t pid, int attached,
				const char *reason)
{
	remember(host->ps, pid, host, attached != 0, reason ? reason : "");
}

/* The daemon decides what a failed callback costs (it logs and counts it);
 * this only checks what the plugin handed over. */
static int host_script_hook(struct sonde_host *host, const char *hook,
			    const struct sonde_plugin_label *fields, int nfields, char *out,
			    size_t outlen)
{
	struct sonde_plugins *ps = host->ps;

	/* -EINVAL is kept for a failed callback: the plugin's bugs say otherwise */
	if (!hook || (nfields && !fields))
		return -EFAULT;
	if (nfields < 0 || nfields > 16)
		return -E2BIG;
	if (!out || outlen < SONDE_HOOK_OUT_MIN)
		return -ENOBUFS;
	out[0] = '\0';
	if (!ps->script_hook)
		return -ENOENT;
	return ps->script_hook(ps->script_ctx, hook, fields, nfields, out, outlen);
}

static uint64_t host_script_generation(struct sonde_host *host)
{
	struct sonde_plugins *ps = host->ps;

	return ps->script_generation ? ps->script_generation(ps->script_ctx) : 0;
}

static const struct sonde_host_api host_api = {
	.size = sizeof(struct sonde_host_api),
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.log = host_log,
	.map_fd = host_map_fd,
	.register_unwinder = host_register_unwinder,
	.register_frame_kind = host_register_frame_kind,
	.counter = host_counter,
	.watch_fd = host_watch_fd,
	.unwatch_fd = host_unwatch_fd,
	.add_timer = host_add_timer,
	.cancel_timer = host_cancel_timer,
	.read_memory = host_read_memory,
	.publish = host_publish,
	.process_status = host_process_status,
	.register_sample_tags = host_register_sample_tags,
	.set_handover = host_set_handover,
	.script_hook = host_script_hook,
	.script_generation = host_script_generation,
};

/* --- loading ----------------------------------------------------------------------------- */

struct sonde_plugins *sonde_plugins__new(const struct sonde_plugin_services *svc)
{
	struct sonde_plugins *ps;

	if (!svc || !svc->loop) {
		errno = EINVAL;
		return NULL;
	}
	ps = calloc(1, sizeof(*ps));
	if (!ps)
		return NULL;
	ps->loop = svc->loop;
	ps->bpf = svc->bpf;
	ps->publish = svc->publish;
	ps->publish_ctx = svc->publish_ctx;
	ps->script_hook = svc->script_hook;
	ps->script_generation = svc->script_generation;
	ps->script_ctx = svc->script_ctx;
	ps->next_kind = 1;   /* 0 is a native frame */
	ps->next_tagger = 1; /* 0 is no tag */
	ps->nbuckets = 64;
	ps->dir = strdup(svc->plugin_dir ? svc->plugin_dir : DEFAULT_PLUGIN_DIR);
	ps->buckets = calloc(ps->nbuckets, sizeof(*ps->buckets));
	if (!ps->dir || !ps->buckets) {
		free(ps->dir);
		free(ps->buckets);
		free(ps);
		errno = ENOMEM;
		return NULL;
	}
	return ps;
}

/*
 * Whatever the plugin left on the loop goes: its callbacks would run on
 * freed state. Its frame kinds stay taken but unowned (see next_kind).
 * stopping: all plugins go with sonded, so nothing left is worth a word.
 */
static void release_registrations(struct sonde_host *h, bool stopping)
{
	struct sonde_plugins *ps = h->ps;
	unsigned int k;

	while (h->watches) {
		struct watch *w = h->watches;

		sonde_debug("plugin %s: left fd %d watched", h->desc.name, w->fd);
		sonde_loop__del_fd(ps->loop, w->fd);
		h->watches = w->next;
		free(w);
	}
	while (h->timers) {
		struct timer *t = h->timers;

		sonde_loop__cancel_timer(ps->loop, t->timer);
		h->timers = t->next;
		free(t);
	}
	for (k = 1; k < MAX_FRAME_KINDS; k++) {
		if (ps->kinds[k].owner != h)
			continue;
		ps->kinds[k].owner = NULL;
		ps->kinds[k].symbolize = NULL;
	}
	for (k = 1; k < MAX_TAG_PROVIDERS; k++) {
		if (ps->taggers[k].owner != h)
			continue;
		ps->taggers[k].owner = NULL;
		ps->taggers[k].fn = NULL;
	}
	if (h->unwinder_slot >= 0 && !stopping)
		sonde_warn("plugin %s: its unwinder stays in slot %d until sonded exits",
			   h->desc.name, h->unwinder_slot);
}

/* Frees the host; the plugin must be stopped (or never started). */
static void host_free(struct sonde_host *h)
{
	struct counter *c, *next;
	size_t i;

	if (!h)
		return;
	for (c = h->counters; c; c = next) {
		next = c->next;
		free(c->name);
		free(c->help);
		free(c);
	}
	for (i = 0; i < h->nstrings; i++)
		free(h->strings[i]);
	free(h->strings);
	free(h->settings);
	if (h->dl)
		dlclose(h->dl);
	free(h->path);
	free(h);
}

static void forget_all_decisions(struct sonde_plugins *ps)
{
	size_t i;

	for (i = 0; i < ps->nbuckets; i++) {
		while (ps->buckets[i]) {
			struct decision *d = ps->buckets[i];

			ps->buckets[i] = d->next;
			free(d);
		}
	}
	ps->ndecisions = 0;
}

void sonde_plugins__free(struct sonde_plugins *ps)
{
	size_t i;
	unsigned int k;

	if (!ps)
		return;
	forget_all_decisions(ps);
	/* Last loaded first, as a later plugin may lean on an earlier one. */
	for (i = ps->nplugins; i-- > 0;) {
		struct sonde_host *h = ps->plugins[i];

		h->desc.fini(h->state);
		release_registrations(h, true); /* sonded is stopping: nothing stays */
		host_free(h);
	}
	for (k = 0; k < MAX_FRAME_KINDS; k++)
		free(ps->kinds[k].name);
	free(ps->plugins);
	free(ps->buckets);
	free(ps->dir);
	free(ps);
}

/* dlerror() starts with the path we already lead with: say it once. */
static const char *dl_reason(const char *path)
{
	const char *msg = dlerror();
	size_t n = strlen(path);

	if (!msg)
		return "unknown dlopen error";
	if (!strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ')
		return msg + n + 2;
	return msg;
}

/*
 * Checks the exported descriptor and copies the part of it this core knows.
 * Fields are read only once the bytes they live in are known to exist: the
 * header after the symbol's own size (when the ELF says it), the rest after
 * the size field.
 */
static int check_descriptor(const char *path, const void *sym, struct sonde_plugin *out, char *err,
			    size_t errlen)
{
	const struct sonde_plugin *d = sym;
	const size_t header = offsetofend(struct sonde_plugin, size);
	const ElfW(Sym) *esym = NULL;
	size_t symsize = 0;
	Dl_info info;

	if (dladdr1(sym, &info, (void **)&esym, RTLD_DL_SYMENT) && esym) {
		/* st_info's type is its low nibble in either ELF class. */
		if (ELF64_ST_TYPE(esym->st_info) == STT_FUNC) {
			say(err, errlen, "%s: not a sonde plugin (%s is a function)", path,
			    SONDE_PLUGIN_SYMBOL);
			return -ENOEXEC;
		}
		symsize = esym->st_size;
		if (symsize && symsize < header) {
			say(err, errlen, "%s: not a sonde plugin (%s is only %zu bytes)", path,
			    SONDE_PLUGIN_SYMBOL, symsize);
			return -ENOEXEC;
		}
	}
	if (d->magic != SONDE_PLUGIN_MAGIC) {
		say(err, errlen, "%s: bad magic 0x%08x (expected 0x%08x)", path, d->magic,
		    SONDE_PLUGIN_MAGIC);
		return -ENOEXEC;
	}
	if (d->abi_major != SONDE_PLUGIN_ABI_MAJOR) {
		say(err, errlen, "%s: plugin ABI %u.%u, this sonded speaks %u.%u", path,
		    d->abi_major, d->abi_minor, SONDE_PLUGIN_ABI_MAJOR, SONDE_PLUGIN_ABI_MINOR);
		return -ENOEXEC;
	}
	if (d->abi_minor > SONDE_PLUGIN_ABI_MINOR) {
		say(err, errlen, "%s: plugin ABI %u.%u is newer than this sonded's %u.%u", path,
		    d->abi_major, d->abi_minor, SONDE_PLUGIN_ABI_MAJOR, SONDE_PLUGIN_ABI_MINOR);
		return -ENOEXEC;
	}
	if (d->size < descriptor_min_size[d->abi_minor]) {
		say(err, errlen, "%s: descriptor size %u is too small (ABI %u.%u needs %zu)", path,
		    d->size, d->abi_major, d->abi_minor, descriptor_min_size[d->abi_minor]);
		return -ENOEXEC;
	}
	if (symsize && d->size > symsize) {
		say(err, errlen, "%s: descriptor size %u is larger than its symbol (%zu bytes)",
		    path, d->size, symsize);
		return -ENOEXEC;
	}
	memset(out, 0, sizeof(*out));
	memcpy(out, d, d->size < sizeof(*out) ? d->size : sizeof(*out));
	if (!out->name) {
		say(err, errlen, "%s: descriptor has no name", path);
		return -ENOEXEC;
	}
	if (!valid_name(out->name)) {
		say(err, errlen, "%s: plugin name '%s' is not [a-z0-9-]+", path, out->name);
		return -ENOEXEC;
	}
	if (!out->init || !out->fini) {
		say(err, errlen, "%s: descriptor has no %s", path, out->init ? "fini()" : "init()");
		return -ENOEXEC;
	}
	return 0;
}

static size_t setting_field_size(enum sonde_plugin_setting_type type)
{
	switch (type) {
	case SONDE_SETTING_BOOL:
		return sizeof(int);
	case SONDE_SETTING_INT:
		return sizeof(int64_t);
	case SONDE_SETTING_STRING:
		return sizeof(char *);
	default:
		return 0;
	}
}

static const char *setting_expects(enum sonde_plugin_setting_type type)
{
	switch (type) {
	case SONDE_SETTING_BOOL:
		return "true or false";
	case SONDE_SETTING_INT:
		return "an integer";
	default:
		return "a string";
	}
}

/* Writes value into the field of s: 0, -EINVAL (wrong type) or -ENOMEM. memcpy,
 * because nothing promises the plugin aligned its offsets. */
static int set_value(struct sonde_host *h, const struct sonde_plugin_setting *s, const char *value)
{
	char *field = (char *)h->settings + s->offset;
	char *end, *copy, **grown;
	int64_t i;
	int b;

	switch (s->type) {
	case SONDE_SETTING_BOOL:
		if (!strcmp(value, "true"))
			b = 1;
		else if (!strcmp(value, "false"))
			b = 0;
		else
			return -EINVAL;
		memcpy(field, &b, sizeof(b));
		return 0;
	case SONDE_SETTING_INT:
		if (!((*value >= '0' && *value <= '9') || *value == '-' || *value == '+'))
			return -EINVAL;
		errno = 0;
		i = strtoll(value, &end, 10);
		if (errno || end == value || *end)
			return -EINVAL;
		memcpy(field, &i, sizeof(i));
		return 0;
	default:
		grown = realloc(h->strings, (h->nstrings + 1) * sizeof(*h->strings));
		if (!grown)
			return -ENOMEM;
		h->strings = grown;
		copy = strdup(value);
		if (!copy)
			return -ENOMEM;
		h->strings[h->nstrings++] = copy;
		memcpy(field, &copy, sizeof(copy));
		return 0;
	}
}

static void list_keys(const struct sonde_plugin_setting *table, size_t n, char *buf, size_t len)
{
	size_t i, used = 0;

	buf[0] = '\0';
	for (i = 0; i < n && used < len; i++) {
		int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", table[i].key);

		if (w < 0)
			break;
		used += (size_t)w;
	}
}

/*
 * Checks the plugin's table (a bad one is the plugin's fault: -ENOEXEC),
 * then fills a zeroed struct with the defaults and the script's values.
 */
static int fill_settings(struct sonde_host *h, const struct sonde_plugin_kv *kvs, size_t nkvs,
			 char *err, size_t errlen)
{
	const struct sonde_plugin_setting *table = h->desc.settings;
	size_t size = h->desc.settings_size, n = 0, i, j;
	char known[256];
	int ret;

	for (n = 0; table && table[n].type != SONDE_SETTING_END; n++) {
		const struct sonde_plugin_setting *s = &table[n];
		size_t fs = setting_field_size(s->type);

		if (n == MAX_SETTINGS) {
			say(err, errlen, "%s: settings table has no end", h->path);
			return -ENOEXEC;
		}
		if (!s->key) {
			say(err, errlen, "%s: setting #%zu has no key", h->path, n);
			return -ENOEXEC;
		}
		if (!fs) {
			say(err, errlen, "%s: setting '%s' has unknown type %d", h->path, s->key,
			    (int)s->type);
			return -ENOEXEC;
		}
		if (s->offset > size || fs > size - s->offset) {
			say(err, errlen, "%s: setting '%s' at offset %zu does not fit in %zu bytes",
			    h->path, s->key, s->offset, size);
			return -ENOEXEC;
		}
	}
	h->settings = calloc(1, size ? size : 1);
	if (!h->settings)
		goto nomem;
	for (i = 0; i < n; i++) {
		if (!table[i].default_value)
			continue;
		ret = set_value(h, &table[i], table[i].default_value);
		if (ret == -ENOMEM)
			goto nomem;
		if (ret) {
			say(err, errlen, "%s: setting '%s': default '%s' is not %s", h->path,
			    table[i].key, table[i].default_value, setting_expects(table[i].type));
			return -ENOEXEC;
		}
	}
	for (j = 0; j < nkvs; j++) {
		const char *key = kvs[j].key ? kvs[j].key : "";

		for (i = 0; i < n && strcmp(table[i].key, key); i++)
			;
		if (i == n) {
			list_keys(table, n, known, sizeof(known));
			if (n)
				say(err, errlen, "%s: unknown setting '%s' (settings: %s)", h->path,
				    key, known);
			else
				say(err, errlen, "%s: unknown setting '%s' (it has no settings)",
				    h->path, key);
			return -EINVAL;
		}
		if (!kvs[j].value) {
			say(err, errlen, "%s: setting '%s': expected %s, got nothing", h->path, key,
			    setting_expects(table[i].type));
			return -EINVAL;
		}
		ret = set_value(h, &table[i], kvs[j].value);
		if (ret == -ENOMEM)
			goto nomem;
		if (ret) {
			say(err, errlen, "%s: setting '%s': expected %s, got '%s'", h->path, key,
			    setting_expects(table[i].type), kvs[j].value);
			return -EINVAL;
		}
	}
	return 0;
nomem:
	say(err, errlen, "%s: %s", h->path, strerror(ENOMEM));
	return -ENOMEM;
}

int sonde_plugins__load(struct sonde_plugins *ps, const char *name,
			const struct sonde_plugin_kv *kvs, size_t nkvs, char *err, size_t errlen)
{
	char scratch[512], ierr[256] = "";
	struct sonde_host *h = NULL, **grown;
	const struct sonde_host *other;
	bool by_path;
	struct stat st;
	void *sym;
	int ret;

	if (!err || !errlen) {
		err = scratch;
		errlen = sizeof(scratch);
	}
	err[0] = '\0';
	if (!ps || !name || !*name) {
		say(err, errlen, "no plugin name");
		return -EINVAL;
	}
	by_path = strchr(name, '/');
	if (!by_path && !valid_name(name)) {
		say(err, errlen, "plugin name '%s' is not [a-z0-9-]+", name);
		return -EINVAL;
	}
	if (ps->nplugins == ps->cap) {
		size_t cap = ps->cap ? ps->cap * 2 : 8;

		grown = realloc(ps->plugins, cap * sizeof(*grown));
		if (!grown)
			goto nomem;
		ps->plugins = grown;
		ps->cap = cap;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		goto nomem;
	h->ps = ps;
	h->unwinder_slot = -1;
	h->counters_tail = &h->counters;
	if (by_path)
		h->path = strdup(name);
	else if (asprintf(&h->path, "%s/sonde-%s.so", ps->dir, name) < 0)
		h->path = NULL;
	/* A build tree keeps each plugin in a folder of its name: DIR/NAME/. */
	if (h->path && !by_path && access(h->path, F_OK) != 0) {
		char *nested = NULL;

		if (asprintf(&nested, "%s/%s/sonde-%s.so", ps->dir, name, name) >= 0 &&
		    access(nested, F_OK) == 0) {
			free(h->path);
			h->path = nested;
		} else {
			free(nested);
		}
	}
	if (!h->path)
		goto nomem;
	if (!by_path && (other = find_plugin(ps, name))) {
		say(err, errlen, "%s: plugin '%s' is already loaded", h->path, name);
		ret = -EEXIST;
		goto fail;
	}
	/* dlopen() does not say ENOENT; a missing plugin is worth telling apart. */
	if (stat(h->path, &st) < 0) {
		ret = -errno;
		say(err, errlen, "%s: cannot load: %s", h->path, strerror(errno));
		goto fail;
	}
	dlerror();
	h->dl = dlopen(h->path, RTLD_NOW | RTLD_LOCAL);
	if (!h->dl) {
		say(err, errlen, "%s: cannot load: %s", h->path, dl_reason(h->path));
		ret = -ENOEXEC;
		goto fail;
	}
	sym = dlsym(h->dl, SONDE_PLUGIN_SYMBOL);
	if (!sym) {
		say(err, errlen, "%s: not a sonde plugin (no symbol %s)", h->path,
		    SONDE_PLUGIN_SYMBOL);
		ret = -ENOEXEC;
		goto fail;
	}
	ret = check_descriptor(h->path, sym, &h->desc, err, errlen);
	if (ret)
		goto fail;
	if (!by_path && strcmp(h->desc.name, name)) {
		say(err, errlen, "%s: declares the name '%s', not '%s'", h->path, h->desc.name,
		    name);
		ret = -ENOEXEC;
		goto fail;
	}
	if ((other = find_plugin(ps, h->desc.name))) {
		say(err, errlen, "%s: plugin '%s' is already loaded from %s", h->path, h->desc.name,
		    other->path);
		ret = -EEXIST;
		goto fail;
	}
	ret = fill_settings(h, kvs, nkvs, err, errlen);
	if (ret)
		goto fail;

	errno = 0;
	h->state = h->desc.init(&host_api, h, h->settings, ierr, sizeof(ierr));
	if (!h->state) {
		ret = errno > 0 ? -errno : -EIO;
		ierr[sizeof(ierr) - 1] = '\0';
		say(err, errlen, "%s: init failed: %s", h->path,
		    ierr[0] ? ierr : "(no reason given)");
		release_registrations(h, false);
		goto fail;
	}
	ps->plugins[ps->nplugins++] = h;
	sonde_debug("plugin %s %s loaded from %s", h->desc.name,
		    h->desc.version ? h->desc.version : "", h->path);
	return 0;

nomem:
	say(err, errlen, "%s: %s", h && h->path ? h->path : name, strerror(ENOMEM));
	ret = -ENOMEM;
fail:
	host_free(h);
	return ret;
}

/* --- processes --------------------------------------------------------------------------- */

static size_t bucket_of(const struct sonde_plugins *ps, uint32_t pid)
{
	return sonde_hash_mix(0, pid) & (ps->nbuckets - 1);
}

static void append(struct decision **pp, struct decision *d)
{
	while (*pp)
		pp = &(*pp)->next;
	d->next = NULL;
	*pp = d;
}

/* Doubles the table; chains keep their order, so each pid's decisions do. */
static void grow_decisions(struct sonde_plugins *ps)
{
	size_t old_n = ps->nbuckets, i;
	struct decision **old = ps->buckets, **fresh;

	fresh = calloc(old_n * 2, sizeof(*fresh));
	if (!fresh)
		return; /* longer chains, still correct */
	ps->buckets = fresh;
	ps->nbuckets = old_n * 2;
	for (i = 0; i < old_n; i++) {
		while (old[i]) {
			struct decision *d = old[i];

			old[i] = d->next;
			append(&ps->buckets[bucket_of(ps, d->pid)], d);
		}
	}
	free(old);
}

/* A new decision about (pid, plugin) takes the place of the old one. */
static void remember(struct sonde_plugins *ps, uint32_t pid, struct sonde_host *h, bool attached,
		     const char *reason)
{
	size_t len = strlen(reason);
	struct decision *d, **pp;

	d = malloc(sizeof(*d) + len + 1);
	if (!d)
		return; /* `sondectl ps` misses one line; nothing else depends on it */
	d->pid = pid;
	d->plugin = h;
	d->attached = attached;
	memcpy(d->reason, reason, len + 1);
	for (pp = &ps->buckets[bucket_of(ps, pid)]; *pp; pp = &(*pp)->next) {
		if ((*pp)->pid == pid && (*pp)->plugin == h) {
			d->next = (*pp)->next;
			free(*pp);
			*pp = d;
			return;
		}
	}
	append(&ps->buckets[bucket_of(ps, pid)], d);
	if (++ps->ndecisions > ps->nbuckets * 2)
		grow_decisions(ps);
}

int sonde_plugins__attach_process(struct sonde_plugins *ps, const char *name,
				  const struct sonde_plugin_process *proc, int *slot, char *reason,
				  size_t reasonlen)
{
	struct sonde_plugin_process p;
	char scratch[256];
	struct sonde_host *h;
	int ret;

	if (slot)
		*slot = -1;
	if (!reason || !reasonlen) {
		reason = scratch;
		reasonlen = sizeof(scratch);
	}
	reason[0] = '\0';
	if (!ps || !name || !proc)
		return -EINVAL;
	h = find_plugin(ps, name);
	if (!h)
		return -ENOENT;
	/* The plugin sees this core's struct, whatever size the caller built. */
	p = *proc;
	p.size = sizeof(p);
	/* Attached until it says otherwise; it may set its own status meanwhile. */
	remember(ps, p.pid, h, true, "");
	ret = h->desc.attach_process ? h->desc.attach_process(h->state, &p, reason, reasonlen) : 0;
	reason[reasonlen - 1] = '\0';
	if (ret == 0) {
		reason[0] = '\0';
		if (slot)
			*slot = h->unwinder_slot;
		return 0;
	}
	if (ret > 0) {
		if (!reason[0])
			snprintf(reason, reasonlen, "declined without a reason");
		remember(ps, p.pid, h, false, reason);
		return SONDE_DECLINE;
	}
	if (!reason[0])
		snprintf(reason, reasonlen, "%s", strerror(-ret));
	remember(ps, p.pid, h, false, reason);
	return ret;
}

void sonde_plugins__detach_process(struct sonde_plugins *ps, uint32_t pid)
{
	struct decision **pp, *d;

	if (!ps)
		return;
	pp = &ps->buckets[bucket_of(ps, pid)];
	while (*pp) {
		d = *pp;
		if (d->pid != pid) {
			pp = &d->next;
			continue;
		}
		if (d->attached && d->plugin->desc.detach_process)
			d->plugin->desc.detach_process(d->plugin->state, pid);
		if (d->attached && d->plugin->unwinder_slot > 0 && ps->bpf)
			sonde_bpf_host__set_handover(ps->bpf, pid, (uint32_t)d->plugin->unwinder_slot,
						     NULL, 0);
		*pp = d->next;
		free(d);
		ps->ndecisions--;
	}
}

void sonde_plugins__for_each_decision(struct sonde_plugins *ps, uint32_t pid,
				      void (*fn)(void *ctx, const char *plugin, bool attached,
						 const char *reason),
				      void *ctx)
{
	const struct decision *d;

	if (!ps)
		return;
	for (d = ps->buckets[bucket_of(ps, pid)]; d; d = d->next)
		if (d->pid == pid)
			fn(ctx, d->plugin->desc.name, d->attached, d->reason);
}

/* --- frames, metrics, status ------------------------------------------------------------- */

int sonde_plugins__symbolize(struct sonde_plugins *ps, uint32_t pid, uint64_t word,
			     uint64_t payload, struct sonde_plugin_frame *frames, int max)
{
	const struct frame_kind *k;
	unsigned int kind = SONDE_FRAME_KIND(word);
	int n;

	if (!ps || !frames || max <= 0 || kind == 0 || kind >= MAX_FRAME_KINDS)
		return 0;
	k = &ps->kinds[kind];
	if (!k->owner || !k->symbolize)
		return 0;
	n = k->symbolize(k->owner->state, pid, word, payload, frames, max);
	return n < 0 ? 0 : n > max ? max : n;
}

int sonde_plugins__tag_labels(struct sonde_plugins *ps, uint32_t pid, uint64_t tag,
			      struct sonde_plugin_label *labels, int max)
{
	const struct tag_provider *t;
	unsigned int id = SONDE_TAG_PROVIDER(tag);
	int n;

	if (!ps || !labels || max <= 0 || id == 0 || id >= MAX_TAG_PROVIDERS)
		return -ENOENT;
	t = &ps->taggers[id];
	if (!t->owner || !t->fn)
		return -ENOENT;
	n = t->fn(t->owner->state, pid, tag, labels, max);
	if (n < 0)
		return -ENOENT;
	return n > max ? max : n;
}

const char *sonde_plugins__frame_kind_name(const struct sonde_plugins *ps, unsigned int kind)
{
	if (!ps || kind == 0 || kind >= MAX_FRAME_KINDS)
		return NULL;
	return ps->kinds[kind].name;
}

static void put_metric_part(struct sonde_strbuf *out, const char *s)
{
	for (; *s; s++) {
		char c = *s;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_';

		sonde_strbuf__append(out, ok ? &c : "_", 1);
	}
}

/* HELP text escapes backslash and newline, as the text format asks. */
static void put_help(struct sonde_strbuf *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			sonde_strbuf__puts(out, "\\\\");
		else if (*s == '\n')
			sonde_strbuf__puts(out, "\\n");
		else
			sonde_strbuf__append(out, s, 1);
	}
}

static void put_name(struct sonde_strbuf *out, const struct sonde_host *h, const struct counter *c)
{
	sonde_strbuf__puts(out, "sonde_plugin_");
	put_metric_part(out, h->desc.name);
	sonde_strbuf__puts(out, "_");
	put_metric_part(out, c->name);
	sonde_strbuf__puts(out, "_total");
}

/* A plugin's own families (ABI 1.1), through a memory stream. */
static void write_plugin_metrics(const struct sonde_host *h, struct sonde_strbuf *out)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int rc;

	if (!h->desc.write_metrics)
		return;
	f = open_memstream(&text, &len);
	if (!f)
		return;
	rc = h->desc.write_metrics(h->state, f);
	if (fclose(f) == 0 && rc == 0)
		sonde_strbuf__append(out, text, len);
	else
		sonde_log(SONDE_LOG_DEBUG, "plugin %s: write_metrics failed: %s", h->desc.name,
			  strerror(rc < 0 ? -rc : EIO));
	free(text);
}

void sonde_plugins__metrics(const struct sonde_plugins *ps, struct sonde_strbuf *out)
{
	const struct counter *c;
	size_t i;

	if (!ps)
		return;
	for (i = 0; i < ps->nplugins; i++) {
		const struct sonde_host *h = ps->plugins[i];

		for (c = h->counters; c; c = c->next) {
			sonde_strbuf__puts(out, "# HELP ");
			put_name(out, h, c);
			sonde_strbuf__puts(out, " ");
			put_help(out, c->help);
			sonde_strbuf__puts(out, "\n# TYPE ");
			put_name(out, h, c);
			sonde_strbuf__puts(out, " counter\n");
			put_name(out, h, c);
			sonde_strbuf__printf(out, " %llu\n", (unsigned long long)c->value);
		}
		write_plugin_metrics(h, out);
	}
}

void sonde_plugins__for_each(const struct sonde_plugins *ps,
			     void (*fn)(void *ctx, const char *name, const char *version,
					const char *path),
			     void *ctx)
{
	size_t i;

	if (!ps)
		return;
	for (i = 0; i < ps->nplugins; i++) {
		const struct sonde_host *h = ps->plugins[i];

		fn(ctx, h->desc.name, h->desc.version ? h->desc.version : "", h->path);
	}
}
