#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-python beyond Debian's 3.11: pyenv's shared builds of CPython 3.11,
3.12 and 3.13 (libpython3.X.so, not mapped yet when the process is offered
at exec: the plugin attaches it and sets it up once the interpreter has
started). For each interpreter found under PYENV_ROOT (default
/root/.pyenv), chain.py and deep.py run started after sonded, and in at
least 95% of each one's samples (and at least 80) the Python frames are
exactly the fixture's chain, innermost first, each with its file, and the
leaf at its busy line (deep.py: every frame at its marked line: callers'
lines, a generator, a recursion). sonded runs with -v: its log must say
where each version's offsets came from (3.11, 3.12: PyCode_Type's member
table; 3.13: _Py_DebugOffsets).

Unsupported pyenv interpreters (3.10, 3.9) are declined once their
libpython is mapped, with "python 3.X not supported yet" in `sondectl ps`,
and keep their native stacks: no Python frame, and the innermost user
frame in their libpython (or the libc and vDSO clock_gettime that
chain.py's leaf calls; at least 20% of the samples in libpython).

A version not installed is skipped with its reason (exit 77 when none of
3.12 and 3.13 is); Debian's 3.11 is test_unwind_python's and never
skipped there."""
import glob
import json
import os
import re
import subprocess
import sys
import time

from pyframes import check_chain, python_frames, want_chain, want_deep
from sondetest import (Profile, Sonded, build_dir, fail, http_get, require_root, require_tool,
                       scratch_dir, sondectl_path)

require_root()
require_tool("go")

HZ = 499
SECONDS = 6
MIN_SAMPLES = 80
PYENV = os.environ.get("PYENV_ROOT", "/root/.pyenv")


def pyenv_python(minor):
    """The newest pyenv build of 3.minor with a shared libpython, or None."""
    found = []
    for d in glob.glob(os.path.join(PYENV, "versions", f"3.{minor}.*")):
        exe = os.path.join(d, "bin", f"python3.{minor}")
        if (re.fullmatch(rf"3\.{minor}\.\d+", os.path.basename(d)) and os.path.exists(exe)
                and glob.glob(os.path.join(d, "lib", f"libpython3.{minor}.so*"))):
            found.append((tuple(int(x) for x in os.path.basename(d).split(".")), exe))
    return max(found)[1] if found else None


SUPPORTED = {m: pyenv_python(m) for m in (11, 12, 13)}
UNSUPPORTED = {m: pyenv_python(m) for m in (10, 9)}
for m, exe in list(SUPPORTED.items()) + list(UNSUPPORTED.items()):
    if not exe:
        print(f"skipped: no pyenv build of 3.{m} with a shared libpython under {PYENV}/versions")
if not SUPPORTED[12] and not SUPPORTED[13]:
    print(f"SKIP: neither python 3.12 nor 3.13 under {PYENV}/versions "
          f"(test_unwind_python covers Debian's 3.11)")
    sys.exit(77)

src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
fixtures = os.path.realpath(os.path.join(src, "tests", "fixtures", "unwind-python"))
chain_py, deep_py = (os.path.join(fixtures, n) for n in ("chain.py", "deep.py"))


WANT_CHAIN = want_chain(chain_py)
WANT_DEEP = want_deep(deep_py)
FROM = {11: "PyCode_Type", 12: "PyCode_Type", 13: "_Py_DebugOffsets"}

work = scratch_dir("sonde-pyver-")
script = os.path.join(work, "pyver.lua")
with open(script, "w") as f:
    f.write(f"""
plugin "unwind-python" {{ required = true }}
on_process(function(p)
  if p.exe and p.exe:find("{PYENV}/versions/", 1, true) == 1 and p.cmdline and
     p.cmdline:find("{fixtures}/", 1, true) then
    return {{ unwinders = {{ "unwind-python" }} }}
  end
  return false
end)
""")

out = os.path.join(work, "pyver.pb.gz")
run = str(SECONDS + 60)
procs = {}
with Sonded("-v", "--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
            hz=HZ) as d:
    for m, exe in SUPPORTED.items():
        if exe:
            procs[f"3.{m} chain"] = subprocess.Popen([exe, chain_py, run])
            procs[f"3.{m} deep"] = subprocess.Popen([exe, deep_py, run])
    for m, exe in UNSUPPORTED.items():
        if exe:
            procs[f"3.{m}"] = subprocess.Popen([exe, chain_py, run])
    try:
        time.sleep(1.5)  # past the interpreters' start-up and the plugin's next look
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                           capture_output=True, text=True, timeout=30)
        ps = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        for key, pr in procs.items():
            got = ps.get(pr.pid)
            m = int(key.split()[0].split(".")[1])
            if m in SUPPORTED:
                if not got or got["unwinders"] != ["unwind-python"] or got["declined"]:
                    fail(f"{key}: not attached: {got}")
            else:
                reason = f"python 3.{m} not supported yet"
                if not got or got["unwinders"] != [] or got["declined"] != [
                        {"plugin": "unwind-python", "reason": reason}]:
                    fail(f"{key}: not declined with {reason!r}: {got}")
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
    finally:
        for pr in procs.values():
            pr.kill()
            pr.wait()
    with open(out, "wb") as f:
        f.write(body)
    log = d.output()

report = []
for key, pr in procs.items():
    m = int(key.split()[0].split(".")[1])
    if m not in SUPPORTED or not key.endswith("chain"):
        continue
    # the offsets' sources, as the plugin logs them at setup
    want = (rf"pid {pr.pid}: python 3\.{m} \(\S*libpython3\.{m}\.so[.\d]*\), bias 0x[0-9a-f]+; "
            rf"code object from {FROM[m]} .*thread state key at _PyRuntime\+\d+ "
            rf"\(from PyGILState_GetThisThreadState\)")
    line = re.search(want, log)
    if not line:
        fail(f"{key}: no setup line like {want!r} in sonded's log:\n"
             f"{[l for l in log.splitlines() if 'unwind-python' in l][:20]}")
    report.append(line.group(0))

p = Profile(out)
by_pid = {str(pr.pid): key for key, pr in procs.items()}
samples = {key: [] for key in procs}
for s in p.samples:
    key = by_pid.get(s["labels"].get("pid"))
    if key:
        samples[key].append(s)


for key in procs:
    m = int(key.split()[0].split(".")[1])
    if m in SUPPORTED:
        want = WANT_CHAIN if key.endswith("chain") else WANT_DEEP
        report.append(check_chain(p, samples[key], key, want, MIN_SAMPLES))
        continue
    good = total = 0
    bad = []
    # declined: no Python frame, the native frames kept: innermost in its
    # libpython, or in the clock_gettime (libc, vDSO) that chain.py's leaf calls
    lib = re.compile(rf"/libpython3\.{m}\.so[.\d]*$")
    native = re.compile(rf"/libpython3\.{m}\.so[.\d]*$|/libc\.so\.6$|^\[vdso\]$")
    in_lib = 0
    for s in samples[key]:
        total += s["count"]
        if any(mp == "[python]" for _, mp in p.frames(s)):
            fail(f"{key}: declined, yet a sample has Python frames: {p.frames(s)}")
        user = [p.mappings.get(p.locations[lid]["mapping"], {}).get("file", "")
                for lid in s["locations"]]
        user = [f for f in user if f != "[kernel.kallsyms]"]
        if user and native.search(user[0]):
            good += s["count"]
            in_lib += s["count"] if lib.search(user[0]) else 0
        elif len(bad) < 5:
            bad.append(p.frames(s)[:8])
    if total < MIN_SAMPLES or good < 0.95 * total or in_lib < 0.2 * total:
        fail(f"{key}: {good} of {total} samples have their innermost frame in libpython3.{m}, "
             f"libc or the vDSO, {in_lib} in libpython3.{m}; others: {bad}")
    report.append(f"{key}: declined (python 3.{m} not supported yet), {good}/{total} samples "
                  f"native (innermost in libpython3.{m}: {in_lib})")
print("ok:\n  " + "\n  ".join(report))
