// SPDX-License-Identifier: MIT
/*
 * The ELF side of the symbolizer on arbitrary files: program headers for
 * address translation, .symtab/.dynsym, build-id notes, DWARF lines and
 * inlines through libdw. Any input must give an object and answers, never
 * a crash.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "symbolize.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[] = "/tmp/sonde-fuzz-elf-XXXXXX";
	static int fd = -1;
	static uint64_t ino;
	struct sonde_symbolizer_opts opts = {
		.debug_dir = "/nonexistent",
		.kallsyms = "/nonexistent",
		.kernel_notes = "/nonexistent",
	};
	struct sonde_symbol_frame frames[16];
	struct sonde_symbolizer *sym;
	struct sonde_object *obj;
	uint64_t probe[4] = { 0x1000, 0x1130, 0x401000, 0 };
	size_t i;

	if (fd < 0) {
		fd = mkstemp(path);
		if (fd < 0)
			abort();
		unlink(path); /* reached through /proc/self/fd below */
	}
	if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	sym = sonde_symbolizer__new(&opts);
	if (!sym)
		return 0;
	/* a new identity every time: nothing is served from the cache */
	obj = sonde_symbolizer__object(sym, path, "fuzz.so", 1, ++ino);
	if (obj) {
		if (size >= 8)
			memcpy(&probe[3], data + size - 8, 8);
		for (i = 0; i < 4; i++) {
			uint64_t v = sonde_object__to_vaddr(obj, 0x1000, 0, probe[i]);

			sonde_object__symbolize(obj, v, frames, 16);
			sonde_object__symbolize(obj, probe[i], frames, 16);
		}
		sonde_object__build_id(obj);
	}
	sonde_symbolizer__free(sym);
	return 0;
}
