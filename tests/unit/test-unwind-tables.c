// SPDX-License-Identifier: MIT
/*
 * unwind-native's table builder: the rows of functions whose CFI is known
 * instruction by instruction (tests/fixtures/unwind-native/cfi_known.S),
 * and a whole libc, whose table must be complete and sorted; a library with
 * only .debug_frame gets the rules its .eh_frame build has; the on-disk
 * cache gives back the same rows, and refuses a truncated, scribbled or
 * other-version file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <gelf.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <elfutils/libdwelf.h>
#include <errno.h>
#include <sys/auxv.h>
#include <sys/stat.h>

#include "tables.h"

struct elf_file {
	int fd;
	Elf *elf;
};

static int open_elf(struct elf_file *f, const char *path)
{
	elf_version(EV_CURRENT);
	f->elf = NULL;
	f->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0)
		return -1;
	f->elf = elf_begin(f->fd, ELF_C_READ_MMAP, NULL);
	return f->elf ? 0 : -1;
}

static void close_elf(struct elf_file *f)
{
	elf_end(f->elf);
	close(f->fd);
}

/* The address (and size, when size is not NULL) of a symbol of .symtab or
 * .dynsym. */
static uint64_t symbol_sized(Elf *elf, const char *name, uint64_t *size)
{
	Elf_Scn *scn = NULL;
	GElf_Shdr sh;

	while ((scn = elf_nextscn(elf, scn))) {
		Elf_Data *data;
		GElf_Sym sym;
		size_t i;

		if (!gelf_getshdr(scn, &sh) ||
		    (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM))
			continue;
		data = elf_getdata(scn, NULL);
		for (i = 0; data && i < sh.sh_size / sh.sh_entsize; i++) {
			if (gelf_getsym(data, (int)i, &sym) &&
			    strcmp(elf_strptr(elf, sh.sh_link, sym.st_name), name) == 0) {
				if (size)
					*size = sym.st_size;
				return sym.st_value;
			}
		}
	}
	fail_msg("no symbol %s", name);
	return 0;
}

static uint64_t symbol(Elf *elf, const char *name)
{
	return symbol_sized(elf, name, NULL);
}

struct known {
	struct elf_file f;
	struct sonde_unw_table *t;
};

static int setup_known(void **state)
{
	struct known *k = calloc(1, sizeof(*k));

	if (!k || open_elf(&k->f, CFI_KNOWN_PATH))
		return -1;
	k->t = sonde_unw_table__build(k->f.elf);
	if (!k->t)
		return -1;
	*state = k;
	return 0;
}

static int teardown_known(void **state)
{
	struct known *k = *state;

	sonde_unw_table__free(k->t);
	close_elf(&k->f);
	free(k);
	return 0;
}

/* The row at sym + off has this CFA rule (words) and rbp rule. */
static void expect_row(struct known *k, const char *sym, uint64_t off, int cfa, int cfa_words,
		       int rbp, int rbp_words)
{
	uint64_t pc = symbol(k->f.elf, sym) + off;
	const struct sonde_unw_row *r = sonde_unw_table__find(k->t, pc);

	assert_non_null(r);
	if (SONDE_UNW_ROW_CFA(r) != cfa || r->cfa_off != cfa_words || SONDE_UNW_ROW_RBP(r) != rbp ||
	    r->rbp_off != rbp_words)
		fail_msg("%s+%llu: row at %#x cfa %d%+d rbp %d%+d, expected cfa %d%+d rbp %d%+d",
			 sym, (unsigned long long)off, r->pc, SONDE_UNW_ROW_CFA(r), r->cfa_off,
			 SONDE_UNW_ROW_RBP(r), r->rbp_off, cfa, cfa_words, rbp, rbp_words);
}

static void test_rsp_frame(void **state)
{
	struct known *k = *state;

	expect_row(k, "cfi_push", 0, SONDE_UNW_CFA_RSP, 1, SONDE_UNW_RBP_SAME, 0);  /* entry */
	expect_row(k, "cfi_push", 1, SONDE_UNW_CFA_RSP, 2, SONDE_UNW_RBP_SAME, 0);  /* push rbx */
	expect_row(k, "cfi_push", 2, SONDE_UNW_CFA_RSP, 3, SONDE_UNW_RBP_CFA, -3);  /* push rbp */
	expect_row(k, "cfi_push", 6, SONDE_UNW_CFA_RSP, 8, SONDE_UNW_RBP_CFA, -3);  /* sub $40 */
	expect_row(k, "cfi_push", 10, SONDE_UNW_CFA_RSP, 8, SONDE_UNW_RBP_CFA, -3); /* in add */
	expect_row(k, "cfi_push", 11, SONDE_UNW_CFA_RSP, 3, SONDE_UNW_RBP_CFA, -3); /* add $40 */
	expect_row(k, "cfi_push", 12, SONDE_UNW_CFA_RSP, 2, SONDE_UNW_RBP_SAME, 0); /* pop rbp */
	expect_row(k, "cfi_push", 13, SONDE_UNW_CFA_RSP, 1, SONDE_UNW_RBP_SAME, 0); /* ret */
}

static void test_rbp_frame(void **state)
{
	struct known *k = *state;

	expect_row(k, "cfi_frame", 0, SONDE_UNW_CFA_RSP, 1, SONDE_UNW_RBP_SAME, 0);
	expect_row(k, "cfi_frame", 1, SONDE_UNW_CFA_RSP, 2, SONDE_UNW_RBP_CFA, -2);
	expect_row(k, "cfi_frame", 4, SONDE_UNW_CFA_RBP, 2, SONDE_UNW_RBP_CFA, -2);
	expect_row(k, "cfi_frame", 6, SONDE_UNW_CFA_RSP, 1, SONDE_UNW_RBP_CFA, -2);
}

static void test_special_rows(void **state)
{
	struct known *k = *state;
	const struct sonde_unw_row *first = &k->t->rows[0];

	expect_row(k, "cfi_plt", 0, SONDE_UNW_CFA_PLT, 11, SONDE_UNW_RBP_SAME, 0);
	expect_row(k, "cfi_expr", 0, SONDE_UNW_CFA_UNSUPPORTED, 0, SONDE_UNW_RBP_SAME, 0);
	expect_row(k, "cfi_outermost", 1, SONDE_UNW_CFA_OUTERMOST, 0, SONDE_UNW_RBP_SAME, 0);
	expect_row(k, "cfi_odd", 0, SONDE_UNW_CFA_UNSUPPORTED, 0, SONDE_UNW_RBP_SAME, 0);
	expect_row(k, "cfi_none", 0, SONDE_UNW_CFA_END, 0, SONDE_UNW_RBP_SAME, 0);
	assert_int_equal(k->t->stats.plt, 1);
	assert_int_equal(k->t->stats.outermost, 1);
	assert_int_equal(k->t->stats.unsupported, 2);
	assert_int_equal(k->t->stats.fdes, 6);
	/* below the first FDE there is no row at all */
	assert_null(sonde_unw_table__find(k->t, first->pc - 1));
	/* after the last FDE, a gap */
	assert_int_equal(SONDE_UNW_ROW_CFA(&k->t->rows[k->t->nrows - 1]), SONDE_UNW_CFA_END);
}

static void test_key_and_bias(void **state)
{
	struct known *k = *state;
	char key[96], small[8];
	uint64_t bias = 0, text = symbol(k->f.elf, "cfi_push");
	const void *id;
	ssize_t n;

	assert_int_equal(sonde_unw_elf_key(k->f.elf, k->f.fd, key, sizeof(key)), 0);
	n = dwelf_elf_gnu_build_id(k->f.elf, &id);
	assert_true(n > 0);
	assert_int_equal(strlen(key), 2 + 2 * (size_t)n);
	assert_memory_equal(key, "b:", 2);
	assert_int_equal(sonde_unw_elf_key(k->f.elf, k->f.fd, small, sizeof(small)), -ENAMETOOLONG);
	/* mapped at 0x7f0000000000 from the page that holds the text */
	{
		GElf_Phdr ph;
		size_t i, nph;

		assert_int_equal(elf_getphdrnum(k->f.elf, &nph), 0);
		for (i = 0; i < nph; i++) {
			if (gelf_getphdr(k->f.elf, (int)i, &ph) && ph.p_type == PT_LOAD &&
			    (ph.p_flags & PF_X))
				break;
		}
		assert_true(i < nph);
		assert_int_equal(sonde_unw_elf_bias(k->f.elf, 0x7f0000000000ull,
						    ph.p_offset & ~0xfffull, &bias),
				 0);
		assert_int_equal(bias + (ph.p_vaddr & ~0xfffull), 0x7f0000000000ull);
		assert_true(text - (ph.p_vaddr & ~0xfffull) < ph.p_memsz + 0x1000);
		assert_int_equal(sonde_unw_elf_bias(k->f.elf, 0x7f0000000000ull, 1ull << 40, &bias),
				 -ENOENT);
	}
}

/* The path of the libc this test runs with. */
static int libc_path(char *buf, size_t len)
{
	char line[4096], path[4096];
	FILE *f = fopen("/proc/self/maps", "re");
	int found = -1;

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*s %*s %*s %*s %*s %4095s", path) == 1 &&
		    strstr(path, "/libc.so.6")) {
			snprintf(buf, len, "%s", path);
			found = 0;
			break;
		}
	}
	if (f)
		fclose(f);
	return found;
}

static void test_libc(void **state)
{
	struct sonde_unw_table *t;
	struct elf_file f = {-1, NULL};
	char path[4096];
	size_t i, outermost = 0;

	(void)state;
	assert_int_equal(libc_path(path, sizeof(path)), 0);
	assert_int_equal(open_elf(&f, path), 0);
	t = sonde_unw_table__build(f.elf);
	assert_non_null(t);
	print_message("%s: %zu rows (%zu KiB) from %zu FDEs in %.1f ms; %zu unsupported, %zu plt, "
		      "%zu outermost, %zu signal, %zu gaps\n",
		      path, t->nrows, t->nrows * sizeof(t->rows[0]) >> 10, t->stats.fdes,
		      (double)t->stats.build_ns / 1e6, t->stats.unsupported, t->stats.plt,
		      t->stats.outermost, t->stats.signal, t->stats.gaps);
	assert_true(t->stats.fdes > 1000);
	assert_true(t->nrows > 5 * t->stats.fdes / 2);
	for (i = 1; i < t->nrows; i++) {
		if (t->rows[i].pc <= t->rows[i - 1].pc)
			fail_msg("row %zu at %#x after %#x", i, t->rows[i].pc, t->rows[i - 1].pc);
		outermost += SONDE_UNW_ROW_CFA(&t->rows[i]) == SONDE_UNW_CFA_OUTERMOST;
	}
	/* clone3 and the thread start are libc's outermost frames */
	assert_true(outermost >= 1);
	/* __restore_rt, the signal trampoline */
	assert_true(t->stats.signal >= 1);
	assert_true(t->stats.unsupported * 100 < t->nrows);
	sonde_unw_table__free(t);
	close_elf(&f);
}

/* The walker's search: the page's entry, then the last row of its few with
 * pc <= addr (native.bpf.c, find_row). */
static const struct sonde_unw_row *paged_find(const struct sonde_unw_table *t,
					      const struct sonde_unw_page *pages, size_t npages,
					      uint64_t addr)
{
	uint64_t lo = t->rows[0].pc >> SONDE_UNW_PAGE_SHIFT, page = addr >> SONDE_UNW_PAGE_SHIFT;
	const struct sonde_unw_row *found = NULL;
	size_t first, n, i;

	if (page < lo)
		return NULL;
	if (page - lo >= npages) {
		first = t->nrows - 1;
		n = 1;
	} else {
		first = pages[page - lo].row;
		n = pages[page - lo].count;
	}
	for (i = first; i < first + n; i++)
		if (t->rows[i].pc <= addr)
			found = &t->rows[i];
	return found;
}

/* The page index of libc finds the rows a search of the whole table finds,
 * for every row's first byte, the byte before it and bytes in between. */
static void test_page_index(void **state)
{
	struct sonde_unw_table *t;
	struct sonde_unw_page *pages;
	struct elf_file f = {-1, NULL};
	char path[4096];
	size_t npages, i, most = 0, sum = 0;

	(void)state;
	assert_int_equal(libc_path(path, sizeof(path)), 0);
	assert_int_equal(open_elf(&f, path), 0);
	t = sonde_unw_table__build(f.elf);
	assert_non_null(t);
	npages = sonde_unw_table__npages(t);
	assert_int_equal(npages, (t->rows[t->nrows - 1].pc >> SONDE_UNW_PAGE_SHIFT) -
					 (t->rows[0].pc >> SONDE_UNW_PAGE_SHIFT) + 1);
	pages = calloc(npages, sizeof(*pages));
	assert_non_null(pages);
	sonde_unw_table__pages(t, pages);
	for (i = 0; i < npages; i++) {
		assert_true(pages[i].count >= 1);
		assert_true(pages[i].row + pages[i].count <= t->nrows);
		sum += pages[i].count;
		most = pages[i].count > most ? pages[i].count : most;
	}
	print_message("%zu pages of %u bytes for %zu rows: %.1f rows per page, at most %zu\n",
		      npages, 1u << SONDE_UNW_PAGE_SHIFT, t->nrows, (double)sum / (double)npages,
		      most);
	for (i = 0; i < t->nrows; i++) {
		uint64_t pc = t->rows[i].pc, next = i + 1 < t->nrows ? t->rows[i + 1].pc : pc + 64;
		uint64_t probes[] = { pc, pc - 1, pc + (next - pc) / 2, next - 1 };
		size_t k;

		for (k = 0; k < sizeof(probes) / sizeof(probes[0]); k++)
			if (paged_find(t, pages, npages, probes[k]) !=
			    sonde_unw_table__find(t, probes[k]))
				fail_msg("address %#llx: the page index and the full search differ",
					 (unsigned long long)probes[k]);
	}
	assert_null(paged_find(t, pages, npages, t->rows[0].pc - 1));
	free(pages);
	sonde_unw_table__free(t);
	close_elf(&f);
}

static void test_no_eh_frame_hdr(void **state)
{
	struct elf_file f = {-1, NULL};
	char path[] = "/tmp/sonde-unw-XXXXXX";
	int fd = mkstemp(path);
	static const unsigned char ehdr[64] = {
		0x7f, 'E', 'L', 'F', 2, 1, 1, 0, [16] = 1, 0, [18] = 62, 0, [20] = 1, [52] = 64, 0};

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, ehdr, sizeof(ehdr)), (ssize_t)sizeof(ehdr));
	close(fd);
	assert_int_equal(open_elf(&f, path), 0);
	errno = 0;
	assert_null(sonde_unw_table__build(f.elf));
	assert_int_equal(errno, ENODATA);
	close_elf(&f);
	unlink(path);
}

/* A library of the integration fixtures: they are built in
 * ../fixtures/unwind-native from this test's build directory, where
 * CFI_KNOWN_PATH is. */
static void fixture_path(char *buf, size_t len, const char *name)
{
	const char *slash = strrchr(CFI_KNOWN_PATH, '/');

	snprintf(buf, len, "%.*s/../fixtures/unwind-native/%s", (int)(slash - CFI_KNOWN_PATH),
		 CFI_KNOWN_PATH, name);
}

static bool has_section(Elf *elf, const char *name)
{
	Elf_Scn *scn = NULL;
	size_t shstrndx;
	GElf_Shdr sh;

	assert_int_equal(elf_getshdrstrndx(elf, &shstrndx), 0);
	while ((scn = elf_nextscn(elf, scn))) {
		const char *n =
			gelf_getshdr(scn, &sh) ? elf_strptr(elf, shstrndx, sh.sh_name) : NULL;

		if (n && strcmp(n, name) == 0)
			return true;
	}
	return false;
}

static bool has_eh_frame_hdr(Elf *elf)
{
	GElf_Phdr ph;
	size_t i, nph;

	assert_int_equal(elf_getphdrnum(elf, &nph), 0);
	for (i = 0; i < nph; i++) {
		if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_GNU_EH_FRAME)
			return true;
	}
	return false;
}

static bool same_rule(const struct sonde_unw_row *a, const struct sonde_unw_row *b)
{
	return a->type == b->type && a->cfa_off == b->cfa_off && a->rbp_off == b->rbp_off;
}

/*
 * libunwdbg.so has .debug_frame and no .eh_frame (built without unwind
 * tables); libunwdbg_eh.so is the same source with .eh_frame. Every byte of
 * their three functions gets a row, and the same rule in both.
 */
static void test_debug_frame(void **state)
{
	static const char *const funcs[] = {"dbg_inner", "dbg_mid", "dbg_outer"};
	struct elf_file dbg = {-1, NULL}, eh = {-1, NULL};
	struct sonde_unw_table *td, *te;
	char path[4096];
	size_t i, rules = 0;

	(void)state;
	fixture_path(path, sizeof(path), "libunwdbg.so");
	if (open_elf(&dbg, path))
		fail_msg("cannot open %s (built with the integration fixtures)", path);
	fixture_path(path, sizeof(path), "libunwdbg_eh.so");
	if (open_elf(&eh, path))
		fail_msg("cannot open %s", path);
	/* what the fixture is for: .debug_frame, no .eh_frame, no header */
	assert_true(has_section(dbg.elf, ".debug_frame"));
	assert_false(has_section(dbg.elf, ".eh_frame"));
	assert_false(has_eh_frame_hdr(dbg.elf));
	assert_true(has_eh_frame_hdr(eh.elf));
	assert_true(sonde_unw_elf_has_cfi(dbg.elf));

	td = sonde_unw_table__build(dbg.elf);
	te = sonde_unw_table__build(eh.elf);
	assert_non_null(td);
	assert_non_null(te);
	print_message(".debug_frame: %zu rows from %zu FDEs; .eh_frame: %zu rows from %zu FDEs\n",
		      td->nrows, td->stats.fdes, te->nrows, te->stats.fdes);
	assert_int_equal(td->stats.fdes, 3); /* the three functions */
	assert_int_equal(td->stats.plt, 0);  /* ld's .plt CFI lives in .eh_frame only */
	assert_int_equal(te->stats.plt, 1);
	assert_int_equal(td->stats.unsupported, 0);
	for (i = 1; i < td->nrows; i++)
		assert_true(td->rows[i].pc > td->rows[i - 1].pc);

	for (i = 0; i < sizeof(funcs) / sizeof(funcs[0]); i++) {
		uint64_t dsize = 0, esize = 0, off;
		uint64_t da = symbol_sized(dbg.elf, funcs[i], &dsize);
		uint64_t ea = symbol_sized(eh.elf, funcs[i], &esize);
		const struct sonde_unw_row *prev = NULL;

		assert_true(dsize > 0);
		assert_int_equal(dsize, esize); /* the same code */
		for (off = 0; off < dsize; off++) {
			const struct sonde_unw_row *rd = sonde_unw_table__find(td, da + off);
			const struct sonde_unw_row *re = sonde_unw_table__find(te, ea + off);

			assert_non_null(rd);
			assert_non_null(re);
			if (SONDE_UNW_ROW_CFA(rd) != SONDE_UNW_CFA_RSP || !same_rule(rd, re))
				fail_msg("%s+%llu: .debug_frame row cfa %d%+d rbp %d%+d, .eh_frame "
					 "row cfa %d%+d rbp %d%+d",
					 funcs[i], (unsigned long long)off, SONDE_UNW_ROW_CFA(rd),
					 rd->cfa_off, SONDE_UNW_ROW_RBP(rd), rd->rbp_off,
					 SONDE_UNW_ROW_CFA(re), re->cfa_off, SONDE_UNW_ROW_RBP(re),
					 re->rbp_off);
			rules += !prev || !same_rule(prev, rd);
			prev = rd;
		}
		/* the entry: only the return address on the stack */
		assert_int_equal(sonde_unw_table__find(td, da)->cfa_off, 1);
	}
	/* dbg_inner's frame grows and shrinks: more than one rule per function */
	assert_true(rules > 3);
	/* after dbg_inner's last byte, up to dbg_mid (alignment padding): a gap */
	{
		uint64_t size = 0, inner = symbol_sized(dbg.elf, "dbg_inner", &size);

		if (inner + size < symbol(dbg.elf, "dbg_mid"))
			assert_int_equal(SONDE_UNW_ROW_CFA(sonde_unw_table__find(td, inner + size)),
					 SONDE_UNW_CFA_END);
	}
	sonde_unw_table__free(td);
	sonde_unw_table__free(te);
	close_elf(&dbg);
	close_elf(&eh);
}

/*
 * The vdso, as the plugin reads it: a copy of its image (here this
 * process's own, the same kernel's) opened with elf_memory(). It has a
 * build-id to be keyed by, and CFI for every byte of clock_gettime and
 * getcpu, which starts with only the return address on the stack.
 */
static void test_vdso(void **state)
{
	static const char *const funcs[] = {"__vdso_clock_gettime", "__vdso_getcpu"};
	char line[4096], key[96];
	unsigned long long start = 0, end = 0;
	struct sonde_unw_table *t;
	FILE *f = fopen("/proc/self/maps", "re");
	void *image;
	size_t i;
	Elf *elf;

	(void)state;
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "[vdso]")) {
			assert_int_equal(sscanf(line, "%llx-%llx", &start, &end), 2);
			break;
		}
	}
	fclose(f);
	if (!end)
		fail_msg("no [vdso] in /proc/self/maps");
	assert_int_equal(start, getauxval(AT_SYSINFO_EHDR));
	image = malloc(end - start);
	assert_non_null(image);
	memcpy(image, (const void *)(uintptr_t)start, end - start);
	elf_version(EV_CURRENT);
	elf = elf_memory(image, end - start);
	assert_non_null(elf);
	assert_int_equal(sonde_unw_elf_key(elf, -1, key, sizeof(key)), 0);
	assert_memory_equal(key, "b:", 2);
	t = sonde_unw_table__build(elf);
	assert_non_null(t);
	print_message("vdso %s: %zu rows from %zu FDEs\n", key, t->nrows, t->stats.fdes);
	assert_int_equal(t->stats.unsupported, 0);
	for (i = 0; i < sizeof(funcs) / sizeof(funcs[0]); i++) {
		uint64_t size = 0, addr = symbol_sized(elf, funcs[i], &size), off;

		assert_true(size > 0);
		for (off = 0; off < size; off++) {
			const struct sonde_unw_row *r = sonde_unw_table__find(t, addr + off);

			if (!r || (SONDE_UNW_ROW_CFA(r) != SONDE_UNW_CFA_RSP &&
				   SONDE_UNW_ROW_CFA(r) != SONDE_UNW_CFA_RBP))
				fail_msg("%s+%llu: no rsp or rbp row", funcs[i],
					 (unsigned long long)off);
		}
		assert_int_equal(SONDE_UNW_ROW_CFA(sonde_unw_table__find(t, addr)),
				 SONDE_UNW_CFA_RSP);
		assert_int_equal(sonde_unw_table__find(t, addr)->cfa_off, 1);
	}
	sonde_unw_table__free(t);
	elf_end(elf);
	free(image);
}

static void truncate_to(const char *path, off_t len)
{
	assert_int_equal(truncate(path, len), 0);
}

/* Flips one byte at off of path. */
static void scribble(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	unsigned char c;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x5a;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void expect_invalid(const char *dir, const char *key)
{
	errno = 0;
	assert_null(sonde_unw_cache__load(dir, key));
	assert_int_equal(errno, EBADMSG);
}

static void test_cache(void **state)
{
	struct sonde_unw_table *t, *back;
	struct elf_file f = {-1, NULL};
	char dir[] = "/tmp/sonde-unw-cache-XXXXXX", path[4096], file[4200], key[96], cmd[4200];
	struct stat st;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_int_equal(libc_path(path, sizeof(path)), 0);
	assert_int_equal(open_elf(&f, path), 0);
	assert_int_equal(sonde_unw_elf_key(f.elf, f.fd, key, sizeof(key)), 0);
	assert_memory_equal(key, "b:", 2);
	t = sonde_unw_table__build(f.elf);
	assert_non_null(t);

	errno = 0;
	assert_null(sonde_unw_cache__load(dir, key));
	assert_int_equal(errno, ENOENT);
	assert_int_equal(sonde_unw_cache__save(dir, key, t), 0);
	snprintf(file, sizeof(file), "%s/b-%s.unw", dir, key + 2);
	assert_int_equal(stat(file, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	back = sonde_unw_cache__load(dir, key);
	assert_non_null(back);
	assert_int_equal(back->nrows, t->nrows);
	assert_memory_equal(back->rows, t->rows, t->nrows * sizeof(t->rows[0]));
	assert_int_equal(back->stats.fdes, t->stats.fdes);
	assert_int_equal(back->stats.unsupported, t->stats.unsupported);
	assert_int_equal(back->stats.build_ns, t->stats.build_ns);
	sonde_unw_table__free(back);

	/* another build-id's name on this file: refused, not taken */
	{
		char other[96], ofile[4200];

		snprintf(other, sizeof(other), "b:%s", "00112233445566778899aabbccddeeff00112233");
		snprintf(ofile, sizeof(ofile), "%s/b-%s.unw", dir, other + 2);
		assert_int_equal(link(file, ofile), 0);
		expect_invalid(dir, other);
		unlink(ofile);
	}
	/* a row scribbled over: the checksum */
	scribble(file, (off_t)st.st_size - 5);
	expect_invalid(dir, key);
	/* rewritten whole, then the format version changed */
	assert_int_equal(sonde_unw_cache__save(dir, key, t), 0);
	assert_non_null((back = sonde_unw_cache__load(dir, key)));
	sonde_unw_table__free(back);
	scribble(file, 8);
	expect_invalid(dir, key);
	/* truncated: a crash mid-write of an older sonde, a full disk */
	assert_int_equal(sonde_unw_cache__save(dir, key, t), 0);
	truncate_to(file, st.st_size - 8);
	expect_invalid(dir, key);
	truncate_to(file, 10);
	expect_invalid(dir, key);
	/* keys without a build-id are not cached */
	errno = 0;
	assert_int_equal(sonde_unw_cache__save(dir, "f:1:2:3:4.5", t), -ENOTSUP);
	assert_null(sonde_unw_cache__load(dir, "f:1:2:3:4.5"));
	assert_int_equal(errno, ENOTSUP);

	sonde_unw_table__free(t);
	close_elf(&f);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_rsp_frame, setup_known, teardown_known),
		cmocka_unit_test_setup_teardown(test_rbp_frame, setup_known, teardown_known),
		cmocka_unit_test_setup_teardown(test_special_rows, setup_known, teardown_known),
		cmocka_unit_test_setup_teardown(test_key_and_bias, setup_known, teardown_known),
		cmocka_unit_test(test_libc),
		cmocka_unit_test(test_page_index),
		cmocka_unit_test(test_no_eh_frame_hdr),
		cmocka_unit_test(test_debug_frame),
		cmocka_unit_test(test_vdso),
		cmocka_unit_test(test_cache),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
