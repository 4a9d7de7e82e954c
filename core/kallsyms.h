/* SPDX-License-Identifier: MIT */
/*
 * Kernel text symbols from /proc/kallsyms (or a file in its format) and the
 * kernel's build-id from /sys/kernel/notes.
 *
 * Only text symbols (t, T, w, W) are kept. Addresses that all read as zero
 * (kptr_restrict, not root) leave the table empty, so nothing is named
 * rather than everything named wrongly. Strings returned live as long as
 * the table. Threading: one thread at a time. No logging.
 */
#ifndef SONDE_KALLSYMS_H
#define SONDE_KALLSYMS_H

#include <stddef.h>
#include <stdint.h>

struct sonde_kallsyms;

struct sonde_ksym {
	uint64_t addr;
	const char *name;
	const char *module; /* "ext4" for "[ext4]", NULL for the kernel image */
};

/* Reads path. NULL and errno on failure (open errors, ENOMEM). */
struct sonde_kallsyms *sonde_kallsyms__load(const char *path);
void sonde_kallsyms__free(struct sonde_kallsyms *ks);
/* How many text symbols were kept. */
size_t sonde_kallsyms__count(const struct sonde_kallsyms *ks);
/* The nearest symbol at or below addr, or NULL. */
const struct sonde_ksym *sonde_kallsyms__find(const struct sonde_kallsyms *ks, uint64_t addr);

/*
 * Lowercase hex of the GNU build-id note in a file of raw ELF notes (the
 * format of /sys/kernel/notes) into hex. 0, -ENOENT when the file has no
 * such note, -ENOSPC when hex is too small, or an open/read error.
 */
int sonde_kallsyms__build_id(const char *notes_path, char *hex, size_t size);

#endif /* SONDE_KALLSYMS_H */
