#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-jvm names the Java methods of a HotSpot JVM run with
-XX:+PreserveFramePointer (its "perfmap" path): after warm-up, the samples of
the JVM show Chain.leaf <- Chain.c <- Chain.b <- Chain.a as
frames of the plugin's kind ("[jvm]"), innermost first, above the JVM's own
frames. A process mapping a libjvm.so whose VMStructs are cut short is
declined with its reason and keeps its native stacks."""
import json
import os
import re
import shutil
import subprocess
import time

from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root, require_tool, scratch_dir, skip, sondectl_path)

require_root()
require_tool("go")
java = shutil.which("java")
classes = fixture("unwind-jvm")
if not java or not os.path.exists(os.path.join(classes, "Chain.class")):
    skip("java or javac is missing, so Chain.class was not built "
         "(scripts/setup installs openjdk-17-jdk-headless)")
want = ["Chain.leaf", "Chain.c", "Chain.b", "Chain.a"]
declined_reason = ("gHotSpotVMStructs: no Abstract_VM_Version::_vm_major_version "
                   "(2 entries read)")

work = scratch_dir("sonde-jvm-")
script = os.path.join(work, "jvm.lua")
with open(script, "w") as f:
    # Only this test's JVMs and fakejvm: other JVMs on the machine stay out.
    f.write(f"""
plugin "unwind-jvm" {{ required = true }}
on_process(function(p)
  if (p.comm == "java" and p.cmdline and p.cmdline:find("{classes}", 1, true))
     or p.exe == "{fixture(os.path.join("unwind-jvm", "fakejvm"))}" then
    return {{ unwinders = {{ "unwind-jvm" }} }}
  end
  return false
end)
""")

WARMUP, SECONDS = 3, 6
RUN = WARMUP + SECONDS + 6
# Both start before sonded: offered at exec, a JVM has no libjvm.so yet and
# could only be declined later, where `sondectl ps` does not show it.
jvm_cmd = [java, "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
           "-XX:CompileCommand=dontinline,Chain::*", "-cp", classes, "Chain"]
jvm = subprocess.Popen(jvm_cmd + [str(RUN)], cwd=work)
late = None
fake = subprocess.Popen([fixture(os.path.join("unwind-jvm", "fakejvm")), str(RUN)])
out = os.path.join(work, "jvm.pb.gz")
try:
    time.sleep(WARMUP)  # C2 compiles the chain
    with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins")) as d:
        # A JVM started under sonded is offered at exec, before its libjvm.so
        # is loaded: it waits as "pending" and gets its path once up.
        late = subprocess.Popen(jvm_cmd + [str(SECONDS + 4)], cwd=work)
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                           capture_output=True, text=True, timeout=30)
        procs = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        jp, fp = procs.get(jvm.pid), procs.get(fake.pid)
        if not jp or jp["unwinders"] != ["unwind-jvm"] or jp["declined"]:
            fail(f"the JVM not given to the plugin: {jp}\n{d.output()}")
        if not fp or fp["unwinders"] != [] or fp["declined"] != [
                {"plugin": "unwind-jvm", "reason": declined_reason}]:
            fail(f"fakejvm not declined with its reason: {fp}")
        deadline = time.time() + 10
        while time.time() < deadline and not re.search(
                rf"pid {jvm.pid}: JDK 17 .*path perfmap", d.output()):
            time.sleep(0.1)
        time.sleep(1)  # the first perf map
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        _, metrics = http_get(d.url("/metrics"))
        log = d.output()
finally:
    for proc in (jvm, fake, late):
        if proc:
            proc.wait()
with open(out, "wb") as f:
    f.write(body)
if not re.search(rf"pid {jvm.pid}: JDK 17 \(17\.[^)]*\), \d+ VMStructs fields, \d+ types, "
                 r"code cache 0x[0-9a-f]+-0x[0-9a-f]+: path perfmap", log):
    fail(f"no perfmap path for the JVM in the log:\n{log}")
if not re.search(rf"pid {late.pid}: JDK 17 .*path perfmap", log):
    fail(f"no perfmap path for the JVM started under sonded:\n{log}")
if "jcmd Compiler.perfmap:" in log:
    fail(f"the attach interface failed:\n{log}")

p = Profile(out)
good = total = native_ok = native_total = late_named = 0
bad = []
for s in p.samples:
    pid = s["labels"].get("pid")
    frames = [(f, m) for f, m in p.frames(s) if m != "[kernel.kallsyms]"]
    names = [f for f, _ in frames]
    if pid == str(fake.pid):
        native_total += s["count"]
        native_ok += s["count"] if "fake_gamma;fake_beta;fake_alpha;main" in ";".join(
            names) else 0
        continue
    # Every sample of the JVM counts: after warm-up its other threads (GC,
    # compilers, the attach listener writing the perf map) are nearly idle.
    if pid == str(late.pid) and ("Chain.leaf", "[jvm]") in frames:
        late_named += s["count"]
    if pid != str(jvm.pid):
        continue
    total += s["count"]
    jframes = [f for f, m in frames[:len(want)] if m == "[jvm]"]
    if jframes == want and any(m.endswith("/libjvm.so") for _, m in frames[len(want):]):
        good += s["count"]
    elif len(bad) < 5:
        bad.append(frames[:10])
if total < 100 or good < 0.95 * total:
    fail(f"{good} of {total} samples of the JVM show {want} first; "
         f"others: {bad}")
if native_total < 100 or native_ok < 0.95 * native_total:
    fail(f"fakejvm: {native_ok} of {native_total} samples show its native chain: "
         f"{[s for s in p.stacks(pid=fake.pid)][:3]}")
if not late_named:
    fail("no sample of the JVM started under sonded names Chain.leaf")
m = dict(re.findall(r'^sonde_unwind_jvm_processes\{path="(\w+)"\} (\d+)$', metrics.decode(),
                    re.M))
if m.get("perfmap") != "2" or m.get("declined") != "1":
    fail(f"sonde_unwind_jvm_processes on /metrics: {m}")
errors = re.findall(r'^sonde_unwind_jvm_errors_total\{reason="(\w+)"\} (\d+)$',
                    metrics.decode(), re.M)
if len(errors) != 6:
    fail(f"error counters on /metrics: {errors}")
print(f"ok: {good} of {total} samples of the JVM show {' <- '.join(want)}; "
      f"{late_named} of the late JVM name Chain.leaf; fakejvm declined ({declined_reason}), {native_ok}/{native_total} native; "
      f"processes {m}; errors {dict(errors)}; not the chain: {bad[:2]}")
