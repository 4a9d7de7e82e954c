#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-python names the Python functions of a CPython 3.11 process: its
samples show the exact chain of the fixture, innermost first, with file and
the leaf's busy line, as frames of the plugin's kind ("[python]") before the
native frames. A process that is not CPython is declined with its reason and
keeps its native stacks."""
import json
import os
import re
import shutil
import subprocess
import time

from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root, require_tool, scratch_dir, sondectl_path)

require_root()
require_tool("go")
PYTHON = "/usr/bin/python3.11"  # Debian 12's
if not os.path.exists(PYTHON):
    fail(f"{PYTHON} is missing (scripts/setup installs python3.11)")

src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
chain_py = os.path.realpath(os.path.join(src, "tests", "fixtures", "unwind-python", "chain.py"))
with open(chain_py) as f:
    leaf_line = next(i for i, l in enumerate(f, 1) if "# LEAF LINE" in l)
want = ["leaf", "outer.<locals>.inner", "outer", "Walker.step", "main", "<module>"]

work = scratch_dir("sonde-python-")
script = os.path.join(work, "python.lua")
with open(script, "w") as f:
    f.write("""
plugin "unwind-python" { required = true }
on_process(function(p)
  if p.comm == "python3.11" or p.comm == "notpython" then
    return { unwinders = { "unwind-python" } }
  end
  return false
end)
""")
notpython = os.path.join(work, "notpython")
shutil.copy(fixture("fp_chain"), notpython)

SECONDS = 4
out = os.path.join(work, "python.pb.gz")
with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins")) as d:
    py = subprocess.Popen([PYTHON, chain_py, str(SECONDS + 2)])
    other = subprocess.Popen([notpython, str(SECONDS + 2)])
    try:
        time.sleep(0.7)
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                           capture_output=True, text=True, timeout=30)
        procs = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        pp, op = procs.get(py.pid), procs.get(other.pid)
        if not pp or pp["unwinders"] != ["unwind-python"] or pp["declined"]:
            fail(f"python3.11 not given to the plugin: {pp}")
        if not op or op["unwinders"] != [] or op["declined"] != [
                {"plugin": "unwind-python",
                 "reason": "not CPython: no python3.X or libpython3.X mapped"}]:
            fail(f"notpython not declined with its reason: {op}")
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        _, metrics = http_get(d.url("/metrics"))
    finally:
        py.wait()
        other.wait()
    with open(out, "wb") as f:
        f.write(body)
    if not re.search(r"plugin unwind-python: frame kind \d+, unwinder slot \d+", d.output()):
        fail(f"the plugin did not start:\n{d.output()}")

p = Profile(out)
good = total = native_ok = native_total = 0
bad = []
for s in p.samples:
    pid = s["labels"].get("pid")
    if pid == str(other.pid):
        names = [f for f, m in p.frames(s) if m != "[kernel.kallsyms]"]
        native_total += s["count"]
        native_ok += s["count"] if "gamma;beta;alpha;main" in ";".join(names) else 0
        continue
    if pid != str(py.pid):
        continue
    total += s["count"]
    pyframes = []
    for lid in s["locations"]:
        loc = p.locations[lid]
        if p.mappings.get(loc["mapping"], {}).get("file") == "[python]":
            pyframes += loc["lines"]
    names = [fn for fn, _, _ in pyframes]
    if (names == want and all(fl == chain_py for _, fl, _ in pyframes)
            and pyframes[0][2] == leaf_line):
        good += s["count"]
    elif len(bad) < 5:
        bad.append(pyframes or [f for f, _ in p.frames(s)][:12])
if total < 100 or good < 0.95 * total:
    fail(f"{good} of {total} python samples show {want} at {chain_py}:{leaf_line}; "
         f"others: {bad}")
if native_total < 100 or native_ok < 0.95 * native_total:
    fail(f"notpython: {native_ok} of {native_total} samples show its native chain")
m = re.findall(r'^sonde_unwind_python_errors_total\{reason="(\w+)"\} (\d+)$',
               metrics.decode(), re.M)
if len(m) != 6:
    fail(f"error counters on /metrics: {m}")
print(f"ok: {good} of {total} samples of python3.11 show {' <- '.join(want)} "
      f"({os.path.basename(chain_py)}:{leaf_line}); notpython declined, "
      f"{native_ok}/{native_total} native; errors {dict(m)}")
