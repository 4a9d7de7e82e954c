// SPDX-License-Identifier: MIT
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <unistd.h>

#include "symbolize.h"

/* The fixture library and its objcopy'd variants sit next to this test. */
static char fixdir[PATH_MAX];
static char tmpdir[PATH_MAX];
static void *symfix;

static void *(*symfix_leaf)(void);
static void *(*symfix_caller)(int);
static void *(*symfix_local_addr)(void);
static void *symfix_mangled;
static unsigned leaf_first, leaf_last, inline_line, call_line;

struct mapping {
	uint64_t start;
	uint64_t pgoff;
	char path[PATH_MAX];
};

static void join(char *out, const char *dir, const char *name)
{
	int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);

	assert_true(n > 0 && n < PATH_MAX);
}

static void fixture_path(char *out, const char *name)
{
	join(out, fixdir, name);
}

static void tmp_path(char *out, const char *name)
{
	join(out, tmpdir, name);
}

static void mkdirs(const char *path)
{
	char buf[PATH_MAX], *p;

	snprintf(buf, sizeof(buf), "%s", path);
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(buf, 0755);
		*p = '/';
	}
	mkdir(buf, 0755);
}

static void copy_file(const char *from, const char *to)
{
	char buf[65536];
	ssize_t n;
	int in, out;

	in = open(from, O_RDONLY);
	assert_true(in >= 0);
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(out >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		assert_int_equal(write(out, buf, (size_t)n), n);
	close(in);
	close(out);
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static struct sonde_object *object_at(struct sonde_symbolizer *sym, const char *path,
				      const char *name)
{
	struct sonde_object *obj;
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	obj = sonde_symbolizer__object(sym, path, name ? name : path, st.st_dev, st.st_ino);
	assert_non_null(obj);
	return obj;
}

/* The mapping of the test's own process that holds addr, from /proc/self/maps. */
static void find_mapping(const void *addr, struct mapping *m)
{
	unsigned long long start, end, pgoff;
	char line[PATH_MAX + 128];
	bool found = false;
	FILE *f;

	f = fopen("/proc/self/maps", "r");
	assert_non_null(f);
	while (!found && fgets(line, sizeof(line), f)) {
		int pos = 0;

		if (sscanf(line, "%llx-%llx %*s %llx %*s %*s %n", &start, &end, &pgoff, &pos) < 3)
			continue;
		if ((uintptr_t)addr < start || (uintptr_t)addr >= end)
			continue;
		m->start = start;
		m->pgoff = pgoff;
		snprintf(m->path, sizeof(m->path), "%s", line + pos);
		m->path[strcspn(m->path, "\n")] = '\0';
		found = true;
	}
	fclose(f);
	assert_true(found);
}

/* st_value of the symbol at addr, as the dynamic linker sees it. */
static uint64_t st_value_of(const void *addr)
{
	const ElfW(Sym) *esym = NULL;
	Dl_info info;

	assert_int_not_equal(dladdr1(addr, &info, (void **)&esym, RTLD_DL_SYMENT), 0);
	assert_non_null(esym);
	assert_ptr_equal(info.dli_saddr, addr);
	return esym->st_value;
}

static uint64_t st_size_of(const void *addr)
{
	const ElfW(Sym) *esym = NULL;
	Dl_info info;

	assert_int_not_equal(dladdr1(addr, &info, (void **)&esym, RTLD_DL_SYMENT), 0);
	return esym->st_size;
}

/* The vaddr of a fixture code address: load-bias arithmetic, independent of the code under test. */
static uint64_t fixture_vaddr(const void *addr)
{
	Dl_info info;

	assert_int_not_equal(dladdr(addr, &info), 0);
	return (uintptr_t)addr - (uintptr_t)info.dli_fbase;
}

static void assert_basename(const char *path, const char *want)
{
	const char *slash;

	assert_non_null(path);
	slash = strrchr(path, '/');
	assert_string_equal(slash ? slash + 1 : path, want);
}

static unsigned read_uint(const char *name)
{
	const unsigned *p = dlsym(symfix, name);

	assert_non_null(p);
	return *p;
}

static int setup(void **state)
{
	char exe[PATH_MAX], lib[PATH_MAX];
	ssize_t n;

	(void)state;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return -1;
	exe[n] = '\0';
	snprintf(fixdir, sizeof(fixdir), "%s", dirname(exe));
	fixture_path(lib, "libsymfix.so");
	symfix = dlopen(lib, RTLD_NOW);
	if (!symfix) {
		fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
		return -1;
	}
	*(void **)&symfix_leaf = dlsym(symfix, "symfix_leaf");
	*(void **)&symfix_caller = dlsym(symfix, "symfix_caller");
	*(void **)&symfix_local_addr = dlsym(symfix, "symfix_local_addr");
	symfix_mangled = dlsym(symfix, "_ZN6symfix7mangledEi");
	if (!symfix_leaf || !symfix_caller || !symfix_local_addr || !symfix_mangled)
		return -1;
	leaf_first = read_uint("symfix_leaf_first");
	leaf_last = read_uint("symfix_leaf_last");
	/* Running the caller records the two lines of the inlined call. */
	symfix_caller(1);
	inline_line = read_uint("symfix_inline_line");
	call_line = read_uint("symfix_call_line");

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/sonde-test-symbolize-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	(void)state;
	if (tmpdir[0])
		nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (symfix)
		dlclose(symfix);
	return 0;
}

static void test_to_vaddr_live(void **state)
{
	const void *fns[] = {(void *)symfix_leaf, (void *)symfix_caller, symfix_mangled};
	struct sonde_symbolizer *sym;
	size_t i;

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	for (i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		struct sonde_object *obj;
		struct mapping m;

		find_mapping(fns[i], &m);
		obj = object_at(sym, m.path, NULL);
		assert_int_equal(sonde_object__to_vaddr(obj, m.start, m.pgoff, (uintptr_t)fns[i]),
				 st_value_of(fns[i]));
	}
	sonde_symbolizer__free(sym);
}

struct phdr_walk {
	struct sonde_object *obj;
	int checked;
	int nonzero_pgoff;
};

static int check_loads(struct dl_phdr_info *info, size_t size, void *data)
{
	struct phdr_walk *w = data;
	int i;

	(void)size;
	if (!strstr(info->dlpi_name, "libsymfix.so"))
		return 0;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uint64_t pgoff, start = 0x7f1234500000ULL, off, addr;

		if (ph->p_type != PT_LOAD || !ph->p_filesz)
			continue;
		/* A mapping of this segment somewhere else, as mmap would page-align it. */
		pgoff = ph->p_offset & ~0xfffULL;
		off = ph->p_filesz / 2;
		addr = start + (ph->p_offset - pgoff) + off;
		assert_int_equal(sonde_object__to_vaddr(w->obj, start, pgoff, addr),
				 ph->p_vaddr + off);
		w->checked++;
		w->nonzero_pgoff += pgoff != 0;
	}
	return 1;
}

static void test_to_vaddr_synthetic(void **state)
{
	struct sonde_symbolizer *sym;
	struct phdr_walk w = {0};
	char lib[PATH_MAX];

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	fixture_path(lib, "libsymfix.so");
	w.obj = object_at(sym, lib, NULL);
	assert_int_equal(dl_iterate_phdr(check_loads, &w), 1);
	assert_true(w.checked >= 2);
	assert_true(w.nonzero_pgoff >= 1);
	sonde_symbolizer__free(sym);
}

static void test_names_function_with_line(void **state)
{
	struct sonde_symbol_frame f[8];
	struct sonde_symbolizer *sym;
	struct sonde_object *obj;
	char lib[PATH_MAX];
	uint64_t vaddr;

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	fixture_path(lib, "libsymfix.so");
	obj = object_at(sym, lib, "/opt/display/libsymfix.so");
	assert_string_equal(sonde_object__name(obj), "/opt/display/libsymfix.so");
	assert_int_equal(strlen(sonde_object__build_id(obj)), 40);
	assert_false(sonde_object__is_kernel(obj));

	vaddr = fixture_vaddr((void *)symfix_leaf);
	assert_int_equal(sonde_object__symbolize(obj, vaddr, f, 8), 1);
	assert_string_equal(f[0].function, "symfix_leaf");
	assert_basename(f[0].file, "symfix.c");
	assert_in_range(f[0].line, leaf_first, leaf_last);

	/* Inside the body, not only at the entry. */
	assert_true(st_size_of((void *)symfix_leaf) > 4);
	assert_int_equal(
		sonde_object__symbolize(obj, vaddr + st_size_of((void *)symfix_leaf) - 1, f, 8), 1);
	assert_string_equal(f[0].function, "symfix_leaf");
	assert_in_range(f[0].line, leaf_first, leaf_last);

	/* A static function, from .symtab and DWARF. */
	vaddr = fixture_vaddr(symfix_local_addr());
	assert_int_equal(sonde_object__symbolize(obj, vaddr, f, 8), 1);
	assert_string_equal(f[0].function, "symfix_local");
	sonde_symbolizer__free(sym);
}

static void check_inlined(struct sonde_object *obj)
{
	struct sonde_symbol_frame f[8], again[8];
	uint64_t vaddr;

	/* The call instruction inside the inlined body: return address - 1. */
	vaddr = fixture_vaddr((char *)symfix_caller(2) - 1);
	assert_int_equal(sonde_object__symbolize(obj, vaddr, f, 8), 2);
	assert_string_equal(f[0].function, "symfix_inlined");
	assert_basename(f[0].file, "symfix.c");
	assert_int_equal(f[0].line, inline_line);
	assert_string_equal(f[1].function, "symfix_caller");
	assert_basename(f[1].file, "symfix.c");
	assert_int_equal(f[1].line, call_line);

	/* Cached: the same answer, the same strings. */
	assert_int_equal(sonde_object__symbolize(obj, vaddr, again, 8), 2);
	assert_ptr_equal(again[0].function, f[0].function);
	assert_ptr_equal(again[1].file, f[1].file);
	assert_int_equal(again[1].line, f[1].line);

	/* Room for one: the real function, not the inlined one. */
	assert_int_equal(sonde_object__symbolize(obj, vaddr, again, 1), 1);
	assert_string_equal(again[0].function, "symfix_caller");
}

static void test_inlined_frames(void **state)
{
	struct sonde_symbolizer_stats st;
	struct sonde_symbolizer *sym;
	char lib[PATH_MAX];

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	fixture_path(lib, "libsymfix.so");
	check_inlined(object_at(sym, lib, NULL));
	sonde_symbolizer__stats(sym, &st);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.lookups, 3);
	assert_int_equal(st.misses, 0);
	sonde_symbolizer__free(sym);
}

/* Far more distinct addresses than one image caches: answers stay right. */
static void test_cache_bounded(void **state)
{
	struct sonde_symbol_frame f[8];
	struct sonde_symbolizer *sym;
	struct sonde_object *obj;
	char lib[PATH_MAX];
	uint64_t leaf, i;

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	fixture_path(lib, "libsymfix.so");
	obj = object_at(sym, lib, NULL);
	leaf = fixture_vaddr((void *)symfix_leaf);
	for (i = 0; i < 20000; i++) {
		assert_int_equal(sonde_object__symbolize(obj, leaf, f, 8), 1);
		assert_string_equal(f[0].function, "symfix_leaf");
		sonde_object__symbolize(obj, 0x100000000ULL + i, f, 8);
	}
	check_inlined(obj);
	sonde_symbolizer__free(sym);
}

static bool can_demangle(void)
{
	void *h = dlopen("libstdc++.so.6", RTLD_LAZY | RTLD_LOCAL);

	if (!h)
		return false;
	dlclose(h);
	return true;
}

static void test_stripped_uses_dynsym(void **state)
{
	struct sonde_symbol_frame f[8];
	struct sonde_symbolizer_opts opts = {.debug_dir = tmpdir};
	struct sonde_symbolizer *sym;
	struct sonde_object *obj, *full;
	char path[PATH_MAX];

	(void)state;
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	fixture_path(path, "libsymfix-stripped.so");
	obj = object_at(sym, path, NULL);
	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr((void *)symfix_caller), f, 8),
			 1);
	assert_string_equal(f[0].function, "symfix_caller");
	assert_null(f[0].file);
	assert_int_equal(f[0].line, 0);
	/* Not exported, so gone with .symtab. */
	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr(symfix_local_addr()), f, 8), 0);

	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr(symfix_mangled), f, 8), 1);
	assert_string_equal(f[0].function,
			    can_demangle() ? "symfix::mangled(int)" : "_ZN6symfix7mangledEi");
	sonde_symbolizer__free(sym);

	/* The strip kept the build-id note. */
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	full = object_at(sym, path, NULL);
	fixture_path(path, "libsymfix.so");
	assert_string_equal(sonde_object__build_id(full),
			    sonde_object__build_id(object_at(sym, path, NULL)));
	sonde_symbolizer__free(sym);
}

static void check_restored(struct sonde_object *obj)
{
	struct sonde_symbol_frame f[8];

	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr((void *)symfix_leaf), f, 8), 1);
	assert_string_equal(f[0].function, "symfix_leaf");
	assert_basename(f[0].file, "symfix.c");
	assert_in_range(f[0].line, leaf_first, leaf_last);
	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr(symfix_local_addr()), f, 8), 1);
	assert_string_equal(f[0].function, "symfix_local");
	check_inlined(obj);
}

static void test_build_id_debug_dir(void **state)
{
	struct sonde_symbolizer_opts opts = {0};
	char dir[PATH_MAX], path[PATH_MAX], debug[PATH_MAX], sub[128];
	struct sonde_symbolizer *sym;
	struct sonde_object *obj;
	const char *id;

	(void)state;
	tmp_path(dir, "bid");
	mkdirs(dir);
	opts.debug_dir = dir;
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	fixture_path(path, "libsymfix-stripped.so");
	obj = object_at(sym, path, NULL);
	id = sonde_object__build_id(obj);
	assert_int_equal(strlen(id), 40);

	snprintf(sub, sizeof(sub), ".build-id/%.2s", id);
	join(debug, dir, sub);
	mkdirs(debug);
	snprintf(sub, sizeof(sub), ".build-id/%.2s/%s.debug", id, id + 2);
	join(debug, dir, sub);
	fixture_path(path, "libsymfix.debug");
	copy_file(path, debug);

	/* Loading is lazy: the debug file placed after the object is still found. */
	check_restored(obj);
	sonde_symbolizer__free(sym);
}

static void test_debuglink(void **state)
{
	struct sonde_symbolizer_opts opts = {0};
	char empty[PATH_MAX], path[PATH_MAX], dbg[PATH_MAX], dst[PATH_MAX], from[PATH_MAX];
	struct sonde_symbol_frame f[8];
	struct sonde_symbolizer *sym;
	struct sonde_object *obj;

	(void)state;
	/* Next to the file (the build dir holds libsymfix.debug). */
	tmp_path(empty, "empty");
	mkdirs(empty);
	opts.debug_dir = empty;
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	fixture_path(path, "libsymfix-linked.so");
	check_restored(object_at(sym, path, NULL));
	sonde_symbolizer__free(sym);

	/* Under <debug_dir>/<dirname of the name the process sees>. */
	tmp_path(path, "alone");
	mkdirs(path);
	tmp_path(path, "alone/libsymfix-linked.so");
	fixture_path(from, "libsymfix-linked.so");
	copy_file(from, path);
	tmp_path(dbg, "dbg");
	join(dst, dbg, "usr/lib/sonde-test");
	mkdirs(dst);
	join(dst, dbg, "usr/lib/sonde-test/libsymfix.debug");
	opts.debug_dir = dbg;

	/* A debug file of another build is refused. */
	fixture_path(from, "test-symbolize");
	copy_file(from, dst);
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	obj = object_at(sym, path, "/usr/lib/sonde-test/libsymfix-linked.so");
	assert_int_equal(sonde_object__symbolize(obj, fixture_vaddr((void *)symfix_leaf), f, 8), 1);
	assert_string_equal(f[0].function, "symfix_leaf");
	assert_null(f[0].file);
	sonde_symbolizer__free(sym);

	fixture_path(from, "libsymfix.debug");
	copy_file(from, dst);
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	check_restored(object_at(sym, path, "/usr/lib/sonde-test/libsymfix-linked.so"));
	sonde_symbolizer__free(sym);
}

static void test_bad_files_and_identity(void **state)
{
	struct sonde_symbol_frame f[4];
	struct sonde_symbolizer_stats st;
	struct sonde_symbolizer *sym;
	struct sonde_object *text, *missing;
	char path[PATH_MAX];

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	tmp_path(path, "not-elf.so");
	write_file(path, "just some text\n", 15);
	text = object_at(sym, path, "/usr/lib/not-elf.so");
	assert_string_equal(sonde_object__name(text), "/usr/lib/not-elf.so");
	assert_string_equal(sonde_object__build_id(text), "");
	assert_int_equal(sonde_object__symbolize(text, 0x10, f, 4), 0);
	/* Without headers the file offset is the address. */
	assert_int_equal(sonde_object__to_vaddr(text, 0x400000, 0x2000, 0x400123), 0x2123);

	missing = sonde_symbolizer__object(sym, "/nonexistent/sonde/lib.so", "/lib.so", 1, 2);
	assert_non_null(missing);
	assert_ptr_not_equal(missing, text);
	assert_string_equal(sonde_object__build_id(missing), "");
	assert_int_equal(sonde_object__symbolize(missing, 0x1000, f, 4), 0);

	/* Same dev+ino: the same object, nothing opened (the path does not matter). */
	assert_ptr_equal(sonde_symbolizer__object(sym, "/elsewhere", "/x", 1, 2), missing);
	sonde_symbolizer__stats(sym, &st);
	assert_int_equal(st.objects, 2);
	assert_int_equal(st.elf_errors, 2);
	assert_int_equal(st.lookups, 2);
	assert_int_equal(st.misses, 2);
	sonde_symbolizer__free(sym);
}

static void test_same_build_id_shares(void **state)
{
	struct sonde_symbol_frame a[8], b[8];
	struct sonde_symbolizer *sym;
	struct sonde_object *orig, *copy;
	char path[PATH_MAX], copy_path[PATH_MAX];
	uint64_t vaddr;
	int n, i;

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	fixture_path(path, "libsymfix.so");
	tmp_path(copy_path, "libsymfix-copy.so");
	copy_file(path, copy_path);
	orig = object_at(sym, path, NULL);
	copy = object_at(sym, copy_path, NULL);
	assert_ptr_not_equal(orig, copy);
	assert_string_equal(sonde_object__build_id(orig), sonde_object__build_id(copy));

	vaddr = fixture_vaddr((char *)symfix_caller(3) - 1);
	n = sonde_object__symbolize(orig, vaddr, a, 8);
	assert_int_equal(n, 2);
	assert_int_equal(sonde_object__symbolize(copy, vaddr, b, 8), n);
	/* One table: the very same strings, not equal copies. */
	for (i = 0; i < n; i++) {
		assert_ptr_equal(a[i].function, b[i].function);
		assert_ptr_equal(a[i].file, b[i].file);
		assert_int_equal(a[i].line, b[i].line);
	}
	sonde_symbolizer__free(sym);
}

static void test_kallsyms(void **state)
{
	static const char kallsyms[] = "ffffffff81000000 T _stext\n"
				       "ffffffff81000100 t do_one\n"
				       "ffffffff81000200 D some_data\n"
				       "ffffffff81000300 W do_two\n"
				       "ffffffffc0001000 t mod_fn\t[mymod]\n"
				       "ffffffffc0001800 T mod_other\t[mymod]\n";
	/* One NT_GNU_BUILD_ID note: namesz 4, descsz 4, type 3, "GNU\0", id. */
	static const unsigned char notes[] = {4, 0, 0,	 0,   4,   0, 0,    0,	  3,	0,
					      0, 0, 'G', 'N', 'U', 0, 0xde, 0xad, 0xbe, 0xef};
	struct sonde_symbolizer_opts opts = {0};
	char ks_path[PATH_MAX], notes_path[PATH_MAX];
	struct sonde_symbol_frame f[4];
	struct sonde_symbolizer *sym;
	struct sonde_object *k;

	(void)state;
	tmp_path(ks_path, "kallsyms");
	tmp_path(notes_path, "notes");
	write_file(ks_path, kallsyms, sizeof(kallsyms) - 1);
	write_file(notes_path, notes, sizeof(notes));
	opts.kallsyms = ks_path;
	opts.kernel_notes = notes_path;
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	k = sonde_symbolizer__kernel(sym);
	assert_non_null(k);
	assert_ptr_equal(sonde_symbolizer__kernel(sym), k);
	assert_string_equal(sonde_object__name(k), "[kernel.kallsyms]");
	assert_true(sonde_object__is_kernel(k));
	assert_string_equal(sonde_object__build_id(k), "deadbeef");
	assert_int_equal(sonde_object__to_vaddr(k, 0, 0, 0xffffffff81000150ULL),
			 0xffffffff81000150ULL);

	assert_int_equal(sonde_object__symbolize(k, 0xffffffff81000150ULL, f, 4), 1);
	assert_string_equal(f[0].function, "do_one");
	assert_null(f[0].file);
	/* Data symbols do not end a function. */
	assert_int_equal(sonde_object__symbolize(k, 0xffffffff81000250ULL, f, 4), 1);
	assert_string_equal(f[0].function, "do_one");
	assert_int_equal(sonde_object__symbolize(k, 0xffffffff81000300ULL, f, 4), 1);
	assert_string_equal(f[0].function, "do_two");
	assert_int_equal(sonde_object__symbolize(k, 0xffffffffc0001010ULL, f, 4), 1);
	assert_string_equal(f[0].function, "mod_fn");
	assert_string_equal(f[0].file, "mymod");
	assert_int_equal(sonde_object__symbolize(k, 0xffffffff80000000ULL, f, 4), 0);
	sonde_symbolizer__free(sym);

	/* What a non-root reader sees under kptr_restrict: nothing is named. */
	write_file(ks_path, "0000000000000000 T _stext\n0000000000000000 t do_one\n", 52);
	opts.kernel_notes = "/nonexistent/notes";
	sym = sonde_symbolizer__new(&opts);
	assert_non_null(sym);
	k = sonde_symbolizer__kernel(sym);
	assert_string_equal(sonde_object__build_id(k), "");
	assert_int_equal(sonde_object__symbolize(k, 0xffffffff81000150ULL, f, 4), 0);
	sonde_symbolizer__free(sym);
}

static void test_vdso(void **state)
{
	struct sonde_symbol_frame f[4];
	struct sonde_symbolizer *sym;
	struct sonde_object *vdso;
	uintptr_t base;
	void *h, *fn;

	(void)state;
	base = getauxval(AT_SYSINFO_EHDR);
	h = dlopen("linux-vdso.so.1", RTLD_LAZY | RTLD_NOLOAD);
	if (!base || !h) {
		/* Only under emulators such as valgrind; a real kernel always has one. */
		const char *ci = getenv("CI");

		fprintf(stderr, "no vdso in this process\n");
		if (ci && strcmp(ci, "true") == 0)
			fail();
		skip();
	}
	fn = dlsym(h, "__vdso_clock_gettime");
	assert_non_null(fn);
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	vdso = sonde_symbolizer__vdso(sym);
	assert_non_null(vdso);
	assert_ptr_equal(sonde_symbolizer__vdso(sym), vdso);
	assert_string_equal(sonde_object__name(vdso), "[vdso]");
	assert_int_equal(sonde_object__symbolize(
				 vdso, sonde_object__to_vaddr(vdso, base, 0, (uintptr_t)fn), f, 4),
			 1);
	if (strcmp(f[0].function, "clock_gettime") != 0)
		assert_string_equal(f[0].function, "__vdso_clock_gettime");
	sonde_symbolizer__free(sym);
}

static void test_unknown(void **state)
{
	struct sonde_symbol_frame f[4];
	struct sonde_symbolizer *sym;
	struct sonde_object *u;

	(void)state;
	sym = sonde_symbolizer__new(NULL);
	assert_non_null(sym);
	u = sonde_symbolizer__unknown(sym);
	assert_non_null(u);
	assert_ptr_equal(sonde_symbolizer__unknown(sym), u);
	assert_string_equal(sonde_object__name(u), "[unknown]");
	assert_string_equal(sonde_object__build_id(u), "");
	assert_int_equal(sonde_object__symbolize(u, 0x1234, f, 4), 0);
	sonde_symbolizer__free(sym);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_to_vaddr_live),
		cmocka_unit_test(test_to_vaddr_synthetic),
		cmocka_unit_test(test_names_function_with_line),
		cmocka_unit_test(test_inlined_frames),
		cmocka_unit_test(test_cache_bounded),
		cmocka_unit_test(test_stripped_uses_dynsym),
		cmocka_unit_test(test_build_id_debug_dir),
		cmocka_unit_test(test_debuglink),
		cmocka_unit_test(test_bad_files_and_identity),
		cmocka_unit_test(test_same_build_id_shares),
		cmocka_unit_test(test_kallsyms),
		cmocka_unit_test(test_vdso),
		cmocka_unit_test(test_unknown),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
