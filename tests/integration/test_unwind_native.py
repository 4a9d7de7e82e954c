#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-native walks whole stacks of code built without frame pointers:
four fixtures (a chain six deep, a recursion 40 deep, a callback from libc's
qsort, a chain through a shared library) show their exact frames down to
main and libc's start in at least 99% of their samples with the plugin, and
do not without it (frame pointers), which proves the plugin does the work.
Its stop counters are on /metrics."""
import os
import re
import subprocess
import tempfile
import time

from sondetest import Profile, Sonded, build_dir, fail, http_get, require_root, require_tool

require_root()
require_tool("go")

HZ = 199
SECONDS = 4
plugins = os.path.join(build_dir(), "plugins")
fixtures = os.path.join(build_dir(), "tests", "fixtures", "unwind-native")
work = tempfile.mkdtemp(prefix="sonde-unwind-native-")

CHAIN = [f"chain{i}" for i in range(6, 0, -1)] + ["main"]
RECURSE = ["leaf"] + ["recurse"] * 40 + ["main"]
LIB = ["app_leaf", "lib_inner", "lib_outer", "app_outer", "main"]
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
            f.write('plugin "unwind-native" { required = true }\n'
                    'on_process(function(p)\n'
                    '  if p.comm:match("^unw_") then\n'
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
                 for name in ("unw_chain", "unw_recurse", "unw_qsort", "unw_lib")}
        try:
            time.sleep(0.7)
            status, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        finally:
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


def full_stack(name, frames):
    names = [f for f, _ in frames]
    if name == "unw_qsort":
        shape = qsort_shape(frames)
        if shape is None:
            return False
        qsort_seen[tuple(shape)] = qsort_seen.get(tuple(shape), 0) + 1
        return True
    expected = {"unw_chain": CHAIN, "unw_recurse": RECURSE, "unw_lib": LIB}[name]
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
for name, (good, total, worst) in res.items():
    if total < 100:
        fail(f"{name}: only {total} samples in {SECONDS} s at {HZ} Hz")
    if good < 0.99 * total:
        fail(f"{name}: {good} of {total} samples hold the whole stack; most common others: "
             f"{worst}\n{metrics}")
    print(f"ok: {name}: {good}/{total} samples hold the whole stack")
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

# Without the plugin, frame pointers cannot walk these fixtures.
qsort_seen.clear()
p, pids, _, _ = run(False, "fp")
for name, (good, total, _) in shares(p, pids, full_stack).items():
    if total < 100:
        fail(f"{name} (frame pointers): only {total} samples")
    if good > 0.5 * total:
        fail(f"{name}: frame pointers alone gave the whole stack in {good} of {total} samples; "
             "the fixture does not test the plugin")
    print(f"ok: {name} without the plugin: {good}/{total} whole stacks")
