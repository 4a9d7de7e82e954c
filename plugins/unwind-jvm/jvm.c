// SPDX-License-Identifier: MIT
/*
 * sonde-unwind-jvm: Java methods in the stacks of HotSpot JVMs.
 *
 * Detection (attach_process and, for a JVM offered at exec before its
 * libjvm.so is loaded, a retry timer): libjvm.so mapped; the serviceability
 * tables it exports (gHotSpotVMStructs, gHotSpotVMTypes, gHotSpotVMIntConstants
 * and the symbols giving their entry layout) read from the process and
 * validated; the JVM's version, code cache, code heaps and interpreter read
 * through them. A JVM whose tables cannot be read is declined with the
 * reason.
 *
 * Two paths, shown by `sondectl ps` as the process's note:
 *
 * "vmstructs", for any JVM whose tables give the walker all it needs: the
 * BPF walker (jvm.bpf.c) finds the CodeBlob of each code-cache pc and emits
 * interpreted frames as (Method*, bcp) and compiled ones as (nmethod, pc
 * offset, compile id); this file names them by reading the JVM's metadata:
 * Method -> ConstMethod -> ConstantPool -> holder Klass and Symbols, the
 * line from the method's compressed line number table, and for compiled
 * code the scope chain of the PcDesc at the pc, so that inlined methods
 * become frames of their own. No JVM flags are needed. Each second the
 * JVM's thread list gives each Java thread's frame anchor and stack bounds
 * (jvm_threads, by tid): the walker goes on from a thread's last Java frame
 * when the native code above it (zlib under Deflater) has no frame pointer.
 *
 * "perfmap", the fallback (or forced by the setting path = "perfmap"): for
 * a JVM run with -XX:+PreserveFramePointer the kernel's frame-pointer walk
 * reaches every frame, each pc in the code cache becomes a frame of the
 * plugin's kind, and the symbolizer names it from the perf map the JVM
 * writes when asked through its attach interface (jcmd Compiler.perfmap,
 * JDK 17+). The attach protocol can take seconds, so it runs on a worker
 * thread of the plugin; a lock guards the per-process tables between it and
 * the core's loop thread.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <sonde/plugin.h>

#include "jvm.h"
#include "plugin_util.h"
#include "jvm.skel.h"

#define MAX_VM_ENTRIES	  20000 /* JDK 17 has about 2,900 fields and 1,100 types */
#define MAX_VM_STRING	  128
#define MAX_CODE_CACHE	  (4ULL << 30) /* ReservedCodeCacheSize is at most 2 GB */
#define PENDING_TRIES	  60	       /* one a second: a JVM has a minute to start */
#define TICK_MS		  1000
#define MISS_REFRESH_MS	  1000 /* an unnamed pc asks for a new map at most this often */
#define ATTACH_TIMEOUT_MS 5000
#define STARTUP_MS	  10000 /* a launcher this young may be mid-way loading libjvm.so */

enum jvm_path {
	PATH_PENDING = 0, /* waiting for libjvm.so or for the code cache */
	PATH_PERFMAP,
	PATH_DECLINED, /* attached at exec, found unreadable later */
	PATH_VMSTRUCTS,
	PATH__COUNT,
};

static const char *const path_names[PATH__COUNT] = {"pending", "perfmap", "declined", "vmstructs"};

/*
 * What the VMStructs walker and its symbolizer read, by VMStructs name. All
 * must be there (and inside their types) for a JVM to get the vmstructs
 * path; without them it falls back to the perfmap path.
 */
enum vm_off {
	O_GA_LEN = 0,
	O_GA_DATA,
	O_HEAP_MEMORY,
	O_HEAP_SEGMAP,
	O_HEAP_LOG2SEG,
	O_VS_LOW,
	O_VS_HIGH,
	O_BLOB_NAME,
	O_BLOB_FRAME_SIZE,
	O_BLOB_FRAME_COMPLETE,
	O_BLOB_CODE_BEGIN,
	O_NM_COMPILE_ID,
	O_NM_METHOD,
	O_NM_SCOPES_DATA,
	O_NM_SCOPES_PCS,
	O_NM_DEPENDENCIES,
	O_NM_METADATA,
	O_SQ_BUFFER,
	O_SQ_LIMIT,
	O_M_CONSTMETHOD,
	O_CM_CONSTANTS,
	O_CM_CODE_SIZE,
	O_CM_FLAGS,
	O_CM_NAME_INDEX,
	O_CP_HOLDER,
	O_CP_SOURCE_FILE,
	O_KLASS_NAME,
	O_SYM_LENGTH,
	O_SYM_BODY,
	O_PC_OFFSET,
	O_PC_SCOPE,
	O__COUNT,
};

static const struct {
	const char *type, *field;
} vm_offs[O__COUNT] = {
	[O_GA_LEN] = {"GrowableArrayBase", "_len"},
	[O_GA_DATA] = {"GrowableArray<int>", "_data"}, /* the same for CodeHeap* */
	[O_HEAP_MEMORY] = {"CodeHeap", "_memory"},
	[O_HEAP_SEGMAP] = {"CodeHeap", "_segmap"},
	[O_HEAP_LOG2SEG] = {"CodeHeap", "_log2_segment_size"},
	[O_VS_LOW] = {"VirtualSpace", "_low_boundary"},
	[O_VS_HIGH] = {"VirtualSpace", "_high_boundary"},
	[O_BLOB_NAME] = {"CodeBlob", "_name"},
	[O_BLOB_FRAME_SIZE] = {"CodeBlob", "_frame_size"},
	[O_BLOB_FRAME_COMPLETE] = {"CodeBlob", "_frame_complete_offset"},
	[O_BLOB_CODE_BEGIN] = {"CodeBlob", "_code_begin"},
	[O_NM_COMPILE_ID] = {"nmethod", "_compile_id"},
	[O_NM_METHOD] = {"CompiledMethod", "_method"},
	[O_NM_SCOPES_DATA] = {"CompiledMethod", "_scopes_data_begin"},
	[O_NM_SCOPES_PCS] = {"nmethod", "_scopes_pcs_offset"},
	[O_NM_DEPENDENCIES] = {"nmethod", "_dependencies_offset"},
	[O_NM_METADATA] = {"nmethod", "_metadata_offset"},
	[O_SQ_BUFFER] = {"StubQueue", "_stub_buffer"},
	[O_SQ_LIMIT] = {"StubQueue", "_buffer_limit"},
	[O_M_CONSTMETHOD] = {"Method", "_constMethod"},
	[O_CM_CONSTANTS] = {"ConstMethod", "_constants"},
	[O_CM_CODE_SIZE] = {"ConstMethod", "_code_size"},
	[O_CM_FLAGS] = {"ConstMethod", "_flags"},
	[O_CM_NAME_INDEX] = {"ConstMethod", "_name_index"},
	[O_CP_HOLDER] = {"ConstantPool", "_pool_holder"},
	[O_CP_SOURCE_FILE] = {"ConstantPool", "_source_file_name_index"},
	[O_KLASS_NAME] = {"Klass", "_name"},
	[O_SYM_LENGTH] = {"Symbol", "_length"},
	[O_SYM_BODY] = {"Symbol", "_body"},
	[O_PC_OFFSET] = {"PcDesc", "_pc_offset"},
	[O_PC_SCOPE] = {"PcDesc", "_scope_decode_offset"},
};

/*
 * What the walker needs to go on from native code to the thread's last Java
 * frame (JavaThread's frame anchor), and to find each thread's anchor by
 * its tid: optional; without them native frames are followed by frame
 * pointer only.
 */
enum thread_off {
	T_LIST_LEN = 0,
	T_LIST_THREADS,
	T_OSTHREAD,
	T_THREAD_ID,
	T_ANCHOR,
	T_STACK_BASE,
	T_STACK_SIZE,
	T_ANCHOR_SP,
	T_ANCHOR_PC,
	T_ANCHOR_FP,
	T__COUNT,
};

static const struct {
	const char *type, *alt, *field; /* alt: the type that holds it in other JDKs */
} thread_offs[T__COUNT] = {
	[T_LIST_LEN] = {"ThreadsList", NULL, "_length"},
	[T_LIST_THREADS] = {"ThreadsList", NULL, "_threads"},
	[T_OSTHREAD] = {"JavaThread", "Thread", "_osthread"},
	[T_THREAD_ID] = {"OSThread", NULL, "_thread_id"},
	[T_ANCHOR] = {"JavaThread", NULL, "_anchor"},
	[T_STACK_BASE] = {"JavaThread", "Thread", "_stack_base"},
	[T_STACK_SIZE] = {"JavaThread", "Thread", "_stack_size"},
	[T_ANCHOR_SP] = {"JavaFrameAnchor", NULL, "_last_Java_sp"},
	[T_ANCHOR_PC] = {"JavaFrameAnchor", NULL, "_last_Java_pc"},
	[T_ANCHOR_FP] = {"JavaFrameAnchor", NULL, "_last_Java_fp"}, /* x86 */
};

/* Sizes it needs: the data after a ConstMethod (bytecode) and after a
 * ConstantPool (its slots) start there; a blob follows its HeapBlock. */
enum vm_size { Z_HEAPBLOCK = 0, Z_CONSTMETHOD, Z_CONSTANTPOOL, Z_PCDESC, Z__COUNT };

static const char *const vm_sizes[Z__COUNT] = {"HeapBlock", "ConstMethod", "ConstantPool",
					       "PcDesc"};

enum vm_int { I_SENDER_SP = 0, I_LAST_SP, I_HAS_LINES, I__COUNT };

static const char *const vm_ints[I__COUNT] = {
	"frame::interpreter_frame_sender_sp_offset",
	"frame::interpreter_frame_last_sp_offset",
	"ConstMethod::_has_linenumber_table",
};

/* The walker's view of a JVM, from VMStructs. */
struct walker_info {
	uint32_t off[O__COUNT];
	uint64_t size[Z__COUNT];
	int32_t ints[I__COUNT];
	uint64_t heaps_addr;  /* &CodeCache::_heaps */
	uint64_t interp_addr; /* &AbstractInterpreter::_code */
	uint32_t toff[T__COUNT];
	uint64_t threads_addr; /* &ThreadsSMRSupport::_java_thread_list, 0: no anchors */
	char missing[160];     /* why the walker cannot be used; "" when it can */
};

/* One entry of gHotSpotVMStructs: a field's offset, or a static's address. */
struct vm_field {
	const char *type, *field; /* interned */
	uint64_t value;		  /* offset, or address when is_static */
	bool is_static;
};

struct vm_type {
	const char *name; /* interned */
	uint64_t size;
};

/* What the JVM says of itself; the next increment's walker reads on from it. */
struct vm_info {
	struct vm_field *fields;
	size_t nfields;
	struct vm_type *types;
	size_t ntypes;
	char release[64]; /* Abstract_VM_Version::_s_vm_release, e.g. "17.0.15+6-..." */
	int major;
	uint64_t code_lo, code_hi; /* CodeCache::_low_bound, _high_bound */
	struct walker_info w;
};

struct perf_sym {
	uint64_t start, end;
	const char *name; /* interned */
};

struct proc {
	struct proc *next;
	uint32_t pid, nspid;
	uid_t uid;
	gid_t gid;
	enum jvm_path path;
	int tries;
	uint64_t detect_ns; /* the last detect()'s time, for the set-up figure */
	char libjvm[PATH_MAX];
	struct vm_info vm;
	struct jvm_proc bp;    /* the walker's entry, when vm.w.missing is "" */
	uint32_t *tids;	       /* its threads in jvm_threads, sorted */
	size_t ntids;
	struct perf_sym *syms; /* sorted by start */
	size_t nsyms;
	uint64_t requested_ms; /* last perf map request, 0: none */
	bool queued;
};

struct job {
	struct job *next;
	uint32_t pid, nspid;
	uid_t uid;
	gid_t gid;
};

struct settings {
	int64_t perfmap_interval_ms;
	const char *path; /* "auto" or "perfmap" */
};

struct jvm {
	const struct sonde_host_api *api;
	struct sonde_host *host;
	struct jvm_bpf *skel;
	struct settings set;
	void *timer;
	pthread_mutex_t lock; /* procs, their tables, strings, jobs, counters below */
	pthread_cond_t wake;
	pthread_t worker;
	bool worker_started, stopping;
	struct job *jobs;
	struct proc *procs;
	struct plugin_strings strings; /* names handed to the core, until fini; under lock */
	uint64_t declined;	       /* JVMs declined since start */
	uint64_t unnamed, attach_errors, perfmap_errors, stale, symbol_errors;
	uint64_t setups, setup_ns; /* JVMs set up (a path given) and the time it took */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct proc *find_proc(struct jvm *j, uint32_t pid)
{
	struct proc *p;

	for (p = j->procs; p; p = p->next)
		if (p->pid == pid)
			return p;
	return NULL;
}

static void free_proc(struct proc *p)
{
	if (!p)
		return;
	free(p->vm.fields);
	free(p->vm.types);
	free(p->syms);
	free(p->tids);
	free(p);
}

static void log_msg(struct jvm *j, enum sonde_plugin_log_level level, const char *msg)
{
	j->api->log(j->host, level, "%s", msg);
}

/* ---- the process: maps, ids ---------------------------------------------------------------- */

/* libjvm.so's path and the start of its mapping at file offset 0. */
static int find_libjvm(uint32_t pid, char *path, size_t pathlen, uint64_t *start)
{
	char maps[64], line[PATH_MAX + 128];
	FILE *f;
	int ret = -ENOENT;

	snprintf(maps, sizeof(maps), "/proc/%u/maps", pid);
	f = fopen(maps, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, off;
		char *file = strchr(line, '/'), *base;

		if (!file || sscanf(line, "%lx-%*x %*s %lx", &lo, &off) != 2 || off)
			continue;
		file[strcspn(file, "\n")] = '\0';
		base = strrchr(file, '/') + 1;
		if (strcmp(base, "libjvm.so"))
			continue;
		snprintf(path, pathlen, "%s", file);
		*start = lo;
		ret = 0;
		break;
	}
	fclose(f);
	return ret;
}

/* The pid in the process's own namespace (names its /tmp files) and its
 * effective ids (the owner its attach trigger file must have). */
static void read_ids(struct proc *p)
{
	char path[64], line[256];
	FILE *f;

	p->nspid = p->pid;
	snprintf(path, sizeof(path), "/proc/%u/status", p->pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned int a, b;
		char *last;

		if (sscanf(line, "Uid: %u %u", &a, &b) == 2)
			p->uid = b;
		else if (sscanf(line, "Gid: %u %u", &a, &b) == 2)
			p->gid = b;
		else if (!strncmp(line, "NSpid:", 6)) {
			last = strrchr(line, '\t');
			if (last && sscanf(last, "%u", &a) == 1)
				p->nspid = a;
		}
	}
	fclose(f);
}

/* How long ago the process started, in ms; UINT64_MAX if unknown. */
static uint64_t proc_age_ms(uint32_t pid)
{
	char path[64], buf[1024], *rp;
	unsigned long long start = 0;
	double up = 0;
	long hz = sysconf(_SC_CLK_TCK);
	FILE *f;
	int i;

	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return UINT64_MAX;
	rp = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	for (i = 0; rp && i < 20; i++) /* starttime is the 20th field after comm */
		rp = strchr(rp + 1, ' ');
	f = fopen("/proc/uptime", "re");
	if (!rp || !f || sscanf(rp, " %llu", &start) != 1 || fscanf(f, "%lf", &up) != 1 ||
	    hz <= 0) {
		if (f)
			fclose(f);
		return UINT64_MAX;
	}
	fclose(f);
	return up * 1000 > (double)start * 1000 / hz
		       ? (uint64_t)(up * 1000 - (double)start * 1000 / hz)
		       : 0;
}

/* ---- libjvm.so's exported symbols ---------------------------------------------------------- */

enum vm_sym {
	S_STRUCTS = 0,
	S_STRUCT_STRIDE,
	S_STRUCT_TYPE,
	S_STRUCT_FIELD,
	S_STRUCT_STATIC,
	S_STRUCT_OFFSET,
	S_STRUCT_ADDRESS,
	S_TYPES,
	S_TYPE_STRIDE,
	S_TYPE_NAME,
	S_TYPE_SIZE,
	S_INTS, /* the integer constants: only the walker needs them */
	S_INT_STRIDE,
	S_INT_NAME,
	S_INT_VALUE,
	S__COUNT,
};

static const char *const vm_sym_names[S__COUNT] = {
	[S_STRUCTS] = "gHotSpotVMStructs",
	[S_STRUCT_STRIDE] = "gHotSpotVMStructEntryArrayStride",
	[S_STRUCT_TYPE] = "gHotSpotVMStructEntryTypeNameOffset",
	[S_STRUCT_FIELD] = "gHotSpotVMStructEntryFieldNameOffset",
	[S_STRUCT_STATIC] = "gHotSpotVMStructEntryIsStaticOffset",
	[S_STRUCT_OFFSET] = "gHotSpotVMStructEntryOffsetOffset",
	[S_STRUCT_ADDRESS] = "gHotSpotVMStructEntryAddressOffset",
	[S_TYPES] = "gHotSpotVMTypes",
	[S_TYPE_STRIDE] = "gHotSpotVMTypeEntryArrayStride",
	[S_TYPE_NAME] = "gHotSpotVMTypeEntryTypeNameOffset",
	[S_TYPE_SIZE] = "gHotSpotVMTypeEntrySizeOffset",
	[S_INTS] = "gHotSpotVMIntConstants",
	[S_INT_STRIDE] = "gHotSpotVMIntConstantEntryArrayStride",
	[S_INT_NAME] = "gHotSpotVMIntConstantEntryNameOffset",
	[S_INT_VALUE] = "gHotSpotVMIntConstantEntryValueOffset",
};

struct syms {
	uint64_t addr[S__COUNT]; /* file vaddr, 0: missing */
	uint64_t base_vaddr;	 /* p_vaddr - p_offset of the first PT_LOAD */
};

static int read_syms(const char *file, struct syms *s)
{
	struct plugin_dynsym want[S__COUNT];
	int k, ret;

	memset(s, 0, sizeof(*s));
	for (k = 0; k < S__COUNT; k++)
		want[k] = (struct plugin_dynsym){.name = vm_sym_names[k]};
	ret = plugin_elf_dynsyms(file, want, S__COUNT, &s->base_vaddr);
	for (k = 0; !ret && k < S__COUNT; k++)
		s->addr[k] = want[k].addr;
	return ret;
}

/* ---- the tables, read from the process ----------------------------------------------------- */

struct reader {
	struct jvm *j;
	uint32_t pid;
	char *reason;
	size_t reasonlen;
};

static int read_exact(struct reader *r, uint64_t addr, void *buf, size_t len)
{
	ssize_t n = r->j->api->read_memory(r->j->host, r->pid, addr, buf, len);

	return n == (ssize_t)len ? 0 : -EFAULT;
}

/* A C string of the process, cut at MAX_VM_STRING - 1; -EFAULT if unreadable or
 * not ended within the bound. */
static int read_cstr(struct reader *r, uint64_t addr, char *out)
{
	ssize_t n;

	if (!addr)
		return -EFAULT;
	n = r->j->api->read_memory(r->j->host, r->pid, addr, out, MAX_VM_STRING);
	if (n <= 0 || !memchr(out, '\0', (size_t)n))
		return -EFAULT;
	return 0;
}

static int read_u32(struct reader *r, uint64_t addr, uint32_t *v)
{
	return read_exact(r, addr, v, sizeof(*v));
}

#define DECLINE(r, ...) (snprintf((r)->reason, (r)->reasonlen, __VA_ARGS__), SONDE_DECLINE)

/* An entry layout: stride and offsets of its members, each read from the
 * process and checked to fit the stride. */
static int read_layout(struct reader *r, const struct syms *s, uint64_t bias, const int *which,
		       uint32_t *vals, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		if (!s->addr[which[i]])
			return DECLINE(r, "libjvm.so exports no %s", vm_sym_names[which[i]]);
		if (read_u32(r, bias + s->addr[which[i]], &vals[i]))
			return DECLINE(r, "cannot read %s", vm_sym_names[which[i]]);
	}
	if (vals[0] < 16 || vals[0] > 256 || vals[0] % 8)
		return DECLINE(r, "%s is %u, not an entry size", vm_sym_names[which[0]], vals[0]);
	for (i = 1; i < n; i++)
		if (vals[i] + 8 > vals[0])
			return DECLINE(r, "%s is %u, past the entry size %u",
				       vm_sym_names[which[i]], vals[i], vals[0]);
	return 0;
}

static uint64_t get_u64(const uint8_t *e, uint32_t off)
{
	uint64_t v;

	memcpy(&v, e + off, sizeof(v));
	return v;
}

/* Walks an entry array until the entry whose type name is NULL, calling
 * take for each; the end must come within MAX_VM_ENTRIES. */
static int
walk_entries(struct reader *r, const char *what, uint64_t array, uint32_t stride, uint32_t name_off,
	     int (*take)(struct reader *r, const uint8_t *e, const char *type, void *ctx),
	     void *ctx, size_t *count)
{
	uint8_t chunk[64 * 256];
	uint64_t last_ptr = 0;
	char type[MAX_VM_STRING], name[MAX_VM_STRING];
	size_t i = 0, per = sizeof(chunk) / stride, k;
	int rc;

	*count = 0;
	while (i < MAX_VM_ENTRIES) {
		ssize_t got = r->j->api->read_memory(r->j->host, r->pid, array + i * stride, chunk,
						     per * stride);

		if (got < (ssize_t)stride)
			return DECLINE(r, "%s: entry %zu unreadable before its end", what, i);
		for (k = 0; k < (size_t)got / stride; k++, i++) {
			const uint8_t *e = chunk + k * stride;
			uint64_t tp = get_u64(e, name_off);

			if (!tp) {
				*count = i;
				return 0;
			}
			if (tp != last_ptr) {
				if (read_cstr(r, tp, name))
					return DECLINE(r,
						       "%s: entry %zu has an unreadable type name",
						       what, i);
				memcpy(type, name, sizeof(type));
				last_ptr = tp;
			}
			rc = take(r, e, type, ctx);
			if (rc)
				return rc;
		}
	}
	return DECLINE(r, "%s: no end within %d entries", what, MAX_VM_ENTRIES);
}

struct field_ctx {
	struct vm_info *vm;
	size_t cap;
	uint32_t field, is_static, offset, address;
};

static int take_field(struct reader *r, const uint8_t *e, const char *type, void *ctx)
{
	struct field_ctx *c = ctx;
	struct vm_info *vm = c->vm;
	char name[MAX_VM_STRING];
	struct vm_field *f;
	int32_t is_static;

	if (read_cstr(r, get_u64(e, c->field), name))
		return DECLINE(r, "gHotSpotVMStructs: %s has a field with an unreadable name",
			       type);
	if (vm->nfields == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 1024;

		f = realloc(vm->fields, cap * sizeof(*f));
		if (!f)
			return -ENOMEM;
		vm->fields = f;
		c->cap = cap;
	}
	memcpy(&is_static, e + c->is_static, sizeof(is_static));
	f = &vm->fields[vm->nfields];
	pthread_mutex_lock(&r->j->lock);
	f->type = plugin_strings_intern(&r->j->strings, type);
	f->field = plugin_strings_intern(&r->j->strings, name);
	pthread_mutex_unlock(&r->j->lock);
	if (!f->type || !f->field)
		return -ENOMEM;
	f->is_static = is_static != 0;
	f->value = get_u64(e, f->is_static ? c->address : c->offset);
	vm->nfields++;
	return 0;
}

struct type_ctx {
	struct vm_info *vm;
	size_t cap;
	uint32_t size;
};

static int take_type(struct reader *r, const uint8_t *e, const char *type, void *ctx)
{
	struct type_ctx *c = ctx;
	struct vm_info *vm = c->vm;
	struct vm_type *t;

	if (vm->ntypes == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 512;

		t = realloc(vm->types, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		vm->types = t;
		c->cap = cap;
	}
	t = &vm->types[vm->ntypes];
	pthread_mutex_lock(&r->j->lock);
	t->name = plugin_strings_intern(&r->j->strings, type);
	pthread_mutex_unlock(&r->j->lock);
	if (!t->name)
		return -ENOMEM;
	t->size = get_u64(e, c->size);
	vm->ntypes++;
	return 0;
}

static const struct vm_field *vm_field(const struct vm_info *vm, const char *type,
				       const char *field)
{
	size_t i;

	for (i = 0; i < vm->nfields; i++)
		if (!strcmp(vm->fields[i].type, type) && !strcmp(vm->fields[i].field, field))
			return &vm->fields[i];
	return NULL;
}

static const struct vm_type *vm_type(const struct vm_info *vm, const char *name)
{
	size_t i;

	for (i = 0; i < vm->ntypes; i++)
		if (!strcmp(vm->types[i].name, name))
			return &vm->types[i];
	return NULL;
}

/* What the walker will rely on: each must be there, statics with an
 * address, fields inside their type. */
static const struct {
	const char *type, *field;
	bool is_static;
} required[] = {
	{"Abstract_VM_Version", "_s_vm_release", true},
	{"Abstract_VM_Version", "_vm_major_version", true},
	{"CodeCache", "_heaps", true},
	{"CodeCache", "_low_bound", true},
	{"CodeCache", "_high_bound", true},
	{"CodeHeap", "_memory", false},
	{"CodeHeap", "_segmap", false},
	{"CodeHeap", "_log2_segment_size", false},
	{"CodeBlob", "_name", false},
	{"CodeBlob", "_code_begin", false},
	{"CodeBlob", "_code_end", false},
	{"CodeBlob", "_frame_size", false},
	{"CodeBlob", "_frame_complete_offset", false},
	{"CompiledMethod", "_method", false}, /* nmethod's base in JDK 9-22 */
	{"Method", "_constMethod", false},
	{"ConstMethod", "_constants", false},
	{"ConstantPool", "_pool_holder", false},
	{"Klass", "_name", false},
};

static const char *const required_types[] = {"CodeBlob",     "nmethod", "Method",   "ConstMethod",
					     "ConstantPool", "Symbol",	"HeapBlock"};

static int validate(struct reader *r, const struct vm_info *vm)
{
	size_t i;

	for (i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
		const struct vm_field *f = vm_field(vm, required[i].type, required[i].field);
		const struct vm_type *t = vm_type(vm, required[i].type);

		if (!f)
			return DECLINE(r, "gHotSpotVMStructs: no %s::%s (%zu entries read)",
				       required[i].type, required[i].field, vm->nfields);
		if (f->is_static != required[i].is_static || (f->is_static && !f->value))
			return DECLINE(r, "gHotSpotVMStructs: %s::%s is not a %s", f->type,
				       f->field, required[i].is_static ? "static" : "field");
		if (!f->is_static && t && t->size && f->value >= t->size)
			return DECLINE(r,
				       "gHotSpotVMStructs: %s::%s at %" PRIu64
				       " is past the type's size %" PRIu64,
				       f->type, f->field, f->value, t->size);
	}
	for (i = 0; i < sizeof(required_types) / sizeof(required_types[0]); i++) {
		const struct vm_type *t = vm_type(vm, required_types[i]);

		if (!t)
			return DECLINE(r, "gHotSpotVMTypes: no %s (%zu types read)",
				       required_types[i], vm->ntypes);
		if (!t->size || t->size > 4096)
			return DECLINE(r, "gHotSpotVMTypes: %s has size %" PRIu64, t->name,
				       t->size);
	}
	return 0;
}

/* Why the walker cannot read this JVM: 1 (read_code_heaps), 0 (walker_info). */
#define MISSING(w, ...)	  (snprintf((w)->missing, sizeof((w)->missing), __VA_ARGS__), 1)
#define NO_WALKER(w, ...) (snprintf((w)->missing, sizeof((w)->missing), __VA_ARGS__), 0)

struct int_ctx {
	struct walker_info *w;
	uint32_t value;
	uint32_t found; /* bit per vm_int */
};

static int take_int(struct reader *r, const uint8_t *e, const char *name, void *ctx)
{
	struct int_ctx *c = ctx;
	int k;

	(void)r;
	for (k = 0; k < I__COUNT; k++) {
		if (!strcmp(name, vm_ints[k])) {
			memcpy(&c->w->ints[k], e + c->value, sizeof(c->w->ints[k]));
			c->found |= 1U << k;
		}
	}
	return 0;
}

/* The thread anchors' offsets into vm->w; threads_addr stays 0 without
 * them. */
static void thread_info(struct vm_info *vm)
{
	struct walker_info *w = &vm->w;
	const struct vm_field *f;
	const struct vm_type *t;
	int k;

	w->threads_addr = 0;
	for (k = 0; k < T__COUNT; k++) {
		const char *type = thread_offs[k].type;

		f = vm_field(vm, type, thread_offs[k].field);
		if (!f && thread_offs[k].alt)
			f = vm_field(vm, type = thread_offs[k].alt, thread_offs[k].field);
		t = vm_type(vm, type);
		if (!f || f->is_static || f->value > 65536 || (t && t->size && f->value >= t->size))
			return;
		w->toff[k] = (uint32_t)f->value;
	}
	f = vm_field(vm, "ThreadsSMRSupport", "_java_thread_list");
	if (f && f->is_static)
		w->threads_addr = f->value;
}

/*
 * What the walker needs, from the tables read: vm->w, with w->missing
 * saying why the walker cannot be used (then the JVM gets the perfmap
 * path). 0, or -errno on ENOMEM.
 */
static int walker_info(struct reader *r, struct vm_info *vm, const struct syms *s, uint64_t bias)
{
	static const int int_which[] = {S_INT_STRIDE, S_INT_NAME, S_INT_VALUE};
	struct walker_info *w = &vm->w;
	char why[256] = "";
	struct reader ir = {.j = r->j, .pid = r->pid, .reason = why, .reasonlen = sizeof(why)};
	const struct vm_field *f;
	const struct vm_type *t;
	struct int_ctx ic = {.w = w};
	uint32_t lay[3];
	uint64_t ints;
	size_t n;
	int k, rc;

	w->missing[0] = '\0';
	for (k = 0; k < O__COUNT; k++) {
		f = vm_field(vm, vm_offs[k].type, vm_offs[k].field);
		t = vm_type(vm, vm_offs[k].type);
		if (!f || f->is_static)
			return NO_WALKER(w, "no %s::%s", vm_offs[k].type, vm_offs[k].field);
		if (t && t->size && f->value >= t->size)
			return NO_WALKER(w, "%s::%s past the type's size", f->type, f->field);
		w->off[k] = (uint32_t)f->value;
	}
	for (k = 0; k < Z__COUNT; k++) {
		t = vm_type(vm, vm_sizes[k]);
		if (!t || !t->size || t->size > 4096)
			return NO_WALKER(w, "no size for %s", vm_sizes[k]);
		w->size[k] = t->size;
	}
	f = vm_field(vm, "AbstractInterpreter", "_code");
	if (!f || !f->is_static || !f->value)
		return NO_WALKER(w, "no AbstractInterpreter::_code");
	w->interp_addr = f->value;
	w->heaps_addr = vm_field(vm, "CodeCache", "_heaps")->value; /* required */
	thread_info(vm);
	if (!s->addr[S_INTS])
		return NO_WALKER(w, "libjvm.so exports no gHotSpotVMIntConstants");
	rc = read_layout(&ir, s, bias, int_which, lay, 3);
	if (!rc && read_exact(&ir, bias + s->addr[S_INTS], &ints, 8))
		rc = DECLINE(&ir, "cannot read gHotSpotVMIntConstants");
	ic.value = lay[2];
	if (!rc)
		rc = walk_entries(&ir, "gHotSpotVMIntConstants", ints, lay[0], lay[1], take_int,
				  &ic, &n);
	if (rc < 0)
		return rc;
	if (rc)
		return NO_WALKER(w, "%s", why);
	for (k = 0; k < I__COUNT; k++)
		if (!(ic.found & (1U << k)))
			return NO_WALKER(w, "gHotSpotVMIntConstants: no %s", vm_ints[k]);
	/* Interpreter frames as laid out since JDK 9 (frame_x86.hpp); the
	 * walker reads their slots in one window from 112 bytes below rbp,
	 * which these bounds keep them in: */
	if (vm->major < 9)
		return NO_WALKER(w, "JDK %d: interpreter frames laid out before JDK 9", vm->major);
	if (w->ints[I_SENDER_SP] < -8 || w->ints[I_SENDER_SP] >= 0 || w->ints[I_LAST_SP] < -8 ||
	    w->ints[I_LAST_SP] >= 0 || !w->ints[I_HAS_LINES])
		return NO_WALKER(w, "implausible frame constants (%d, %d)", w->ints[I_SENDER_SP],
				 w->ints[I_LAST_SP]);
	return 0;
}

/*
 * The walker's entry for a JVM whose code heaps and interpreter are up: 0;
 * -EAGAIN while they are not; 1 with vm->w.missing set when they cannot be
 * read.
 */
static int read_code_heaps(struct reader *r, struct vm_info *vm, struct jvm_proc *bp)
{
	struct walker_info *w = &vm->w;
	uint64_t ga, data, heap, code, buf;
	int32_t len, limit, log2 = 0, l;
	uint32_t i;

	memset(bp, 0, sizeof(*bp));
	if (read_exact(r, w->heaps_addr, &ga, 8))
		return MISSING(w, "cannot read CodeCache::_heaps");
	if (!ga || read_exact(r, ga + w->off[O_GA_LEN], &len, 4) || !len)
		return -EAGAIN;
	if (len < 0 || len > JVM_MAX_HEAPS || read_exact(r, ga + w->off[O_GA_DATA], &data, 8))
		return MISSING(w, "%d code heaps", len);
	for (i = 0; i < (uint32_t)len; i++) {
		struct jvm_heap *h = &bp->heaps[i];

		if (read_exact(r, data + 8 * i, &heap, 8) ||
		    read_exact(r, heap + w->off[O_HEAP_MEMORY] + w->off[O_VS_LOW], &h->lo, 8) ||
		    read_exact(r, heap + w->off[O_HEAP_MEMORY] + w->off[O_VS_HIGH], &h->hi, 8) ||
		    read_exact(r, heap + w->off[O_HEAP_SEGMAP] + w->off[O_VS_LOW], &h->segmap, 8) ||
		    read_exact(r, heap + w->off[O_HEAP_LOG2SEG], &l, 4))
			return MISSING(w, "cannot read code heap %u", i);
		if (h->lo >= h->hi || h->lo < vm->code_lo || h->hi > vm->code_hi || !h->segmap ||
		    l < 4 || l > 20 || (i && l != log2))
			return MISSING(w,
				       "code heap %u: 0x%" PRIx64 "-0x%" PRIx64 ", segments 2^%d",
				       i, (uint64_t)h->lo, (uint64_t)h->hi, l);
		log2 = l;
	}
	if (read_exact(r, w->interp_addr, &code, 8))
		return MISSING(w, "cannot read AbstractInterpreter::_code");
	if (!code)
		return -EAGAIN;
	if (read_exact(r, code + w->off[O_SQ_BUFFER], &buf, 8) ||
	    read_exact(r, code + w->off[O_SQ_LIMIT], &limit, 4))
		return MISSING(w, "cannot read the interpreter's StubQueue");
	if (limit <= 0 || buf < vm->code_lo || buf + (uint64_t)limit > vm->code_hi)
		return MISSING(w, "interpreter code 0x%" PRIx64 "+%d outside the code cache", buf,
			       limit);
	bp->code_lo = vm->code_lo;
	bp->code_hi = vm->code_hi;
	bp->interp_lo = buf;
	bp->interp_hi = buf + (uint64_t)limit;
	bp->mode = JVM_MODE_VMSTRUCTS;
	bp->nheaps = (uint32_t)len;
	bp->segment_shift = (uint32_t)log2;
	bp->heapblock_size = (uint32_t)w->size[Z_HEAPBLOCK];
	bp->blob_name = w->off[O_BLOB_NAME];
	bp->blob_frame_size = w->off[O_BLOB_FRAME_SIZE];
	bp->blob_frame_complete = w->off[O_BLOB_FRAME_COMPLETE];
	bp->blob_code_begin = w->off[O_BLOB_CODE_BEGIN];
	bp->nm_compile_id = w->off[O_NM_COMPILE_ID];
	/* frame_x86.hpp since JDK 9: below last_sp come the Method*, the
	 * mirror, the mdp, the cache, the locals and the bcp, a word each. */
	bp->fp_sender_sp = w->ints[I_SENDER_SP] * 8;
	bp->fp_method = (w->ints[I_LAST_SP] - 1) * 8;
	bp->fp_bcp = (w->ints[I_LAST_SP] - 6) * 8;
	bp->has_anchors = w->threads_addr != 0;
	bp->anchor_sp = w->toff[T_ANCHOR_SP];
	bp->anchor_pc = w->toff[T_ANCHOR_PC];
	bp->anchor_fp = w->toff[T_ANCHOR_FP];
	return 0;
}

/*
 * Reads the JVM's tables into p->vm. 0 when the JVM is readable and its code
 * cache is up; -EAGAIN when it may become so (libjvm.so not mapped yet, the
 * VM still starting); SONDE_DECLINE with the reason; or -errno.
 */
static int detect(struct jvm *j, struct proc *p, char *reason, size_t reasonlen)
{
	struct reader r = {.j = j, .pid = p->pid, .reason = reason, .reasonlen = reasonlen};
	static const int st_which[] = {S_STRUCT_STRIDE, S_STRUCT_TYPE,	 S_STRUCT_FIELD,
				       S_STRUCT_STATIC, S_STRUCT_OFFSET, S_STRUCT_ADDRESS};
	static const int ty_which[] = {S_TYPE_STRIDE, S_TYPE_NAME, S_TYPE_SIZE};
	uint32_t st[6], ty[3];
	char file[PATH_MAX + 32], rel[MAX_VM_STRING];
	struct vm_info vm = {};
	struct field_ctx fc;
	struct type_ctx tc;
	uint64_t start = 0, bias, structs, types, rel_ptr;
	const struct vm_field *f;
	int32_t major;
	struct syms s;
	int rc;

	if (find_libjvm(p->pid, p->libjvm, sizeof(p->libjvm), &start))
		return -EAGAIN;
	snprintf(file, sizeof(file), "/proc/%u/root%s", p->pid, p->libjvm);
	rc = read_syms(file, &s);
	if (rc)
		rc = read_syms(p->libjvm, &s);
	if (rc)
		return DECLINE(&r, "%s: cannot read its symbols: %s", p->libjvm, strerror(-rc));
	if (!s.addr[S_STRUCTS] || !s.addr[S_TYPES])
		return DECLINE(&r, "%s exports no gHotSpotVMStructs/gHotSpotVMTypes", p->libjvm);
	bias = start - s.base_vaddr;
	rc = read_layout(&r, &s, bias, st_which, st, 6);
	if (!rc)
		rc = read_layout(&r, &s, bias, ty_which, ty, 3);
	if (rc)
		return rc;
	if (read_exact(&r, bias + s.addr[S_STRUCTS], &structs, 8) ||
	    read_exact(&r, bias + s.addr[S_TYPES], &types, 8))
		return DECLINE(&r, "cannot read gHotSpotVMStructs/gHotSpotVMTypes");
	if (!structs || !types)
		return DECLINE(&r, "gHotSpotVMStructs or gHotSpotVMTypes is NULL");
	fc = (struct field_ctx){
		.vm = &vm, .field = st[2], .is_static = st[3], .offset = st[4], .address = st[5]};
	rc = walk_entries(&r, "gHotSpotVMStructs", structs, st[0], st[1], take_field, &fc,
			  &vm.nfields);
	tc = (struct type_ctx){.vm = &vm, .size = ty[2]};
	if (!rc)
		rc = walk_entries(&r, "gHotSpotVMTypes", types, ty[0], ty[1], take_type, &tc,
				  &vm.ntypes);
	if (!rc)
		rc = validate(&r, &vm);
	if (rc)
		goto fail;
	f = vm_field(&vm, "Abstract_VM_Version", "_s_vm_release");
	if (read_exact(&r, f->value, &rel_ptr, 8) || read_cstr(&r, rel_ptr, rel)) {
		rc = DECLINE(&r, "cannot read Abstract_VM_Version::_s_vm_release");
		goto fail;
	}
	snprintf(vm.release, sizeof(vm.release), "%.63s", rel);
	f = vm_field(&vm, "Abstract_VM_Version", "_vm_major_version");
	if (read_exact(&r, f->value, &major, 4) || major < 1 || major > 1000) {
		rc = DECLINE(&r, "cannot read Abstract_VM_Version::_vm_major_version");
		goto fail;
	}
	vm.major = major;
	if (read_exact(&r, vm_field(&vm, "CodeCache", "_low_bound")->value, &vm.code_lo, 8) ||
	    read_exact(&r, vm_field(&vm, "CodeCache", "_high_bound")->value, &vm.code_hi, 8)) {
		rc = DECLINE(&r, "cannot read CodeCache::_low_bound/_high_bound");
		goto fail;
	}
	if (!vm.code_lo && !vm.code_hi) {
		rc = -EAGAIN; /* the VM is still starting */
		goto fail;
	}
	if (vm.code_lo >= vm.code_hi || vm.code_hi - vm.code_lo > MAX_CODE_CACHE) {
		rc = DECLINE(&r, "code cache bounds 0x%" PRIx64 "-0x%" PRIx64 " are not plausible",
			     vm.code_lo, vm.code_hi);
		goto fail;
	}
	rc = walker_info(&r, &vm, &s, bias);
	if (!rc && !vm.w.missing[0])
		rc = read_code_heaps(&r, &vm, &p->bp);
	if (rc < 0)
		goto fail;
	if (vm.major < 17 && vm.w.missing[0]) {
		rc = DECLINE(&r, "JDK %d (%s): %s, and no Compiler.perfmap before JDK 17", vm.major,
			     vm.release, vm.w.missing);
		goto fail;
	}
	free(p->vm.fields);
	free(p->vm.types);
	p->vm = vm;
	return 0;
fail:
	free(vm.fields);
	free(vm.types);
	return rc;
}

/* ---- the attach interface and the perf map (worker thread) --------------------------------- */

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static bool is_socket(const char *path)
{
	struct stat st;

	return !stat(path, &st) && S_ISSOCK(st.st_mode);
}

/* Whether the JVM has its "Signal Dispatcher" thread: before it runs (VM
 * start-up) or without it (-Xrs, -XX:+ReduceSignalUsage), SIGQUIT could
 * take the process down instead of opening the attach socket. */
static bool has_signal_dispatcher(uint32_t pid)
{
	char path[PATH_MAX], comm[32];
	struct dirent *de;
	bool found = false;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%u/task", pid);
	dir = opendir(path);
	if (!dir)
		return false;
	while (!found && (de = readdir(dir))) {
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%u/task/%.16s/comm", pid, de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		found = fgets(comm, sizeof(comm), f) && !strncmp(comm, "Signal Dispatch", 15);
		fclose(f);
	}
	closedir(dir);
	return found;
}

/*
 * HotSpot's dynamic attach, as jcmd does it: a trigger file .attach_pid<pid>
 * in its working directory (or /tmp) and SIGQUIT make the JVM open the
 * socket /tmp/.java_pid<pid>; the request is "1" (protocol), the command and
 * three arguments, each NUL-ended; the reply starts with the result code.
 * Paths go through /proc/<pid>/root so a JVM in a container works alike.
 */
static int jcmd(const struct job *jb, const char *cmd, char *err, size_t errlen)
{
	char sock[108], trig[PATH_MAX], reply[512], req[128];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = ATTACH_TIMEOUT_MS / 1000};
	size_t len = 0, reqlen;
	ssize_t n;
	int fd = -1, ret = -EIO, waited;

	snprintf(sock, sizeof(sock), "/proc/%u/root/tmp/.java_pid%u", jb->pid, jb->nspid);
	if (!is_socket(sock)) {
		if (!has_signal_dispatcher(jb->pid)) {
			snprintf(err, errlen,
				 "no Signal Dispatcher thread: not signalling the JVM");
			return -EAGAIN;
		}
		snprintf(trig, sizeof(trig), "/proc/%u/cwd/.attach_pid%u", jb->pid, jb->nspid);
		fd = open(trig, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0) {
			snprintf(trig, sizeof(trig), "/proc/%u/root/tmp/.attach_pid%u", jb->pid,
				 jb->nspid);
			fd = open(trig, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		}
		if (fd < 0) {
			ret = -errno;
			snprintf(err, errlen, "cannot create the attach trigger: %s",
				 strerror(errno));
			return ret;
		}
		/* The JVM heeds a trigger owned by its user or by root: if the
		 * chown fails, root's file still does. */
		waited = fchown(fd, jb->uid, jb->gid);
		close(fd);
		fd = -1;
		if (kill((pid_t)jb->pid, SIGQUIT)) {
			ret = -errno;
			snprintf(err, errlen, "SIGQUIT: %s", strerror(errno));
			unlink(trig);
			return ret;
		}
		for (waited = 0; waited < ATTACH_TIMEOUT_MS && !is_socket(sock); waited += 20)
			sleep_ms(20);
		unlink(trig);
		if (!is_socket(sock)) {
			snprintf(err, errlen, "no attach socket %s within %d ms", sock,
				 ATTACH_TIMEOUT_MS);
			return -ETIMEDOUT;
		}
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		ret = -errno;
		snprintf(err, errlen, "connect %s: %s", sock, strerror(errno));
		goto cleanup;
	}
	reqlen = (size_t)snprintf(req, sizeof(req), "1%cjcmd%c%s%c%c%c", 0, 0, cmd, 0, 0, 0);
	if (write(fd, req, reqlen) != (ssize_t)reqlen) {
		ret = errno ? -errno : -EIO;
		snprintf(err, errlen, "write: %s", strerror(-ret));
		goto cleanup;
	}
	while (len + 1 < sizeof(reply) && (n = read(fd, reply + len, sizeof(reply) - 1 - len)) > 0)
		len += (size_t)n;
	reply[len] = '\0';
	if (strncmp(reply, "0\n", 2) || strstr(reply, "Unknown diagnostic command")) {
		reply[len < 200 ? len : 200] = '\0';
		for (n = 0; reply[n]; n++)
			if (reply[n] == '\n')
				reply[n] = ' ';
		snprintf(err, errlen, "%s: %.200s", cmd, len ? reply : "no reply");
		goto cleanup;
	}
	ret = 0;
cleanup:
	if (fd >= 0)
		close(fd);
	return ret;
}

static int cmp_sym(const void *a, const void *b)
{
	const struct perf_sym *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* "long Chain.leaf(long)" -> "Chain.leaf"; other names ("Interpreter",
 * "StubRoutines (1)") as they are. */
static void method_name(char *name)
{
	char *paren = strchr(name, '('), *sp;

	if (!paren || paren == name || paren[-1] == ' ')
		return;
	*paren = '\0';
	sp = strrchr(name, ' ');
	if (sp)
		memmove(name, sp + 1, strlen(sp + 1) + 1);
}

/* Parses the perf map into a sorted table with interned names. */
static int load_perfmap(struct jvm *j, const struct job *jb, struct perf_sym **out, size_t *nout)
{
	char path[64], line[4096];
	struct perf_sym *syms = NULL, *t;
	size_t n = 0, cap = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%u/root/tmp/perf-%u.map", jb->pid, jb->nspid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		uint64_t start, size;
		char *end, *name;

		start = strtoull(line, &end, 16);
		size = strtoull(end, &name, 16);
		if (name == end || !size || *name != ' ')
			continue;
		name++;
		name[strcspn(name, "\n")] = '\0';
		method_name(name);
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			t = realloc(syms, cap * sizeof(*t));
			if (!t)
				goto nomem;
			syms = t;
		}
		pthread_mutex_lock(&j->lock);
		syms[n].name = plugin_strings_intern(&j->strings, name);
		pthread_mutex_unlock(&j->lock);
		if (!syms[n].name)
			goto nomem;
		syms[n].start = start;
		syms[n].end = start + size;
		n++;
	}
	fclose(f);
	qsort(syms, n, sizeof(*syms), cmp_sym);
	*out = syms;
	*nout = n;
	return 0;
nomem:
	fclose(f);
	free(syms);
	return -ENOMEM;
}

static void run_job(struct jvm *j, const struct job *jb)
{
	struct perf_sym *syms = NULL, *old;
	char err[256] = "", msg[320], path[64];
	struct proc *p;
	size_t n = 0;
	bool ours;
	int rc;

	/* A map we had the JVM write goes once read: one per JVM would pile up
	 * in its /tmp. One that was there before is someone else's. */
	snprintf(path, sizeof(path), "/proc/%u/root/tmp/perf-%u.map", jb->pid, jb->nspid);
	ours = access(path, F_OK) != 0;
	rc = jcmd(jb, "Compiler.perfmap", err, sizeof(err));
	if (rc == -EAGAIN) {
		/* Still starting (or -Xrs): the tick asks again. */
		snprintf(msg, sizeof(msg), "pid %u: %s", jb->pid, err);
		log_msg(j, SONDE_PLUGIN_LOG_DEBUG, msg);
	} else if (rc) {
		pthread_mutex_lock(&j->lock);
		j->attach_errors++;
		pthread_mutex_unlock(&j->lock);
		snprintf(msg, sizeof(msg), "pid %u: jcmd Compiler.perfmap: %s", jb->pid, err);
		log_msg(j, SONDE_PLUGIN_LOG_WARN, msg);
	} else if ((rc = load_perfmap(j, jb, &syms, &n))) {
		pthread_mutex_lock(&j->lock);
		j->perfmap_errors++;
		pthread_mutex_unlock(&j->lock);
		snprintf(msg, sizeof(msg), "pid %u: /tmp/perf-%u.map: %s", jb->pid, jb->nspid,
			 strerror(-rc));
		log_msg(j, SONDE_PLUGIN_LOG_WARN, msg);
	}
	if (ours)
		unlink(path);
	pthread_mutex_lock(&j->lock);
	p = find_proc(j, jb->pid);
	old = NULL;
	if (p) {
		p->queued = false;
		if (!rc) {
			old = p->syms;
			p->syms = syms;
			p->nsyms = n;
			syms = NULL;
		}
	}
	pthread_mutex_unlock(&j->lock);
	free(old);
	free(syms);
}

static void *worker_main(void *arg)
{
	struct jvm *j = arg;
	struct job *jb;

	pthread_mutex_lock(&j->lock);
	for (;;) {
		while (!j->jobs && !j->stopping)
			pthread_cond_wait(&j->wake, &j->lock);
		if (j->stopping)
			break;
		jb = j->jobs;
		j->jobs = jb->next;
		pthread_mutex_unlock(&j->lock);
		run_job(j, jb);
		free(jb);
		pthread_mutex_lock(&j->lock);
	}
	pthread_mutex_unlock(&j->lock);
	return NULL;
}

/* Asks the worker for a fresh perf map of p. Called with the lock held. */
static void request_perfmap(struct jvm *j, struct proc *p)
{
	struct job *jb, **tail;

	if (p->queued || p->path != PATH_PERFMAP)
		return;
	jb = calloc(1, sizeof(*jb));
	if (!jb)
		return;
	*jb = (struct job){.pid = p->pid, .nspid = p->nspid, .uid = p->uid, .gid = p->gid};
	for (tail = &j->jobs; *tail; tail = &(*tail)->next)
		;
	*tail = jb;
	p->queued = true;
	p->requested_ms = now_ms();
	pthread_cond_signal(&j->wake);
}

/* ---- the plugin ---------------------------------------------------------------------------- */

static void set_status(struct jvm *j, uint32_t pid, int attached, const char *note)
{
	if (j->api->size >= offsetof(struct sonde_host_api, process_status) +
				    sizeof(j->api->process_status) &&
	    j->api->process_status)
		j->api->process_status(j->host, pid, attached, note);
}

/* detect(), timed: reading and checking a JVM's structures is most of
 * what setting one up costs (bench/unwind-jvm reports it). */
static int timed_detect(struct jvm *j, struct proc *p, char *reason, size_t reasonlen)
{
	uint64_t t0 = now_ns();
	int rc = detect(j, p, reason, reasonlen);

	p->detect_ns = now_ns() - t0;
	return rc;
}

/* p got its tables: the walker's entry goes to BPF; on the vmstructs path
 * when the walker can read this JVM and the settings allow it, else on the
 * perfmap path, whose perf map is asked for. */
static void refresh_threads(struct jvm *j, struct proc *p);

/*
 * Where a native walker (unwind-native) hands frames over to this plugin's
 * walker: the code cache, and the interpreter where it lies outside it; on
 * the vmstructs path only (bp NULL: none). Without the service (a sonded
 * before host ABI 1.4) the JVM's frames come as before, with the native
 * ones by frame pointers.
 */
static void set_handover(struct jvm *j, uint32_t pid, const struct jvm_proc *bp)
{
	const struct sonde_host_api *api = j->api;
	uint64_t ranges[4];
	int n = 0, rc;

	if (api->size < offsetof(struct sonde_host_api, set_handover) + sizeof(api->set_handover))
		return;
	if (bp) {
		ranges[n * 2] = bp->code_lo;
		ranges[n * 2 + 1] = bp->code_hi;
		n++;
		if (bp->interp_hi > bp->interp_lo &&
		    (bp->interp_lo < bp->code_lo || bp->interp_hi > bp->code_hi)) {
			ranges[n * 2] = bp->interp_lo;
			ranges[n * 2 + 1] = bp->interp_hi;
			n++;
		}
	}
	rc = api->set_handover(j->host, pid, ranges, n);
	if (rc && rc != -ENOENT)
		api->log(j->host, SONDE_PLUGIN_LOG_WARN,
			 "pid %u: Java frames will not be merged with DWARF-unwound native ones: %s",
			 pid, strerror(-rc));
}

static int start_path(struct jvm *j, struct proc *p)
{
	uint64_t t0 = now_ns();
	bool vms = !p->vm.w.missing[0] && strcmp(j->set.path, "perfmap");
	struct jvm_proc bp = {
		.code_lo = p->vm.code_lo, .code_hi = p->vm.code_hi, .mode = JVM_MODE_PERFMAP};
	char note[256];

	if (vms)
		bp = p->bp;
	if (bpf_map_update_elem(bpf_map__fd(j->skel->maps.jvm_procs), &p->pid, &bp, BPF_ANY))
		return -errno;
	set_handover(j, p->pid, vms ? &bp : NULL);
	pthread_mutex_lock(&j->lock);
	p->path = vms ? PATH_VMSTRUCTS : PATH_PERFMAP;
	request_perfmap(j, p);
	pthread_mutex_unlock(&j->lock);
	if (vms)
		snprintf(note, sizeof(note),
			 "path vmstructs (interpreter 0x%" PRIx64 "-0x%" PRIx64 ", %u code heaps)",
			 (uint64_t)bp.interp_lo, (uint64_t)bp.interp_hi, bp.nheaps);
	else
		snprintf(note, sizeof(note),
			 "path perfmap (frame pointers + jcmd Compiler.perfmap%s%s)",
			 p->vm.w.missing[0] ? "; no walker: " : "", p->vm.w.missing);
	j->api->log(j->host, SONDE_PLUGIN_LOG_INFO,
		    "pid %u: JDK %d (%s), %zu VMStructs fields, %zu types, code cache 0x%" PRIx64
		    "-0x%" PRIx64 ": %s",
		    p->pid, p->vm.major, p->vm.release, p->vm.nfields, p->vm.ntypes, p->vm.code_lo,
		    p->vm.code_hi, note);
	set_status(j, p->pid, 1, vms ? "path vmstructs" : "path perfmap");
	refresh_threads(j, p);
	pthread_mutex_lock(&j->lock);
	j->setups++;
	j->setup_ns += p->detect_ns + (now_ns() - t0);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/* ---- naming the walker's frames ----------------------------------------------------------- */

#define MAX_SYMBOL    512   /* bytes of a Symbol read */
#define MAX_LINE_TAB  16384 /* bytes of a line number table read */
#define MAX_PCDESCS   65536
#define MAX_SCOPE_LEN 16 /* inlining depth named */

/* A reader of the process for the symbolizer: a fault sets err. */
struct mem {
	struct jvm *j;
	uint32_t pid;
	const struct walker_info *w;
	int err;
};

static void mem_read(struct mem *m, uint64_t addr, void *buf, size_t len)
{
	if (m->err || !addr ||
	    m->j->api->read_memory(m->j->host, m->pid, addr, buf, len) != (ssize_t)len) {
		memset(buf, 0, len);
		m->err = 1;
	}
}

static uint64_t mem_u64(struct mem *m, uint64_t addr)
{
	uint64_t v;

	mem_read(m, addr, &v, sizeof(v));
	return v;
}

static uint32_t mem_u32(struct mem *m, uint64_t addr)
{
	uint32_t v;

	mem_read(m, addr, &v, sizeof(v));
	return v;
}

static uint16_t mem_u16(struct mem *m, uint64_t addr)
{
	uint16_t v;

	mem_read(m, addr, &v, sizeof(v));
	return v;
}

/* ---- the threads' frame anchors ----------------------------------------------------------- */

#define MAX_THREADS_READ 4096 /* Java threads of one JVM given an anchor */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

struct tid_pair {
	uint32_t ns, host;
};

static int cmp_pair(const void *a, const void *b)
{
	return cmp_u32(&((const struct tid_pair *)a)->ns, &((const struct tid_pair *)b)->ns);
}

/* The tids of a process in its own pid namespace and in ours, sorted by the
 * former: a JVM in a container knows its threads by the first, samples
 * carry the second. */
static struct tid_pair *ns_tids(uint32_t pid, size_t *n)
{
	char path[PATH_MAX], line[256];
	struct tid_pair *pairs = NULL, *t;
	size_t cap = 0;
	struct dirent *de;
	DIR *dir;

	*n = 0;
	snprintf(path, sizeof(path), "/proc/%u/task", pid);
	dir = opendir(path);
	if (!dir)
		return NULL;
	while ((de = readdir(dir))) {
		unsigned int host = (unsigned int)atoi(de->d_name), ns = 0;
		char *last;
		FILE *f;

		if (!host)
			continue;
		snprintf(path, sizeof(path), "/proc/%u/task/%u/status", pid, host);
		f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			if (!strncmp(line, "NSpid:", 6) && (last = strrchr(line, '\t')))
				ns = (unsigned int)atoi(last + 1);
		fclose(f);
		if (!ns)
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			t = realloc(pairs, cap * sizeof(*t));
			if (!t)
				break;
			pairs = t;
		}
		pairs[(*n)++] = (struct tid_pair){.ns = ns, .host = host};
	}
	closedir(dir);
	if (pairs)
		qsort(pairs, *n, sizeof(*pairs), cmp_pair);
	return pairs;
}

/*
 * The Java threads of p, from the JVM's current ThreadsList: each one's
 * frame anchor and stack into jvm_threads by tid, the tids gone since the
 * last call out of it. The list can change while it is read (the JVM frees
 * old lists): the walker uses an entry only for a sample whose sp lies on
 * that thread's stack. Threads started since are missed until the next
 * call (a tick).
 */
static void refresh_threads(struct jvm *j, struct proc *p)
{
	const struct walker_info *w = &p->vm.w;
	struct mem m = {.j = j, .pid = p->pid, .w = w};
	int fd = bpf_map__fd(j->skel->maps.jvm_threads);
	uint64_t list, arr, *threads = NULL;
	uint32_t len, *tids = NULL, n = 0, i;
	struct tid_pair *pairs = NULL;
	size_t npairs = 0, k;

	if (p->path != PATH_VMSTRUCTS || !w->threads_addr)
		return;
	list = mem_u64(&m, w->threads_addr);
	len = mem_u32(&m, list + w->toff[T_LIST_LEN]);
	arr = mem_u64(&m, list + w->toff[T_LIST_THREADS]);
	if (m.err || len > MAX_THREADS_READ)
		return;
	threads = calloc(len + 1, sizeof(*threads));
	tids = calloc(len + 1, sizeof(*tids));
	if (!threads || !tids)
		goto cleanup;
	if (len)
		mem_read(&m, arr, threads, len * sizeof(*threads));
	if (m.err)
		goto cleanup; /* keep what the map has */
	if (p->nspid != p->pid)
		pairs = ns_tids(p->pid, &npairs);
	for (i = 0; i < len; i++) {
		uint64_t t = threads[i], base, size, os;
		struct tid_pair key, *hit;
		struct jvm_thread jt;
		uint32_t tid;

		m.err = 0;
		os = mem_u64(&m, t + w->toff[T_OSTHREAD]);
		tid = mem_u32(&m, os + w->toff[T_THREAD_ID]);
		base = mem_u64(&m, t + w->toff[T_STACK_BASE]);
		size = mem_u64(&m, t + w->toff[T_STACK_SIZE]);
		if (m.err || !tid || !size || size > base || size > (1ULL << 32))
			continue;
		if (p->nspid != p->pid) {
			key.ns = tid;
			hit = pairs ? bsearch(&key, pairs, npairs, sizeof(*pairs), cmp_pair) : NULL;
			if (!hit)
				continue;
			tid = hit->host;
		}
		jt = (struct jvm_thread){
			.anchor = t + w->toff[T_ANCHOR], .stack_lo = base - size, .stack_hi = base};
		if (bpf_map_update_elem(fd, &tid, &jt, BPF_ANY))
			continue; /* the map is full: native frames by frame pointer only */
		tids[n++] = tid;
	}
	qsort(tids, n, sizeof(*tids), cmp_u32);
	for (k = 0; k < p->ntids; k++)
		if (!bsearch(&p->tids[k], tids, n, sizeof(*tids), cmp_u32))
			bpf_map_delete_elem(fd, &p->tids[k]);
	free(p->tids);
	p->tids = tids;
	p->ntids = n;
	tids = NULL;
cleanup:
	free(pairs);
	free(threads);
	free(tids);
}

/* A Symbol's bytes (not NUL-ended in the JVM) into out. */
static void mem_symbol(struct mem *m, uint64_t sym, char *out, size_t outlen)
{
	size_t len = mem_u16(m, sym + m->w->off[O_SYM_LENGTH]);

	if (len >= outlen)
		len = outlen - 1;
	mem_read(m, sym + m->w->off[O_SYM_BODY], out, len);
	out[m->err ? 0 : len] = '\0';
}

/* HotSpot's compressed ints (UNSIGNED5 before JDK 20): base-64 digits
 * above 191 say another byte follows, at most five. */
static uint32_t u5(const uint8_t *b, size_t len, size_t *pos, bool *bad)
{
	uint32_t sum = 0;
	int i, shift = 0;

	for (i = 0; i < 5; i++, shift += 6) {
		uint32_t c;

		if (*pos >= len) {
			*bad = true;
			return 0;
		}
		c = b[(*pos)++];
		sum += c << shift;
		if (c < 192)
			return sum;
	}
	return sum;
}

static int32_t u5_signed(const uint8_t *b, size_t len, size_t *pos, bool *bad)
{
	uint32_t v = u5(b, len, pos, bad);

	return (int32_t)((v >> 1) ^ -(v & 1));
}

/*
 * The line of bci in a ConstMethod's compressed line number table (after
 * its bytecode): the entry for bci, else the last one before it, as
 * Method::line_number_from_bci does. 0 when unknown.
 */
static uint32_t line_of(struct mem *m, uint64_t cm, int32_t bci)
{
	const struct walker_info *w = m->w;
	uint8_t tab[MAX_LINE_TAB];
	uint16_t flags = mem_u16(m, cm + w->off[O_CM_FLAGS]);
	uint16_t code_size = mem_u16(m, cm + w->off[O_CM_CODE_SIZE]);
	int32_t cur_bci = 0, line = 0, best_bci = 0, best = 0;
	size_t pos = 0, len;
	ssize_t n;
	bool bad = false;

	if (m->err || !(flags & (uint32_t)w->ints[I_HAS_LINES]) || bci < 0)
		return 0;
	n = m->j->api->read_memory(m->j->host, m->pid, cm + w->size[Z_CONSTMETHOD] + code_size, tab,
				   sizeof(tab));
	if (n <= 0)
		return 0;
	len = (size_t)n;
	while (pos < len && !bad) {
		uint8_t b = tab[pos++];

		if (!b)
			break;
		if (b == 0xff) {
			cur_bci += u5_signed(tab, len, &pos, &bad);
			line += u5_signed(tab, len, &pos, &bad);
		} else {
			cur_bci += b >> 3;
			line += b & 7;
		}
		if (bad)
			break;
		if (cur_bci == bci)
			return line > 0 ? (uint32_t)line : 0;
		if (cur_bci < bci && cur_bci >= best_bci) {
			best_bci = cur_bci;
			best = line;
		}
	}
	return best > 0 ? (uint32_t)best : 0;
}

/* "package.Class.method" and the source file of a Method, interned; its
 * ConstMethod in *cm. 0, or -EFAULT. */
static int name_method(struct mem *m, uint64_t method, uint64_t *cm, struct sonde_plugin_frame *f)
{
	const struct walker_info *w = m->w;
	char klass[MAX_SYMBOL], name[MAX_SYMBOL], file[MAX_SYMBOL], full[2 * MAX_SYMBOL + 2];
	uint64_t cp, holder, slots;
	uint16_t name_index, file_index;
	char *c;

	*cm = mem_u64(m, method + w->off[O_M_CONSTMETHOD]);
	cp = mem_u64(m, *cm + w->off[O_CM_CONSTANTS]);
	holder = mem_u64(m, cp + w->off[O_CP_HOLDER]);
	slots = cp + w->size[Z_CONSTANTPOOL];
	name_index = mem_u16(m, *cm + w->off[O_CM_NAME_INDEX]);
	file_index = mem_u16(m, cp + w->off[O_CP_SOURCE_FILE]);
	mem_symbol(m, mem_u64(m, holder + w->off[O_KLASS_NAME]), klass, sizeof(klass));
	/* constant pool slots hold Symbol*, the low bit a tag */
	mem_symbol(m, mem_u64(m, slots + 8ULL * name_index) & ~1ULL, name, sizeof(name));
	file[0] = '\0';
	if (file_index)
		mem_symbol(m, mem_u64(m, slots + 8ULL * file_index) & ~1ULL, file, sizeof(file));
	if (m->err || !klass[0] || !name[0])
		return -EFAULT;
	for (c = klass; *c; c++)
		if (*c == '/')
			*c = '.';
	snprintf(full, sizeof(full), "%s.%s", klass, name);
	pthread_mutex_lock(&m->j->lock);
	f->function = plugin_strings_intern(&m->j->strings, full);
	f->file = file[0] ? plugin_strings_intern(&m->j->strings, file) : NULL;
	pthread_mutex_unlock(&m->j->lock);
	return f->function ? 0 : -ENOMEM;
}

/* One Java frame: the method and the line of bci (-1: unknown). */
static int java_frame(struct mem *m, uint64_t method, int32_t bci, struct sonde_plugin_frame *f)
{
	uint64_t cm;

	*f = (struct sonde_plugin_frame){0};
	if (name_method(m, method, &cm, f))
		return -EFAULT;
	f->line = bci >= 0 ? line_of(m, cm, bci) : 0;
	m->err = 0; /* a line table that cannot be read leaves the line out */
	return 0;
}

static int name_interp(struct mem *m, uint64_t aux, uint64_t method, struct sonde_plugin_frame *f)
{
	uint64_t cm, bcp = aux & 0xffffffffffffULL;
	int64_t bci;
	uint16_t code_size;

	*f = (struct sonde_plugin_frame){0};
	if (name_method(m, method, &cm, f))
		return 0;
	bci = (int64_t)(bcp - (cm + m->w->size[Z_CONSTMETHOD]));
	code_size = mem_u16(m, cm + m->w->off[O_CM_CODE_SIZE]);
	if (!m->err && bci >= 0 && bci < code_size) {
		f->line = line_of(m, cm, (int32_t)bci);
		return 1;
	}
	/* The interrupted frame may be at its entry, its bcp not set yet, and
	 * a native method has no bytecode: they keep their name, without a
	 * line. A caller's bcp is otherwise in its bytecode: outside, the
	 * Method* now holds another method. */
	return (aux & JVM_FRAME_RET) && !m->err && code_size ? -ESTALE : 1;
}

struct pcdesc {
	int32_t pc_offset, scope;
};

/*
 * The frames of a compiled method at a pc, innermost first: the PcDesc at
 * the pc (a return address has its call's own desc, or none: a frame being
 * deoptimized returns to the deopt handler; elsewhere the next desc, as
 * HotSpot's approximate lookup) and its scope chain in the nmethod's
 * scopes data, each scope (sender offset, metadata index, bci + 1), the
 * inlined methods before the ones they were inlined into.
 */
static int name_nmethod(struct mem *m, uint64_t aux, uint64_t nm, struct sonde_plugin_frame *f,
			int max)
{
	const struct walker_info *w = m->w;
	uint32_t off = (uint32_t)aux, cid = mem_u32(m, nm + w->off[O_NM_COMPILE_ID]);
	bool ret = aux & JVM_FRAME_RET, bad = false;
	uint64_t method = mem_u64(m, nm + w->off[O_NM_METHOD]), scopes, metadata;
	int32_t pcs_off, deps_off, meta_off, scope = 0;
	size_t n = 0, i, stride = w->size[Z_PCDESC];
	uint8_t *pcs = NULL, buf[64];
	int k = 0;

	if (m->err || (cid & JVM_CID_MASK) != ((aux >> 32) & JVM_CID_MASK))
		return -ESTALE; /* freed, or the blob now holds another method */
	pcs_off = (int32_t)mem_u32(m, nm + w->off[O_NM_SCOPES_PCS]);
	deps_off = (int32_t)mem_u32(m, nm + w->off[O_NM_DEPENDENCIES]);
	meta_off = (int32_t)mem_u32(m, nm + w->off[O_NM_METADATA]);
	scopes = mem_u64(m, nm + w->off[O_NM_SCOPES_DATA]);
	metadata = nm + (uint64_t)(int64_t)meta_off;
	if (!m->err && pcs_off > 0 && deps_off > pcs_off)
		n = (size_t)(deps_off - pcs_off) / stride;
	if (n && n < MAX_PCDESCS && (pcs = malloc(n * stride))) {
		mem_read(m, nm + (uint64_t)pcs_off, pcs, n * stride);
		for (i = 0; !m->err && i < n; i++) {
			int32_t po, sc;

			memcpy(&po, pcs + i * stride + w->off[O_PC_OFFSET], 4);
			memcpy(&sc, pcs + i * stride + w->off[O_PC_SCOPE], 4);
			if (ret ? po == (int32_t)off : po > (int32_t)off) {
				scope = sc;
				break;
			}
		}
		free(pcs);
	}
	m->err = 0;
	while (scope > 0 && k < max && k < MAX_SCOPE_LEN) {
		uint32_t sender, index, bci1;
		size_t pos = 0;
		uint64_t inl;

		mem_read(m, scopes + (uint64_t)scope, buf, 15);
		sender = u5(buf, 15, &pos, &bad);
		index = u5(buf, 15, &pos, &bad);
		bci1 = u5(buf, 15, &pos, &bad);
		if (m->err || bad || !index)
			break;
		inl = mem_u64(m, metadata + 8ULL * (index - 1));
		if (m->err || java_frame(m, inl, (int32_t)bci1 - 1, &f[k]))
			break;
		k++;
		if (sender >= (uint32_t)scope)
			break;
		scope = (int32_t)sender;
	}
	m->err = 0;
	if (k)
		return k;
	/* no scope: the method itself, without a line */
	return java_frame(m, method, -1, &f[0]) ? -EFAULT : 1;
}

static int name_blob(struct mem *m, uint64_t blob, struct sonde_plugin_frame *f)
{
	char name[MAX_VM_STRING];
	ssize_t n;

	n = m->j->api->read_memory(m->j->host, m->pid, mem_u64(m, blob + m->w->off[O_BLOB_NAME]),
				   name, sizeof(name) - 1);
	if (m->err || n <= 0)
		return 0;
	name[n] = '\0';
	*f = (struct sonde_plugin_frame){0};
	pthread_mutex_lock(&m->j->lock);
	f->function = plugin_strings_intern(&m->j->strings, name);
	pthread_mutex_unlock(&m->j->lock);
	return f->function ? 1 : 0;
}

/* A frame of the vmstructs path; 0 when it cannot be named. */
static int symbolize_walked(struct jvm *j, uint32_t pid, uint64_t aux, uint64_t payload,
			    struct sonde_plugin_frame *frames, int max)
{
	struct mem m = {.j = j, .pid = pid};
	struct walker_info w;
	struct proc *p;
	bool known;
	int n = 0;

	pthread_mutex_lock(&j->lock);
	p = find_proc(j, pid);
	known = p && p->path == PATH_VMSTRUCTS;
	if (known)
		w = p->vm.w; /* a copy: the lock is not held while reading the JVM */
	pthread_mutex_unlock(&j->lock);
	if (!known)
		return 0;
	m.w = &w;
	switch (JVM_FRAME_TYPE(aux)) {
	case JVM_FRAME_INTERP:
		n = name_interp(&m, aux, payload, frames);
		break;
	case JVM_FRAME_NMETHOD:
		n = name_nmethod(&m, aux, payload, frames, max);
		break;
	case JVM_FRAME_BLOB:
		n = name_blob(&m, payload, frames);
		break;
	}
	if (n <= 0) {
		pthread_mutex_lock(&j->lock);
		if (n == -ESTALE)
			j->stale++;
		else
			j->symbol_errors++;
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	return n;
}

static int jvm_symbolize(void *state, uint32_t pid, uint64_t word, uint64_t payload,
			 struct sonde_plugin_frame *frames, int max)
{
	struct jvm *j = state;
	uint64_t pc = (word & JVM_FRAME_RETURN) ? payload - 1 : payload;
	const char *name = NULL;
	struct proc *p;
	size_t lo, hi;

	if (!j || max < 1)
		return 0;
	if (JVM_FRAME_TYPE(word) != JVM_FRAME_PC)
		return symbolize_walked(j, pid, word, payload, frames, max);
	pthread_mutex_lock(&j->lock);
	p = find_proc(j, pid);
	if (p) {
		lo = 0;
		hi = p->nsyms;
		while (lo < hi) { /* the first entry starting after pc */
			size_t mid = lo + (hi - lo) / 2;

			if (p->syms[mid].start <= pc)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo && pc < p->syms[lo - 1].end)
			name = p->syms[lo - 1].name;
		if (!name && now_ms() - p->requested_ms >= MISS_REFRESH_MS)
			request_perfmap(j, p); /* new code since the last map */
	}
	if (!name)
		j->unnamed++;
	pthread_mutex_unlock(&j->lock);
	if (!name)
		return 0;
	frames[0] = (struct sonde_plugin_frame){.function = name};
	return 1;
}

static void jvm_tick(void *ctx)
{
	struct jvm *j = ctx;
	uint64_t now = now_ms();
	char reason[256];
	struct proc *p;
	int rc;

	for (p = j->procs; p; p = p->next) {
		if (p->path == PATH_PERFMAP) {
			pthread_mutex_lock(&j->lock);
			if (now - p->requested_ms >= (uint64_t)j->set.perfmap_interval_ms)
				request_perfmap(j, p);
			pthread_mutex_unlock(&j->lock);
			continue;
		}
		if (p->path == PATH_VMSTRUCTS)
			refresh_threads(j, p);
		if (p->path != PATH_PENDING)
			continue;
		reason[0] = '\0';
		rc = timed_detect(j, p, reason, sizeof(reason));
		if (rc == SONDE_DECLINE && proc_age_ms(p->pid) < STARTUP_MS)
			rc = -EAGAIN; /* read while libjvm.so was still being loaded */
		if (rc == -EAGAIN && ++p->tries < PENDING_TRIES)
			continue;
		if (rc == -EAGAIN && reason[0])
			rc = SONDE_DECLINE;
		if (rc == -EAGAIN)
			snprintf(reason, sizeof(reason), "%s",
				 p->libjvm[0] ? "the code cache did not come up"
					      : "no libjvm.so mapped after start-up");
		if (!rc)
			rc = start_path(j, p);
		if (!rc)
			continue;
		if (rc < 0 && !reason[0])
			snprintf(reason, sizeof(reason), "%s", strerror(-rc));
		p->path = PATH_DECLINED;
		pthread_mutex_lock(&j->lock);
		j->declined++;
		pthread_mutex_unlock(&j->lock);
		j->api->log(j->host, SONDE_PLUGIN_LOG_WARN,
			    "pid %u: declined after attach: %s (native stacks only)", p->pid,
			    reason);
		set_status(j, p->pid, 0, reason); /* sondectl ps shows it declined */
	}
}

/* Forgets pid: its tables, its walker entry. */
static void forget(struct jvm *j, uint32_t pid)
{
	struct proc **pp, *p;
	size_t k;

	bpf_map_delete_elem(bpf_map__fd(j->skel->maps.jvm_procs), &pid);
	pthread_mutex_lock(&j->lock);
	for (pp = &j->procs; (p = *pp);) {
		if (p->pid == pid) {
			*pp = p->next;
			for (k = 0; k < p->ntids; k++)
				bpf_map_delete_elem(bpf_map__fd(j->skel->maps.jvm_threads),
						    &p->tids[k]);
			free_proc(p);
		} else {
			pp = &p->next;
		}
	}
	pthread_mutex_unlock(&j->lock);
}

static void jvm_detach(void *state, uint32_t pid)
{
	forget(state, pid);
}

/* A process offered at exec has no libjvm.so yet: a java launcher is kept
 * pending, anything else is not a JVM. */
static bool looks_like_launcher(const struct sonde_plugin_process *proc)
{
	const char *base = proc->exe ? strrchr(proc->exe, '/') : NULL;

	return base && !strcmp(base + 1, "java");
}

static int jvm_attach(void *state, const struct sonde_plugin_process *proc, char *reason,
		      size_t reasonlen)
{
	struct jvm *j = state;
	struct proc *p = calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return -ENOMEM;
	p->pid = proc->pid;
	read_ids(p);
	rc = timed_detect(j, p, reason, reasonlen);
	if (rc == -EAGAIN && !p->libjvm[0] && !looks_like_launcher(proc)) {
		snprintf(reason, reasonlen, "not a JVM: no libjvm.so mapped");
		rc = SONDE_DECLINE;
	} else if (rc == SONDE_DECLINE && looks_like_launcher(proc) &&
		   proc_age_ms(proc->pid) < STARTUP_MS) {
		/* Offered while the launcher loads libjvm.so: what we read may be
		 * half there. The timer reads again; a JVM still unreadable when
		 * grown up is declined then, in the log and the metrics. */
		j->api->log(j->host, SONDE_PLUGIN_LOG_DEBUG, "pid %u: not readable yet: %s",
			    proc->pid, reason);
		rc = -EAGAIN;
	}
	if (rc > 0 || (rc < 0 && rc != -EAGAIN)) {
		if (rc > 0 && p->libjvm[0]) {
			pthread_mutex_lock(&j->lock);
			j->declined++;
			pthread_mutex_unlock(&j->lock);
			j->api->log(j->host, SONDE_PLUGIN_LOG_INFO, "pid %u: declined: %s",
				    proc->pid, reason);
		}
		free_proc(p);
		return rc;
	}
	forget(j, p->pid); /* a re-offer replaces the old state */
	pthread_mutex_lock(&j->lock);
	p->next = j->procs;
	j->procs = p;
	pthread_mutex_unlock(&j->lock);
	if (rc == -EAGAIN) {
		j->api->log(j->host, SONDE_PLUGIN_LOG_DEBUG, "pid %u: waiting for the JVM to start",
			    p->pid);
		set_status(j, p->pid, 1, "pending");
		return 0;
	}
	rc = start_path(j, p);
	if (rc) {
		snprintf(reason, reasonlen, "jvm_procs: %s", strerror(-rc));
		forget(j, proc->pid);
	}
	return rc;
}

static const char *const error_names[JVM_ERR__COUNT] = {
	[JVM_ERR_NO_PROC] = "no_code_cache",
	[JVM_ERR_USTACK] = "ustack",
	[JVM_ERR_TRUNCATED] = "truncated",
	[JVM_ERR_UNNAMED] = "unnamed_pc",
	[JVM_ERR_ATTACH] = "attach",
	[JVM_ERR_PERFMAP] = "perfmap_read",
	[JVM_ERR_READ] = "read",
	[JVM_ERR_NO_HEAP] = "no_code_heap",
	[JVM_ERR_SEGMAP] = "segmap",
	[JVM_ERR_PROLOGUE] = "prologue",
	[JVM_ERR_NO_FRAME] = "no_caller",
	[JVM_ERR_STALE] = "stale_nmethod",
	[JVM_ERR_SYMBOL_READ] = "symbol_read",
};

static int jvm_write_metrics(void *state, FILE *out)
{
	struct jvm *j = state;
	uint64_t paths[PATH__COUNT] = {0}, user[JVM_ERR__COUNT] = {0}, setups, setup_ns;
	struct proc *p;
	uint32_t r;
	int err;

	err = plugin_percpu_sums(bpf_map__fd(j->skel->maps.jvm_errors), JVM_ERR__BPF, user);
	if (err)
		return err;
	pthread_mutex_lock(&j->lock);
	for (p = j->procs; p; p = p->next)
		if (p->path != PATH_DECLINED)
			paths[p->path]++;
	paths[PATH_DECLINED] = j->declined;
	user[JVM_ERR_UNNAMED] = j->unnamed;
	user[JVM_ERR_ATTACH] = j->attach_errors;
	user[JVM_ERR_PERFMAP] = j->perfmap_errors;
	user[JVM_ERR_STALE] = j->stale;
	user[JVM_ERR_SYMBOL_READ] = j->symbol_errors;
	setups = j->setups;
	setup_ns = j->setup_ns;
	pthread_mutex_unlock(&j->lock);
	fprintf(out, "# HELP sonde_unwind_jvm_setups_total JVMs set up: their structures read "
		     "and checked, a path given.\n"
		     "# TYPE sonde_unwind_jvm_setups_total counter\n"
		     "sonde_unwind_jvm_setups_total %" PRIu64 "\n"
		     "# HELP sonde_unwind_jvm_setup_seconds_total Time those set-ups took (reading "
		     "VMStructs from the process, checking them, the walker's entry, the threads' "
		     "anchors).\n"
		     "# TYPE sonde_unwind_jvm_setup_seconds_total counter\n"
		     "sonde_unwind_jvm_setup_seconds_total %.9f\n",
		     setups, (double)setup_ns / 1e9);
	fprintf(out, "# HELP sonde_unwind_jvm_processes JVMs by the path they got: perfmap and "
		     "pending now, declined since start.\n"
		     "# TYPE sonde_unwind_jvm_processes gauge\n");
	for (r = 0; r < PATH__COUNT; r++)
		fprintf(out, "sonde_unwind_jvm_processes{path=\"%s\"} %" PRIu64 "\n", path_names[r],
			paths[r]);
	fprintf(out, "# HELP sonde_unwind_jvm_errors_total JVM stacks not fully unwound or "
		     "frames not named, by reason.\n"
		     "# TYPE sonde_unwind_jvm_errors_total counter\n");
	for (r = 0; r < JVM_ERR__COUNT; r++)
		fprintf(out, "sonde_unwind_jvm_errors_total{reason=\"%s\"} %" PRIu64 "\n",
			error_names[r], user[r]);
	return 0;
}

static void jvm_fini(void *state);

static void *jvm_init(const struct sonde_host_api *api, struct sonde_host *host,
		      const void *settings, char *err, size_t errlen)
{
	struct jvm *j = calloc(1, sizeof(*j));
	int kind, rc, slot;

	if (!j) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	j->api = api;
	j->host = host;
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->wake, NULL);
	j->set.perfmap_interval_ms = 2000;
	if (settings)
		memcpy(&j->set, settings, sizeof(j->set));
	if (j->set.perfmap_interval_ms < 100) {
		snprintf(err, errlen, "perfmap_interval_ms must be at least 100");
		goto fail;
	}
	if (!j->set.path)
		j->set.path = "auto";
	if (strcmp(j->set.path, "auto") && strcmp(j->set.path, "perfmap")) {
		snprintf(err, errlen, "path must be \"auto\" or \"perfmap\", not \"%s\"",
			 j->set.path);
		goto fail;
	}
	kind = api->register_frame_kind(host, "jvm", jvm_symbolize);
	j->skel = jvm_bpf__open();
	if (kind < 0 || !j->skel) {
		snprintf(err, errlen, "cannot open the unwinder (%s)",
			 strerror(kind < 0 ? -kind : errno));
		goto fail;
	}
	j->skel->rodata->jvm_kind = (uint64_t)kind;
	rc = plugin_reuse_core_maps(api, host, j->skel->obj);
	if (!rc)
		rc = jvm_bpf__load(j->skel);
	if (rc) {
		snprintf(err, errlen, "cannot load the unwinder: %s", strerror(-rc));
		goto fail;
	}
	slot = api->register_unwinder(host, "jvm", bpf_program__fd(j->skel->progs.unwind_jvm));
	if (slot < 0) {
		snprintf(err, errlen, "no unwinder slot: %s", strerror(-slot));
		goto fail;
	}
	rc = pthread_create(&j->worker, NULL, worker_main, j);
	if (rc) {
		snprintf(err, errlen, "cannot start the attach thread: %s", strerror(rc));
		goto fail;
	}
	j->worker_started = true;
	j->timer = api->add_timer(host, TICK_MS, TICK_MS, jvm_tick, j);
	if (!j->timer) {
		snprintf(err, errlen, "cannot add a timer");
		goto fail;
	}
	api->log(host, SONDE_PLUGIN_LOG_INFO, "frame kind %d, unwinder slot %d", kind, slot);
	return j;
fail:
	jvm_fini(j);
	return NULL;
}

static void jvm_fini(void *state)
{
	struct jvm *j = state;
	struct proc *p;
	struct job *jb;

	if (!j)
		return;
	if (j->timer)
		j->api->cancel_timer(j->host, j->timer);
	if (j->worker_started) {
		pthread_mutex_lock(&j->lock);
		j->stopping = true;
		pthread_cond_signal(&j->wake);
		pthread_mutex_unlock(&j->lock);
		pthread_join(j->worker, NULL);
	}
	jvm_bpf__destroy(j->skel);
	while ((jb = j->jobs)) {
		j->jobs = jb->next;
		free(jb);
	}
	while ((p = j->procs)) {
		j->procs = p->next;
		free_proc(p);
	}
	plugin_strings_release(&j->strings);
	pthread_cond_destroy(&j->wake);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

static const struct sonde_plugin_setting jvm_settings[] = {
	{SONDE_SETTING_INT, "perfmap_interval_ms", "2000",
	 offsetof(struct settings, perfmap_interval_ms),
	 "how often a JVM on the perfmap path is asked for a fresh perf map"},
	{SONDE_SETTING_STRING, "path", "auto", offsetof(struct settings, path),
	 "auto: the VMStructs walker where it can read the JVM, else the perf map; "
	 "perfmap: the perf map only (JVMs run with -XX:+PreserveFramePointer)"},
	{SONDE_SETTING_END, NULL, NULL, 0, NULL},
};

const struct sonde_plugin sonde_plugin = {
	.magic = SONDE_PLUGIN_MAGIC,
	.abi_major = SONDE_PLUGIN_ABI_MAJOR,
	.abi_minor = SONDE_PLUGIN_ABI_MINOR,
	.size = sizeof(struct sonde_plugin),
	.name = "unwind-jvm",
	.version = "0.2",
	.description = "HotSpot JVM frames (Java methods, interpreted, compiled and inlined) in "
		       "the stacks",
	.settings = jvm_settings,
	.settings_size = sizeof(struct settings),
	.init = jvm_init,
	.fini = jvm_fini,
	.attach_process = jvm_attach,
	.detach_process = jvm_detach,
	.write_metrics = jvm_write_metrics,
};
