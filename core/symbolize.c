// SPDX-License-Identifier: MIT
/*
 * Objects are what callers hold (one per dev+ino); images are what costs:
 * the mapped ELF, its debug file, symbols, DWARF and the result cache. An
 * image with a build-id is shared by every object whose file has that id.
 *
 * Opening a file only maps it and reads its headers (build-id, PT_LOAD);
 * symbols and DWARF are loaded on the first lookup, since most mapped
 * files of most processes never appear in a sample.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include <elfutils/libdw.h>
#include <dwarf.h>
#include <gelf.h>

#include "hash.h"
#include "elf_image.h"
#include "kallsyms.h"
#include "symbolize.h"

#define DEFAULT_DEBUG_DIR    "/usr/lib/debug"
#define DEFAULT_KALLSYMS     "/proc/kallsyms"
#define DEFAULT_KERNEL_NOTES "/sys/kernel/notes"

/* Inline depth we report; deeper chains keep their outermost frames. */
#define MAX_FRAMES 32
/* Per image; a full cache is emptied rather than tracked for age. */
#define CACHE_MIN_SLOTS 64
#define CACHE_MAX_SLOTS 8192
/* Candidate CU ranges checked below a lookup, for overlapping CUs. */
#define CU_SCAN 8

enum obj_kind {
	OBJ_FILE,
	OBJ_KERNEL,
	OBJ_VDSO,
	OBJ_UNKNOWN,
	OBJ_EXTERNAL, /* named by a callback: interpreter frames of a plugin */
};

struct cu_range {
	uint64_t lo;
	uint64_t hi;
	Dwarf_Die cudie;
};

struct cache_slot {
	uint64_t vaddr;
	struct sonde_symbol_frame *frames;
	uint8_t count;
	bool used;
};

struct image {
	struct image *next_hash;
	struct image *next_all;
	struct sonde_elf *elf;	 /* the mapped file */
	struct sonde_elf *debug; /* its separate debug file, or NULL */
	char *open_path;	 /* where the first object found it */
	char *name;
	bool loaded;
	struct sonde_elf_symtab symtab;
	Dwarf *dwarf;
	struct cu_range *cus;
	size_t ncus;
	struct cache_slot *cache;
	size_t cache_slots;
	size_t cache_used;
};

struct sonde_object {
	struct sonde_object *next_hash;
	struct sonde_object *next_all;
	struct sonde_symbolizer *sym;
	enum obj_kind kind;
	uint64_t dev;
	uint64_t ino;
	char *name;
	const char *build_id;
	struct image *image; /* NULL when the file is not readable ELF */
	sonde_external_symbolize_fn external; /* OBJ_EXTERNAL */
	void *external_ctx;
};

/* Strings handed out that nothing else owns (demangled names). */
struct pool_block {
	struct pool_block *next;
	size_t used;
	size_t size;
	char data[];
};

typedef char *(*cxa_demangle_fn)(const char *name, char *buf, size_t *len, int *status);

struct sonde_symbolizer {
	char *debug_dir;
	char *kallsyms_path;
	char *notes_path;

	struct sonde_object **objects; /* by dev+ino */
	size_t object_buckets;
	size_t object_count;
	struct sonde_object *all_objects;

	struct image **images; /* by build-id */
	size_t image_buckets;
	size_t image_count;
	struct image *all_images;

	struct sonde_object *kernel;
	struct sonde_object *vdso;
	struct sonde_object *unknown;
	struct sonde_kallsyms *kallsyms;
	bool kallsyms_tried;
	char kernel_build_id[2 * 64 + 1];

	const char **strings; /* interned: open addressing */
	size_t string_slots;
	size_t string_count;
	struct pool_block *pool;

	void *libstdcxx;
	cxa_demangle_fn demangle;
	bool demangle_tried;

	struct sonde_symbolizer_stats stats;
};

/* ---- strings ----------------------------------------------------------- */

static char *pool_copy(struct sonde_symbolizer *sym, const char *s)
{
	size_t len = strlen(s) + 1;
	struct pool_block *b = sym->pool;

	if (!b || b->size - b->used < len) {
		size_t size = len > 65536 ? len : 65536;

		b = malloc(sizeof(*b) + size);
		if (!b)
			return NULL;
		b->next = sym->pool;
		b->used = 0;
		b->size = size;
		sym->pool = b;
	}
	memcpy(b->data + b->used, s, len);
	b->used += len;
	return b->data + b->used - len;
}

static const char *intern(struct sonde_symbolizer *sym, const char *s)
{
	size_t i, mask;

	if (sym->string_count * 2 >= sym->string_slots) {
		size_t slots = sym->string_slots ? sym->string_slots * 2 : 256;
		const char **t = calloc(slots, sizeof(*t));

		if (!t)
			return NULL;
		for (i = 0; i < sym->string_slots; i++) {
			size_t j;

			if (!sym->strings[i])
				continue;
			for (j = sonde_hash_str(sym->strings[i]) & (slots - 1); t[j];
			     j = (j + 1) & (slots - 1))
				;
			t[j] = sym->strings[i];
		}
		free(sym->strings);
		sym->strings = t;
		sym->string_slots = slots;
	}
	mask = sym->string_slots - 1;
	for (i = sonde_hash_str(s) & mask; sym->strings[i]; i = (i + 1) & mask)
		if (strcmp(sym->strings[i], s) == 0)
			return sym->strings[i];
	sym->strings[i] = pool_copy(sym, s);
	if (!sym->strings[i])
		return NULL;
	sym->string_count++;
	return sym->strings[i];
}

/*
 * __cxa_demangle comes from libstdc++ when it is installed; loading it at
 * run time keeps C++ out of the build. Without it names stay mangled.
 */
static const char *demangle(struct sonde_symbolizer *sym, const char *name)
{
	const char *out;
	char *d;
	int status = -1;

	if (!name || name[0] != '_' || name[1] != 'Z')
		return name;
	if (!sym->demangle_tried) {
		sym->demangle_tried = true;
		sym->libstdcxx = dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL);
		if (sym->libstdcxx)
			sym->demangle = (cxa_demangle_fn)dlsym(sym->libstdcxx, "__cxa_demangle");
	}
	if (!sym->demangle)
		return name;
	d = sym->demangle(name, NULL, NULL, &status);
	if (!d || status != 0) {
		free(d);
		return name;
	}
	out = intern(sym, d);
	free(d);
	return out ? out : name;
}

/* ---- objects ----------------------------------------------------------- */

struct sonde_symbolizer *sonde_symbolizer__new(const struct sonde_symbolizer_opts *opts)
{
	struct sonde_symbolizer *sym;

	sym = calloc(1, sizeof(*sym));
	if (!sym)
		return NULL;
	sym->debug_dir = strdup(opts && opts->debug_dir ? opts->debug_dir : DEFAULT_DEBUG_DIR);
	sym->kallsyms_path = strdup(opts && opts->kallsyms ? opts->kallsyms : DEFAULT_KALLSYMS);
	sym->notes_path =
		strdup(opts && opts->kernel_notes ? opts->kernel_notes : DEFAULT_KERNEL_NOTES);
	if (!sym->debug_dir || !sym->kallsyms_path || !sym->notes_path) {
		sonde_symbolizer__free(sym);
		errno = ENOMEM;
		return NULL;
	}
	return sym;
}

static void image_free(struct image *img)
{
	size_t i;

	for (i = 0; i < img->cache_slots; i++)
		free(img->cache[i].frames);
	free(img->cache);
	free(img->cus);
	if (img->dwarf)
		dwarf_end(img->dwarf);
	sonde_elf_symtab__release(&img->symtab);
	sonde_elf__free(img->debug);
	sonde_elf__free(img->elf);
	free(img->open_path);
	free(img->name);
	free(img);
}

void sonde_symbolizer__free(struct sonde_symbolizer *sym)
{
	struct sonde_object *o, *onext;
	struct image *img, *inext;
	struct pool_block *b, *bnext;

	if (!sym)
		return;
	for (o = sym->all_objects; o; o = onext) {
		onext = o->next_all;
		free(o->name);
		free(o);
	}
	for (img = sym->all_images; img; img = inext) {
		inext = img->next_all;
		image_free(img);
	}
	for (b = sym->pool; b; b = bnext) {
		bnext = b->next;
		free(b);
	}
	sonde_kallsyms__free(sym->kallsyms);
	free(sym->objects);
	free(sym->images);
	free(sym->strings);
	if (sym->libstdcxx)
		dlclose(sym->libstdcxx);
	free(sym->debug_dir);
	free(sym->kallsyms_path);
	free(sym->notes_path);
	free(sym);
}

static struct sonde_object *object_new(struct sonde_symbolizer *sym, enum obj_kind kind,
				       const char *name)
{
	struct sonde_object *o;

	o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->name = strdup(name ? name : "");
	if (!o->name) {
		free(o);
		return NULL;
	}
	o->sym = sym;
	o->kind = kind;
	o->build_id = "";
	o->next_all = sym->all_objects;
	sym->all_objects = o;
	sym->stats.objects++;
	return o;
}

static uint64_t object_key(uint64_t dev, uint64_t ino)
{
	return sonde_hash_mix(sonde_hash_mix(0, dev), ino);
}

static int grow_objects(struct sonde_symbolizer *sym)
{
	size_t n = sym->object_buckets ? sym->object_buckets * 2 : 64, i;
	struct sonde_object **t, *o, *next;

	if (sym->object_count < sym->object_buckets)
		return 0;
	t = calloc(n, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (i = 0; i < sym->object_buckets; i++) {
		for (o = sym->objects[i]; o; o = next) {
			size_t b = object_key(o->dev, o->ino) & (n - 1);

			next = o->next_hash;
			o->next_hash = t[b];
			t[b] = o;
		}
	}
	free(sym->objects);
	sym->objects = t;
	sym->object_buckets = n;
	return 0;
}

static int grow_images(struct sonde_symbolizer *sym)
{
	size_t n = sym->image_buckets ? sym->image_buckets * 2 : 64, i;
	struct image **t, *img, *next;

	if (sym->image_count < sym->image_buckets)
		return 0;
	t = calloc(n, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (i = 0; i < sym->image_buckets; i++) {
		for (img = sym->images[i]; img; img = next) {
			size_t b = sonde_hash_str(sonde_elf__build_id(img->elf)) & (n - 1);

			next = img->next_hash;
			img->next_hash = t[b];
			t[b] = img;
		}
	}
	free(sym->images);
	sym->images = t;
	sym->image_buckets = n;
	return 0;
}

static struct image *image_find(struct sonde_symbolizer *sym, const char *build_id)
{
	struct image *img;

	if (!sym->image_buckets)
		return NULL;
	img = sym->images[sonde_hash_str(build_id) & (sym->image_buckets - 1)];
	for (; img; img = img->next_hash)
		if (strcmp(sonde_elf__build_id(img->elf), build_id) == 0)
			return img;
	return NULL;
}

/* Takes elf; on failure frees it. */
static struct image *image_new(struct sonde_symbolizer *sym, struct sonde_elf *elf,
			       const char *open_path, const char *name)
{
	const char *build_id = sonde_elf__build_id(elf);
	struct image *img;

	img = calloc(1, sizeof(*img));
	if (!img)
		goto fail;
	img->elf = elf;
	img->open_path = strdup(open_path ? open_path : "");
	img->name = strdup(name ? name : "");
	if (!img->open_path || !img->name)
		goto fail;
	if (*build_id) {
		size_t b;

		if (grow_images(sym))
			goto fail;
		b = sonde_hash_str(build_id) & (sym->image_buckets - 1);
		img->next_hash = sym->images[b];
		sym->images[b] = img;
		sym->image_count++;
	}
	img->next_all = sym->all_images;
	sym->all_images = img;
	return img;

fail:
	if (img) {
		img->elf = NULL;
		free(img->open_path);
		free(img->name);
		free(img);
	}
	sonde_elf__free(elf);
	return NULL;
}

struct sonde_object *sonde_symbolizer__object(struct sonde_symbolizer *sym, const char *open_path,
					      const char *name, uint64_t dev, uint64_t ino)
{
	struct sonde_elf *elf;
	struct sonde_object *o;
	size_t b;

	if (sym->object_buckets) {
		o = sym->objects[object_key(dev, ino) & (sym->object_buckets - 1)];
		for (; o; o = o->next_hash)
			if (o->dev == dev && o->ino == ino)
				return o;
	}
	if (grow_objects(sym)) {
		errno = ENOMEM;
		return NULL;
	}
	o = object_new(sym, OBJ_FILE, name ? name : open_path);
	if (!o) {
		errno = ENOMEM;
		return NULL;
	}
	o->dev = dev;
	o->ino = ino;
	b = object_key(dev, ino) & (sym->object_buckets - 1);
	o->next_hash = sym->objects[b];
	sym->objects[b] = o;
	sym->object_count++;

	elf = sonde_elf__open(open_path);
	if (!elf) {
		if (errno == ENOMEM)
			return NULL;
		/* Still an object: its frames keep name+offset. */
		sym->stats.elf_errors++;
		return o;
	}
	o->image = image_find(sym, sonde_elf__build_id(elf));
	if (o->image) {
		sonde_elf__free(elf);
	} else {
		o->image = image_new(sym, elf, open_path, name);
		if (!o->image) {
			errno = ENOMEM;
			return NULL;
		}
	}
	o->build_id = sonde_elf__build_id(o->image->elf);
	return o;
}

struct sonde_object *sonde_symbolizer__kernel(struct sonde_symbolizer *sym)
{
	struct sonde_object *o;

	if (sym->kernel)
		return sym->kernel;
	o = object_new(sym, OBJ_KERNEL, "[kernel.kallsyms]");
	if (!o) {
		errno = ENOMEM;
		return NULL;
	}
	if (sonde_kallsyms__build_id(sym->notes_path, sym->kernel_build_id,
				     sizeof(sym->kernel_build_id)))
		sym->kernel_build_id[0] = '\0';
	o->build_id = sym->kernel_build_id;
	sym->kernel = o;
	return o;
}

/* The vdso's extent from its own headers: the larger of segments and section table. */
static size_t vdso_size(const unsigned char *base)
{
	const GElf_Ehdr *eh = (const GElf_Ehdr *)base;
	size_t size, i;

	/* The vdso has our own class (ELF64 here), so its headers are GElf_*-shaped. */
	if (memcmp(base, ELFMAG, SELFMAG) != 0 || base[EI_CLASS] != ELFCLASS64)
		return 0;
	size = eh->e_shoff + (size_t)eh->e_shnum * eh->e_shentsize;
	for (i = 0; i < eh->e_phnum; i++) {
		const GElf_Phdr *ph = (const GElf_Phdr *)(base + eh->e_phoff + i * eh->e_phentsize);

		if (ph->p_offset + ph->p_filesz > size)
			size = ph->p_offset + ph->p_filesz;
	}
	return size;
}

struct sonde_object *sonde_symbolizer__vdso(struct sonde_symbolizer *sym)
{
	const unsigned char *base;
	struct sonde_elf *elf;
	struct sonde_object *o;
	size_t size;

	if (sym->vdso)
		return sym->vdso;
	o = object_new(sym, OBJ_VDSO, "[vdso]");
	if (!o) {
		errno = ENOMEM;
		return NULL;
	}
	sym->vdso = o;
	base = (const unsigned char *)getauxval(AT_SYSINFO_EHDR);
	size = base ? vdso_size(base) : 0;
	elf = size ? sonde_elf__open_memory(base, size) : NULL;
	if (!elf) {
		if (errno == ENOMEM)
			return NULL;
		sym->stats.elf_errors++;
		return o;
	}
	o->image = image_new(sym, elf, "[vdso]", "[vdso]");
	if (!o->image) {
		errno = ENOMEM;
		return NULL;
	}
	o->build_id = sonde_elf__build_id(elf);
	return o;
}

struct sonde_object *sonde_symbolizer__unknown(struct sonde_symbolizer *sym)
{
	if (!sym->unknown) {
		sym->unknown = object_new(sym, OBJ_UNKNOWN, "[unknown]");
		if (!sym->unknown)
			errno = ENOMEM;
	}
	return sym->unknown;
}

struct sonde_object *sonde_symbolizer__external(struct sonde_symbolizer *sym, const char *name,
					       sonde_external_symbolize_fn fn, void *ctx)
{
	struct sonde_object *o = object_new(sym, OBJ_EXTERNAL, name);

	if (!o) {
		errno = ENOMEM;
		return NULL;
	}
	o->external = fn;
	o->external_ctx = ctx;
	return o;
}

uint64_t sonde_object__to_vaddr(const struct sonde_object *obj, uint64_t map_start,
				uint64_t map_pgoff, uint64_t addr)
{
	uint64_t offset = addr - map_start + map_pgoff, vaddr;

	if (obj->kind == OBJ_KERNEL)
		return addr;
	if (obj->image && sonde_elf__offset_to_vaddr(obj->image->elf, offset, &vaddr) == 0)
		return vaddr;
	return offset;
}

const char *sonde_object__name(const struct sonde_object *obj)
{
	return obj->name;
}

const char *sonde_object__build_id(const struct sonde_object *obj)
{
	return obj->build_id;
}

bool sonde_object__is_kernel(const struct sonde_object *obj)
{
	return obj->kind == OBJ_KERNEL;
}

void sonde_symbolizer__stats(const struct sonde_symbolizer *sym, struct sonde_symbolizer_stats *out)
{
	*out = sym->stats;
}

/* ---- loading an image -------------------------------------------------- */

/* A debug file is only used when it really belongs to the image. */
static struct sonde_elf *try_debug(const struct image *img, const char *path, bool check_crc,
				   uint32_t crc)
{
	const char *want = sonde_elf__build_id(img->elf);
	struct sonde_elf *d;

	if (strcmp(path, img->open_path) == 0)
		return NULL;
	d = sonde_elf__open(path);
	if (!d)
		return NULL;
	if (*want && *sonde_elf__build_id(d)) {
		if (strcmp(want, sonde_elf__build_id(d)) == 0)
			return d;
	} else if (!check_crc || sonde_elf__crc32(d) == crc) {
		return d;
	}
	sonde_elf__free(d);
	return NULL;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return strdup(".");
	return strndup(path, (size_t)(slash - path));
}

static struct sonde_elf *find_debug(struct sonde_symbolizer *sym, const struct image *img)
{
	const char *id = sonde_elf__build_id(img->elf), *link;
	struct sonde_elf *d = NULL;
	char *dir = NULL, *name_dir = NULL, *path = NULL;
	uint32_t crc;

	if (strlen(id) > 2) {
		if (asprintf(&path, "%s/.build-id/%.2s/%s.debug", sym->debug_dir, id, id + 2) < 0)
			return NULL;
		d = try_debug(img, path, false, 0);
		free(path);
		path = NULL;
		if (d)
			return d;
	}
	link = sonde_elf__debuglink(img->elf, &crc);
	if (!link || strchr(link, '/'))
		return NULL;
	dir = dir_of(img->open_path);
	name_dir = img->name[0] == '/' ? dir_of(img->name) : NULL;
	if (!dir)
		goto cleanup;
	/* gdb's order: next to the file, its .debug/, then under the debug dir. */
	if (asprintf(&path, "%s/%s", dir, link) >= 0) {
		d = try_debug(img, path, true, crc);
		free(path);
		if (d)
			goto cleanup;
	}
	if (asprintf(&path, "%s/.debug/%s", dir, link) >= 0) {
		d = try_debug(img, path, true, crc);
		free(path);
		if (d)
			goto cleanup;
	}
	if (name_dir && asprintf(&path, "%s%s/%s", sym->debug_dir, name_dir, link) >= 0) {
		d = try_debug(img, path, true, crc);
		free(path);
	}

cleanup:
	free(dir);
	free(name_dir);
	return d;
}

static int cmp_cu(const void *a, const void *b)
{
	const struct cu_range *x = a, *y = b;

	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return 0;
}

/* Our own CU index: .debug_aranges is optional and often absent (clang). */
static int index_cus(struct image *img)
{
	Dwarf_CU *cu = NULL;
	Dwarf_Die cudie, subdie;
	Dwarf_Half version;
	uint8_t unit_type;
	size_t cap = 0;

	while (dwarf_get_units(img->dwarf, cu, &cu, &version, &unit_type, &cudie, &subdie) == 0) {
		Dwarf_Addr base, lo, hi;
		ptrdiff_t off = 0;

		while ((off = dwarf_ranges(&cudie, off, &base, &lo, &hi)) > 0) {
			/* lo 0: code the linker discarded. */
			if (lo == 0 || hi <= lo)
				continue;
			if (img->ncus == cap) {
				size_t n = cap ? cap * 2 : 64;
				void *p = realloc(img->cus, n * sizeof(*img->cus));

				if (!p)
					return -ENOMEM;
				img->cus = p;
				cap = n;
			}
			img->cus[img->ncus++] = (struct cu_range){lo, hi, cudie};
		}
	}
	if (img->ncus)
		qsort(img->cus, img->ncus, sizeof(*img->cus), cmp_cu);
	return 0;
}

static int image_load(struct sonde_symbolizer *sym, struct image *img)
{
	bool has_symtab, has_dwarf;
	int err;

	img->loaded = true;
	has_symtab = sonde_elf__has_section(img->elf, ".symtab");
	has_dwarf = sonde_elf__has_section(img->elf, ".debug_info");
	if (!has_symtab || !has_dwarf)
		img->debug = find_debug(sym, img);

	err = sonde_elf_symtab__add(&img->symtab, img->elf, true);
	if (!err && !has_symtab && img->debug)
		err = sonde_elf_symtab__add(&img->symtab, img->debug, false);
	if (err)
		return err;
	sonde_elf_symtab__finish(&img->symtab);

	if (img->debug && sonde_elf__has_section(img->debug, ".debug_info"))
		img->dwarf = dwarf_begin_elf(sonde_elf__handle(img->debug), DWARF_C_READ, NULL);
	else if (has_dwarf)
		img->dwarf = dwarf_begin_elf(sonde_elf__handle(img->elf), DWARF_C_READ, NULL);
	if (img->dwarf)
		return index_cus(img);
	return 0;
}

/* ---- DWARF ------------------------------------------------------------- */

static const struct cu_range *find_cu(const struct image *img, uint64_t pc)
{
	size_t lo = 0, hi = img->ncus, i;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (img->cus[mid].lo <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (i = lo; i > 0 && lo - i < CU_SCAN; i--)
		if (pc < img->cus[i - 1].hi)
			return &img->cus[i - 1];
	return NULL;
}

/*
 * The chain of subprogram and inlined-subroutine DIEs containing pc, outermost
 * first. Walks only into DIEs that can hold code, so it costs one pass over
 * a CU's top-level DIEs.
 */
static int scope_chain(Dwarf_Die *parent, uint64_t pc, Dwarf_Die *chain, int *n, int depth)
{
	Dwarf_Die child;

	if (depth > 64 || dwarf_child(parent, &child) != 0)
		return 0;
	do {
		switch (dwarf_tag(&child)) {
		case DW_TAG_subprogram:
		case DW_TAG_inlined_subroutine:
			if (dwarf_haspc(&child, pc) != 1)
				break;
			/* Past the limit the outermost frames stay: the real function is last. */
			if (*n == MAX_FRAMES)
				return 1;
			chain[(*n)++] = child;
			scope_chain(&child, pc, chain, n, depth + 1);
			return 1;
		case DW_TAG_lexical_block:
		case DW_TAG_try_block:
		case DW_TAG_catch_block:
			if (dwarf_haspc(&child, pc) != 1)
				break;
			scope_chain(&child, pc, chain, n, depth + 1);
			return 1;
		case DW_TAG_namespace:
		case DW_TAG_module:
		case DW_TAG_class_type:
		case DW_TAG_structure_type:
		case DW_TAG_union_type:
			if (scope_chain(&child, pc, chain, n, depth + 1))
				return 1;
			break;
		default:
			break;
		}
	} while (dwarf_siblingof(&child, &child) == 0);
	return 0;
}

static const char *die_name(struct sonde_symbolizer *sym, Dwarf_Die *die)
{
	Dwarf_Attribute attr;
	const char *s = NULL, *d;

	if (dwarf_attr_integrate(die, DW_AT_linkage_name, &attr) ||
	    dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr))
		s = dwarf_formstring(&attr);
	if (s) {
		d = demangle(sym, s);
		if (d != s)
			return d;
	}
	/* Without a demangler the plain name reads better than the mangled one. */
	if (dwarf_attr_integrate(die, DW_AT_name, &attr)) {
		d = dwarf_formstring(&attr);
		if (d)
			return d;
	}
	return s;
}

static void call_site(Dwarf_Die *cudie, Dwarf_Die *inlined, struct sonde_symbol_frame *f)
{
	Dwarf_Attribute attr;
	Dwarf_Word file = 0, line = 0;
	Dwarf_Files *files;
	size_t nfiles;

	if (dwarf_attr(inlined, DW_AT_call_line, &attr))
		dwarf_formudata(&attr, &line);
	f->line = (uint32_t)line;
	if (dwarf_attr(inlined, DW_AT_call_file, &attr) && dwarf_formudata(&attr, &file) == 0 &&
	    dwarf_getsrcfiles(cudie, &files, &nfiles) == 0 && file < nfiles)
		f->file = dwarf_filesrc(files, file, NULL, NULL);
}

/* Frames innermost first; 0 when DWARF does not cover pc. */
static int dwarf_frames(struct sonde_symbolizer *sym, struct image *img, uint64_t pc,
			const char *fallback, struct sonde_symbol_frame *out)
{
	Dwarf_Die chain[MAX_FRAMES], cudie;
	const struct cu_range *cu;
	Dwarf_Line *line;
	int n = 0, i, lineno;

	if (!img->dwarf)
		return 0;
	cu = find_cu(img, pc);
	if (!cu)
		return 0;
	cudie = cu->cudie;
	scope_chain(&cudie, pc, chain, &n, 0);

	for (i = 0; i < n; i++) {
		struct sonde_symbol_frame *f = &out[i];

		f->function = die_name(sym, &chain[n - 1 - i]);
		if (!f->function)
			f->function = i == n - 1 && fallback ? fallback : "??";
		f->file = NULL;
		f->line = 0;
		/* A caller's position is the call site of the callee it inlined. */
		if (i > 0)
			call_site(&cudie, &chain[n - i], f);
	}
	if (!n) {
		/* Code with lines but no subprogram DIE (assembly). */
		if (!fallback)
			return 0;
		out[0] = (struct sonde_symbol_frame){.function = fallback};
		n = 1;
	}
	line = dwarf_getsrc_die(&cudie, pc);
	if (line && dwarf_lineno(line, &lineno) == 0) {
		out[0].file = dwarf_linesrc(line, NULL, NULL);
		out[0].line = lineno > 0 ? (uint32_t)lineno : 0;
	}
	return n;
}

/* ---- lookups ----------------------------------------------------------- */

static int resolve(struct sonde_symbolizer *sym, struct image *img, uint64_t vaddr,
		   struct sonde_symbol_frame *out)
{
	const struct sonde_elf_sym *s;
	const char *name = NULL;
	int n;

	if (!img->loaded && image_load(sym, img))
		return -ENOMEM;
	s = sonde_elf_symtab__find(&img->symtab, vaddr);
	if (s)
		name = demangle(sym, s->name);
	n = dwarf_frames(sym, img, vaddr, name, out);
	if (n)
		return n;
	if (!name)
		return 0;
	out[0] = (struct sonde_symbol_frame){.function = name};
	return 1;
}

static struct cache_slot *cache_slot(struct image *img, uint64_t vaddr, bool *hit)
{
	size_t mask, i;

	*hit = false;
	if (img->cache_used * 2 >= img->cache_slots) {
		size_t slots = img->cache_slots ? img->cache_slots * 2 : CACHE_MIN_SLOTS;
		struct cache_slot *t;

		if (slots > CACHE_MAX_SLOTS) {
			/* Full: start over, the hot addresses come back at once. */
			for (i = 0; i < img->cache_slots; i++)
				free(img->cache[i].frames);
			memset(img->cache, 0, img->cache_slots * sizeof(*img->cache));
			img->cache_used = 0;
		} else {
			t = calloc(slots, sizeof(*t));
			if (!t)
				return NULL;
			for (i = 0; i < img->cache_slots; i++) {
				size_t j;

				if (!img->cache[i].used)
					continue;
				j = sonde_hash_mix(0, img->cache[i].vaddr) & (slots - 1);
				while (t[j].used)
					j = (j + 1) & (slots - 1);
				t[j] = img->cache[i];
			}
			free(img->cache);
			img->cache = t;
			img->cache_slots = slots;
		}
	}
	mask = img->cache_slots - 1;
	for (i = sonde_hash_mix(0, vaddr) & mask; img->cache[i].used; i = (i + 1) & mask) {
		if (img->cache[i].vaddr == vaddr) {
			*hit = true;
			break;
		}
	}
	return &img->cache[i];
}

static int copy_out(const struct sonde_symbol_frame *frames, int n, struct sonde_symbol_frame *out,
		    int max)
{
	/* When max cuts the chain, the outermost frames stay: the real function is last. */
	int skip = n > max ? n - max : 0;

	if (n - skip > 0)
		memcpy(out, frames + skip, (size_t)(n - skip) * sizeof(*out));
	return n - skip;
}

static int symbolize_kernel(struct sonde_symbolizer *sym, uint64_t addr,
			    struct sonde_symbol_frame *out)
{
	const struct sonde_ksym *k;

	if (!sym->kallsyms_tried) {
		sym->kallsyms_tried = true;
		sym->kallsyms = sonde_kallsyms__load(sym->kallsyms_path);
	}
	if (!sym->kallsyms)
		return 0;
	k = sonde_kallsyms__find(sym->kallsyms, addr);
	if (!k)
		return 0;
	out[0] = (struct sonde_symbol_frame){.function = k->name, .file = k->module};
	return 1;
}

int sonde_object__symbolize(struct sonde_object *obj, uint64_t vaddr,
			    struct sonde_symbol_frame *frames, int max)
{
	struct sonde_symbolizer *sym = obj->sym;
	struct sonde_symbol_frame tmp[MAX_FRAMES];
	struct cache_slot *slot;
	bool hit;
	int n = 0;

	sym->stats.lookups++;
	if (max <= 0)
		return 0;
	if (obj->kind == OBJ_KERNEL) {
		n = symbolize_kernel(sym, vaddr, tmp);
		goto out;
	}
	if (obj->kind == OBJ_EXTERNAL) {
		n = obj->external(obj->external_ctx, vaddr, tmp, MAX_FRAMES);
		if (n < 0)
			n = 0;
		goto out;
	}
	if (!obj->image)
		goto out;
	slot = cache_slot(obj->image, vaddr, &hit);
	if (slot && hit) {
		n = slot->count;
		if (n)
			memcpy(tmp, slot->frames, (size_t)n * sizeof(*tmp));
		goto out;
	}
	n = resolve(sym, obj->image, vaddr, tmp);
	if (n < 0) {
		n = 0;
		goto out;
	}
	if (slot) {
		slot->frames = n ? malloc((size_t)n * sizeof(*tmp)) : NULL;
		if (n && !slot->frames)
			goto out;
		if (n)
			memcpy(slot->frames, tmp, (size_t)n * sizeof(*tmp));
		slot->vaddr = vaddr;
		slot->count = (uint8_t)n;
		slot->used = true;
		obj->image->cache_used++;
	}

out:
	if (!n)
		sym->stats.misses++;
	return copy_out(tmp, n, frames, max);
}
