// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-fake: a test plugin with a real BPF unwinder. Every process
 * it is given gets one "fake_frame" (fake.py:42) innermost in its stacks,
 * named by this plugin; the rest of the stack is the frame-pointer walk.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/libbpf.h>
#include <sonde/plugin.h>

#include "plugin_util.h"
#include "unwind_fake.skel.h"

struct fake {
	struct unwind_fake_bpf *skel;
};

static int fake_symbolize(void *state, uint32_t pid, uint64_t word, uint64_t payload,
			  struct sonde_plugin_frame *frames, int max)
{
	(void)state;
	if ((word & 0xffffffu) != 42 || payload != pid || max < 1)
		return 0;
	frames[0] = (struct sonde_plugin_frame){ .function = "fake_frame", .file = "fake.py",
						 .line = 42 };
	return 1;
}

static void *fake_init(const struct sonde_host_api *api, struct sonde_host *host,
		       const void *settings, char *err, size_t errlen)
{
	struct fake *f = calloc(1, sizeof(*f));
	int kind, rc, slot;

	(void)settings;
	if (!f) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	kind = api->register_frame_kind(host, "fake", fake_symbolize);
	f->skel = unwind_fake_bpf__open();
	if (kind < 0 || !f->skel) {
		snprintf(err, errlen, "cannot open the unwinder (%s)", strerror(kind < 0 ? -kind : errno));
		goto fail;
	}
	f->skel->rodata->fake_kind = (uint64_t)kind;
	rc = plugin_reuse_core_maps(api, host, f->skel->obj);
	if (!rc)
		rc = unwind_fake_bpf__load(f->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the unwinder: %s", strerror(-rc));
		goto fail;
	}
	slot = api->register_unwinder(host, "fake", bpf_program__fd(f->skel->progs.unwind_fake));
	if (slot < 0) {
		snprintf(err, errlen, "no unwinder slot: %s", strerror(-slot));
		goto fail;
	}
	api->log(host, SONDE_PLUGIN_LOG_INFO, "frame kind %d, unwinder slot %d", kind, slot);
	return f;
fail:
	unwind_fake_bpf__destroy(f->skel);
	free(f);
	return NULL;
}

static void fake_fini(void *state)
{
	struct fake *f = state;

	unwind_fake_bpf__destroy(f->skel);
	free(f);
}

static int fake_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		       size_t reasonlen)
{
	(void)state;
	(void)proc;
	(void)reason;
	(void)reasonlen;
	return 0;
}

const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "unwind-fake",
	.version = "1",
	.description = "test unwinder: one fake interpreter frame per stack",
	.init = fake_init,
	.fini = fake_fini,
	.attach_process = fake_attach,
};
