// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-python: Python functions in the stacks of CPython 3.11
 * processes, with qualified name, file and line.
 *
 * attach_process finds the interpreter (the python3.X executable or
 * libpython3.X.so mapped), reads its version from Py_Version and fills the
 * process's offsets into py_procs; the BPF walker (python.bpf.c) emits one
 * interpreter frame per Python function, innermost first, before the
 * frame-pointer walk. The symbolizer reads the code object back from the
 * process, checks that it still is one, and decodes its location table.
 *
 * This increment puts all Python frames of the thread before the native
 * ones; merging them in place into a DWARF-unwound native stack is next.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <sonde/plugin.h>

#include "plugin_util.h"

#include "python.h"
#include "python.skel.h"

/* Layout facts of one CPython minor version, x86-64. 3.11: verified with gdb
 * and python3.11-dbg against Debian 12's 3.11.2 and pyenv's 3.11.7. */
struct py_layout {
	int minor;
	uint32_t rt_tss_key;	/* _PyRuntime.gilstate.autoTSSkey._key */
	uint32_t rt_gil_tstate; /* _PyRuntime.gilstate.tstate_current */
	uint32_t ts_cframe, ts_thread_id, cf_frame;
	uint32_t fr_code, fr_previous, fr_instr, fr_is_entry;
	uint32_t co_firstlineno, co_filename, co_qualname, co_linetable, co_code;
	uint32_t str_length, str_state, str_ascii_data, str_utf8_length, str_utf8, str_data;
	uint32_t bytes_size, bytes_data;
};

static const struct py_layout layouts[] = {
	{.minor = 11,
	 .rt_tss_key = 596,
	 .rt_gil_tstate = 576,
	 .ts_cframe = 56,
	 .ts_thread_id = 160,
	 .cf_frame = 8,
	 .fr_code = 32,
	 .fr_previous = 48,
	 .fr_instr = 56,
	 .fr_is_entry = 68,
	 .co_firstlineno = 72,
	 .co_filename = 112,
	 .co_qualname = 128,
	 .co_linetable = 136,
	 .co_code = 184,
	 .str_length = 16,
	 .str_state = 32,
	 .str_ascii_data = 48,
	 .str_utf8_length = 48,
	 .str_utf8 = 56,
	 .str_data = 72,
	 .bytes_size = 16,
	 .bytes_data = 32},
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
	uint64_t code_type; /* &PyCode_Type in the process */
	const struct py_layout *l;
};

struct py {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	struct python_bpf *skel;
	struct proc *procs;
	struct code *codes[NBUCKETS];
	struct plugin_strings strings; /* names handed to the core, until fini */
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
	const struct py_layout *l = p->l;
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
	const struct py_layout *l = p->l;
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
	if (!p)
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
	unit = off >= p->l->co_code ? (long)(off - p->l->co_code) / 2 : -1;
	frames[0] = (struct sonde_plugin_frame){
		.function = c->qualname, .file = c->filename, .line = (uint32_t)line_of(c, unit)};
	return 1;
}

/* The interpreter mapped in pid: path of libpython3.X.so if mapped, else of
 * the python3.X executable; its minor from the name; its first mapping. A
 * shared build offered at exec has no libpython mapped yet: declined (next:
 * follow the executable's DT_NEEDED). */
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

/* The walker reads these in one PY_FRAME_HEAD-byte read. */
static bool frame_head_fits(const struct py_layout *l)
{
	const uint32_t offs[] = {l->fr_code, l->fr_previous, l->fr_instr};
	size_t i;

	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
		if (offs[i] % 8 || offs[i] + 8 > PY_FRAME_HEAD)
			return false;
	return l->fr_is_entry < PY_FRAME_HEAD;
}

struct syms {
	uint64_t runtime, code_type;
	uint64_t eval, eval_size; /* _PyEval_EvalFrameDefault: where frames hand over */
	uint32_t version;
	bool has_version;
	uint64_t base_vaddr; /* p_vaddr - p_offset of the segment at file offset 0 */
};

static int read_syms(const char *file, struct syms *s)
{
	struct plugin_dynsym want[] = { { .name = "_PyRuntime" },
					{ .name = "PyCode_Type" },
					{ .name = "Py_Version" },
					{ .name = "_PyEval_EvalFrameDefault" } };
	int ret;

	memset(s, 0, sizeof(*s));
	ret = plugin_elf_dynsyms(file, want, sizeof(want) / sizeof(want[0]), &s->base_vaddr);
	if (ret)
		return ret;
	s->runtime = want[0].addr;
	s->code_type = want[1].addr;
	s->version = want[2].value;
	s->has_version = want[2].has_value;
	s->eval = want[3].addr;
	s->eval_size = want[3].size;
	return s->runtime && s->code_type ? 0 : -ENOENT;
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

static int py_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		     size_t reasonlen)
{
	struct py *py = state;
	const struct py_layout *l = NULL;
	char path[PATH_MAX], file[PATH_MAX + 32];
	struct py_proc bp = {};
	struct glibc_tsd tsd = { 0 };
	struct syms s;
	struct proc *p;
	uint64_t start = 0, bias;
	int minor = 0, rc;
	size_t i;

	if (find_interpreter(proc->pid, path, sizeof(path), &minor, &start)) {
		snprintf(reason, reasonlen, "not CPython: no python3.X or libpython3.X mapped");
		return SONDE_DECLINE;
	}
	snprintf(file, sizeof(file), "/proc/%u/root%s", proc->pid, path);
	rc = read_syms(file, &s);
	if (rc == -ENOENT)
		rc = read_syms(path, &s);
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
	for (i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++)
		if (layouts[i].minor == minor)
			l = &layouts[i];
	if (!l) {
		snprintf(reason, reasonlen, "python 3.%d not supported yet", minor);
		return SONDE_DECLINE;
	}
	if (!frame_head_fits(l)) { /* a layout the walker cannot read: our bug */
		snprintf(reason, reasonlen, "python 3.%d: frame layout not in the walker's head",
			 minor);
		return SONDE_DECLINE;
	}
	bias = start - s.base_vaddr;
	if (glibc_tsd(proc->pid, &tsd))
		tsd = (struct glibc_tsd){ GLIBC_TSD_BASE, GLIBC_TSD_STRIDE, GLIBC_TSD_KEYS };
	else
		py->api->log(py->host, SONDE_PLUGIN_LOG_DEBUG,
			     "pid %u: pthread keys at tp+%u, %u bytes each, %u in the first block "
			     "(libc's thread_db)", proc->pid, tsd.base, tsd.stride, tsd.keys);
	bp = (struct py_proc){
		.tss_key = bias + s.runtime + l->rt_tss_key,
		.gil_tstate = bias + s.runtime + l->rt_gil_tstate,
		.tsd_base = tsd.base,
		.tsd_stride = tsd.stride,
		.tsd_keys = tsd.keys,
		.ts_cframe = l->ts_cframe,
		.ts_thread_id = l->ts_thread_id,
		.cf_frame = l->cf_frame,
		.fr_code = l->fr_code,
		.fr_previous = l->fr_previous,
		.fr_instr = l->fr_instr,
		.co_firstlineno = l->co_firstlineno,
		.fr_is_entry = l->fr_is_entry,
	};
	p = find_proc(py, proc->pid);
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p)
			return -ENOMEM;
		p->next = py->procs;
		py->procs = p;
	}
	p->pid = proc->pid;
	p->code_type = bias + s.code_type;
	p->l = l;
	if (bpf_map_update_elem(bpf_map__fd(py->skel->maps.py_procs), &proc->pid, &bp, BPF_ANY)) {
		rc = -errno;
		snprintf(reason, reasonlen, "py_procs: %s", strerror(-rc));
		return rc;
	}
	set_handover(py, proc->pid, &s, bias);
	py->api->log(py->host, SONDE_PLUGIN_LOG_DEBUG, "pid %u: python 3.%d (%s), bias 0x%" PRIx64,
		     proc->pid, minor, path, bias);
	return 0;
}

static void py_detach(void *state, uint32_t pid)
{
	struct py *py = state;
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
	.description = "CPython 3.11 frames (function, file, line) in the stacks",
	.init = py_init,
	.fini = py_fini,
	.attach_process = py_attach,
	.detach_process = py_detach,
	.write_metrics = py_write_metrics,
};
