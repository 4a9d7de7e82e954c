// SPDX-License-Identifier: MIT
#include "plugin_util.h"

#include <bpf/libbpf.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct plugin_string {
	struct plugin_string *next;
	char s[];
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return h;
}

const char *plugin_strings_intern(struct plugin_strings *ps, const char *s)
{
	struct plugin_string **head = &ps->buckets[hash_str(s) % PLUGIN_STRINGS_BUCKETS], *e;
	size_t len = strlen(s);

	for (e = *head; e; e = e->next)
		if (strcmp(e->s, s) == 0)
			return e->s;
	e = malloc(sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	memcpy(e->s, s, len + 1);
	e->next = *head;
	*head = e;
	return e->s;
}

void plugin_strings_release(struct plugin_strings *ps)
{
	struct plugin_string *e;
	size_t b;

	for (b = 0; b < PLUGIN_STRINGS_BUCKETS; b++) {
		while ((e = ps->buckets[b])) {
			ps->buckets[b] = e->next;
			free(e);
		}
	}
}

int plugin_reuse_core_maps(const struct sonde_host_api *api, struct sonde_host *host,
			   struct bpf_object *obj)
{
	static const char *const shared[] = { "scratch", "stats", "events" };
	struct bpf_map *map;
	size_t i;
	int fd, err;

	for (i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
		map = bpf_object__find_map_by_name(obj, shared[i]);
		if (!map)
			continue;
		fd = api->map_fd(host, shared[i]);
		if (fd < 0)
			return fd;
		err = bpf_map__reuse_fd(map, fd);
		if (err)
			return err;
	}
	return 0;
}
