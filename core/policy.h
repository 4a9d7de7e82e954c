/* SPDX-License-Identifier: MIT */
/*
 * Per-process policy: asks the script what to do with each process (is it
 * profiled, which unwinders, which extra labels), offers it to the chosen
 * plugins, and applies the outcome to the BPF side (the `procs` map). Keeps
 * each decision, with the plugins' reasons for declining, for the samples
 * that arrive late and for `sondectl ps`.
 *
 * Threading: loop thread only. The failures of the script are counted by
 * the script module; this module logs the first ten, then one in a
 * thousand. A process whose decision fails keeps its previous one (or gets
 * the default: profiled, the default unwinders, no labels).
 */
#ifndef SONDE_POLICY_H
#define SONDE_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "profile.h"

struct sonde_bpf_host;
struct sonde_plugins;
struct sonde_proc;
struct sonde_script;
struct sonde_policy;

#define SONDE_POLICY_MAX_UNWINDERS 8

struct sonde_policy_decline {
	char plugin[32];
	char reason[128];
};

struct sonde_policy_entry {
	uint32_t pid;
	bool profiled;
	uint32_t first_slot; /* the unwinder slot the sampler starts with */
	char *unwinders[SONDE_POLICY_MAX_UNWINDERS]; /* attached, in order */
	uint32_t nunwinders;
	char *plugins[SONDE_POLICY_MAX_UNWINDERS]; /* other plugins attached */
	uint32_t nplugins;
	struct sonde_policy_decline declined[SONDE_POLICY_MAX_UNWINDERS];
	uint32_t ndeclined;
	struct sonde_profile_label labels[SONDE_PROFILE_MAX_EXTRA]; /* owned, extra ones */
	uint32_t nlabels;
	/* Relabeling: the script's comm, exe or container_id replace the
	 * process's own ("": the label is dropped); NULL: not replaced. */
	char *comm, *exe, *container_id;
	uint64_t exit_ns; /* 0 while alive */
};

/* Any of the services may be NULL (tests): then that part is skipped. */
struct sonde_policy *sonde_policy__new(struct sonde_bpf_host *bpf, struct sonde_plugins *plugins);
void sonde_policy__free(struct sonde_policy *pol);

/* The script decisions come from; NULL: every process profiled with frame
 * pointers. Known processes keep their decisions until decided again. */
void sonde_policy__set_script(struct sonde_policy *pol, struct sonde_script *script);

/* Decides for proc (again after an exec, or a reload) and applies it.
 * 0, or -ENOMEM. */
int sonde_policy__decide(struct sonde_policy *pol, const struct sonde_proc *proc);

/* pid exited at now_ns: its plugins detach; its entry stays for late samples. */
void sonde_policy__exited(struct sonde_policy *pol, uint32_t pid, uint64_t now_ns);
/* Forgets entries of processes that exited more than grace_ns ago. */
void sonde_policy__reap(struct sonde_policy *pol, uint64_t now_ns, uint64_t grace_ns);

/* The decision for pid, or NULL when none was taken. */
const struct sonde_policy_entry *sonde_policy__get(const struct sonde_policy *pol, uint32_t pid);

#endif /* SONDE_POLICY_H */
