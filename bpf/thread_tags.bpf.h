/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The core's thread tags (abi.h, SONDE_TAG_*): tid -> the tag a plugin set
 * while that thread works for something the plugin tracks. The sampler
 * reads it; a plugin's BPF code includes this header, reuses the core's map
 * (map_fd "thread_tags" before load) and sets and clears its own tags.
 */
#ifndef SONDE_THREAD_TAGS_BPF_H
#define SONDE_THREAD_TAGS_BPF_H

#include "sonde/abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SONDE_MAX_THREAD_TAGS);
	__type(key, __u32);
	__type(value, __u64);
} thread_tags SEC(".maps");

/* Tags thread tid; 0, or -errno (-E2BIG: every slot is taken). */
static __always_inline long sonde_thread_tag_set(__u32 tid, __u64 tag)
{
	return bpf_map_update_elem(&thread_tags, &tid, &tag, BPF_ANY);
}

/* Untags thread tid if it still carries tag (another may have replaced it). */
static __always_inline void sonde_thread_tag_clear(__u32 tid, __u64 tag)
{
	__u64 *cur = bpf_map_lookup_elem(&thread_tags, &tid);

	if (cur && *cur == tag)
		bpf_map_delete_elem(&thread_tags, &tid);
}

#endif /* SONDE_THREAD_TAGS_BPF_H */
