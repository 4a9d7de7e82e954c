#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Plugins named by the script: the good one is loaded with its settings,
offered the processes the script picks (sondectl ps shows who took them and
who declined, with the reason) and its counter is on /metrics; a broken
plugin that is not required is skipped with one clear line; a required one
stops the start with that line."""
import json
import os
import re
import shutil
import subprocess
import time

from sondetest import (Sonded, build_dir, fail, http_get, require_root, scratch_dir, sondectl_path, sonded_path)

# The plugin ABI this tree's sonded speaks, as its header says.
_src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
with open(os.path.join(_src, "core", "include", "sonde", "plugin.h")) as _f:
    _h = _f.read()
CORE_ABI = ".".join(re.search(rf"#define SONDE_PLUGIN_ABI_{part} (\d+)", _h).group(1)
                    for part in ("MAJOR", "MINOR"))

require_root()

plugins = os.path.join(build_dir(), "tests", "plugins")
work = scratch_dir("sonde-plugins-")
# A process named "nope" that the good plugin declines.
nope = os.path.join(work, "nope")
shutil.copy("/bin/sleep", nope)
# And two the plugin takes, then gives a status of its own (ABI 1.2).
pending = os.path.join(work, "pending")
dropme = os.path.join(work, "dropme")
shutil.copy("/bin/sleep", pending)
shutil.copy("/bin/sleep", dropme)
script = os.path.join(work, "plugins.lua")
with open(script, "w") as f:
    f.write("""
plugin "good" { depth = 32, label = "from-script" }
plugin "wrong-abi" {}
unwinders { "good" }
on_process(function(p)
  if p.comm == "nope" or p.comm == "sleep" or p.comm == "pending" or p.comm == "dropme" then
    return true
  end
  return false
end)
""")

sleeper = subprocess.Popen(["/bin/sleep", "30"])
decliner = subprocess.Popen([nope, "30"])
waiter = subprocess.Popen([pending, "30"])
dropped = subprocess.Popen([dropme, "30"])
try:
    with Sonded("--script", script, "--plugin-dir", plugins) as d:
        time.sleep(0.5)
        log = d.output()
        if "plugin good: up: verbose=0 depth=32 label=from-script" not in log:
            fail(f"the good plugin did not start with the script's settings:\n{log}")
        want = (f"{plugins}/sonde-wrong-abi.so: plugin ABI 99.0, this sonded speaks {CORE_ABI}: "
                "going on without plugin wrong-abi")
        if want not in log:
            fail(f"no clear line for the broken plugin (wanted '{want}'):\n{log}")
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                           capture_output=True, text=True, timeout=30)
        procs = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        s, n = procs.get(sleeper.pid), procs.get(decliner.pid)
        if not s or s["unwinders"] != ["good"] or not s["profiled"]:
            fail(f"sleep: {s}")
        if not n or n["unwinders"] != [] or n["declined"] != [
                {"plugin": "good", "reason": "comm is nope"}]:
            fail(f"nope: {n}")
        w, x = procs.get(waiter.pid), procs.get(dropped.pid)
        if not w or w["unwinders"] != ["good"] or w["notes"] != [
                {"plugin": "good", "note": "waiting for the frobnicator"}]:
            fail(f"pending: {w}")
        if not x or x["unwinders"] != [] or x["declined"] != [
                {"plugin": "good", "reason": "dropped after attach"}]:
            fail(f"dropme: {x}")
        others = [p for p in procs.values() if p["profiled"]
                  and p["comm"] not in ("sleep", "nope", "pending", "dropme")]
        if others:
            fail(f"the script profiles only sleep, nope, pending and dropme, yet: {others[:5]}")
        _, body = http_get(d.url("/metrics"))
        m = re.search(r"^sonde_plugin_good_processes_attached_total (\d+)$", body.decode(), re.M)
        if not m or int(m.group(1)) < 1:
            fail(f"no plugin counter on /metrics:\n{body.decode()[:2000]}")
        if '\ngood_widgets{color="blue"} 3\n' not in body.decode():
            fail("the plugin's own metric family (write_metrics) is not on /metrics")
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "status", "--json"],
                           capture_output=True, text=True, timeout=30)
        if [p["name"] for p in json.loads(r.stdout)["plugins"]] != ["good"]:
            fail(f"status plugins: {r.stdout}")
finally:
    for p in (sleeper, decliner, waiter, dropped):
        p.kill()

with open(script, "w") as f:
    f.write('plugin "wrong-abi" { required = true }\n')
r = subprocess.run([sonded_path(), "--script", script, "--plugin-dir", plugins, "--http", "none",
                    "--export", "none", "--control", "none"],
                   capture_output=True, text=True, timeout=60)
want = (f"{plugins}/sonde-wrong-abi.so: plugin ABI 99.0, this sonded speaks {CORE_ABI} "
        "(the script requires plugin wrong-abi)")
if r.returncode != 1 or want not in r.stderr:
    fail(f"a required broken plugin: exit {r.returncode}, wanted '{want}':\n{r.stderr}")
print("ok: plugins loaded, offered, declined, counted; broken ones reported")
