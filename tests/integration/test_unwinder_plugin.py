#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""An unwinder plugin with a BPF program plugs in through a tail-call slot,
a frame kind and a symbolizer, touching no core file: the processes the
script gives it show its interpreter frame, named by the plugin and marked
by its own mapping, above the native frames."""
import os
import shutil
import subprocess
import time

from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

plugins = os.path.join(build_dir(), "tests", "plugins")
work = scratch_dir("sonde-unwinder-")
script = os.path.join(work, "fake.lua")
with open(script, "w") as f:
    f.write("""
plugin "unwind-fake" { required = true }
on_process(function(p)
  if p.comm == "fp_chain" then return { unwinders = { "unwind-fake" } } end
  return true
end)
""")

# The same program under another name, which the script leaves to frame pointers.
other_exe = os.path.join(work, "fp_other")
shutil.copy(fixture("fp_chain"), other_exe)
out = os.path.join(work, "fake.pb.gz")
with Sonded("--script", script, "--plugin-dir", plugins) as d:
    fx = subprocess.Popen([fixture("fp_chain"), "5"])
    other = subprocess.Popen([other_exe, "5"])
    try:
        time.sleep(0.5)
        _, body = http_get(d.url("/debug/pprof/profile?seconds=3"))
    finally:
        fx.wait()
        other.wait()
    with open(out, "wb") as f:
        f.write(body)
    if "plugin unwind-fake: frame kind 1, unwinder slot 1" not in d.output():
        fail(f"the plugin did not get kind 1 and slot 1:\n{d.output()}")

p = Profile(out)
fake = {"fp_chain": 0, "fp_other": 0}
total = {"fp_chain": p.total(comm="fp_chain"), "fp_other": p.total(comm="fp_other")}
for s in p.samples:
    comm = s["labels"].get("comm")
    if comm not in fake:
        continue
    frames = [f for f in p.frames(s) if f[1] != "[kernel.kallsyms]"]
    names = [f for f, _ in frames]
    chain = "gamma;beta;alpha;main" in ";".join(names)  # a leaf may sit in the vdso
    if names[0] == "fake_frame" and chain:
        if frames[0][1] != "[fake]":
            fail(f"the plugin's frame is not in its own mapping: {frames[:2]}")
        fake[comm] += s["count"]
    elif not chain or "fake_frame" in names:
        fail(f"a {comm} stack of neither shape: {names}")
line = [loc["lines"][0] for loc in p.locations.values()
        if loc["lines"] and loc["lines"][0][0] == "fake_frame"]
if not line or line[0][1:] != ("fake.py", 42):
    fail(f"fake_frame's file and line: {line}")
# Only the process the script gave the plugin has its frame, in every sample.
if total["fp_chain"] < 100 or fake["fp_chain"] != total["fp_chain"] or fake["fp_other"]:
    fail(f"samples with the plugin's frame: {fake}, of {total}")
print(f"ok: all {fake['fp_chain']} samples of fp_chain show fake_frame (fake.py:42) above "
      f"gamma <- main, none of the {total['fp_other']} of fp_other")
