/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The core's thread tags (abi.h, SONDE_TAG_*): the tag a plugin set on a
 * thread while it works for something the plugin tracks. The sampler reads
 * it; a plugin's BPF code includes this header, reuses the core's maps
 * (map_fd "thread_tags" and "thread_tags_ended" before load) and sets and
 * ends its own tags.
 *
 * A tag lives in the thread's task storage: setting it, ending it and
 * reading it are a pointer chase from the current task, not hash map
 * updates and deletes (about 330 ns of each HTTP request with a hash map,
 * bench/red-overhead), and the storage goes with the thread.
 */
#ifndef SONDE_THREAD_TAGS_BPF_H
#define SONDE_THREAD_TAGS_BPF_H

#include "sonde/abi.h"

/* A thread's tag, and the last tag a sample of it carried: the plugin
 * learns at the tag's end whether any sample may wait for its labels. */
struct sonde_thread_tag {
	__u64 tag;
	__u64 sampled;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sonde_thread_tag);
} thread_tags SEC(".maps");

/* Task storage is reached from the task, and another thread's task is not
 * at hand: a tag ended by another thread than the one carrying it is
 * written here (tid -> the ended tag), and the sampler ignores the tag
 * while it is that one. A new tag differs from the ended one, so nothing
 * needs deleting; LRU, so old entries make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SONDE_MAX_THREAD_TAGS);
	__type(key, __u32);
	__type(value, __u64);
} thread_tags_ended SEC(".maps");

/* Tags the current thread; 0, or -ENOMEM (its storage could not be made,
 * or the storage was busy on this CPU). */
static __always_inline long sonde_thread_tag_set(__u64 tag)
{
	struct sonde_thread_tag *t = bpf_task_storage_get(&thread_tags, bpf_get_current_task_btf(),
							  0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!t)
		return -12; /* ENOMEM */
	t->tag = tag;
	return 0;
}

/* Ends tag, set on thread tid, if that thread still carries it (another
 * may have replaced it). 1 when a sample may carry tag (always, when
 * another thread ends it: its storage is out of reach), else 0. */
static __always_inline int sonde_thread_tag_end(__u32 tid, __u64 tag)
{
	volatile struct sonde_thread_tag *t;

	if (tid != (__u32)bpf_get_current_pid_tgid()) {
		bpf_map_update_elem(&thread_tags_ended, &tid, &tag, BPF_ANY);
		return 1;
	}
	t = bpf_task_storage_get(&thread_tags, bpf_get_current_task_btf(), 0, 0);
	if (!t)
		return 0;
	/* the tag goes before sampled is read: a sample taken in between
	 * (the sampler interrupts this program on this CPU) carries no tag */
	if (t->tag == tag)
		t->tag = 0;
	return t->sampled == tag;
}

/* The current thread's tag (its tid is tid), for its sample; 0 none. */
static __always_inline __u64 sonde_thread_tag(__u32 tid)
{
	volatile struct sonde_thread_tag *t =
		bpf_task_storage_get(&thread_tags, bpf_get_current_task_btf(), 0, 0);
	__u64 tag = t ? t->tag : 0, *ended;

	if (!tag)
		return 0;
	ended = bpf_map_lookup_elem(&thread_tags_ended, &tid);
	if (ended && *ended == tag)
		return 0;
	t->sampled = tag;
	return tag;
}

#endif /* SONDE_THREAD_TAGS_BPF_H */
