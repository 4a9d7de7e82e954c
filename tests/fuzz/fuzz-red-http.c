// SPDX-License-Identifier: MIT
/*
 * red-metrics' HTTP head parsers and route templating on arbitrary bytes:
 * what a watched process reads and writes is not ours to trust. Any input
 * gives an answer, never a crash, and what comes back stays in bounds.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "red_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sonde_red_request req;
	struct sonde_red_response resp;
	char route[SONDE_RED_ROUTE_MAX];
	size_t n;

	if (sonde_red_parse_request(data, size, &req) == 0) {
		if (req.head_len > size || strlen(req.path) >= sizeof(req.path) || !req.method ||
		    strlen(req.host) >= sizeof(req.host))
			abort();
		n = sonde_red_route(req.path, route, sizeof(route));
		if (n >= sizeof(route) || strlen(route) != n)
			abort();
	}
	if (sonde_red_parse_response(data, size, &resp) == 0) {
		if (resp.head_len > size || resp.status < 100 || resp.status > 999)
			abort();
	}
	return 0;
}
