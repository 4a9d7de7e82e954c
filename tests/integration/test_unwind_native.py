#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-native walks whole stacks of code built without frame pointers:
six fixtures (a chain six deep, a recursion 40 deep, a callback from libc's
qsort, a chain through a shared library, three threads, a chain through a
library that has .debug_frame and no .eh_frame) show their exact frames down
to main and libc's start (the threads: down to start_thread and clone3) in
at least 99% of their samples with the plugin, as does Debian's stripped
sha256sum hashing a large file (its frames unnamed); a loop in
clock_gettime() and getcpu() unwinds out of the vdso (frames named as its
symbols, through libc's wrappers) in at least 95%; and none of them do
without the plugin (frame pointers), which proves the plugin does the work.
A library dlopen()ed after the process was attached is found by a rescan,
after which at least 95% of the samples hold its whole chain.
Its stop counters are on /metrics. Tables are built by the plugin's worker
thread and saved in its cache_dir: a second daemon reads them from there (no
build) and unwinds as well. A cross-check: libdw (unw_crosscheck, over ptrace)
unwinds the same processes mid-profile, and its caller chains, from a known
function down, are the walker's return address for return address."""
import os
import re
import subprocess
import threading
import time

from sondetest import (Profile, Sonded, build_dir, fail, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

HZ = 251
SECONDS = 5
# Nine CPU-bound processes (and the threads) share the CPUs: on a 2-CPU CI
# runner each gets a hundred or two samples at best, fewer when it is busy.
MIN_SAMPLES = 60
plugins = os.path.join(build_dir(), "plugins")
fixtures = os.path.join(build_dir(), "tests", "fixtures", "unwind-native")
work = scratch_dir("sonde-unwind-native-")
cache_dir = os.path.join(work, "cache", "unwind")

CHAIN = [f"chain{i}" for i in range(6, 0, -1)] + ["main"]
RECURSE = ["leaf"] + ["recurse"] * 40 + ["main"]
LIB = ["app_leaf", "lib_inner", "lib_outer", "app_outer", "main"]
THREAD = ["thread_leaf", "thread_mid", "thread_main"]
LIBC_THREAD = ["start_thread", "__clone3"]
VDSO = ["vdso_spin", "vdso_mid", "vdso_outer", "main"]
DBGFRAME = ["dbg_inner", "dbg_mid", "dbg_outer", "dbgf_app", "main"]
DLOPEN = ["dl_inner", "dl_mid", "dl_outer", "run_lib", "main"]
FIXTURES = ("unw_chain", "unw_recurse", "unw_qsort", "unw_lib", "unw_threads", "unw_vdso",
            "unw_dbgframe")
# The share of samples that must hold the whole stack; the vdso's: the
# issue's figure for it.
MIN_SHARE = {"unw_vdso": 0.95}
SHA256SUM = "/usr/bin/sha256sum"
big = os.path.join(work, "big")
with open(big, "wb") as f:
    f.write(os.urandom(64 << 20))
# Below main: libc's two start frames, then the executable's _start, where
# the CFI says the return address is undefined. libc's names need its debug
# symbols (libc6-dbg): without them only their mapping is checked.
LIBC_START = ["__libc_start_call_main", "__libc_start_main_impl"]


def start_ok(frames):
    """The frames below main are exactly libc's start and _start."""
    if len(frames) != 3 or frames[2][0] != "_start" or frames[2][1].endswith("libc.so.6"):
        return False
    libc = frames[:2]
    if any(not m.endswith("/libc.so.6") for _, m in libc):
        return False
    return [f for f, _ in libc] == LIBC_START or not libc_named


def qsort_shape(frames):
    """compare, then libc's frames (no name of the fixture), then main: the
    libc part is checked to be the same in every sample below."""
    names = [f for f, _ in frames]
    if not names or names[0] != "compare" or "main" not in names:
        return None
    i = names.index("main")
    inner = frames[1:i]
    if not inner or any(not m.endswith("/libc.so.6") for _, m in inner):
        return None
    if not start_ok(frames[i + 1:]):
        return None
    return names


def write_script(path, with_plugin):
    with open(path, "w") as f:
        if with_plugin:
            # This build's fixtures and this test's sha256sum only, by path:
            # another tree's test may run the same fixtures at the same time.
            f.write(f'plugin "unwind-native" {{ required = true, cache_dir = "{cache_dir}" }}\n'
                    'on_process(function(p)\n'
                    f'  if (p.exe and p.exe:find("{fixtures}/unw_", 1, true)\n'
                    '       and p.comm ~= "unw_crosscheck")\n'
                    f'      or (p.cmdline and p.cmdline:find("{big}", 1, true)) then\n'
                    '    return { unwinders = { "unwind-native" } }\n'
                    '  end\n'
                    '  return true\n'
                    'end)\n')
        else:
            f.write("on_process(function(p) return true end)\n")


def user_frames(p, sample):
    """(function, mapping) pairs after the leading kernel frames."""
    frames = p.frames(sample)
    while frames and frames[0][1] == "[kernel.kallsyms]":
        frames.pop(0)
    return frames


def run(with_plugin, tag):
    script = os.path.join(work, f"{tag}.lua")
    write_script(script, with_plugin)
    args = ["--script", script]
    if with_plugin:
        args += ["--plugin-dir", plugins]
    out = os.path.join(work, f"{tag}.pb.gz")
    with Sonded(*args, hz=HZ) as d:
        procs = {name: subprocess.Popen([os.path.join(fixtures, name), str(SECONDS + 1.5)])
                 for name in FIXTURES}
        # ~500 MB/s: hashing the file 80 times outlasts the profile
        procs["sha256sum"] = subprocess.Popen([SHA256SUM] + [big] * 80,
                                              stdout=subprocess.DEVNULL)
        checker = None
        if tag == "native":
            checker = threading.Thread(target=crosscheck, args=(procs,))
        try:
            time.sleep(0.7)
            if checker:
                checker.start()
            status, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
            if checker:
                checker.join()
        finally:
            procs["sha256sum"].kill()
            for pr in procs.values():
                pr.wait()
        if status != 200:
            fail(f"profile request answered {status}")
        with open(out, "wb") as f:
            f.write(body)
        _, metrics = http_get(d.url("/metrics"))
        log = d.output()
    return Profile(out), {n: pr.pid for n, pr in procs.items()}, metrics.decode(), log


def shares(p, pids, check):
    """Per fixture: (samples matching, total, most common bad stacks)."""
    result = {}
    for name, pid in pids.items():
        good = total = 0
        bad = {}
        for s in p.samples:
            if s["labels"].get("pid") != str(pid):
                continue
            frames = user_frames(p, s)
            total += s["count"]
            if check(name, frames):
                good += s["count"]
            else:
                key = tuple(f for f, _ in frames)
                bad[key] = bad.get(key, 0) + s["count"]
        worst = sorted(bad.items(), key=lambda kv: -kv[1])[:3]
        result[name] = (good, total, worst)
    return result


qsort_seen = {}

# unw_crosscheck's stacks, per fixture: one list of (ELF address, module,
# symbol) per thread, taken twice during the profile.
libdw_stacks = {}
# Where each fixture's compared chain starts: the first frame of that name
# (the leaf moves between samples; its callers do not). sha256sum has no
# names: its last five frames (digest_file, main, libc's start, _start).
CHECK_FROM = {"unw_chain": "chain5", "unw_recurse": "recurse", "unw_lib": "lib_inner",
              "unw_threads": "thread_mid", "sha256sum": -5, "unw_dbgframe": "dbg_mid",
              "unw_vdso": "vdso_mid"}


def crosscheck(procs):
    tool = os.path.join(fixtures, "unw_crosscheck")
    for _ in range(2):
        time.sleep(1.0)
        for name in CHECK_FROM:
            r = subprocess.run([tool, str(procs[name].pid)], capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0:
                libdw_stacks.setdefault(name, []).append(("error", r.stderr.strip()))
                continue
            threads = []
            for line in r.stdout.splitlines():
                if line.startswith("thread "):
                    threads.append([])
                elif threads:
                    _, addr, module, sym = line.split(" ", 3)
                    threads[-1].append((int(addr, 16), module, sym))
            libdw_stacks.setdefault(name, []).extend(threads)


def chain_from(frames, start):
    """The (address, name) frames from start (a name, or a negative index)."""
    if isinstance(start, int):
        return frames[start:] if len(frames) >= -start else None
    names = [f for _, f in frames]
    return frames[names.index(start):] if start in names else None


def walker_chains(p, pid, start):
    """The walker's chains of return addresses for the samples of pid, as
    tuples, from start down (inlined frames folded: one per address)."""
    chains = set()
    for s in p.samples:
        if s["labels"].get("pid") != str(pid):
            continue
        frames = []
        for lid in s["locations"]:
            loc = p.locations[lid]
            name = loc["lines"][-1][0] if loc["lines"] else hex(loc["address"])
            if p.mappings.get(loc["mapping"], {}).get("file") == "[kernel.kallsyms]":
                continue
            frames.append((loc["address"], name))
        chain = chain_from(frames, start)
        if chain:
            chains.add(tuple(a for a, _ in chain))
    return chains


def threads_ok(frames):
    """thread_main's chain, then libc's start_thread and clone3, nothing else."""
    names = [f for f, _ in frames]
    if names[:3] != THREAD or len(frames) != 5:
        return False
    if any(not m.endswith("/libc.so.6") for _, m in frames[3:]):
        return False
    return names[3:] == LIBC_THREAD or not libc_named


def stripped_ok(frames):
    """sha256sum (stripped: frames named module+0xoffset or by address) down
    to libc's start and its own _start, every frame in its or libc's
    mapping, at least one of its own (main) above libc's start."""
    if len(frames) < 4 or frames[-1][1] != SHA256SUM:
        return False
    libc = frames[-3:-1]
    if any(not m.endswith("/libc.so.6") for _, m in libc):
        return False
    if libc_named and [f for f, _ in libc] != LIBC_START:
        return False
    if frames[-4][1] != SHA256SUM:
        return False
    return all(m == SHA256SUM or m.endswith("/libc.so.6") for _, m in frames)


VDSO_SYMBOL = re.compile(r"(__vdso_)?(clock_gettime|getcpu)")
PLT_STUB = r"unw_\w+\+0x[0-9a-f]+"  # a fixture's .plt: no symbol names it


def vdso_ok(frames):
    """At most one vdso frame, named as a vdso symbol and called from libc
    (its clock_gettime or getcpu wrapper), then the fixture's chain and
    libc's start."""
    i = 0
    while i < len(frames) and frames[i][1] == "[vdso]":
        i += 1
    j = i
    while j < len(frames) and frames[j][1].endswith("/libc.so.6"):
        j += 1
    vdso, libc, rest = frames[:i], frames[i:j], frames[j:]
    if frames and not vdso and not libc and re.fullmatch(PLT_STUB, frames[0][0]):
        rest = frames[1:]  # its .plt stub (unnamed) on the way to libc's wrapper
    if len(vdso) > 1 or len(libc) > 1 or (vdso and not libc):
        return False
    if vdso and not VDSO_SYMBOL.fullmatch(vdso[0][0]):
        return False
    names = [f for f, _ in rest]
    return names[:len(VDSO)] == VDSO and start_ok(rest[len(VDSO):])


def without_clock_read(frames):
    """frames without a leading read of the clock by the spin loops (spin.h's
    now_ns: its inlined frame, libc's clock_gettime, the vdso's, or the .plt
    stub on the way), which a sample may rarely stop in: now that the vdso
    unwinds, a whole stack."""
    i = 0
    while i < len(frames) and (frames[i][1] == "[vdso]" or (
            frames[i][1].endswith("/libc.so.6") and "clock_gettime" in frames[i][0]) or (
            i == 0 and re.fullmatch(PLT_STUB, frames[i][0]))):
        i += 1
    if i < len(frames) and frames[i][0] == "now_ns":
        return frames[i + 1:]
    return frames


def full_stack(name, frames):
    if name == "unw_vdso":
        return vdso_ok(frames)
    frames = without_clock_read(frames)
    names = [f for f, _ in frames]
    if name == "unw_qsort":
        shape = qsort_shape(frames)
        if shape is None:
            return False
        qsort_seen[tuple(shape)] = qsort_seen.get(tuple(shape), 0) + 1
        return True
    if name == "unw_threads":
        return threads_ok(frames)
    if name == "sha256sum":
        return stripped_ok(frames)
    expected = {"unw_chain": CHAIN, "unw_recurse": RECURSE, "unw_lib": LIB,
                "unw_dbgframe": DBGFRAME, "unw_dlopen": DLOPEN}[name]
    return names[:len(expected)] == expected and start_ok(frames[len(expected):])


# With the plugin: the exact frames in at least 99% of each fixture's samples.
libc_named = True
p, pids, metrics, log = run(True, "native")
libc_named = any(loc["lines"] and loc["lines"][0][0] == "__libc_start_call_main"
                 for loc in p.locations.values())
if not libc_named:
    print("note: libc has no debug symbols here (libc6-dbg): its frames are checked by mapping")
for line in log.splitlines():
    if "rows" in line and "FDEs" in line:
        print(line)
res = shares(p, pids, full_stack)
for s in p.samples:
    if s["labels"].get("pid") == str(pids["sha256sum"]):
        print(f"a sha256sum stack: {user_frames(p, s)}")
        break
for name, (good, total, worst) in res.items():
    if total < MIN_SAMPLES:
        fail(f"{name}: only {total} samples in {SECONDS} s at {HZ} Hz")
    if good < MIN_SHARE.get(name, 0.99) * total:
        fail(f"{name}: {good} of {total} samples hold the whole stack; most common others: "
             f"{worst}\n{metrics}")
    print(f"ok: {name}: {good}/{total} samples hold the whole stack"
          + (f"; the others: {worst}" if worst else ""))
# unw_vdso: a good part of its whole stacks stopped inside the vdso, in
# both of its functions (getcpu keeps no frame pointer: only the vdso's CFI
# steps out of it), and the vdso's table was built from the process's memory.
vdso_seen = {}  # the vdso function whole stacks stopped in (None: not in it)
for s in p.samples:
    if s["labels"].get("pid") == str(pids["unw_vdso"]):
        frames = user_frames(p, s)
        if vdso_ok(frames):
            leaf = frames[0][0] if frames[0][1] == "[vdso]" else None
            vdso_seen[leaf] = vdso_seen.get(leaf, 0) + s["count"]
in_vdso = sum(n for leaf, n in vdso_seen.items() if leaf)
vdso_total = res["unw_vdso"][1]
if in_vdso < 0.3 * vdso_total or not any(leaf and "getcpu" in leaf for leaf in vdso_seen):
    fail(f"unw_vdso: {in_vdso} of {vdso_total} samples stopped in the vdso: {vdso_seen}")
if not re.search(r"unwind-native: \[vdso\]: [1-9]\d* rows", log):
    fail(f"no table for the vdso in the log:\n{log}")
print(f"ok: unw_vdso: {in_vdso} of {vdso_total} whole stacks stopped in the vdso: {vdso_seen}")
# libunwdbg.so has .debug_frame and no .eh_frame (readelf), and a table.
sections = subprocess.run(["readelf", "-SW", os.path.join(fixtures, "libunwdbg.so")],
                          capture_output=True, text=True, check=True).stdout
if " .debug_frame " not in sections or ".eh_frame" in sections:
    fail(f"libunwdbg.so should have .debug_frame and no .eh_frame:\n{sections}")
if not re.search(r"unwind-native: libunwdbg\.so: [1-9]\d* rows", log):
    fail(f"no table for libunwdbg.so in the log:\n{log}")
print("ok: libunwdbg.so (.debug_frame only) unwinds")
# qsort: one libc path only (two elements), so the frames are exact too.
if len(qsort_seen) != 1:
    fail(f"unw_qsort: the frames through libc differ between samples: {qsort_seen}")
print(f"ok: unw_qsort's stack: {list(qsort_seen)[0]}")
# The library frames are named in the library's mapping.
for s in p.samples:
    if s["labels"].get("pid") == str(pids["unw_lib"]):
        frames = user_frames(p, s)
        if frames[1][0] == "lib_inner" and not frames[1][1].endswith("/libunwlib.so"):
            fail(f"lib_inner's mapping: {frames[1]}")
        break

# The cross-check: every libdw stack that holds the known function has the
# same return addresses from there down as some sample of the walker.
for name, start in CHECK_FROM.items():
    chains = walker_chains(p, pids[name], start)
    compared = 0
    for st in libdw_stacks.get(name, []):
        if st[0] == "error":
            fail(f"unw_crosscheck {name}: {st[1]}")
        chain = chain_from([(pc, sym) for pc, _, sym in st], start)
        if not chain:
            continue  # the main thread of unw_threads, waiting in join
        compared += 1
        addrs = tuple(a for a, _ in chain)
        if addrs not in chains:
            fail(f"{name}: libdw's chain {[(hex(a), f) for a, f in chain]} is not one of the "
                 f"walker's: {[[hex(a) for a in c] for c in chains]}")
    if compared < 2:
        fail(f"{name}: libdw gave {compared} stacks to compare: {libdw_stacks.get(name)}")
    print(f"ok: {name}: {compared} libdw stacks agree with the walker frame for frame "
          f"({len(chains)} distinct chains from {start})")

# The walk ends are counted: mostly at the outermost frame (_start).
def metric(name, label):
    m = re.search(rf'^{name}\{{{label}\}} (\d+)$', metrics, re.M)
    if not m:
        fail(f"no {name}{{{label}}} on /metrics:\n{metrics}")
    return int(m.group(1))


outermost = metric("sonde_unwind_native_complete_total", 'end="outermost"')
cfi = metric("sonde_unwind_native_frames_total", 'method="cfi"')
stops = {r: metric("sonde_unwind_native_stops_total", f'reason="{r}"')
         for r in ("no_process_table", "no_mapping", "no_cfi", "unsupported_rule", "read_failed",
                   "not_advancing", "frame_limit")}
total = sum(t for _, t, _ in res.values())
if outermost < 0.95 * total or cfi < 8 * outermost:
    fail(f"{outermost} walks reached the outermost frame, {cfi} CFI frames, for {total} "
         f"samples; stops: {stops}")
rescans = re.search(r"^sonde_unwind_native_rescans_total (\d+)$", metrics, re.M)
print(f"ok: {outermost} walks complete, {cfi} frames from tables, early stops: {stops}, "
      f"rescans: {rescans.group(1) if rescans else None}")

builds = metric("sonde_unwind_native_table_builds_total", 'result="ok"')
misses = metric("sonde_unwind_native_table_cache_total", 'result="miss"')
if builds < 3 or misses != builds:
    fail(f"first daemon: {builds} tables built, {misses} cache misses:\n{metrics}")
if oct(os.stat(cache_dir).st_mode & 0o777) != "0o700":
    fail(f"{cache_dir} is mode {oct(os.stat(cache_dir).st_mode)}")
cached = sorted(os.listdir(cache_dir))
if len(cached) != builds or not all(re.fullmatch(r"b-[0-9a-f]{40}\.unw", n) for n in cached):
    fail(f"{builds} tables built but the cache holds {cached}")
print(f"ok: {builds} tables built (none cached yet), {len(cached)} files in the cache")

# A second daemon: every table from the cache, none built, the same stacks.
# One cache file is cut short: it is counted invalid, rebuilt and rewritten.
victim = os.path.join(cache_dir, cached[0])
with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
qsort_seen.clear()
p, pids, metrics, log = run(True, "cached")
for name, (good, total, worst) in shares(p, pids, full_stack).items():
    if total < MIN_SAMPLES or good < MIN_SHARE.get(name, 0.99) * total:
        fail(f"{name} from cached tables: {good} of {total} whole stacks; others: {worst}")
builds = metric("sonde_unwind_native_table_builds_total", 'result="ok"')
hits = metric("sonde_unwind_native_table_cache_total", 'result="hit"')
invalid = metric("sonde_unwind_native_table_cache_total", 'result="invalid"')
if builds != 1 or invalid != 1 or hits != len(cached) - 1:
    fail(f"second daemon: {builds} built, {hits} cache hits, {invalid} invalid for "
         f"{len(cached)} cached files (one truncated):\n{metrics}\n{log}")
if os.path.getsize(victim) <= 64:
    fail(f"{victim} was not rewritten")
print(f"ok: second daemon: {hits} tables from the cache, the truncated one rebuilt")

# Without the plugin, frame pointers cannot walk these fixtures.
qsort_seen.clear()
p, pids, _, _ = run(False, "fp")
for name, (good, total, _) in shares(p, pids, full_stack).items():
    if total < MIN_SAMPLES:
        fail(f"{name} (frame pointers): only {total} samples")
    if good > 0.5 * total:
        fail(f"{name}: frame pointers alone gave the whole stack in {good} of {total} samples; "
             "the fixture does not test the plugin")
    print(f"ok: {name} without the plugin: {good}/{total} whole stacks")


# A library dlopen()ed after sonded attached the process: the walker meets
# pcs in no known mapping, asks for a rescan, and once it is served (the
# rescan counter grew, the library's table built) the samples hold the whole
# chain through it.
def metric_value(d, series):
    _, body = http_get(d.url("/metrics"))
    m = re.search(rf"^{re.escape(series)} (\S+)$", body.decode(), re.M)
    if not m:
        fail(f"no {series} on /metrics:\n{body.decode()}")
    return float(m.group(1))


def wait_until(what, cond, timeout):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            fail(f"{what}: not after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


ATTACHED = 'sonde_unwind_native_processes{state="attached"}'
PENDING = "sonde_unwind_native_table_builds_pending"
RESCANS = "sonde_unwind_native_rescans_total"
TABLES = "sonde_unwind_native_tables"
script = os.path.join(work, "dlopen.lua")
write_script(script, True)
with Sonded("--script", script, "--plugin-dir", plugins, hz=HZ) as d:
    dl = subprocess.Popen([os.path.join(fixtures, "unw_dlopen"), "30"], stdin=subprocess.PIPE)
    try:
        wait_until("unw_dlopen attached",
                   lambda: metric_value(d, ATTACHED) >= 1 and metric_value(d, PENDING) == 0, 10)
        time.sleep(0.5)  # any rescan for libraries ld.so mapped after the attach: done
        rescans0, tables0 = metric_value(d, RESCANS), metric_value(d, TABLES)
        dl.stdin.write(b"go\n")
        dl.stdin.flush()
        took = wait_until("the rescan after dlopen",
                          lambda: (metric_value(d, RESCANS) > rescans0
                                   and metric_value(d, TABLES) > tables0
                                   and metric_value(d, PENDING) == 0), 10)
        status, body = http_get(d.url("/debug/pprof/profile?seconds=2"))
        if dl.poll() is not None:
            fail(f"unw_dlopen exited {dl.returncode}")
    finally:
        dl.kill()
        dl.wait()
    if status != 200:
        fail(f"profile request answered {status}")
    out = os.path.join(work, "dlopen.pb.gz")
    with open(out, "wb") as f:
        f.write(body)
    log = d.output()
if not re.search(r"unwind-native: libunwdl\.so: [1-9]\d* rows", log):
    fail(f"no table for the dlopen()ed libunwdl.so in the log:\n{log}")
good, total, worst = shares(Profile(out), {"unw_dlopen": dl.pid}, full_stack)["unw_dlopen"]
if total < MIN_SAMPLES or good < 0.95 * total:
    fail(f"unw_dlopen after the rescan: {good} of {total} samples hold the whole stack; "
         f"others: {worst}")
print(f"ok: unw_dlopen: rescanned {took:.2f} s after the dlopen, then {good}/{total} samples "
      "hold the whole stack through libunwdl.so")
