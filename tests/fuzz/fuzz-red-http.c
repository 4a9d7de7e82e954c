// SPDX-License-Identifier: MIT
/*
 * red-metrics' HTTP head parsers, route templating and route patterns on
 * arbitrary bytes: what a watched process reads and writes is not ours to
 * trust (nor, less so, the script's patterns). Any input gives an answer,
 * never a crash, and what comes back stays in bounds.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "red_http.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sonde_red_request req;
	struct sonde_red_response resp;
	static struct sonde_red_patterns fixed, fuzzed;
	char route[SONDE_RED_ROUTE_MAX], err[256], *spec;
	const char *match;
	unsigned int i;
	size_t n;

	if (!fixed.count &&
	    sonde_red_patterns_parse("/users/{id} /users/{id}/orders/{o} /static/* /", &fixed, err,
				     sizeof(err)))
		abort();
	/* the bytes as a routes setting */
	spec = malloc(size + 1);
	if (!spec)
		return 0;
	memcpy(spec, data, size);
	spec[size] = '\0';
	if (sonde_red_patterns_parse(spec, &fuzzed, err, sizeof(err)) == 0) {
		if (fuzzed.count > SONDE_RED_PATTERNS_MAX)
			abort();
		for (i = 0; i < fuzzed.count; i++)
			if (fuzzed.pattern[i][0] != '/' ||
			    strlen(fuzzed.pattern[i]) >= SONDE_RED_ROUTE_MAX)
				abort();
		match = sonde_red_patterns_match(&fuzzed, spec);
		if (match && (match < fuzzed.pattern[0] ||
			      match > fuzzed.pattern[SONDE_RED_PATTERNS_MAX - 1]))
			abort();
	} else if (!memchr(err, '\0', sizeof(err)) || !err[0]) {
		abort();
	}
	free(spec);

	if (sonde_red_parse_request(data, size, &req) == 0) {
		if (req.head_len > size || strlen(req.path) >= sizeof(req.path) || !req.method ||
		    strlen(req.host) >= sizeof(req.host))
			abort();
		n = sonde_red_route(req.path, route, sizeof(route));
		if (n >= sizeof(route) || strlen(route) != n)
			abort();
		match = sonde_red_patterns_match(&fixed, req.path);
		if (match && match[0] != '/')
			abort();
	}
	if (sonde_red_parse_response(data, size, &resp) == 0) {
		if (resp.head_len > size || resp.status < 100 || resp.status > 999)
			abort();
	}
	return 0;
}
