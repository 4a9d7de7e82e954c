#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python frames in place among the native ones (issues 4 and 6): a
process given unwind-native and unwind-python gets its whole native stack
from the DWARF walker (Debian's python3.11 has no frame pointers), and
where a frame is in _PyEval_EvalFrameDefault the walker hands over to
unwind-python, which writes the Python functions that eval call ran, above
it, and hands back.

tests/fixtures/unwind-python/native.py sorted: <module> -> main -> by_key
-> sorted (C) -> py_key (spinning). In >= 95% of its samples, leaf first:

  ... py_key [python], _PyEval_EvalFrameDefault, sorted's C frames
  (builtin_sorted among them), by_key, main, <module> [python],
  _PyEval_EvalFrameDefault, ... down to _start

(a function inlined into the eval loop at the sampled pc shows between a
Python frame and its eval frame, as DWARF names it).

and sonde_unwind_native_handovers_total counts two hand-overs a sample.

The same in a pid namespace of its own (`unshare --pid --fork`, as in a
container): CPython keeps the thread's id as that namespace numbers it,
and chain.py's Python frames (leaf ... <module>) must still be found in >=
95% of its samples."""
import os
import re
import subprocess
import time

from sondetest import Profile, Sonded, build_dir, fail, http_get, require_root, require_tool, scratch_dir

require_root()
require_tool("go")
PYTHON = "/usr/bin/python3.11"
HZ = 499
SECONDS = 5
MIN_SAMPLES = 80
EVAL = "_PyEval_EvalFrameDefault"

src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
fixtures = os.path.realpath(os.path.join(src, "tests", "fixtures", "unwind-python"))
native_py = os.path.join(fixtures, "native.py")
chain_py = os.path.join(fixtures, "chain.py")
work = scratch_dir("sonde-merged-")
script = os.path.join(work, "merged.lua")
with open(script, "w") as f:
    f.write(f"""
plugin "unwind-native" {{ required = true, cache_dir = "" }}
plugin "unwind-python" {{ required = true }}
on_process(function(p)
  if p.exe == "{PYTHON}" and p.cmdline and p.cmdline:find("{fixtures}/", 1, true) then
    return {{ unwinders = {{ "unwind-native", "unwind-python" }} }}
  end
  return false
end)
""")

out = os.path.join(work, "merged.pb.gz")
with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
            hz=HZ) as d:
    proc = subprocess.Popen([PYTHON, native_py, "sorted", str(SECONDS + 60)])
    unshared = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", PYTHON, chain_py,
                                 str(SECONDS + 60)])
    time.sleep(1)  # past the interpreter's start-up, into the fixture's loop
    try:
        with open(f"/proc/{unshared.pid}/task/{unshared.pid}/children") as f:
            ns_pid = int(f.read().split()[0])  # python, pid 1 in its namespace
        status, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        if status != 200:
            fail(f"profile: HTTP {status}")
        with open(out, "wb") as f:
            f.write(body)
        _, metrics = http_get(d.url("/metrics"))
        metrics = metrics.decode()
        p = Profile(out)  # names Python frames from the live processes
    finally:
        for pr in (proc, unshared):
            pr.kill()
            pr.wait()

WANT_PY = ["py_key", "by_key", "main", "<module>"]


def merged_ok(frames):
    """frames: (function, mapping file), leaf first. Why it is not the
    expected merged stack, or None."""
    py = [i for i, (_, m) in enumerate(frames) if m == "[python]"]
    names = [frames[i][0] for i in py]
    if names != WANT_PY:
        return f"python frames {names}"
    k, b, _, mod = py
    # right below, the eval loop's frame (after the functions inlined into
    # it at that pc, which DWARF names)
    for i in (k, mod):
        below = [f for f, _ in frames[i + 1:i + 5]]
        if EVAL not in below:
            return f"{frames[i][0]} not right above its eval loop's frame: {below}"
    if "builtin_sorted" not in [f for f, _ in frames[k + 1:b]]:
        return "sorted's C frames are not between py_key and by_key"
    if any(m == "[python]" for _, m in frames[mod + 1:]):
        return "python frames below <module>"
    if frames[-1][0] != "_start":
        return f"the native stack ends in {frames[-1][0]}"
    return None


good = total = 0
bad = {}
for s in p.samples:
    if s["labels"].get("pid") != str(proc.pid):
        continue
    frames = [fm for fm in p.frames(s) if fm[1] != "[kernel.kallsyms]"]
    total += s["count"]
    why = merged_ok(frames)
    if why is None:
        good += s["count"]
    else:
        bad.setdefault(why, [s["count"], [f for f, _ in frames]])[0] += s["count"]
if total < MIN_SAMPLES or good < 0.95 * total:
    worst = sorted(bad.items(), key=lambda kv: -kv[1][0])[:3]
    stops = dict(re.findall(r'^sonde_unwind_native_stops_total\{reason="(\w+)"\} (\d+)$',
                            metrics, re.M))
    fail(f"{good} of {total} samples are the merged stack; others: {worst}; stops {stops}")
example = next(s for s in p.samples if s["labels"].get("pid") == str(proc.pid) and merged_ok(
    [fm for fm in p.frames(s) if fm[1] != "[kernel.kallsyms]"]) is None)
print(f"ok: {good}/{total} samples merged in place, e.g. "
      f"{[f for f, m in p.frames(example) if m != '[kernel.kallsyms]']}")

handovers = re.search(r"^sonde_unwind_native_handovers_total (\d+)$", metrics, re.M)
failed = re.search(r'^sonde_unwind_native_stops_total\{reason="handover_failed"\} (\d+)$',
                   metrics, re.M)
if not handovers or int(handovers.group(1)) < 2 * good or not failed or failed.group(1) != "0":
    fail(f"hand-overs {handovers and handovers.group(1)} for {good} merged samples, "
         f"failed {failed and failed.group(1)}")
print(f"ok: {handovers.group(1)} hand-overs, none failed")

WANT_CHAIN = ["leaf", "outer.<locals>.inner", "outer", "Walker.step", "main", "<module>"]
ns_good = ns_total = 0
ns_bad = []
for s in p.samples:
    if s["labels"].get("pid") != str(ns_pid):
        continue
    ns_total += s["count"]
    py = [f for f, m in p.frames(s) if m == "[python]"]
    if py == WANT_CHAIN:
        ns_good += s["count"]
    elif len(ns_bad) < 3:
        ns_bad.append([f for f, _ in p.frames(s)][:16])
if ns_total < MIN_SAMPLES or ns_good < 0.95 * ns_total:
    fail(f"in its own pid namespace: {ns_good} of {ns_total} samples show {WANT_CHAIN}; "
         f"others: {ns_bad}")
print(f"ok: in its own pid namespace (pid {ns_pid} here, 1 there): {ns_good}/{ns_total} "
      f"samples show the Python chain")
