#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-python names the Python functions of CPython 3.11 processes: in at
least 95% of each fixture's samples the Python frames (the plugin's kind,
mapping "[python]", before the native frames) are exactly the fixture's
chain, innermost first, each with its file, and the leaf at its busy line:

- chain.py: functions, a method, a closure;
- deep.py: also a generator being iterated and a recursion 10 deep, every
  frame at the line it is at (marked in the file);
- native.py sorted: Python called back from C (sorted's key function);
- native.py zlib: a native leaf (libz) under a Python chain, which the
  native frames keep;
- threads.py: three threads, each in its own chain down to threading's
  bootstrap; each thread's samples show its own chain.

Processes that are not CPython 3.11 are declined with their reason (shown by
`sondectl ps`) and keep their native stacks: a program that is not Python,
and three fakes named like interpreters (fakepy.c) whose Py_Version says
3.14, or 3.9 under the name python3.11 (the version is read from the binary,
not the name), or that lack CPython's symbols."""
import json
import os
import re
import shutil
import subprocess
import time

import pyframes
from pyframes import matches, marks, python_frames, want_chain, want_deep
from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root, require_tool, scratch_dir, sondectl_path)

require_root()
require_tool("go")
cc = require_tool("cc")
PYTHON = "/usr/bin/python3.11"  # Debian 12's
if not os.path.exists(PYTHON):
    fail(f"{PYTHON} is missing (scripts/setup installs python3.11)")

HZ = 499
SECONDS = 6
# Nine CPU-bound processes share the CPUs (2 on CI): each gets several
# hundred samples, each of the three threads (one GIL) a hundred or more, fewer
# when the machine is busy.
MIN_SAMPLES = 80
MIN_THREAD_SAMPLES = 30

src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
fixtures = os.path.realpath(os.path.join(src, "tests", "fixtures", "unwind-python"))
chain_py, deep_py, native_py, threads_py = (
    os.path.join(fixtures, n) for n in ("chain.py", "deep.py", "native.py", "threads.py"))
threading_py = subprocess.run(
    [PYTHON, "-c", "import threading; print(threading.Thread.run.__code__.co_filename)"],
    capture_output=True, text=True, check=True).stdout.strip()


WANT_CHAIN = want_chain(chain_py)
WANT_DEEP = want_deep(deep_py)
leaf_native = marks(native_py, r"# LEAF LINE (\w+)")
WANT_SORTED = [("py_key", native_py, leaf_native["sorted"])] + [
    (f, native_py, None) for f in ("by_key", "main", "<module>")]
WANT_ZLIB = [("compress_all", native_py, leaf_native["zlib"])] + [
    (f, native_py, None) for f in ("main", "<module>")]
leaf_threads = marks(threads_py, r"# LEAF LINE (\w+)")
BOOTSTRAP = [(f, threading_py, None) for f in ("Thread.run", "Thread._bootstrap_inner",
                                               "Thread._bootstrap")]
WANT_THREADS = {c: [(f"{c}_leaf", threads_py, leaf_threads[c]), (f"{c}_mid", threads_py, None),
                    (f"{c}_top", threads_py, None)] + BOOTSTRAP
                for c in ("red", "green", "blue")}

work = scratch_dir("sonde-python-")
notpython = os.path.join(work, "notpython")
shutil.copy(fixture("fp_chain"), notpython)
# Fakes: (file name, cc flags, the reason sondectl ps must show).
FAKES = {
    "v314": ("python3.14", ["-DPY_HEX=0x030e00f0UL"], "python 3.14 not supported yet"),
    "v39": ("python3.11", ["-DPY_HEX=0x030900f0UL"], "python 3.9 not supported yet"),
    "nosym": ("python3.12", ["-DNO_PY_SYMBOLS"], None),  # reason names the path
}
fake_paths = {}
for key, (name, flags, _) in FAKES.items():
    d = os.path.join(work, key)
    os.mkdir(d)
    fake_paths[key] = os.path.join(d, name)
    subprocess.run([cc, "-O2", "-g", "-rdynamic", "-fno-omit-frame-pointer", "-fno-inline",
                    "-fno-optimize-sibling-calls", *flags, "-o", fake_paths[key],
                    os.path.join(fixtures, "fakepy.c")], check=True)
FAKE_REASONS = {k: r or f"{fake_paths[k]}: no _PyRuntime or PyCode_Type symbol"
                for k, (_, _, r) in FAKES.items()}

# The plugin for this test's own programs only (not every python3.11 on
# the machine), so that its error counters are theirs.
script = os.path.join(work, "python.lua")
with open(script, "w") as f:
    f.write(f"""
plugin "unwind-python" {{ required = true }}
on_process(function(p)
  if (p.exe == "{PYTHON}" and p.cmdline and p.cmdline:find("{fixtures}/", 1, true)) or
     (p.exe and p.exe:find("{work}/", 1, true) == 1) then
    return {{ unwinders = {{ "unwind-python" }} }}
  end
  return false
end)
""")

out = os.path.join(work, "python.pb.gz")
# The fixtures outlive the profile: its Python frames are named when the
# window's profile is built, from the processes' memory. They are killed
# once it is in hand.
run = str(SECONDS + 60)
with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
            hz=HZ) as d:
    procs = {
        "chain": subprocess.Popen([PYTHON, chain_py, run]),
        "deep": subprocess.Popen([PYTHON, deep_py, run]),
        "sorted": subprocess.Popen([PYTHON, native_py, "sorted", run]),
        "zlib": subprocess.Popen([PYTHON, native_py, "zlib", run]),
        "threads": subprocess.Popen([PYTHON, threads_py, run]),
        "notpython": subprocess.Popen([notpython, run]),
    }
    for key, path in fake_paths.items():
        procs[key] = subprocess.Popen([path, run])
    try:
        time.sleep(1)
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                           capture_output=True, text=True, timeout=30)
        ps = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        for key in ("chain", "deep", "sorted", "zlib", "threads"):
            pp = ps.get(procs[key].pid)
            if not pp or pp["unwinders"] != ["unwind-python"] or pp["declined"]:
                fail(f"{key}: python3.11 not given to the plugin: {pp}")
        reasons = dict(FAKE_REASONS,
                       notpython="not CPython: no python3.X or libpython3.X mapped")
        for key, reason in reasons.items():
            op = ps.get(procs[key].pid)
            if not op or op["unwinders"] != [] or op["declined"] != [
                    {"plugin": "unwind-python", "reason": reason}]:
                fail(f"{key} not declined with the reason {reason!r}: {op}")
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        _, metrics = http_get(d.url("/metrics"))
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    with open(out, "wb") as f:
        f.write(body)
    if not re.search(r"plugin unwind-python: frame kind \d+, unwinder slot \d+", d.output()):
        fail(f"the plugin did not start:\n{d.output()}")

p = Profile(out)
by_pid = {str(pr.pid): key for key, pr in procs.items()}
samples = {key: [] for key in procs}
for s in p.samples:
    key = by_pid.get(s["labels"].get("pid"))
    if key:
        samples[key].append(s)


def first_native_mapping(s):
    """The mapping file of the innermost user frame that is not Python."""
    for lid in s["locations"]:
        m = p.mappings.get(p.locations[lid]["mapping"], {}).get("file", "")
        if m not in ("[python]", "[kernel.kallsyms]"):
            return m
    return None


report = []


def check_chain(key, want, minimum=MIN_SAMPLES):
    report.append(pyframes.check_chain(p, samples[key], key, want, minimum))


check_chain("chain", WANT_CHAIN)
check_chain("deep", WANT_DEEP)
check_chain("sorted", WANT_SORTED)
check_chain("zlib", WANT_ZLIB)

# zlib: the native frames stay after the Python ones, innermost in libz.
zlib_total = sum(s["count"] for s in samples["zlib"])
in_libz = sum(s["count"] for s in samples["zlib"]
              if re.search(r"/libz\.so[.\d]*$", first_native_mapping(s) or ""))
if in_libz < 0.9 * zlib_total:
    others = [p.frames(s)[:8] for s in samples["zlib"]
              if "libz" not in (first_native_mapping(s) or "")]
    fail(f"zlib: {in_libz} of {zlib_total} samples have their innermost native frame in libz; "
         f"others: {others[:10]}")
report.append(f"zlib: {in_libz}/{zlib_total} innermost native frame in libz")

# threads: every sample shows one thread's whole chain; each thread has its share.
per_thread = dict.fromkeys(WANT_THREADS, 0)
total = 0
bad = []
for s in samples["threads"]:
    total += s["count"]
    frames = python_frames(p, s)
    hit = [c for c, want in WANT_THREADS.items() if matches(frames, want)]
    if hit:
        per_thread[hit[0]] += s["count"]
    elif len(bad) < 5:
        bad.append(frames or [f for f, _ in p.frames(s)][:12])
good = sum(per_thread.values())
if total < MIN_SAMPLES or good < 0.95 * total:
    fail(f"threads: {good} of {total} samples show one of the three chains "
         f"{list(WANT_THREADS.values())}; others: {bad}")
if min(per_thread.values()) < MIN_THREAD_SAMPLES:
    fail(f"threads: a thread has too few samples of its chain: {per_thread} of {total}")
report.append(f"threads: {good}/{total} show their thread's chain {per_thread}")

# Declined processes keep their native stacks.
NATIVE = {"notpython": "gamma;beta;alpha;main"}
NATIVE.update(dict.fromkeys(FAKES, "fake_leaf;fake_mid;fake_top;main"))
for key, chain in NATIVE.items():
    ok = total = 0
    for s in samples[key]:
        names = [f for f, m in p.frames(s) if m != "[kernel.kallsyms]"]
        total += s["count"]
        ok += s["count"] if ";".join(names).startswith(chain) else 0
        if any(m == "[python]" for _, m in p.frames(s)):
            fail(f"{key}: declined, yet a sample has Python frames: {p.frames(s)}")
    if total < MIN_SAMPLES or ok < 0.95 * total:
        fail(f"{key}: {ok} of {total} samples show its native chain {chain}")
    report.append(f"{key}: declined ({reasons[key]}), {ok}/{total} native {chain}")

m = re.findall(r'^sonde_unwind_python_errors_total\{reason="(\w+)"\} (\d+)$',
               metrics.decode(), re.M)
if len(m) != 6:
    fail(f"error counters on /metrics: {m}")
# The walker's own counters (since start) cover at least the profile's samples.
walk = dict(re.findall(r"^sonde_unwind_python_(walks_total|frames_total|walk_seconds_total|"
                       r"code_cache_hits_total) (\S+)$", metrics.decode(), re.M))
py_samples = sum(s["count"] for key in ("chain", "deep", "sorted", "zlib", "threads")
                 for s in samples[key])
py_frames = sum(s["count"] * len(python_frames(p, s)) for key in
                ("chain", "deep", "sorted", "zlib", "threads") for s in samples[key])
if (len(walk) != 4 or float(walk["walks_total"]) < py_samples or
        float(walk["frames_total"]) < py_frames or float(walk["walk_seconds_total"]) <= 0 or
        float(walk["code_cache_hits_total"]) > float(walk["frames_total"])):
    fail(f"walk counters {walk} below the profile's {py_samples} samples, {py_frames} frames")
print("ok:\n  " + "\n  ".join(report) + f"\n  errors {dict(m)}\n  walks {walk}")
