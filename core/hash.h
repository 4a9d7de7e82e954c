/* SPDX-License-Identifier: MIT */
/*
 * Hashes for sonde's in-memory tables (interning, caches, lookups). Fast and
 * well mixed; not stable across versions and not for anything that leaves
 * the process.
 */
#ifndef SONDE_HASH_H
#define SONDE_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Folds v into the running hash h (splitmix64's finalizer). */
static inline uint64_t sonde_hash_mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

/* FNV-1a over the bytes, then mixed with the length. */
static inline uint64_t sonde_hash_bytes(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return sonde_hash_mix(h, len);
}

static inline uint64_t sonde_hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t len = 0;

	for (; s[len]; len++)
		h = (h ^ (unsigned char)s[len]) * 0x100000001b3ULL;
	return sonde_hash_mix(h, len);
}

#endif /* SONDE_HASH_H */
