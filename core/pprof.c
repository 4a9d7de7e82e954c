// SPDX-License-Identifier: MIT
/*
 * profile.proto written by hand: the format is small and stable, and a
 * protobuf runtime would be the daemon's biggest dependency for one message.
 *
 * Every message is encoded once, when it is added, into the byte buffer of
 * its Profile field (samples, mappings, locations, functions, the string
 * table, comments). Interned things never change after their first add, so
 * the bytes stay valid, and encode() only frames those buffers with the few
 * scalar fields and streams them through zlib: no second pass over the
 * samples, no copy into one big protobuf buffer.
 *
 * Interning uses one open-addressing table per kind that stores (hash, id);
 * equality is checked against the kind's own array, and strings are compared
 * in place inside the encoded string table, so each string is stored once.
 *
 * A failed allocation poisons the builder: the buffers may hold half a
 * message, so every later call fails with ENOMEM. The daemon builds one
 * builder per export, so that loses one profile, never corrupts one.
 */
#include "hash.h"
#include "pprof.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "strbuf.h"

/* Field numbers of github.com/google/pprof/proto/profile.proto. */
enum {
	PROFILE_SAMPLE_TYPE = 1,
	PROFILE_SAMPLE = 2,
	PROFILE_MAPPING = 3,
	PROFILE_LOCATION = 4,
	PROFILE_FUNCTION = 5,
	PROFILE_STRING_TABLE = 6,
	PROFILE_DROP_FRAMES = 7,
	PROFILE_KEEP_FRAMES = 8,
	PROFILE_TIME_NANOS = 9,
	PROFILE_DURATION_NANOS = 10,
	PROFILE_PERIOD_TYPE = 11,
	PROFILE_PERIOD = 12,
	PROFILE_COMMENT = 13,
	PROFILE_DEFAULT_SAMPLE_TYPE = 14,

	VALUE_TYPE_TYPE = 1,
	VALUE_TYPE_UNIT = 2,

	SAMPLE_LOCATION_ID = 1, /* packed */
	SAMPLE_VALUE = 2,       /* packed */
	SAMPLE_LABEL = 3,

	LABEL_KEY = 1,
	LABEL_STR = 2,
	LABEL_NUM = 3,
	LABEL_NUM_UNIT = 4,

	MAPPING_ID = 1,
	MAPPING_MEMORY_START = 2,
	MAPPING_MEMORY_LIMIT = 3,
	MAPPING_FILE_OFFSET = 4,
	MAPPING_FILENAME = 5,
	MAPPING_BUILD_ID = 6,
	MAPPING_HAS_FUNCTIONS = 7,
	MAPPING_HAS_FILENAMES = 8,
	MAPPING_HAS_LINE_NUMBERS = 9,
	MAPPING_HAS_INLINE_FRAMES = 10,

	LOCATION_ID = 1,
	LOCATION_MAPPING_ID = 2,
	LOCATION_ADDRESS = 3,
	LOCATION_LINE = 4,
	LOCATION_IS_FOLDED = 5,

	LINE_FUNCTION_ID = 1,
	LINE_LINE = 2,

	FUNCTION_ID = 1,
	FUNCTION_NAME = 2,
	FUNCTION_SYSTEM_NAME = 3,
	FUNCTION_FILENAME = 4,
	FUNCTION_START_LINE = 5,
};

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

struct slot {
	uint64_t hash;
	uint64_t id; /* 0: empty */
};

struct intern {
	struct slot *slots;
	size_t cap; /* power of two */
	size_t n;
};

struct str {
	size_t off; /* payload inside p->strings */
	size_t len;
};

struct mapping {
	uint64_t start, limit, offset;
	int64_t filename, build_id; /* string indexes */
};

struct function {
	int64_t name, filename;
};

struct location {
	uint64_t mapping_id, address;
};

struct sonde_pprof {
	struct sonde_pprof_opts opts;
	int err;

	struct str *strs;
	size_t nstrs, capstrs;
	struct mapping *mappings;
	size_t nmappings, capmappings;
	struct function *functions;
	size_t nfunctions, capfunctions;
	struct location *locations;
	size_t nlocations, caplocations;
	size_t nsamples;

	struct intern str_ix, mapping_ix, function_ix, location_ix;

	/* Encoded repeated fields of Profile, each record complete. */
	struct sonde_strbuf strings, mappings_pb, locations_pb, functions_pb;
	struct sonde_strbuf samples_pb, comments_pb;
	/* Scratch for one message body and one nested body. */
	struct sonde_strbuf msg, sub;

	int64_t s_samples, s_count, s_cpu, s_nanoseconds;
};

/* --- protobuf wire helpers --- */

static size_t varint_size(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static void put_varint(struct sonde_strbuf *sb, uint64_t v)
{
	uint8_t buf[10];
	size_t n = 0;

	while (v >= 0x80) {
		buf[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	buf[n++] = (uint8_t)v;
	sonde_strbuf__append(sb, buf, n);
}

static void put_tag(struct sonde_strbuf *sb, unsigned int field, unsigned int wire)
{
	put_varint(sb, (uint64_t)field << 3 | wire);
}

/* proto3 scalars: a zero value is the default and is left out. */
static void put_uint(struct sonde_strbuf *sb, unsigned int field, uint64_t v)
{
	if (!v)
		return;
	put_tag(sb, field, WIRE_VARINT);
	put_varint(sb, v);
}

/* int64 (not sint64): negative values are ten-byte two's complement. */
static void put_int(struct sonde_strbuf *sb, unsigned int field, int64_t v)
{
	put_uint(sb, field, (uint64_t)v);
}

static void put_bytes(struct sonde_strbuf *sb, unsigned int field, const void *data, size_t len)
{
	put_tag(sb, field, WIRE_LEN);
	put_varint(sb, len);
	sonde_strbuf__append(sb, data, len);
}

/* A nested message whose body was built in a scratch buffer. */
static void put_message(struct sonde_strbuf *sb, unsigned int field,
			const struct sonde_strbuf *body)
{
	put_bytes(sb, field, body->data, body->len);
}

static void put_packed(struct sonde_strbuf *sb, unsigned int field, const uint64_t *v, size_t n)
{
	size_t i, len = 0;

	if (!n)
		return;
	for (i = 0; i < n; i++)
		len += varint_size(v[i]);
	put_tag(sb, field, WIRE_LEN);
	put_varint(sb, len);
	for (i = 0; i < n; i++)
		put_varint(sb, v[i]);
}

/* --- hashing and interning --- */

typedef bool (*eq_fn)(const struct sonde_pprof *p, uint64_t id, const void *key);

static uint64_t intern_find(const struct intern *ix, uint64_t hash, eq_fn eq,
			    const struct sonde_pprof *p, const void *key)
{
	size_t i;

	if (!ix->cap)
		return 0;
	for (i = hash & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
		const struct slot *s = &ix->slots[i];

		if (!s->id)
			return 0;
		if (s->hash == hash && eq(p, s->id, key))
			return s->id;
	}
}

static void intern_put(struct intern *ix, uint64_t hash, uint64_t id)
{
	size_t i;

	for (i = hash & (ix->cap - 1); ix->slots[i].id; i = (i + 1) & (ix->cap - 1))
		;
	ix->slots[i] = (struct slot){ .hash = hash, .id = id };
	ix->n++;
}

/* Makes room for one more entry; kept at most half full for short probes. */
static int intern_reserve(struct intern *ix)
{
	struct slot *old = ix->slots;
	size_t i, oldcap = ix->cap;

	if ((ix->n + 1) * 2 <= ix->cap)
		return 0;
	ix->cap = oldcap ? oldcap * 2 : 64;
	ix->slots = calloc(ix->cap, sizeof(*ix->slots));
	if (!ix->slots) {
		ix->slots = old;
		ix->cap = oldcap;
		return -ENOMEM;
	}
	ix->n = 0;
	for (i = 0; i < oldcap; i++)
		if (old[i].id)
			intern_put(ix, old[i].hash, old[i].id);
	free(old);
	return 0;
}

/* Grows *arr (of size elements) so that it holds n + 1. */
static int grow(void **arr, size_t *cap, size_t n, size_t size)
{
	size_t ncap;
	void *tmp;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 64;
	tmp = reallocarray(*arr, ncap, size);
	if (!tmp)
		return -ENOMEM;
	*arr = tmp;
	*cap = ncap;
	return 0;
}

static int check(struct sonde_pprof *p)
{
	const struct sonde_strbuf *bufs[] = {
		&p->strings, &p->mappings_pb, &p->locations_pb,
		&p->functions_pb, &p->samples_pb, &p->comments_pb,
		&p->msg, &p->sub,
	};
	size_t i;

	for (i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
		if (sonde_strbuf__error(bufs[i]))
			p->err = -ENOMEM;
	return p->err;
}

struct str_key {
	const char *s;
	size_t len;
};

static bool str_eq(const struct sonde_pprof *p, uint64_t id, const void *key)
{
	const struct str *st = &p->strs[id - 1];
	const struct str_key *k = key;

	return st->len == k->len && !memcmp(p->strings.data + st->off, k->s, k->len);
}

/* The string's index in the string table, or -1 with p->err set. */
static int64_t intern_str(struct sonde_pprof *p, const char *s)
{
	struct str_key k = { .s = s ? s : "", .len = s ? strlen(s) : 0 };
	uint64_t hash, id;

	if (p->err)
		return -1;
	hash = sonde_hash_bytes(k.s, k.len);
	/* Intern ids are index + 1 so that 0 stays "empty slot". */
	id = intern_find(&p->str_ix, hash, str_eq, p, &k);
	if (id)
		return (int64_t)(id - 1);
	if (intern_reserve(&p->str_ix) || grow((void **)&p->strs, &p->capstrs, p->nstrs,
					       sizeof(*p->strs))) {
		p->err = -ENOMEM;
		return -1;
	}
	put_tag(&p->strings, PROFILE_STRING_TABLE, WIRE_LEN);
	put_varint(&p->strings, k.len);
	p->strs[p->nstrs] = (struct str){ .off = p->strings.len, .len = k.len };
	sonde_strbuf__append(&p->strings, k.s, k.len);
	if (check(p))
		return -1;
	intern_put(&p->str_ix, hash, p->nstrs + 1);
	return (int64_t)p->nstrs++;
}

/* --- the builder --- */

struct sonde_pprof *sonde_pprof__new(const struct sonde_pprof_opts *opts)
{
	struct sonde_pprof *p;

	if (!opts) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->opts = *opts;
	/* string_table[0] must be "": the first string interned gets index 0. */
	intern_str(p, "");
	p->s_samples = intern_str(p, "samples");
	p->s_count = intern_str(p, "count");
	p->s_cpu = intern_str(p, "cpu");
	p->s_nanoseconds = intern_str(p, "nanoseconds");
	if (p->err) {
		sonde_pprof__free(p);
		errno = ENOMEM;
		return NULL;
	}
	return p;
}

void sonde_pprof__free(struct sonde_pprof *p)
{
	if (!p)
		return;
	free(p->strs);
	free(p->mappings);
	free(p->functions);
	free(p->locations);
	free(p->str_ix.slots);
	free(p->mapping_ix.slots);
	free(p->function_ix.slots);
	free(p->location_ix.slots);
	sonde_strbuf__release(&p->strings);
	sonde_strbuf__release(&p->mappings_pb);
	sonde_strbuf__release(&p->locations_pb);
	sonde_strbuf__release(&p->functions_pb);
	sonde_strbuf__release(&p->samples_pb);
	sonde_strbuf__release(&p->comments_pb);
	sonde_strbuf__release(&p->msg);
	sonde_strbuf__release(&p->sub);
	free(p);
}

static uint64_t fail_id(int err)
{
	errno = -err;
	return 0;
}

static bool mapping_eq(const struct sonde_pprof *p, uint64_t id, const void *key)
{
	const struct mapping *a = &p->mappings[id - 1], *b = key;

	return a->start == b->start && a->limit == b->limit && a->offset == b->offset &&
	       a->filename == b->filename && a->build_id == b->build_id;
}

uint64_t sonde_pprof__mapping(struct sonde_pprof *p, uint64_t start, uint64_t limit,
			      uint64_t file_offset, const char *filename, const char *build_id)
{
	struct mapping m = { .start = start, .limit = limit, .offset = file_offset };
	uint64_t hash, id;

	m.filename = intern_str(p, filename);
	m.build_id = intern_str(p, build_id);
	if (p->err)
		return fail_id(p->err);
	hash = sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(sonde_hash_mix(0, start), limit), file_offset), (uint64_t)m.filename),
		   (uint64_t)m.build_id);
	id = intern_find(&p->mapping_ix, hash, mapping_eq, p, &m);
	if (id)
		return id;
	if (intern_reserve(&p->mapping_ix) ||
	    grow((void **)&p->mappings, &p->capmappings, p->nmappings, sizeof(m))) {
		p->err = -ENOMEM;
		return fail_id(p->err);
	}
	id = p->nmappings + 1;

	sonde_strbuf__reset(&p->msg);
	put_uint(&p->msg, MAPPING_ID, id);
	put_uint(&p->msg, MAPPING_MEMORY_START, start);
	put_uint(&p->msg, MAPPING_MEMORY_LIMIT, limit);
	put_uint(&p->msg, MAPPING_FILE_OFFSET, file_offset);
	put_int(&p->msg, MAPPING_FILENAME, m.filename);
	put_int(&p->msg, MAPPING_BUILD_ID, m.build_id);
	/* Symbolized here: pprof must not look for the binaries again. */
	put_uint(&p->msg, MAPPING_HAS_FUNCTIONS, 1);
	put_uint(&p->msg, MAPPING_HAS_FILENAMES, 1);
	put_uint(&p->msg, MAPPING_HAS_LINE_NUMBERS, 1);
	put_uint(&p->msg, MAPPING_HAS_INLINE_FRAMES, 1);
	put_message(&p->mappings_pb, PROFILE_MAPPING, &p->msg);
	if (check(p))
		return fail_id(p->err);

	p->mappings[p->nmappings++] = m;
	intern_put(&p->mapping_ix, hash, id);
	return id;
}

static bool function_eq(const struct sonde_pprof *p, uint64_t id, const void *key)
{
	const struct function *a = &p->functions[id - 1], *b = key;

	return a->name == b->name && a->filename == b->filename;
}

uint64_t sonde_pprof__function(struct sonde_pprof *p, const char *name, const char *filename)
{
	struct function f;
	uint64_t hash, id;

	if (!name)
		return fail_id(-EINVAL);
	f.name = intern_str(p, name);
	f.filename = intern_str(p, filename);
	if (p->err)
		return fail_id(p->err);
	hash = sonde_hash_mix(sonde_hash_mix(1, (uint64_t)f.name), (uint64_t)f.filename);
	id = intern_find(&p->function_ix, hash, function_eq, p, &f);
	if (id)
		return id;
	if (intern_reserve(&p->function_ix) ||
	    grow((void **)&p->functions, &p->capfunctions, p->nfunctions, sizeof(f))) {
		p->err = -ENOMEM;
		return fail_id(p->err);
	}
	id = p->nfunctions + 1;

	sonde_strbuf__reset(&p->msg);
	put_uint(&p->msg, FUNCTION_ID, id);
	put_int(&p->msg, FUNCTION_NAME, f.name);
	/* We only have one name (already demangled or not); pprof shows either. */
	put_int(&p->msg, FUNCTION_SYSTEM_NAME, f.name);
	put_int(&p->msg, FUNCTION_FILENAME, f.filename);
	put_message(&p->functions_pb, PROFILE_FUNCTION, &p->msg);
	if (check(p))
		return fail_id(p->err);

	p->functions[p->nfunctions++] = f;
	intern_put(&p->function_ix, hash, id);
	return id;
}

static bool location_eq(const struct sonde_pprof *p, uint64_t id, const void *key)
{
	const struct location *a = &p->locations[id - 1], *b = key;

	return a->mapping_id == b->mapping_id && a->address == b->address;
}

uint64_t sonde_pprof__location(struct sonde_pprof *p, uint64_t mapping_id, uint64_t address,
			       const struct sonde_pprof_line *lines, size_t nlines)
{
	struct location l = { .mapping_id = mapping_id, .address = address };
	uint64_t hash, id;
	size_t i;

	if (p->err)
		return fail_id(p->err);
	/* A dangling id makes pprof reject the whole profile; refuse it here. */
	if (mapping_id > p->nmappings || (nlines && !lines))
		return fail_id(-EINVAL);
	for (i = 0; i < nlines; i++)
		if (!lines[i].function_id || lines[i].function_id > p->nfunctions)
			return fail_id(-EINVAL);
	hash = sonde_hash_mix(sonde_hash_mix(2, mapping_id), address);
	id = intern_find(&p->location_ix, hash, location_eq, p, &l);
	if (id)
		return id;
	if (intern_reserve(&p->location_ix) ||
	    grow((void **)&p->locations, &p->caplocations, p->nlocations, sizeof(l))) {
		p->err = -ENOMEM;
		return fail_id(p->err);
	}
	id = p->nlocations + 1;

	sonde_strbuf__reset(&p->msg);
	put_uint(&p->msg, LOCATION_ID, id);
	put_uint(&p->msg, LOCATION_MAPPING_ID, mapping_id);
	put_uint(&p->msg, LOCATION_ADDRESS, address);
	for (i = 0; i < nlines; i++) {
		sonde_strbuf__reset(&p->sub);
		put_uint(&p->sub, LINE_FUNCTION_ID, lines[i].function_id);
		put_int(&p->sub, LINE_LINE, lines[i].line);
		put_message(&p->msg, LOCATION_LINE, &p->sub);
	}
	put_message(&p->locations_pb, PROFILE_LOCATION, &p->msg);
	if (check(p))
		return fail_id(p->err);

	p->locations[p->nlocations++] = l;
	intern_put(&p->location_ix, hash, id);
	return id;
}

int sonde_pprof__sample(struct sonde_pprof *p, const uint64_t *location_ids, size_t nlocations,
			int64_t count, const struct sonde_pprof_label *labels, size_t nlabels)
{
	uint64_t values[2];
	int64_t cpu, key, str;
	size_t i;

	if (p->err)
		return p->err;
	if ((nlocations && !location_ids) || (nlabels && !labels))
		return -EINVAL;
	for (i = 0; i < nlocations; i++)
		if (!location_ids[i] || location_ids[i] > p->nlocations)
			return -EINVAL;
	for (i = 0; i < nlabels; i++)
		if (!labels[i].key)
			return -EINVAL;
	if (__builtin_mul_overflow(count, p->opts.period_ns, &cpu))
		return -ERANGE;
	values[0] = (uint64_t)count;
	values[1] = (uint64_t)cpu;

	sonde_strbuf__reset(&p->msg);
	put_packed(&p->msg, SAMPLE_LOCATION_ID, location_ids, nlocations);
	put_packed(&p->msg, SAMPLE_VALUE, values, 2);
	for (i = 0; i < nlabels; i++) {
		/*
		 * pprof reads a label whose str is "" and num is 0 as no label
		 * at all; that is the format's, we keep what we are given.
		 */
		key = intern_str(p, labels[i].key);
		str = labels[i].str ? intern_str(p, labels[i].str) : 0;
		if (p->err)
			return p->err;
		sonde_strbuf__reset(&p->sub);
		put_int(&p->sub, LABEL_KEY, key);
		if (labels[i].str)
			put_int(&p->sub, LABEL_STR, str);
		else
			put_int(&p->sub, LABEL_NUM, labels[i].num);
		put_message(&p->msg, SAMPLE_LABEL, &p->sub);
	}
	put_message(&p->samples_pb, PROFILE_SAMPLE, &p->msg);
	if (check(p))
		return p->err;
	p->nsamples++;
	return 0;
}

int sonde_pprof__comment(struct sonde_pprof *p, const char *comment)
{
	int64_t s;

	if (!comment)
		return -EINVAL;
	s = intern_str(p, comment);
	if (p->err)
		return p->err;
	/* Unpacked repeated int64: valid proto3, and appendable one at a time. */
	put_tag(&p->comments_pb, PROFILE_COMMENT, WIRE_VARINT);
	put_varint(&p->comments_pb, (uint64_t)s);
	return check(p);
}

/* --- encoding --- */

static void put_value_type(struct sonde_strbuf *sb, struct sonde_strbuf *scratch,
			   unsigned int field, int64_t type, int64_t unit)
{
	sonde_strbuf__reset(scratch);
	put_int(scratch, VALUE_TYPE_TYPE, type);
	put_int(scratch, VALUE_TYPE_UNIT, unit);
	put_message(sb, field, scratch);
}

struct chunk {
	const void *data;
	size_t len;
};

/* Runs the chunks through one gzip stream into a malloc'd buffer. */
static int gzip_chunks(const struct chunk *chunks, size_t n, uint8_t **out, size_t *outlen)
{
	z_stream zs = { 0 };
	uint8_t *buf = NULL, *tmp;
	size_t i, total = 0, cap;
	int ret, zret, flush;
	bool zinit = false;

	for (i = 0; i < n; i++)
		total += chunks[i].len;
	/*
	 * Level 1, as Go's runtime/pprof: profiles compress well anyway and the
	 * profiler should not spend its CPU budget on the last few percent.
	 */
	if (deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		ret = -ENOMEM;
		goto cleanup;
	}
	zinit = true;
	cap = deflateBound(&zs, total);
	buf = malloc(cap);
	if (!buf) {
		ret = -ENOMEM;
		goto cleanup;
	}
	zs.next_out = buf;
	zs.avail_out = (uInt)cap;

	for (i = 0; i <= n; i++) {
		/* avail_in is a uInt: feed huge chunks in slices. */
		const uint8_t *in = i < n ? chunks[i].data : NULL;
		size_t left = i < n ? chunks[i].len : 0;

		do {
			uInt step = left > (1u << 30) ? (1u << 30) : (uInt)left;

			zs.next_in = (Bytef *)in;
			zs.avail_in = step;
			flush = i == n ? Z_FINISH : Z_NO_FLUSH;
			do {
				if (!zs.avail_out) {
					size_t used = zs.total_out;

					tmp = realloc(buf, cap * 2);
					if (!tmp) {
						ret = -ENOMEM;
						goto cleanup;
					}
					buf = tmp;
					zs.next_out = buf + used;
					zs.avail_out = (uInt)(cap * 2 - used);
					cap *= 2;
				}
				zret = deflate(&zs, flush);
				if (zret == Z_STREAM_ERROR) {
					ret = -EIO;
					goto cleanup;
				}
			} while (zs.avail_in || (flush == Z_FINISH && zret != Z_STREAM_END) ||
				 (flush == Z_NO_FLUSH && !zs.avail_out));
			in += step;
			left -= step;
		} while (left);
	}

	*out = buf;
	*outlen = zs.total_out;
	buf = NULL;
	ret = 0;
cleanup:
	if (zinit)
		deflateEnd(&zs);
	free(buf);
	return ret;
}

int sonde_pprof__encode(struct sonde_pprof *p, uint8_t **out, size_t *len)
{
	struct sonde_strbuf head = SONDE_STRBUF_INIT, mid = SONDE_STRBUF_INIT;
	struct sonde_strbuf tail = SONDE_STRBUF_INIT, vt = SONDE_STRBUF_INIT;
	struct chunk chunks[9];
	int ret;

	if (!out || !len)
		return -EINVAL;
	if (p->err)
		return p->err;

	put_value_type(&head, &vt, PROFILE_SAMPLE_TYPE, p->s_samples, p->s_count);
	put_value_type(&head, &vt, PROFILE_SAMPLE_TYPE, p->s_cpu, p->s_nanoseconds);

	put_int(&mid, PROFILE_TIME_NANOS, p->opts.time_ns);
	put_int(&mid, PROFILE_DURATION_NANOS, p->opts.duration_ns);
	put_value_type(&mid, &vt, PROFILE_PERIOD_TYPE, p->s_cpu, p->s_nanoseconds);
	put_int(&mid, PROFILE_PERIOD, p->opts.period_ns);

	put_int(&tail, PROFILE_DEFAULT_SAMPLE_TYPE, p->s_cpu);

	if (sonde_strbuf__error(&head) || sonde_strbuf__error(&mid) ||
	    sonde_strbuf__error(&tail) || sonde_strbuf__error(&vt)) {
		ret = -ENOMEM;
		goto cleanup;
	}

	/* Field order as in profile.proto: parsers accept any, people diffing dumps like this. */
	chunks[0] = (struct chunk){ head.data, head.len };
	chunks[1] = (struct chunk){ p->samples_pb.data, p->samples_pb.len };
	chunks[2] = (struct chunk){ p->mappings_pb.data, p->mappings_pb.len };
	chunks[3] = (struct chunk){ p->locations_pb.data, p->locations_pb.len };
	chunks[4] = (struct chunk){ p->functions_pb.data, p->functions_pb.len };
	chunks[5] = (struct chunk){ p->strings.data, p->strings.len };
	chunks[6] = (struct chunk){ mid.data, mid.len };
	chunks[7] = (struct chunk){ p->comments_pb.data, p->comments_pb.len };
	chunks[8] = (struct chunk){ tail.data, tail.len };
	ret = gzip_chunks(chunks, sizeof(chunks) / sizeof(chunks[0]), out, len);
cleanup:
	sonde_strbuf__release(&head);
	sonde_strbuf__release(&mid);
	sonde_strbuf__release(&tail);
	sonde_strbuf__release(&vt);
	return ret;
}
