/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Maps every core and plugin BPF object shares: the stats counters and the
 * events ringbuf. Each object declares them; userspace makes them one map
 * with bpf_map__reuse_fd() before load, so every event lands in one ringbuf
 * in the order it happened.
 */
#ifndef SONDE_COMMON_BPF_H
#define SONDE_COMMON_BPF_H

#include "sonde/abi.h"
#include "sonde/errors.h"

/* enum sonde_stat counters, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SONDE_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Samples and process events, in the order they happened. Sized by
 * userspace before load (bpf_map__set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Samples wake userspace only once this much waits in the ringbuf; the
 * daemon also drains it on a timer. Set by the core in its own objects;
 * 0 (a plugin's copy, which the core does not set): a quarter of the
 * ring, the core's default. Waking on every record instead cost an
 * unwinder plugin's samples about 4.5 us each (bench/unwind-native). */
const volatile __u64 sonde_wakeup_bytes = 0;

/* Flags for bpf_ringbuf_output(): batch wake-ups, per sonde_wakeup_bytes. */
static __always_inline __u64 sonde_wakeup_flags(void)
{
	__u64 at = sonde_wakeup_bytes;

	if (!at)
		at = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 4;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= at ? BPF_RB_FORCE_WAKEUP
								   : BPF_RB_NO_WAKEUP;
}

static __always_inline void sonde_stat_inc(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &stat);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
}

#endif /* SONDE_COMMON_BPF_H */
