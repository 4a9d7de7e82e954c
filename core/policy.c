// SPDX-License-Identifier: MIT
#include "policy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpf_host.h"
#include "hash.h"
#include "log.h"
#include "plugin.h"
#include "proc.h"
#include "script.h"
#include "sonde/abi.h"

struct node {
	struct sonde_policy_entry e;
	struct node *next;
};

struct sonde_policy {
	struct sonde_bpf_host *bpf;
	struct sonde_plugins *plugins;
	struct sonde_script *script;
	struct node **buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t count;
	uint64_t failures;     /* on_process calls that failed, for the log's rate */
	uint64_t bpf_failures; /* procs map updates that failed (full) */
};

struct sonde_policy *sonde_policy__new(struct sonde_bpf_host *bpf, struct sonde_plugins *plugins)
{
	struct sonde_policy *pol = calloc(1, sizeof(*pol));

	if (!pol)
		return NULL;
	pol->bpf = bpf;
	pol->plugins = plugins;
	pol->nbuckets = 1024;
	pol->buckets = calloc(pol->nbuckets, sizeof(*pol->buckets));
	if (!pol->buckets) {
		free(pol);
		errno = ENOMEM;
		return NULL;
	}
	return pol;
}

static void clear_entry(struct sonde_policy_entry *e)
{
	uint32_t i;

	for (i = 0; i < e->nunwinders; i++)
		free(e->unwinders[i]);
	for (i = 0; i < e->nplugins; i++)
		free(e->plugins[i]);
	for (i = 0; i < e->nlabels; i++) {
		free((char *)e->labels[i].key);
		free((char *)e->labels[i].value);
	}
	free(e->comm);
	free(e->exe);
	free(e->container_id);
	e->comm = e->exe = e->container_id = NULL;
	e->nunwinders = e->nplugins = e->nlabels = e->ndeclined = 0;
}

void sonde_policy__free(struct sonde_policy *pol)
{
	struct node *n, *next;
	uint32_t b;

	if (!pol)
		return;
	for (b = 0; b < pol->nbuckets; b++) {
		for (n = pol->buckets[b]; n; n = next) {
			next = n->next;
			clear_entry(&n->e);
			free(n);
		}
	}
	free(pol->buckets);
	free(pol);
}

void sonde_policy__set_script(struct sonde_policy *pol, struct sonde_script *script)
{
	pol->script = script;
}

static struct node **slot_of(const struct sonde_policy *pol, uint32_t pid)
{
	return &pol->buckets[sonde_hash_mix(0, pid) & (pol->nbuckets - 1)];
}

static struct node *find(const struct sonde_policy *pol, uint32_t pid)
{
	struct node *n;

	for (n = *slot_of(pol, pid); n; n = n->next)
		if (n->e.pid == pid)
			return n;
	return NULL;
}

static void grow(struct sonde_policy *pol)
{
	uint32_t nb = pol->nbuckets * 2, b;
	struct node **buckets = calloc(nb, sizeof(*buckets)), *n, *next;

	if (!buckets)
		return; /* longer chains, still correct */
	for (b = 0; b < pol->nbuckets; b++) {
		for (n = pol->buckets[b]; n; n = next) {
			next = n->next;
			n->next = buckets[sonde_hash_mix(0, n->e.pid) & (nb - 1)];
			buckets[sonde_hash_mix(0, n->e.pid) & (nb - 1)] = n;
		}
	}
	free(pol->buckets);
	pol->buckets = buckets;
	pol->nbuckets = nb;
}

static struct node *get_or_add(struct sonde_policy *pol, uint32_t pid)
{
	struct node *n = find(pol, pid), **head;

	if (n)
		return n;
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->e.pid = pid;
	if (pol->count + 1 > pol->nbuckets)
		grow(pol);
	head = slot_of(pol, pid);
	n->next = *head;
	*head = n;
	pol->count++;
	return n;
}

static char *dup(const char *s, bool *failed)
{
	char *d = strdup(s ? s : "");

	if (!d)
		*failed = true;
	return d;
}

/*
 * Offers the process to each plugin in names, in order. For unwinders
 * (slots == true) the first that brings a slot is the one the sampler
 * starts with. Attached names go to attached[], the others to declined[].
 */
static void attach_plugins(struct sonde_policy *pol, const struct sonde_proc *proc,
			   const char *const *names, size_t n, bool slots,
			   struct sonde_policy_entry *e, char **attached, uint32_t *nattached,
			   bool *failed)
{
	struct sonde_plugin_process pp = {
		.size = sizeof(pp),
		.pid = proc->pid,
		.comm = proc->comm,
		.exe = proc->exe,
		.cmdline = proc->cmdline,
		.cgroup = proc->cgroup,
		.container_id = proc->container_id,
	};
	char reason[128];
	size_t i;
	int rc, slot;

	for (i = 0; i < n && *nattached < SONDE_POLICY_MAX_UNWINDERS; i++) {
		reason[0] = '\0';
		slot = -1;
		rc = pol->plugins ? sonde_plugins__attach_process(pol->plugins, names[i], &pp, &slot,
								 reason, sizeof(reason))
				  : -ENOENT;
		if (rc == 0) {
			attached[(*nattached)++] = dup(names[i], failed);
			if (slots && slot > 0 && e->first_slot == SONDE_UNWINDER_FP)
				e->first_slot = (uint32_t)slot;
			continue;
		}
		if (e->ndeclined == SONDE_POLICY_MAX_UNWINDERS)
			continue;
		if (rc == -ENOENT)
			snprintf(reason, sizeof(reason), "plugin not loaded");
		else if (rc < 0)
			snprintf(reason, sizeof(reason), "%s", strerror(-rc));
		snprintf(e->declined[e->ndeclined].plugin, sizeof(e->declined[0].plugin), "%s",
			 names[i]);
		snprintf(e->declined[e->ndeclined].reason, sizeof(e->declined[0].reason), "%s",
			 reason);
		e->ndeclined++;
	}
}

int sonde_policy__decide(struct sonde_policy *pol, const struct sonde_proc *proc)
{
	struct sonde_script_decision d = { .profile = true };
	struct sonde_script_process sp = {
		.pid = proc->pid,
		.ppid = proc->ppid,
		.comm = proc->comm,
		.exe = proc->exe,
		.cmdline = proc->cmdline,
		.cgroup = proc->cgroup,
		.container_id = proc->container_id[0] ? proc->container_id : NULL,
	};
	struct node *n = find(pol, proc->pid);
	struct sonde_policy_entry *e;
	bool failed = false;
	size_t i;
	int err;

	if (pol->script && sonde_script__decide(pol->script, &sp, &d)) {
		pol->failures++;
		if (pol->failures <= 10 || pol->failures % 1000 == 0)
			sonde_warn("script: on_process for %u (%s): %s%s", proc->pid, proc->comm,
				   sonde_script__last_error(pol->script),
				   pol->failures == 10 ? " (from now on one in 1000 is logged; all "
							 "are counted in sonde_script_errors_total)"
						       : "");
		/* a process decided before keeps that decision */
		if (n && !n->e.exit_ns)
			return 0;
	}
	if (!n)
		n = get_or_add(pol, proc->pid);
	if (!n)
		return -ENOMEM;
	e = &n->e;
	if (pol->plugins && (e->nunwinders || e->nplugins))
		sonde_plugins__detach_process(pol->plugins, proc->pid);
	clear_entry(e);
	e->exit_ns = 0;
	e->first_slot = SONDE_UNWINDER_FP;
	e->profiled = d.profile;
	if (d.profile) {
		for (i = 0; i < d.nlabels; i++) {
			const char *k = d.labels[i].key, *v = d.labels[i].value;

			if (strcmp(k, "comm") == 0)
				e->comm = dup(v, &failed);
			else if (strcmp(k, "exe") == 0)
				e->exe = dup(v, &failed);
			else if (strcmp(k, "container_id") == 0)
				e->container_id = dup(v, &failed);
			else if (e->nlabels < SONDE_PROFILE_MAX_EXTRA) {
				e->labels[e->nlabels].key = dup(k, &failed);
				e->labels[e->nlabels].value = dup(v, &failed);
				e->nlabels++;
			}
		}
		attach_plugins(pol, proc, d.unwinders, d.nunwinders, true, e, e->unwinders,
			       &e->nunwinders, &failed);
		attach_plugins(pol, proc, d.plugins, d.nplugins, false, e, e->plugins,
			       &e->nplugins, &failed);
	}
	/* The procs map holds only what differs from the default (profiled, frame
	 * pointers), so it stays small on a node of mostly default processes. */
	if (pol->bpf && e->profiled && e->first_slot == SONDE_UNWINDER_FP) {
		sonde_bpf_host__forget_process(pol->bpf, proc->pid);
	} else if (pol->bpf) {
		err = sonde_bpf_host__set_process(pol->bpf, proc->pid, e->first_slot, e->profiled);
		if (err && ++pol->bpf_failures <= 10)
			sonde_warn("cannot set the BPF state of %u (%s): %s; it is profiled with "
				   "frame pointers%s",
				   proc->pid, proc->comm, strerror(-err),
				   pol->bpf_failures == 10 ? " (further failures are not logged)" : "");
	}
	return failed ? -ENOMEM : 0;
}

void sonde_policy__exited(struct sonde_policy *pol, uint32_t pid, uint64_t now_ns)
{
	struct node *n = find(pol, pid);

	if (pol->bpf)
		sonde_bpf_host__forget_process(pol->bpf, pid);
	if (!n)
		return;
	if (pol->plugins && (n->e.nunwinders || n->e.nplugins))
		sonde_plugins__detach_process(pol->plugins, pid);
	n->e.exit_ns = now_ns ? now_ns : 1;
}

void sonde_policy__reap(struct sonde_policy *pol, uint64_t now_ns, uint64_t grace_ns)
{
	struct node **pp, *n;
	uint32_t b;

	for (b = 0; b < pol->nbuckets; b++) {
		for (pp = &pol->buckets[b]; (n = *pp);) {
			if (n->e.exit_ns && now_ns > n->e.exit_ns + grace_ns) {
				*pp = n->next;
				clear_entry(&n->e);
				free(n);
				pol->count--;
			} else {
				pp = &n->next;
			}
		}
	}
}

const struct sonde_policy_entry *sonde_policy__get(const struct sonde_policy *pol, uint32_t pid)
{
	struct node *n = find(pol, pid);

	return n ? &n->e : NULL;
}
