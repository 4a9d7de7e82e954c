// SPDX-License-Identifier: MIT
/*
 * Table generation with libdw's CFI API. libdw already runs the CIE and FDE
 * programs (and the x86-64 ABI defaults) for us: asking for the frame at an
 * address gives the rule set and the range it holds for, so walking each
 * FDE row by row is "ask at start, continue at end". The FDE starts come
 * from .eh_frame_hdr's sorted search table, which every GNU and LLVM linker
 * writes. A file built without unwind tables but with -g (or a Go binary)
 * has only .debug_frame: no search table there, so its FDEs are listed by
 * reading the section's entries one after the other, then sorted.
 */
#include <dwarf.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <gelf.h>

#include "tables.h"

#define REG_RBP 6
#define REG_RSP 7
#define REG_RA	16

#ifndef PT_GNU_EH_FRAME
#define PT_GNU_EH_FRAME 0x6474e550
#endif

struct builder {
	struct sonde_unw_table *t;
	size_t cap;
	bool too_far; /* a row's address did not fit 32 bits */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Appends r; a row that repeats the previous rule adds nothing, and a row at
 * the previous row's address replaces it (an FDE starting where a gap
 * began). */
static int push(struct builder *b, uint64_t pc, struct sonde_unw_row r)
{
	struct sonde_unw_table *t = b->t;
	struct sonde_unw_row *last = t->nrows ? &t->rows[t->nrows - 1] : NULL;

	if (pc > UINT32_MAX) {
		b->too_far = true;
		return -EFBIG;
	}
	r.pc = (uint32_t)pc;
	if (last && last->pc == r.pc) {
		*last = r;
		if (t->nrows >= 2) {
			struct sonde_unw_row *prev = &t->rows[t->nrows - 2];

			if (prev->type == r.type && prev->cfa_off == r.cfa_off &&
			    prev->rbp_off == r.rbp_off)
				t->nrows--;
		}
		return 0;
	}
	if (last && last->type == r.type && last->cfa_off == r.cfa_off &&
	    last->rbp_off == r.rbp_off)
		return 0;
	if (t->nrows == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 1024;
		struct sonde_unw_row *rows = realloc(t->rows, cap * sizeof(*rows));

		if (!rows)
			return -ENOMEM;
		t->rows = rows;
		b->cap = cap;
	}
	t->rows[t->nrows++] = r;
	return 0;
}

/* gcc and ld's lazy-binding .plt: CFA = rsp + 8 + ((rip & 15) >= N) << 3,
 * with N 11 (classic) or 10 (IBT). Returns N or 0. */
static int plt_threshold(const Dwarf_Op *ops, size_t n)
{
	if (n != 9 || ops[0].atom != DW_OP_breg7 || (int64_t)ops[0].number != 8 ||
	    ops[1].atom != DW_OP_breg16 || ops[1].number != 0 || ops[2].atom != DW_OP_lit15 ||
	    ops[3].atom != DW_OP_and || ops[5].atom != DW_OP_ge || ops[6].atom != DW_OP_lit3 ||
	    ops[7].atom != DW_OP_shl || ops[8].atom != DW_OP_plus)
		return 0;
	if (ops[4].atom == DW_OP_lit11)
		return 11;
	if (ops[4].atom == DW_OP_lit10)
		return 10;
	return 0;
}

/* A register rule "saved at CFA + off"; libdw spells it call_frame_cfa,
 * plus_uconst off (off wrapped to unsigned). */
static bool saved_at_cfa(const Dwarf_Op *ops, size_t n, int64_t *off)
{
	if (n == 1 && ops[0].atom == DW_OP_call_frame_cfa) {
		*off = 0;
		return true;
	}
	if (n == 2 && ops[0].atom == DW_OP_call_frame_cfa && ops[1].atom == DW_OP_plus_uconst) {
		*off = (int64_t)ops[1].number;
		return true;
	}
	return false;
}

static struct sonde_unw_row unsupported(struct sonde_unw_table_stats *st)
{
	st->unsupported++;
	return (struct sonde_unw_row){.type = SONDE_UNW_CFA_UNSUPPORTED};
}

/* Turns libdw's rule set into a row, or an UNSUPPORTED one. */
static struct sonde_unw_row classify(Dwarf_Frame *f, bool signalp, struct sonde_unw_table_stats *st)
{
	struct sonde_unw_row r = {0};
	Dwarf_Op mem[3], *ops;
	size_t n;
	int64_t off;
	int plt;

	if (signalp) {
		st->signal++;
		return (struct sonde_unw_row){.type = SONDE_UNW_CFA_SIGNAL};
	}
	if (dwarf_frame_register(f, REG_RA, mem, &ops, &n) != 0)
		return unsupported(st);
	if (n == 0 && ops == mem) { /* undefined: nothing called this frame */
		st->outermost++;
		return (struct sonde_unw_row){.type = SONDE_UNW_CFA_OUTERMOST};
	}
	if (!saved_at_cfa(ops, n, &off) || off != -8)
		return unsupported(st);

	if (dwarf_frame_cfa(f, &ops, &n) != 0)
		return unsupported(st);
	if (n == 1 && ops[0].atom == DW_OP_bregx &&
	    (ops[0].number == REG_RSP || ops[0].number == REG_RBP)) {
		off = (int64_t)ops[0].number2;
		if (off % 8 || off / 8 > INT16_MAX || off / 8 < INT16_MIN)
			return unsupported(st);
		r.type = ops[0].number == REG_RSP ? SONDE_UNW_CFA_RSP : SONDE_UNW_CFA_RBP;
		r.cfa_off = (int16_t)(off / 8);
	} else if ((plt = plt_threshold(ops, n))) {
		st->plt++;
		r.type = SONDE_UNW_CFA_PLT;
		r.cfa_off = (int16_t)plt;
		return r; /* the .plt does not touch rbp */
	} else {
		return unsupported(st);
	}

	if (dwarf_frame_register(f, REG_RBP, mem, &ops, &n) != 0)
		return unsupported(st);
	if (n == 0)
		return r; /* same value, or undefined: the walker keeps what it has */
	if (!saved_at_cfa(ops, n, &off) || off % 8 || off / 8 > INT8_MAX || off / 8 < INT8_MIN)
		return unsupported(st);
	r.type |= SONDE_UNW_RBP_CFA << 4;
	r.rbp_off = (int8_t)(off / 8);
	return r;
}

/* Reads one .eh_frame_hdr pointer of encoding enc at p (hdr_vaddr is the
 * header's address, for datarel; at its own address, for pcrel). */
static int read_encoded(const uint8_t **p, const uint8_t *end, uint8_t enc, uint64_t here,
			uint64_t hdr_vaddr, uint64_t *out)
{
	uint64_t v;
	size_t sz;

	switch (enc & 0x0f) {
	case DW_EH_PE_udata4:
	case DW_EH_PE_sdata4:
		sz = 4;
		break;
	case DW_EH_PE_udata8:
	case DW_EH_PE_sdata8:
		sz = 8;
		break;
	default:
		return -ENOTSUP;
	}
	if ((size_t)(end - *p) < sz)
		return -EINVAL;
	if (sz == 4) {
		uint32_t u;

		memcpy(&u, *p, 4);
		v = (enc & 0x0f) == DW_EH_PE_sdata4 ? (uint64_t)(int64_t)(int32_t)u : u;
	} else {
		memcpy(&v, *p, 8);
	}
	*p += sz;
	switch (enc & 0x70) {
	case DW_EH_PE_absptr:
		break;
	case DW_EH_PE_pcrel:
		v += here;
		break;
	case DW_EH_PE_datarel:
		v += hdr_vaddr;
		break;
	default:
		return -ENOTSUP;
	}
	*out = v;
	return 0;
}

/* The FDE start addresses of .eh_frame_hdr, sorted as the linker wrote
 * them. */
static int fde_starts(Elf *elf, uint64_t **out, size_t *count)
{
	const uint8_t *p, *end, *base;
	uint64_t hdr_vaddr = 0, v, n, *starts = NULL;
	Elf_Data *data = NULL;
	GElf_Phdr ph;
	size_t nph, i;
	int err;

	if (elf_getphdrnum(elf, &nph) != 0)
		return -ENOTSUP;
	for (i = 0; i < nph; i++) {
		if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_GNU_EH_FRAME) {
			hdr_vaddr = ph.p_vaddr;
			data = elf_getdata_rawchunk(elf, (int64_t)ph.p_offset, ph.p_filesz,
						    ELF_T_BYTE);
			break;
		}
	}
	if (!data || data->d_size < 4)
		return -ENODATA;
	base = p = data->d_buf;
	end = p + data->d_size;
	if (p[0] != 1)
		return -ENOTSUP;
	p += 4;
	err = read_encoded(&p, end, base[1], hdr_vaddr + (uint64_t)(p - base), hdr_vaddr, &v);
	if (!err)
		err = read_encoded(&p, end, base[2], hdr_vaddr + (uint64_t)(p - base), hdr_vaddr,
				   &n);
	if (err)
		return err;
	if (base[3] == DW_EH_PE_omit || n > (uint64_t)(end - p) / 8)
		return -ENOTSUP;
	starts = malloc((n ? n : 1) * sizeof(*starts));
	if (!starts)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		err = read_encoded(&p, end, base[3], hdr_vaddr + (uint64_t)(p - base), hdr_vaddr,
				   &starts[i]);
		if (!err)
			err = read_encoded(&p, end, base[3], hdr_vaddr + (uint64_t)(p - base),
					   hdr_vaddr, &v);
		if (err) {
			free(starts);
			return err;
		}
	}
	*out = starts;
	*count = n;
	return 0;
}

/* The .debug_frame section of elf with its contents, or NULL. */
static Elf_Scn *debug_frame_scn(Elf *elf)
{
	Elf_Scn *scn = NULL;
	size_t shstrndx;
	GElf_Shdr sh;

	if (elf_getshdrstrndx(elf, &shstrndx) != 0)
		return NULL;
	while ((scn = elf_nextscn(elf, scn))) {
		const char *name;

		/* NOBITS: a stripped file's, kept only as a header */
		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_PROGBITS || !sh.sh_size)
			continue;
		name = elf_strptr(elf, shstrndx, sh.sh_name);
		if (name && strcmp(name, ".debug_frame") == 0)
			return scn;
	}
	return NULL;
}

static bool has_eh_frame_hdr(Elf *elf)
{
	GElf_Phdr ph;
	size_t nph, i;

	if (elf_getphdrnum(elf, &nph) != 0)
		return false;
	for (i = 0; i < nph; i++) {
		if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_GNU_EH_FRAME)
			return true;
	}
	return false;
}

bool sonde_unw_elf_has_cfi(Elf *elf)
{
	return has_eh_frame_hdr(elf) || debug_frame_scn(elf);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The FDE start addresses of .debug_frame, sorted. Its FDEs hold absolute
 * 8-byte addresses (x86-64 ELF64, the only kind built), in no order; those
 * of code the linker discarded point at 0 or wrap around (the tombstones of
 * ld and lld) and are skipped. Called after dwarf_begin_elf(), which has
 * decompressed the section in place when it was compressed.
 */
static int debug_frame_starts(Elf *elf, Elf_Scn *scn, uint64_t **out, size_t *count)
{
	const unsigned char *ident = (const unsigned char *)elf_getident(elf, NULL);
	Elf_Data *data = elf_getdata(scn, NULL);
	uint64_t *starts = NULL, start, range;
	size_t n = 0, cap = 0;
	Dwarf_Off off = 0, next;
	Dwarf_CFI_Entry e;
	int rc;

	if (!ident || !data || !data->d_buf)
		return -ENODATA;
	for (;;) {
		next = (Dwarf_Off)-1;
		rc = dwarf_next_cfi(ident, data, false, off, &next, &e);
		if (rc == 1)
			break;
		if (rc < 0 && (next == (Dwarf_Off)-1 || next <= off))
			break; /* cannot skip it: the FDEs so far are what there is */
		off = next;
		if (rc < 0 || dwarf_cfi_cie_p(&e) || e.fde.end - e.fde.start < 16)
			continue;
		memcpy(&start, e.fde.start, 8);
		memcpy(&range, e.fde.start + 8, 8);
		if (!start || !range || start + range < start)
			continue;
		if (n == cap) {
			uint64_t *grown;

			cap = cap ? cap * 2 : 64;
			grown = realloc(starts, cap * sizeof(*starts));
			if (!grown) {
				free(starts);
				return -ENOMEM;
			}
			starts = grown;
		}
		starts[n++] = start;
	}
	if (!n) {
		free(starts);
		return -ENODATA;
	}
	qsort(starts, n, sizeof(*starts), cmp_u64);
	*out = starts;
	*count = n;
	return 0;
}

struct sonde_unw_table *sonde_unw_table__build(Elf *elf)
{
	struct builder b = {0};
	uint64_t t0 = now_ns(), *starts = NULL, addr = 0;
	Dwarf_CFI *cfi = NULL;
	Dwarf *dbg = NULL; /* .debug_frame's: it owns cfi */
	Elf_Scn *scn;
	GElf_Ehdr eh;
	size_t nstarts = 0, i;
	int err;

	if (!gelf_getehdr(elf, &eh) || eh.e_machine != EM_X86_64) {
		errno = ENOTSUP;
		return NULL;
	}
	err = fde_starts(elf, &starts, &nstarts);
	if (!err) {
		cfi = dwarf_getcfi_elf(elf);
		err = cfi ? 0 : -ENODATA;
	} else if (err == -ENODATA && (scn = debug_frame_scn(elf))) {
		dbg = dwarf_begin_elf(elf, DWARF_C_READ, NULL);
		cfi = dbg ? dwarf_getcfi(dbg) : NULL;
		err = cfi ? debug_frame_starts(elf, scn, &starts, &nstarts) : -ENODATA;
	}
	if (err)
		goto cleanup;
	b.t = calloc(1, sizeof(*b.t));
	if (!b.t) {
		err = -ENOMEM;
		goto cleanup;
	}
	b.t->stats.fdes = nstarts;
	for (i = 0; i < nstarts; i++) {
		bool covered = false;

		if (starts[i] < addr)
			continue; /* walked already: it follows the previous FDE */
		addr = starts[i];
		for (;;) {
			Dwarf_Addr start, end;
			Dwarf_Frame *f;
			bool signalp = false;

			if (dwarf_cfi_addrframe(cfi, addr, &f) != 0)
				break;
			if (dwarf_frame_info(f, &start, &end, &signalp) < 0 || end <= addr) {
				free(f);
				break;
			}
			err = push(&b, addr, classify(f, signalp, &b.t->stats));
			free(f);
			if (err)
				goto cleanup;
			covered = true;
			addr = end;
		}
		if (covered) {
			err = push(&b, addr, (struct sonde_unw_row){.type = SONDE_UNW_CFA_END});
			if (err)
				goto cleanup;
		}
	}
	for (i = 0; i < b.t->nrows; i++)
		b.t->stats.gaps += SONDE_UNW_ROW_CFA(&b.t->rows[i]) == SONDE_UNW_CFA_END;
	b.t->stats.build_ns = now_ns() - t0;
cleanup:
	free(starts);
	if (dbg)
		dwarf_end(dbg);
	else if (cfi)
		dwarf_cfi_end(cfi);
	if (err) {
		sonde_unw_table__free(b.t);
		errno = -err;
		return NULL;
	}
	return b.t;
}

void sonde_unw_table__free(struct sonde_unw_table *t)
{
	if (!t)
		return;
	free(t->rows);
	free(t);
}

const struct sonde_unw_row *sonde_unw_table__find(const struct sonde_unw_table *t, uint64_t pc)
{
	size_t lo = 0, hi = t->nrows;

	/* the last row with row.pc <= pc, as native.bpf.c searches */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->rows[mid].pc <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? &t->rows[lo - 1] : NULL;
}

size_t sonde_unw_table__npages(const struct sonde_unw_table *t)
{
	if (!t->nrows)
		return 0;
	return (t->rows[t->nrows - 1].pc >> SONDE_UNW_PAGE_SHIFT) -
	       (t->rows[0].pc >> SONDE_UNW_PAGE_SHIFT) + 1;
}

/* One sweep: rows and pages both go up. */
void sonde_unw_table__pages(const struct sonde_unw_table *t, struct sonde_unw_page *out)
{
	size_t npages = sonde_unw_table__npages(t), p, cover = 0, last;
	uint64_t lo;

	if (!npages)
		return;
	lo = t->rows[0].pc >> SONDE_UNW_PAGE_SHIFT;
	for (p = 0; p < npages; p++) {
		uint64_t start = (lo + p) << SONDE_UNW_PAGE_SHIFT;
		uint64_t end = start + (1u << SONDE_UNW_PAGE_SHIFT);

		while (cover + 1 < t->nrows && t->rows[cover + 1].pc <= start)
			cover++;
		for (last = cover; last + 1 < t->nrows && t->rows[last + 1].pc < end; last++)
			;
		out[p] = (struct sonde_unw_page){ .row = (uint32_t)cover,
						  .count = (uint32_t)(last - cover + 1) };
	}
}

int sonde_unw_elf_key(Elf *elf, int fd, char *buf, size_t len)
{
	const uint8_t *id;
	struct stat st;
	ssize_t n = dwelf_elf_gnu_build_id(elf, (const void **)&id);
	size_t need, i;

	if (n > 0) {
		need = 2 + 2 * (size_t)n + 1;
		if (len < need)
			return -ENAMETOOLONG;
		memcpy(buf, "b:", 2);
		for (i = 0; i < (size_t)n; i++)
			snprintf(buf + 2 + 2 * i, 3, "%02x", id[i]);
		return 0;
	}
	if (fstat(fd, &st) != 0)
		return -errno;
	if ((size_t)snprintf(buf, len, "f:%llx:%llx:%llx:%lld.%09ld", (unsigned long long)st.st_dev,
			     (unsigned long long)st.st_ino, (unsigned long long)st.st_size,
			     (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec) >= len)
		return -ENAMETOOLONG;
	return 0;
}

int sonde_unw_elf_bias(Elf *elf, uint64_t start, uint64_t offset, uint64_t *bias)
{
	GElf_Phdr ph;
	size_t nph, i;

	if (elf_getphdrnum(elf, &nph) != 0)
		return -ENOENT;
	for (i = 0; i < nph; i++) {
		if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_LOAD || !(ph.p_flags & PF_X))
			continue;
		/* the mapping may begin at the page holding the segment's start */
		if (offset + 4096 > ph.p_offset && offset < ph.p_offset + ph.p_filesz) {
			*bias = start - (ph.p_vaddr + offset - ph.p_offset);
			return 0;
		}
	}
	return -ENOENT;
}

/* The cache file's header. Fixed-width fields only: the file is read back by
 * the same build on the same machine, but a mismatch must never be taken
 * for rows. */
struct cache_hdr {
	char magic[8]; /* CACHE_MAGIC */
	uint32_t version;
	uint32_t row_size;
	uint64_t nrows;
	uint64_t checksum; /* of the rows */
	uint64_t fdes, unsupported, plt, outermost, signal, gaps, build_ns;
	char key[96];
};

#define CACHE_MAGIC "SONDEUNW"

/* FNV-1a over the rows, a word at a time: cheap on libjvm's megabytes and
 * enough to see a torn or scribbled file (this is not an integrity check
 * against an attacker: the directory is root's, mode 0700). */
static uint64_t rows_checksum(const struct sonde_unw_row *rows, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull, w;
	size_t i;

	for (i = 0; i < n; i++) {
		memcpy(&w, &rows[i], sizeof(w));
		h = (h ^ w) * 0x100000001b3ull;
	}
	return h;
}

static int cache_path(const char *dir, const char *key, char *buf, size_t len)
{
	if (strncmp(key, "b:", 2) != 0)
		return -ENOTSUP;
	if ((size_t)snprintf(buf, len, "%s/b-%s.unw", dir, key + 2) >= len)
		return -ENAMETOOLONG;
	return 0;
}

static int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EBADMSG;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

struct sonde_unw_table *sonde_unw_cache__load(const char *dir, const char *key)
{
	struct sonde_unw_table *t = NULL;
	struct cache_hdr h;
	char path[4096];
	struct stat st;
	int fd = -1, err;

	err = cache_path(dir, key, path, sizeof(path));
	if (err)
		goto cleanup;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		goto cleanup;
	}
	err = fstat(fd, &st) ? -errno : read_full(fd, &h, sizeof(h));
	if (err)
		goto cleanup;
	/* the size is checked before the rows are allocated, so a scribbled
	 * count cannot ask for gigabytes */
	if (memcmp(h.magic, CACHE_MAGIC, 8) != 0 || h.version != SONDE_UNW_CACHE_VERSION ||
	    h.row_size != sizeof(struct sonde_unw_row) || h.nrows > (1u << 28) ||
	    (uint64_t)st.st_size != sizeof(h) + h.nrows * sizeof(struct sonde_unw_row) ||
	    strncmp(h.key, key, sizeof(h.key)) != 0) {
		err = -EBADMSG;
		goto cleanup;
	}
	t = calloc(1, sizeof(*t));
	if (t)
		t->rows = malloc(h.nrows ? h.nrows * sizeof(*t->rows) : 1);
	if (!t || !t->rows) {
		err = -ENOMEM;
		goto cleanup;
	}
	err = read_full(fd, t->rows, h.nrows * sizeof(*t->rows));
	if (!err && rows_checksum(t->rows, h.nrows) != h.checksum)
		err = -EBADMSG;
	if (err)
		goto cleanup;
	t->nrows = h.nrows;
	t->stats = (struct sonde_unw_table_stats){
		.fdes = h.fdes,
		.unsupported = h.unsupported,
		.plt = h.plt,
		.outermost = h.outermost,
		.signal = h.signal,
		.gaps = h.gaps,
		.build_ns = h.build_ns,
	};
cleanup:
	if (fd >= 0)
		close(fd);
	if (err) {
		sonde_unw_table__free(t);
		errno = -err;
		return NULL;
	}
	return t;
}

int sonde_unw_cache__save(const char *dir, const char *key, const struct sonde_unw_table *t)
{
	struct cache_hdr h = {0};
	char path[4096], tmp[4096 + 16];
	int fd = -1, err;

	err = cache_path(dir, key, path, sizeof(path));
	if (err)
		return err;
	if (strlen(key) >= sizeof(h.key))
		return -ENAMETOOLONG;
	memcpy(h.magic, CACHE_MAGIC, 8);
	h.version = SONDE_UNW_CACHE_VERSION;
	h.row_size = sizeof(struct sonde_unw_row);
	h.nrows = t->nrows;
	h.checksum = rows_checksum(t->rows, t->nrows);
	h.fdes = t->stats.fdes;
	h.unsupported = t->stats.unsupported;
	h.plt = t->stats.plt;
	h.outermost = t->stats.outermost;
	h.signal = t->stats.signal;
	h.gaps = t->stats.gaps;
	h.build_ns = t->stats.build_ns;
	snprintf(h.key, sizeof(h.key), "%s", key);
	snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
	/* a reader sees the old file or the whole new one, never a torn one */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	err = write_full(fd, &h, sizeof(h));
	if (!err)
		err = write_full(fd, t->rows, t->nrows * sizeof(*t->rows));
	if (!err && fchmod(fd, 0600))
		err = -errno;
	if (close(fd) && !err)
		err = -errno;
	if (!err && rename(tmp, path))
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}
