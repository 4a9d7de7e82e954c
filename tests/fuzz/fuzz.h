/* SPDX-License-Identifier: MIT */
/* What every libFuzzer target here shares: its entry point, and CHECK, which
 * aborts (a finding libFuzzer keeps) with the failed condition's place. */
#ifndef SONDE_FUZZ_H
#define SONDE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                       \
	do {                                                                              \
		if (!(cond)) {                                                            \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);        \
			abort();                                                          \
		}                                                                         \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* SONDE_FUZZ_H */
