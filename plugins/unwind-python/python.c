// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-python: Python functions in the stacks of CPython 3.11, 3.12
 * and 3.13 processes, with qualified name, file and line.
 *
 * attach_process finds the interpreter (the python3.X executable or
 * libpython3.X.so mapped), reads its version from Py_Version and fills the
 * process's offsets into py_procs; the BPF walker (python.bpf.c) emits one
 * interpreter frame per Python function, innermost first. The symbolizer
 * reads the code object back from the process, checks that it still is
 * one, and decodes its location table.
 *
 * Offsets come from the binary where it says them: the code object's from
 * PyCode_Type's member table and basic size (3.11, 3.12) or from the
 * _Py_DebugOffsets at the start of _PyRuntime (3.13: also the thread
 * state's, the frame's, str's and bytes'); the thread state's pthread key
 * from the code of PyGILState_GetThisThreadState. What no binary says (the
 * frame and thread state before 3.13, which byte marks an eval call's end)
 * is in versions[], checked with gdb against debug builds. All of it is
 * read from the live process, which therefore must have started its
 * interpreter: a process offered at exec (a shared build has not even
 * mapped libpython then) is attached and waits, set up by a timer once it
 * has; the walk needs nothing before.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gelf.h>
#include <libelf.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <sonde/plugin.h>

#include "plugin_util.h"

#include "python.h"
#include "python.skel.h"

/* The layout facts of one process's interpreter, x86-64. */
struct py_layout {
	int minor;
	bool debug_offsets;	/* 3.13+: most of it from _Py_DebugOffsets */
	uint32_t rt_tss_key;	/* _PyRuntime(.gilstate).autoTSSkey._key, if not decoded */
	uint32_t rt_gil_tstate; /* _PyRuntime.gilstate.tstate_current; 0: none (3.12+) */
	uint32_t ts_frame, ts_thread_id, cf_frame;
	uint8_t frame_hops, entry_val, entry_shim;
	uint32_t fr_code, fr_previous, fr_instr, fr_entry;
	uint32_t co_firstlineno, co_filename, co_qualname, co_linetable, co_code;
	uint32_t str_length, str_state, str_ascii_data, str_utf8_length, str_utf8, str_data;
	uint32_t bytes_size, bytes_data;
};

/*
 * What the binaries do not say, per minor version, x86-64; the code
 * object's offsets (and 3.13's others) are filled per process. Checked
 * with gdb (`ptype /o`, `print &((T *)0)->field`) against the DWARF of
 * pyenv's 3.11.7, 3.12.1 and 3.13.0 builds and python3.11-dbg (Debian's
 * 3.11.2). rt_tss_key is a fallback for a PyGILState_GetThisThreadState
 * the decoder does not know. Owner FRAME_OWNED_BY_CSTACK is 3 (3.12, 3.13:
 * Include/internal/pycore_frame.h).
 */
static const struct py_layout versions[] = {
	{.minor = 11,
	 .rt_tss_key = 596,
	 .rt_gil_tstate = 576,
	 .ts_frame = 56, /* cframe */
	 .ts_thread_id = 160,
	 .cf_frame = 8,
	 .frame_hops = 2,
	 .fr_code = 32,
	 .fr_previous = 48,
	 .fr_instr = 56,
	 .fr_entry = 68, /* is_entry */
	 .entry_val = 1,
	 .str_length = 16,
	 .str_state = 32,
	 .str_ascii_data = 48,
	 .str_utf8_length = 48,
	 .str_utf8 = 56,
	 .str_data = 72,
	 .bytes_size = 16,
	 .bytes_data = 32},
	{.minor = 12,
	 .rt_tss_key = 1548,
	 .ts_frame = 56, /* cframe */
	 .ts_thread_id = 144,
	 .cf_frame = 0,
	 .frame_hops = 2,
	 .fr_code = 0,
	 .fr_previous = 8,
	 .fr_instr = 56,
	 .fr_entry = 70, /* owner */
	 .entry_val = 3,
	 .entry_shim = 1,
	 .str_length = 16,
	 .str_state = 32,
	 .str_ascii_data = 40,
	 .str_utf8_length = 40,
	 .str_utf8 = 48,
	 .str_data = 56,
	 .bytes_size = 16,
	 .bytes_data = 32},
	{.minor = 13, .debug_offsets = true, .rt_tss_key = 2164, .frame_hops = 1,
	 .entry_val = 3, .entry_shim = 1},
};

/* glibc x86-64 (2.34+): struct pthread's specific_1stblock[key].data; what
 * a libc without the thread_db descriptors (below) is taken to have. */
#define GLIBC_TSD_BASE	 792
#define GLIBC_TSD_STRIDE 16
#define GLIBC_TSD_KEYS	 32

/* Where a thread's pthread key values are, from thread pointer. */
struct glibc_tsd {
	uint32_t base, stride, keys;
};

#define MAX_NAME      1024
#define MAX_LINETABLE (64 << 10)
#define NBUCKETS      4096

struct code {
	struct code *next;
	uint32_t pid;
	uint64_t addr;
	uint32_t firstlineno;
	const char *qualname, *filename; /* interned */
	uint8_t *linetable;
	size_t linetable_len;
};

struct proc {
	struct proc *next;
	uint32_t pid;
	bool pending;	     /* attached, waiting for the interpreter to start */
	uint64_t give_up_ms; /* pending until then */
	uint64_t code_type;  /* &PyCode_Type in the process */
	struct py_layout l;
};

struct py {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	struct python_bpf *skel;
	struct proc *procs;
	struct code *codes[NBUCKETS];
	struct plugin_strings strings; /* names handed to the core, until fini */
	void *timer;		       /* sets up pending processes */
	uint64_t stale, symbol_read;
};

static uint64_t hash64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static struct proc *find_proc(struct py *py, uint32_t pid)
{
	struct proc *p;

	for (p = py->procs; p; p = p->next)
		if (p->pid == pid)
			return p;
	return NULL;
}

static int read_exact(struct py *py, uint32_t pid, uint64_t addr, void *buf, size_t len)
{
	ssize_t n = py->api->read_memory(py->host, pid, addr, buf, len);

	return n == (ssize_t)len ? 0 : -EFAULT;
}

/* A str object as UTF-8 into out (cut at outlen - 1). */
static int read_str(struct py *py, const struct proc *p, uint64_t addr, char *out, size_t outlen)
{
	const struct py_layout *l = &p->l;
	uint8_t head[80], raw[MAX_NAME];
	int64_t len;
	uint32_t state;
	uint64_t utf8;
	size_t i, o = 0;

	if (!addr || read_exact(py, p->pid, addr, head, sizeof(head)))
		return -EFAULT;
	memcpy(&len, head + l->str_length, sizeof(len));
	memcpy(&state, head + l->str_state, sizeof(state));
	if (len < 0)
		return -EINVAL;
	if ((size_t)len >= outlen)
		len = (int64_t)outlen - 1;
	if ((state & 0x60) == 0x60) { /* compact and ascii */
		if (read_exact(py, p->pid, addr + l->str_ascii_data, out, (size_t)len))
			return -EFAULT;
		out[len] = '\0';
		return 0;
	}
	if (!(state & 0x20))
		return -ENOTSUP;
	memcpy(&utf8, head + l->str_utf8, sizeof(utf8));
	if (utf8) {
		memcpy(&len, head + l->str_utf8_length, sizeof(len));
		if (len < 0)
			return -EINVAL;
		if ((size_t)len >= outlen)
			len = (int64_t)outlen - 1;
		if (read_exact(py, p->pid, utf8, out, (size_t)len))
			return -EFAULT;
		out[len] = '\0';
		return 0;
	}
	if (((state >> 2) & 7) != 1) /* UCS-2/4 without a UTF-8 copy: not yet */
		return -ENOTSUP;
	if ((size_t)len > sizeof(raw))
		len = sizeof(raw);
	if (read_exact(py, p->pid, addr + l->str_data, raw, (size_t)len))
		return -EFAULT;
	for (i = 0; i < (size_t)len && o + 2 < outlen; i++) { /* Latin-1 to UTF-8 */
		if (raw[i] < 0x80) {
			out[o++] = (char)raw[i];
		} else {
			out[o++] = (char)(0xc0 | raw[i] >> 6);
			out[o++] = (char)(0x80 | (raw[i] & 0x3f));
		}
	}
	out[o] = '\0';
	return 0;
}

static unsigned int varint(const uint8_t *t, size_t n, size_t *i)
{
	unsigned int v = 0, shift = 0;
	uint8_t b;

	do {
		if (*i >= n || shift > 28)
			return v;
		b = t[(*i)++];
		v |= (unsigned int)(b & 63) << shift;
		shift += 6;
	} while (b & 64);
	return v;
}

static int svarint(const uint8_t *t, size_t n, size_t *i)
{
	unsigned int v = varint(t, n, i);

	return v & 1 ? -(int)(v >> 1) : (int)(v >> 1);
}

/* The line of code unit `unit` per the 3.11 location table (CPython's
 * Objects/locations.md): entries of (b & 7) + 1 units carry a line delta. */
static int line_of(const struct code *c, long unit)
{
	const uint8_t *t = c->linetable;
	size_t i = 0, n = c->linetable_len;
	long addr = 0;
	int line = (int)c->firstlineno;

	if (unit < 0)
		return (int)c->firstlineno;
	while (i < n) {
		uint8_t b = t[i++];
		int code = (b >> 3) & 15, delta = 0, has = 1;

		if (!(b & 0x80))
			break; /* lost sync: give what we have */
		if (code == 15) {
			has = 0;
		} else if (code == 14) {
			delta = svarint(t, n, &i);
			varint(t, n, &i);
			varint(t, n, &i);
			varint(t, n, &i);
		} else if (code == 13) {
			delta = svarint(t, n, &i);
		} else if (code >= 10) {
			delta = code - 10;
			i += 2;
		} else {
			i += 1;
		}
		line += delta;
		addr += (b & 7) + 1;
		if (unit < addr)
			return has ? line : (int)c->firstlineno;
	}
	return line;
}

static void free_code(struct code *c)
{
	if (c)
		free(c->linetable);
	free(c);
}

/* Reads the code object at addr; NULL when it is not one (counted). */
static struct code *load_code(struct py *py, const struct proc *p, uint64_t addr,
			      uint32_t firstlineno)
{
	const struct py_layout *l = &p->l;
	uint8_t obj[256];
	char name[MAX_NAME], file[PATH_MAX];
	uint64_t type, qn, fn, lt;
	int64_t ltlen = 0;
	int32_t first;
	struct code *c = NULL;

	if (read_exact(py, p->pid, addr, obj, l->co_code)) {
		py->symbol_read++;
		return NULL;
	}
	memcpy(&type, obj + 8, sizeof(type));
	memcpy(&first, obj + l->co_firstlineno, sizeof(first));
	if (type != p->code_type || ((uint32_t)first & 0xffffff) != firstlineno) {
		py->stale++;
		return NULL;
	}
	memcpy(&qn, obj + l->co_qualname, sizeof(qn));
	memcpy(&fn, obj + l->co_filename, sizeof(fn));
	memcpy(&lt, obj + l->co_linetable, sizeof(lt));
	c = calloc(1, sizeof(*c));
	if (!c || read_str(py, p, qn, name, sizeof(name)) ||
	    read_str(py, p, fn, file, sizeof(file)))
		goto fail;
	c->pid = p->pid;
	c->addr = addr;
	c->firstlineno = (uint32_t)first;
	c->qualname = plugin_strings_intern(&py->strings, name);
	c->filename = plugin_strings_intern(&py->strings, file);
	if (!c->qualname || !c->filename)
		goto fail;
	if (lt && !read_exact(py, p->pid, lt + l->bytes_size, &ltlen, sizeof(ltlen)) && ltlen > 0 &&
	    ltlen <= MAX_LINETABLE) {
		c->linetable = malloc((size_t)ltlen);
		if (c->linetable &&
		    !read_exact(py, p->pid, lt + l->bytes_data, c->linetable, (size_t)ltlen))
			c->linetable_len = (size_t)ltlen;
	}
	return c;
fail:
	py->symbol_read++;
	free_code(c);
	return NULL;
}

static int py_symbolize(void *state, uint32_t pid, uint64_t word, uint64_t payload,
			struct sonde_plugin_frame *frames, int max)
{
	struct py *py = state;
	uint32_t first = (uint32_t)(word >> 32) & 0xffffff, off = (uint32_t)word;
	struct code **pc, *c;
	struct proc *p;
	long unit;

	if (!py || max < 1)
		return 0;
	p = find_proc(py, pid);
	if (!p || p->pending)
		return 0;
	pc = &py->codes[hash64(payload ^ ((uint64_t)pid << 48)) % NBUCKETS];
	for (c = *pc; c; c = c->next)
		if (c->pid == pid && c->addr == payload)
			break;
	if (c && (c->firstlineno & 0xffffff) != first) {
		/* Freed and replaced since we read it: read it again. */
		struct code **pp;

		for (pp = pc; *pp != c; pp = &(*pp)->next)
			;
		*pp = c->next;
		free_code(c);
		c = NULL;
	}
	if (!c) {
		c = load_code(py, p, payload, first);
		if (!c)
			return 0;
		c->next = *pc;
		*pc = c;
	}
	unit = off >= p->l.co_code ? (long)(off - p->l.co_code) / 2 : -1;
	frames[0] = (struct sonde_plugin_frame){
		.function = c->qualname, .file = c->filename, .line = (uint32_t)line_of(c, unit)};
	return 1;
}

/* The interpreter mapped in pid: path of libpython3.X.so if mapped, else of
 * the python3.X executable; its minor from the name; its first mapping. A
 * shared build offered at exec has no libpython mapped yet: the caller
 * sees the executable's DT_NEEDED and waits. */
static int find_interpreter(uint32_t pid, char *path, size_t pathlen, int *minor, uint64_t *start)
{
	char maps[64], line[PATH_MAX + 128];
	bool lib = false;
	FILE *f;
	int ret = -ENOENT;

	snprintf(maps, sizeof(maps), "/proc/%u/maps", pid);
	f = fopen(maps, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, off;
		char *file = strchr(line, '/'), *base;
		int m, n = 0;

		if (!file || sscanf(line, "%lx-%*x %*s %lx", &lo, &off) != 2 || off)
			continue;
		file[strcspn(file, "\n")] = '\0';
		base = strrchr(file, '/') + 1;
		if (sscanf(base, "libpython3.%d%n", &m, &n) == 1 && !strncmp(base + n, ".so", 3)) {
			lib = true; /* a shared build: the interpreter lives here */
		} else if (!ret || sscanf(base, "python3.%d%n", &m, &n) != 1 || base[n] != '\0') {
			continue;
		}
		snprintf(path, pathlen, "%s", file);
		*minor = m;
		*start = lo;
		ret = 0;
		if (lib)
			break;
	}
	fclose(f);
	return ret;
}

/*
 * The layout of pthread keys in the libc the process maps, from the
 * descriptors glibc exports for libthread_db (a field's: size in bits,
 * count, offset; a struct size: bytes): struct pthread's specific[] (the second-level
 * pointers) follows specific_1stblock[], whose entries are struct
 * pthread_key_data (seq, data). So a key's value in the first block is at
 * tp + specific.offset - sizeof(level2 block) + key * sizeof(key_data) +
 * data.offset. 0, or -ENOENT (no libc.so mapped, no descriptors, or values
 * out of bounds: the caller keeps glibc 2.36's numbers).
 */
static int glibc_tsd(uint32_t pid, struct glibc_tsd *out)
{
	struct plugin_dynsym want[] = { { .name = "_thread_db_pthread_specific" },
					{ .name = "_thread_db_pthread_key_data_data" },
					{ .name = "_thread_db_sizeof_pthread_key_data" },
					{ .name = "_thread_db_sizeof_pthread_key_data_level2" } };
	char maps[64], line[PATH_MAX + 128], file[PATH_MAX + 32] = "";
	uint32_t specific, data, stride, level2;
	uint64_t base_vaddr;
	size_t i;
	FILE *f;

	snprintf(maps, sizeof(maps), "/proc/%u/maps", pid);
	f = fopen(maps, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char *path = strchr(line, '/'), *base;

		if (!path)
			continue;
		path[strcspn(path, "\n")] = '\0';
		base = strrchr(path, '/') + 1;
		if (!strncmp(base, "libc.so.", 8) || !strcmp(base, "libc.so")) {
			snprintf(file, sizeof(file), "/proc/%u/root%s", pid, path);
			break;
		}
	}
	fclose(f);
	if (!file[0] || plugin_elf_dynsyms(file, want, sizeof(want) / sizeof(want[0]), &base_vaddr))
		return -ENOENT;
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (want[i].nwords < (i < 2 ? 3 : 1))
			return -ENOENT;
	specific = want[0].words[2]; /* fields: {bits, count, offset} */
	data = want[1].words[2];
	stride = want[2].words[0]; /* sizes: bytes */
	level2 = want[3].words[0];
	if (stride < 8 || stride > 64 || level2 < stride || level2 > specific || data >= stride)
		return -ENOENT;
	*out = (struct glibc_tsd){ .base = specific - level2 + data,
				   .stride = stride,
				   .keys = level2 / stride };
	return 0;
}

/* The walker reads these in one PY_FRAME_HEAD-byte read; the symbolizer
 * reads a code object's head into 256 bytes and a str's into 80. */
static bool layout_fits(const struct py_layout *l)
{
	const uint32_t offs[] = {l->fr_code, l->fr_previous, l->fr_instr};
	size_t i;

	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
		if (offs[i] % 8 || offs[i] + 8 > PY_FRAME_HEAD)
			return false;
	return l->fr_entry < PY_FRAME_HEAD && l->co_code <= 256 && l->co_firstlineno + 4 <= 256 &&
	       l->co_filename + 8 <= 256 && l->co_qualname + 8 <= 256 &&
	       l->co_linetable + 8 <= 256 && l->str_utf8 + 8 <= 80 && l->str_state + 4 <= 80 &&
	       l->str_length + 8 <= 80 && l->str_utf8_length + 8 <= 80;
}

struct syms {
	uint64_t runtime, runtime_size, code_type;
	uint64_t eval, eval_size; /* _PyEval_EvalFrameDefault: where frames hand over */
	uint64_t gil_this;	  /* PyGILState_GetThisThreadState: reads the tstate key */
	uint32_t version;
	bool has_version;
	uint64_t base_vaddr; /* p_vaddr - p_offset of the segment at file offset 0 */
};

static int read_syms(const char *file, struct syms *s)
{
	struct plugin_dynsym want[] = { { .name = "_PyRuntime" },
					{ .name = "PyCode_Type" },
					{ .name = "Py_Version" },
					{ .name = "_PyEval_EvalFrameDefault" },
					{ .name = "PyGILState_GetThisThreadState" } };
	int ret;

	memset(s, 0, sizeof(*s));
	ret = plugin_elf_dynsyms(file, want, sizeof(want) / sizeof(want[0]), &s->base_vaddr);
	if (ret)
		return ret;
	s->runtime = want[0].addr;
	s->runtime_size = want[0].size;
	s->code_type = want[1].addr;
	s->version = want[2].value;
	s->has_version = want[2].has_value;
	s->eval = want[3].addr;
	s->eval_size = want[3].size;
	s->gil_this = want[4].addr;
	return s->runtime && s->code_type ? 0 : -ENOENT;
}

/* Whether the ELF file asks for a libpython3.X.so (DT_NEEDED): a python3.X
 * of a shared build, before ld.so has mapped the library. */
static bool needs_libpython(const char *file)
{
	Elf_Scn *scn = NULL;
	bool found = false;
	Elf *elf = NULL;
	GElf_Shdr sh;
	int fd;

	elf_version(EV_CURRENT);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	elf = elf_begin(fd, ELF_C_READ, NULL);
	while (elf && !found && (scn = elf_nextscn(elf, scn))) {
		Elf_Data *d;
		size_t i;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_DYNAMIC || !sh.sh_entsize)
			continue;
		d = elf_getdata(scn, NULL);
		for (i = 0; d && !found && i < sh.sh_size / sh.sh_entsize; i++) {
			GElf_Dyn dyn;
			const char *name;

			if (!gelf_getdyn(d, (int)i, &dyn) || dyn.d_tag != DT_NEEDED)
				continue;
			name = elf_strptr(elf, sh.sh_link, dyn.d_un.d_val);
			found = name && !strncmp(name, "libpython3.", 11);
		}
	}
	elf_end(elf);
	close(fd);
	return found;
}

/*
 * The code object's offsets from PyCode_Type in the process: its
 * tp_basicsize is offsetof(PyCodeObject, co_code_adaptive), its tp_members
 * (PyMemberDef: name, type, offset, flags, doc; 40 bytes) name the co_*
 * fields (Objects/codeobject.c, code_memberlist). PyTypeObject's head is
 * the stable ABI: tp_basicsize at 32, tp_members at 240. -EAGAIN while the
 * table's pointers are not relocated yet (a process at exec).
 */
static int code_from_type(struct py *py, uint32_t pid, uint64_t code_type, struct py_layout *l,
			  char *reason, size_t reasonlen)
{
	struct {
		const char *name;
		uint32_t *off;
	} want[] = { { "co_firstlineno", &l->co_firstlineno },
		     { "co_filename", &l->co_filename },
		     { "co_qualname", &l->co_qualname },
		     { "co_linetable", &l->co_linetable } };
	uint8_t type[248], defs[64 * 40];
	uint64_t members, name_at;
	int64_t basicsize, off;
	size_t i, k, found = 0;
	char name[32];

	if (read_exact(py, pid, code_type, type, sizeof(type)))
		return -EAGAIN;
	memcpy(&basicsize, type + 32, sizeof(basicsize));
	memcpy(&members, type + 240, sizeof(members));
	if (!members || read_exact(py, pid, members, defs, sizeof(defs)))
		return -EAGAIN;
	for (i = 0; i < 64; i++) {
		memcpy(&name_at, defs + i * 40, sizeof(name_at));
		memcpy(&off, defs + i * 40 + 16, sizeof(off));
		if (!name_at)
			break;
		if (py->api->read_memory(py->host, pid, name_at, name, sizeof(name)) <= 0)
			return -EAGAIN; /* not relocated yet */
		name[sizeof(name) - 1] = '\0';
		for (k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
			if (strcmp(name, want[k].name) || off <= 0 || off > 1024)
				continue;
			*want[k].off = (uint32_t)off;
			found |= 1u << k;
		}
	}
	for (k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
		if (!(found & (1u << k))) {
			snprintf(reason, reasonlen, "python 3.%d: PyCode_Type has no member %s",
				 l->minor, want[k].name);
			return SONDE_DECLINE;
		}
	}
	if (basicsize <= 0 || basicsize > 256) {
		snprintf(reason, reasonlen,
			 "python 3.%d: PyCode_Type's size %" PRId64 " unexpected", l->minor,
			 basicsize);
		return SONDE_DECLINE;
	}
	l->co_code = (uint32_t)basicsize;
	return 0;
}

/* Offsets in _Py_DebugOffsets, 3.13 (Include/internal/pycore_runtime.h):
 * each a uint64_t at this offset from the struct's start. */
enum {
	DO_VERSION = 8,
	DO_FREE_THREADED = 16,
	DO_TS_CURRENT_FRAME = 184,
	DO_TS_NATIVE_THREAD_ID = 200,
	DO_FR_PREVIOUS = 232,
	DO_FR_EXECUTABLE = 240,
	DO_FR_INSTR_PTR = 248,
	DO_FR_OWNER = 264,
	DO_CO_SIZE = 272,
	DO_CO_FILENAME = 280,
	DO_CO_QUALNAME = 296,
	DO_CO_LINETABLE = 304,
	DO_CO_FIRSTLINENO = 312,
	DO_CO_CODE_ADAPTIVE = 344,
	DO_BYTES_OB_SIZE = 520,
	DO_BYTES_OB_SVAL = 528,
	DO_STR_STATE = 544,
	DO_STR_LENGTH = 552,
	DO_STR_ASCII_SIZE = 560,
	DO__SIZE = 584, /* 3.13.0 */
};

/*
 * 3.13: the interpreter describes itself in the _Py_DebugOffsets that
 * starts _PyRuntime (cookie "xdebugpy", then the version it was built
 * as). The str offsets past PyASCIIObject follow PyCompactUnicodeObject
 * (utf8_length, utf8, then the data).
 */
static int from_debug_offsets(struct py *py, uint32_t pid, uint64_t runtime, struct py_layout *l,
			      char *reason, size_t reasonlen)
{
	uint8_t d[DO__SIZE];
	uint64_t v;

#define DO(off) (memcpy(&v, d + (off), sizeof(v)), v > 4096 ? UINT32_MAX : (uint32_t)v)
	if (read_exact(py, pid, runtime, d, sizeof(d)))
		return -EAGAIN;
	if (memcmp(d, "xdebugpy", 8)) {
		snprintf(reason, reasonlen, "python 3.%d: no _Py_DebugOffsets in _PyRuntime",
			 l->minor);
		return SONDE_DECLINE;
	}
	memcpy(&v, d + DO_VERSION, sizeof(v));
	if ((v >> 24) != 3 || (int)((v >> 16) & 0xff) != l->minor) {
		snprintf(reason, reasonlen, "python 3.%d: _Py_DebugOffsets of version 0x%" PRIx64,
			 l->minor, v);
		return SONDE_DECLINE;
	}
	memcpy(&v, d + DO_FREE_THREADED, sizeof(v));
	if (v) {
		snprintf(reason, reasonlen, "python 3.%d: free-threaded build not supported",
			 l->minor);
		return SONDE_DECLINE;
	}
	l->ts_frame = DO(DO_TS_CURRENT_FRAME);
	l->ts_thread_id = DO(DO_TS_NATIVE_THREAD_ID);
	l->fr_code = DO(DO_FR_EXECUTABLE);
	l->fr_previous = DO(DO_FR_PREVIOUS);
	l->fr_instr = DO(DO_FR_INSTR_PTR);
	l->fr_entry = DO(DO_FR_OWNER);
	l->co_firstlineno = DO(DO_CO_FIRSTLINENO);
	l->co_filename = DO(DO_CO_FILENAME);
	l->co_qualname = DO(DO_CO_QUALNAME);
	l->co_linetable = DO(DO_CO_LINETABLE);
	l->co_code = DO(DO_CO_CODE_ADAPTIVE);
	l->bytes_size = DO(DO_BYTES_OB_SIZE);
	l->bytes_data = DO(DO_BYTES_OB_SVAL);
	l->str_state = DO(DO_STR_STATE);
	l->str_length = DO(DO_STR_LENGTH);
	l->str_ascii_data = DO(DO_STR_ASCII_SIZE);
	l->str_utf8_length = l->str_ascii_data;
	l->str_utf8 = l->str_ascii_data + 8;
	l->str_data = l->str_ascii_data + 16;
	if (l->co_code > DO(DO_CO_SIZE) || l->ts_frame > 4096 || l->ts_thread_id > 4096) {
		snprintf(reason, reasonlen, "python 3.%d: _Py_DebugOffsets out of range", l->minor);
		return SONDE_DECLINE;
	}
#undef DO
	return 0;
}

/*
 * The offset of the thread state's pthread key in _PyRuntime, from the
 * code of PyGILState_GetThisThreadState, which reads it (otel's decodeStub
 * does the same): either `mov disp(%rip),%edi` of the key itself (a static
 * build, 3.11), or the runtime's address from the GOT (`mov disp(%rip),%rax`)
 * then `lea disp32(%rax),%reg` of the Py_tss_t, whose key is at +4 (shared
 * builds). 0 when neither is found.
 */
static uint32_t decode_tss_key(struct py *py, uint32_t pid, uint64_t fn, uint64_t runtime,
			       uint64_t runtime_size)
{
	uint8_t c[64];
	bool base_in_rax = false;
	uint64_t got, at;
	int32_t disp;
	size_t i;

	if (!fn || read_exact(py, pid, fn, c, sizeof(c)))
		return 0;
	for (i = 0; i + 7 <= sizeof(c); i++) {
		if (c[i] == 0x48 && c[i + 1] == 0x8b && c[i + 2] == 0x05) {
			memcpy(&disp, c + i + 3, sizeof(disp));
			at = fn + i + 7 + (uint64_t)(int64_t)disp;
			base_in_rax = !read_exact(py, pid, at, &got, sizeof(got)) && got == runtime;
		} else if (c[i] == 0x8b && c[i + 1] == 0x3d) {
			memcpy(&disp, c + i + 2, sizeof(disp));
			at = fn + i + 6 + (uint64_t)(int64_t)disp;
			if (at > runtime && at < runtime + runtime_size)
				return (uint32_t)(at - runtime);
		} else if (base_in_rax && c[i] == 0x48 && c[i + 1] == 0x8d &&
			   (c[i + 2] & 0xc7) == 0x80) {
			memcpy(&disp, c + i + 3, sizeof(disp));
			if (disp > 0 && (uint64_t)disp + 8 <= runtime_size)
				return (uint32_t)disp + 4;
		}
	}
	return 0;
}

/* Whether the pthread key at addr has been created (Py_tss_t's
 * _is_initialized, 4 bytes before it, is 1). */
static bool tss_created(struct py *py, uint32_t pid, uint64_t addr)
{
	int32_t tss[2];

	return !read_exact(py, pid, addr - 4, tss, sizeof(tss)) && tss[0] == 1;
}

/*
 * Where a native walker (unwind-native) hands frames over to this plugin's
 * walker: the eval loop. Without it (a sonded before host ABI 1.4, no
 * symbol, no room) the Python frames still come, before the native ones.
 */
static void set_handover(struct py *py, uint32_t pid, const struct syms *s, uint64_t bias)
{
	const struct sonde_host_api *api = py->api;
	uint64_t range[2] = { bias + s->eval, bias + s->eval + s->eval_size };
	int rc;

	if (api->size < offsetof(struct sonde_host_api, set_handover) + sizeof(api->set_handover) ||
	    !s->eval || !s->eval_size)
		return;
	rc = api->set_handover(py->host, pid, range, 1);
	if (rc)
		api->log(py->host, SONDE_PLUGIN_LOG_WARN,
			 "pid %u: Python frames will not be merged with native ones: %s", pid,
			 strerror(-rc));
}

/*
 * Sets pid up: its layout into p, its offsets into py_procs. 0; -EAGAIN
 * when its interpreter has not started far enough to be read (try again
 * later); SONDE_DECLINE with the reason; or -errno.
 */
static int setup(struct py *py, uint32_t pid, struct proc *p, char *reason, size_t reasonlen)
{
	const struct py_layout *v = NULL;
	char path[PATH_MAX], file[PATH_MAX + 32];
	struct glibc_tsd tsd = { 0 };
	struct py_layout l;
	struct py_proc bp;
	struct syms s;
	uint64_t start = 0, bias, key_addr;
	uint32_t key_off;
	const char *key_from = "PyGILState_GetThisThreadState";
	int minor = 0, rc;
	size_t i;

	if (find_interpreter(pid, path, sizeof(path), &minor, &start)) {
		snprintf(reason, reasonlen, "not CPython: no python3.X or libpython3.X mapped");
		return SONDE_DECLINE;
	}
	snprintf(file, sizeof(file), "/proc/%u/root%s", pid, path);
	rc = read_syms(file, &s);
	if (rc == -ENOENT)
		rc = read_syms(path, &s);
	if (rc && !strstr(path, "/libpython3.") && (needs_libpython(file) || needs_libpython(path)))
		return -EAGAIN; /* ld.so has yet to map libpython */
	if (rc) {
		snprintf(reason, reasonlen, "%s: no _PyRuntime or PyCode_Type symbol", path);
		return SONDE_DECLINE;
	}
	if (s.has_version) {
		if ((s.version >> 24) != 3) {
			snprintf(reason, reasonlen, "python %u.%u not supported", s.version >> 24,
				 (s.version >> 16) & 0xff);
			return SONDE_DECLINE;
		}
		minor = (int)((s.version >> 16) & 0xff);
	}
	for (i = 0; i < sizeof(versions) / sizeof(versions[0]); i++)
		if (versions[i].minor == minor)
			v = &versions[i];
	if (!v) {
		snprintf(reason, reasonlen, "python 3.%d not supported yet", minor);
		return SONDE_DECLINE;
	}
	l = *v;
	bias = start - s.base_vaddr;
	rc = l.debug_offsets ? from_debug_offsets(py, pid, bias + s.runtime, &l, reason, reasonlen)
			     : code_from_type(py, pid, bias + s.code_type, &l, reason, reasonlen);
	if (rc)
		return rc;
	if (!layout_fits(&l)) { /* a layout the walker or the symbolizer cannot read */
		snprintf(reason, reasonlen, "python 3.%d: layout out of the walker's reach", minor);
		return SONDE_DECLINE;
	}
	key_off = decode_tss_key(py, pid, s.gil_this ? bias + s.gil_this : 0, bias + s.runtime,
				 s.runtime_size);
	if (!key_off) {
		key_off = l.rt_tss_key;
		key_from = "versions[]";
	}
	key_addr = bias + s.runtime + key_off;
	if (!tss_created(py, pid, key_addr))
		return -EAGAIN; /* before Py_Initialize: nothing to walk yet */
	if (glibc_tsd(pid, &tsd))
		tsd = (struct glibc_tsd){ GLIBC_TSD_BASE, GLIBC_TSD_STRIDE, GLIBC_TSD_KEYS };
	bp = (struct py_proc){
		.tss_key = key_addr,
		.gil_tstate = l.rt_gil_tstate ? bias + s.runtime + l.rt_gil_tstate : 0,
		.tsd_base = tsd.base,
		.tsd_stride = tsd.stride,
		.tsd_keys = tsd.keys,
		.ts_frame = l.ts_frame,
		.ts_thread_id = l.ts_thread_id,
		.cf_frame = l.cf_frame,
		.fr_code = l.fr_code,
		.fr_previous = l.fr_previous,
		.fr_instr = l.fr_instr,
		.co_firstlineno = l.co_firstlineno,
		.fr_entry = l.fr_entry,
		.entry_val = l.entry_val,
		.entry_shim = l.entry_shim,
		.frame_hops = l.frame_hops,
	};
	if (bpf_map_update_elem(bpf_map__fd(py->skel->maps.py_procs), &pid, &bp, BPF_ANY)) {
		rc = -errno;
		snprintf(reason, reasonlen, "py_procs: %s", strerror(-rc));
		return rc;
	}
	p->code_type = bias + s.code_type;
	p->l = l;
	set_handover(py, pid, &s, bias);
	py->api->log(py->host, SONDE_PLUGIN_LOG_DEBUG,
		     "pid %u: python 3.%d (%s), bias 0x%" PRIx64 "; code object from %s "
		     "(co_firstlineno %u, co_code_adaptive %u), thread state key at "
		     "_PyRuntime+%u (from %s), pthread keys at tp+%u", pid, minor, path, bias,
		     l.debug_offsets ? "_Py_DebugOffsets" : "PyCode_Type", l.co_firstlineno,
		     l.co_code, key_off, key_from, tsd.base);
	return 0;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* How long a process offered before its interpreter started may take to
 * start it; and how often it is looked at meanwhile. */
#define PENDING_MS 30000
#define TICK_MS	   50

static void set_status(struct py *py, uint32_t pid, int attached, const char *reason)
{
	const struct sonde_host_api *api = py->api;

	if (api->size >= offsetof(struct sonde_host_api, process_status) +
				 sizeof(api->process_status) &&
	    api->process_status)
		api->process_status(py->host, pid, attached, reason);
}

static void drop_proc(struct py *py, uint32_t pid);

/* Pending processes whose interpreter has started since: set up, or
 * declined now (shown by `sondectl ps`). */
static void py_tick(void *ctx)
{
	struct py *py = ctx;
	struct proc *p, *next;
	char reason[128];
	uint64_t now = 0;
	int rc;

	for (p = py->procs; p; p = next) {
		next = p->next;
		if (!p->pending)
			continue;
		reason[0] = '\0';
		rc = setup(py, p->pid, p, reason, sizeof(reason));
		if (rc == -EAGAIN) {
			if (!now)
				now = now_ms();
			if (now < p->give_up_ms)
				continue;
			snprintf(reason, sizeof(reason),
				 "python: interpreter not started after %d s", PENDING_MS / 1000);
		}
		if (!rc) {
			p->pending = false;
			continue;
		}
		if (rc < 0 && rc != -EAGAIN)
			snprintf(reason, sizeof(reason), "%s", strerror(-rc));
		set_status(py, p->pid, 0, reason);
		drop_proc(py, p->pid);
	}
}

static int py_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		     size_t reasonlen)
{
	struct py *py = state;
	struct proc *p;
	bool added = false;
	int rc;

	p = find_proc(py, proc->pid);
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p)
			return -ENOMEM;
		p->pid = proc->pid;
		added = true;
	}
	p->pending = false;
	rc = setup(py, proc->pid, p, reason, reasonlen);
	if (rc == -EAGAIN) {
		p->pending = true;
		p->give_up_ms = now_ms() + PENDING_MS;
		rc = 0;
	}
	if (rc) {
		if (added)
			free(p);
		else
			drop_proc(py, proc->pid);
		return rc;
	}
	if (added) {
		p->next = py->procs;
		py->procs = p;
	}
	return 0;
}

/* Forgets pid: its offsets, its layout, its code objects. */
static void drop_proc(struct py *py, uint32_t pid)
{
	struct proc **pp, *p;
	size_t b;

	bpf_map_delete_elem(bpf_map__fd(py->skel->maps.py_procs), &pid);
	for (pp = &py->procs; (p = *pp);) {
		if (p->pid == pid) {
			*pp = p->next;
			free(p);
		} else {
			pp = &p->next;
		}
	}
	for (b = 0; b < NBUCKETS; b++) {
		struct code **pc = &py->codes[b], *c;

		while ((c = *pc)) {
			if (c->pid == pid) {
				*pc = c->next;
				free_code(c);
			} else {
				pc = &c->next;
			}
		}
	}
}

static void py_detach(void *state, uint32_t pid)
{
	drop_proc(state, pid);
}

static const char *const error_names[PY_ERR__COUNT] = {
	[PY_ERR_NO_TSTATE] = "no_thread_state", [PY_ERR_READ] = "read_fault",
	[PY_ERR_TRUNCATED] = "truncated",	[PY_ERR_NO_PROC] = "no_offsets",
	[PY_ERR_STALE] = "stale_code_object",	[PY_ERR_SYMBOL_READ] = "symbol_read",
};

static int py_write_metrics(void *state, FILE *out)
{
	struct py *py = state;
	uint64_t sums[PY_ERR__COUNT] = { 0 }, walk[PY_WALK__COUNT] = { 0 };
	uint32_t r;
	int err;

	err = plugin_percpu_sums(bpf_map__fd(py->skel->maps.py_errors), PY_ERR__BPF, sums);
	if (!err)
		err = plugin_percpu_sums(bpf_map__fd(py->skel->maps.py_walk), PY_WALK__COUNT, walk);
	if (err)
		return err;
	sums[PY_ERR_STALE] = py->stale;
	sums[PY_ERR_SYMBOL_READ] = py->symbol_read;
	fprintf(out, "# HELP sonde_unwind_python_errors_total Python stacks not fully unwound "
		     "or frames not named, by reason.\n"
		     "# TYPE sonde_unwind_python_errors_total counter\n");
	for (r = 0; r < PY_ERR__COUNT; r++)
		fprintf(out, "sonde_unwind_python_errors_total{reason=\"%s\"} %" PRIu64 "\n",
			error_names[r], sums[r]);
	fprintf(out,
		"# HELP sonde_unwind_python_walks_total Python stack walks (samples of processes "
		"with offsets).\n"
		"# TYPE sonde_unwind_python_walks_total counter\n"
		"sonde_unwind_python_walks_total %" PRIu64 "\n"
		"# HELP sonde_unwind_python_frames_total Python frames the walks emitted.\n"
		"# TYPE sonde_unwind_python_frames_total counter\n"
		"sonde_unwind_python_frames_total %" PRIu64 "\n"
		"# HELP sonde_unwind_python_walk_seconds_total BPF time in Python walks, timed by "
		"the walker (native part excluded).\n"
		"# TYPE sonde_unwind_python_walk_seconds_total counter\n"
		"sonde_unwind_python_walk_seconds_total %.9f\n"
		"# HELP sonde_unwind_python_code_cache_hits_total Frames whose code object's "
		"first line the walker had cached (not read).\n"
		"# TYPE sonde_unwind_python_code_cache_hits_total counter\n"
		"sonde_unwind_python_code_cache_hits_total %" PRIu64 "\n",
		walk[PY_WALK_RUNS], walk[PY_WALK_FRAMES], (double)walk[PY_WALK_NS] / 1e9,
		walk[PY_WALK_CODE_HITS]);
	return 0;
}

static void py_fini(void *state);

static void *py_init(const struct sonde_host_api *api, struct sonde_host *host,
		     const void *settings, char *err, size_t errlen)
{
	struct py *py = calloc(1, sizeof(*py));
	int kind, rc, slot;

	(void)settings;
	if (!py) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	py->api = api;
	py->host = host;
	kind = api->register_frame_kind(host, "python", py_symbolize);
	py->skel = python_bpf__open();
	if (kind < 0 || !py->skel) {
		snprintf(err, errlen, "cannot open the unwinder (%s)",
			 strerror(kind < 0 ? -kind : errno));
		goto fail;
	}
	py->skel->rodata->py_kind = (uint64_t)kind;
	rc = plugin_reuse_core_maps(api, host, py->skel->obj);
	if (!rc)
		rc = python_bpf__load(py->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the unwinder: %s", strerror(-rc));
		goto fail;
	}
	slot = api->register_unwinder(host, "python",
				      bpf_program__fd(py->skel->progs.unwind_python));
	if (slot < 0) {
		snprintf(err, errlen, "no unwinder slot: %s", strerror(-slot));
		goto fail;
	}
	py->timer = api->add_timer(host, TICK_MS, TICK_MS, py_tick, py);
	if (!py->timer) {
		snprintf(err, errlen, "no timer: %s", strerror(errno ? errno : ENOMEM));
		goto fail;
	}
	api->log(host, SONDE_PLUGIN_LOG_INFO, "frame kind %d, unwinder slot %d", kind, slot);
	return py;
fail:
	py_fini(py);
	return NULL;
}

static void py_fini(void *state)
{
	struct py *py = state;
	struct proc *p;
	size_t b;

	if (!py)
		return;
	if (py->timer)
		py->api->cancel_timer(py->host, py->timer);
	python_bpf__destroy(py->skel);
	while ((p = py->procs)) {
		py->procs = p->next;
		free(p);
	}
	for (b = 0; b < NBUCKETS; b++) {
		struct code *c;

		while ((c = py->codes[b])) {
			py->codes[b] = c->next;
			free_code(c);
		}
	}
	plugin_strings_release(&py->strings);
	free(py);
}

const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "unwind-python",
	.version = "0.1",
	.description = "CPython 3.11-3.13 frames (function, file, line) in the stacks",
	.init = py_init,
	.fini = py_fini,
	.attach_process = py_attach,
	.detach_process = py_detach,
	.write_metrics = py_write_metrics,
};
