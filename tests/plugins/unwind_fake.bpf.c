// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A test unwinder: one interpreter frame of the plugin's kind (aux 42,
 * payload the pid) innermost, then the frame-pointer walk. It shows that an
 * unwinder plugs in with a slot, a frame kind and a symbolizer alone: it
 * shares the core's scratch sample, ringbuf and counters through
 * bpf_map__reuse_fd().
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sample.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The frame kind the host gave the plugin; set before load. */
const volatile __u64 fake_kind = 0;

SEC("perf_event")
int unwind_fake(struct bpf_perf_event_data *ctx)
{
	struct sonde_sample *s = sonde_scratch();
	__u32 k;
	long n;

	if (!s)
		return 0;
	k = s->kstack_len;
	if (k > SONDE_MAX_KSTACK)
		return 0;
	s->frames[k] = (fake_kind << SONDE_FRAME_KIND_SHIFT) | 42;
	s->frames[k + 1] = s->hdr.pid;
	n = bpf_get_stack(ctx, &s->frames[k + 2], (SONDE_MAX_USTACK - 2) * sizeof(__u64),
			  BPF_F_USER_STACK);
	if (n < 0)
		n = 0;
	s->ustack_len = 2 + n / sizeof(__u64);
	return sonde_sample_emit(s);
}
