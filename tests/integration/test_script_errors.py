#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A callback that fails at run time (an error, an endless loop) is logged
with file:line, counted on /metrics, and the daemon goes on: the process
keeps the default decision and is profiled."""
import os
import re
import subprocess
import time

from sondetest import (Profile, Sonded, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

work = scratch_dir("sonde-script-errors-")
script = os.path.join(work, "broken.lua")
with open(script, "w") as f:
    f.write("""sampling { window = 1 }
on_process(function(p)
  if p.comm == "fp_chain" then
    error("no decision for " .. p.comm)
  end
  return true
end)
on_window(function(w)
  while true do end
end)
""")

with Sonded("--script", script) as d:
    fx = subprocess.Popen([fixture("fp_chain"), "5"])
    try:
        time.sleep(2.5)
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds=2&pid={fx.pid}"))
    finally:
        fx.wait()
    log = d.output()
    want = f"script: on_process for {fx.pid} (fp_chain): {script}:4: no decision for fp_chain"
    if want not in log:
        fail(f"no log line '{want}':\n{log}")
    if not re.search(rf"script: on_window: {re.escape(script)}:9: instruction budget", log):
        fail(f"the endless on_window is not reported with its line:\n{log}")
    _, metrics = http_get(d.url("/metrics"))
    text = metrics.decode()
    errors = re.search(r'^sonde_script_errors_total\{reason="error"\} (\d+)$', text, re.M)
    budget = re.search(r'^sonde_script_errors_total\{reason="budget"\} (\d+)$', text, re.M)
    if not errors or int(errors.group(1)) < 2 or not budget or int(budget.group(1)) < 1:
        fail(f"errors not counted: {errors and errors.group(0)}, {budget and budget.group(0)}")
    out = os.path.join(work, "after.pb.gz")
    with open(out, "wb") as f:
        f.write(body)
    if Profile(out).total(comm="fp_chain") < 30:
        fail("the fixture was not profiled after its on_process failed")
print("ok: callback errors logged with file:line, counted, and the daemon went on")
