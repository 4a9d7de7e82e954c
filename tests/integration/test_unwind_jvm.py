#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""unwind-jvm names the Java methods of HotSpot JVMs run with no flags.

Its "vmstructs" path: a JVM left to C2 (the chain inlined into Chain.main)
and one run with -Xint (every frame interpreted) both show, after warm-up,
Chain.leaf <- Chain.c <- Chain.b <- Chain.a <- Chain.main as frames of the
plugin's kind ("[jvm]"), innermost first, each with Chain.java and the line
of its call (the leaf's line one of its loop's), above the JVM's own frames;
the compiled one has inlined methods as frames of one location. A JVM
started under sonded gets the path once up. A process mapping a libjvm.so
whose VMStructs are cut short is declined with its reason and keeps its
native stacks. `sondectl ps` says which path each JVM got.

Threads and native code, on the same path: in a JVM with three threads
(spin-red, spin-green, spin-blue, each the OS name of its thread) spinning
in chains of their own, each thread's samples show its chain down to its
run() on the line of its branch, in the share of the JVM's samples that
its tid's CPU time has; in a JVM deflating a buffer with
java.util.zip.Deflater, the samples' leaf is native (zlib or libzip), and
below it, through the thread's frame anchor, come the Deflater frames and
Zip.compress <- Zip.b <- Zip.a <- Zip.main with their lines.

Its "perfmap" fallback (forced by the plugin's setting path = "perfmap"):
a JVM run with -XX:+PreserveFramePointer shows the same chain named from
the JVM's perf map."""
import json
import os
import re
import shutil
import subprocess
import time

from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root,
                       require_tool, scratch_dir, skip, sondectl_path)

require_root()
require_tool("go")
java = shutil.which("java")
classes = fixture("unwind-jvm")
if not java or not os.path.exists(os.path.join(classes, "Chain.class")):
    skip("java or javac is missing, so Chain.class was not built "
         "(scripts/setup installs openjdk-17-jdk-headless)")
want = ["Chain.leaf", "Chain.c", "Chain.b", "Chain.a", "Chain.main"]
declined_reason = ("gHotSpotVMStructs: no Abstract_VM_Version::_vm_major_version "
                   "(2 entries read)")

# The lines the frames must carry, from the fixtures' sources.
src_dir = os.path.join(os.environ["SONDE_SOURCE_DIR"], "tests", "fixtures", "unwind-jvm")


def lines_with(text, name="Chain.java"):
    with open(os.path.join(src_dir, name)) as f:
        found = {n for n, line in enumerate(f.read().splitlines(), 1) if text in line}
    if not found:
        fail(f"{name} has no line with {text!r}")
    return found


want_lines = [lines_with("i < 20000") | lines_with("6364136223846793005L"),
              lines_with("return leaf(x)"), lines_with("return c(x)"),
              lines_with("return b(x)"), lines_with("x = a(x)")]

work = scratch_dir("sonde-jvm-")
WARMUP, SECONDS = 3, 8
HZ = 249  # five JVMs share two CPUs with the rest of the machine: enough samples of each


def write_script(name, settings, pids_of):
    # Only this phase's JVMs (and fakejvm): other JVMs on the machine stay out.
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(f"""
plugin "unwind-jvm" {{ required = true{settings} }}
on_process(function(p)
  if (p.comm == "java" and p.cmdline and p.cmdline:find("{pids_of}", 1, true))
     or p.exe == "{fixture(os.path.join("unwind-jvm", "fakejvm"))}" then
    return {{ unwinders = {{ "unwind-jvm" }} }}
  end
  return false
end)
""")
    return path


def ps(d):
    r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                       capture_output=True, text=True, timeout=30)
    return {p["pid"]: p for p in json.loads(r.stdout)["processes"]}


def wait_log(d, pattern, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline and not re.search(pattern, d.output()):
        time.sleep(0.1)


def java_frames(p, s):
    """The [jvm] frames of a sample, innermost first, as (function, file,
    line, location id); then the native frames' mapping files."""
    jframes, native = [], []
    for lid in s["locations"]:
        loc = p.locations[lid]
        mfile = p.mappings.get(loc["mapping"], {}).get("file", "")
        if mfile == "[kernel.kallsyms]":
            continue
        if mfile == "[jvm]" and not native:
            jframes += [(fn, fl, ln, lid) for fn, fl, ln in loc["lines"]]
        else:
            native.append(mfile)
    return jframes, native


def check_chain(p, pid, what, detail):
    """Share of the samples of pid showing the chain with files and lines."""
    good = total = inlined = 0
    bad = []
    for s in p.samples:
        if s["labels"].get("pid") != str(pid):
            continue
        # Every sample of the JVM counts: after warm-up its other threads
        # (GC, compilers) are nearly idle.
        total += s["count"]
        jframes, native = java_frames(p, s)
        head = jframes[:len(want)]
        ok = [fn for fn, *_ in head] == want and any(m.endswith("/libjvm.so") for m in native)
        if ok and detail:
            ok = all(fl == "Chain.java" and ln in lines
                     for (_, fl, ln, _), lines in zip(head, want_lines))
        if ok:
            good += s["count"]
            if len({lid for *_, lid in head}) < len(head):
                inlined += s["count"]
        elif len(bad) < 3:
            bad.append([(fn, fl, ln) for fn, fl, ln, _ in jframes[:8]] + native[:3])
    if total < 100 or good < 0.95 * total:
        fail(f"{what}: {good} of {total} samples show {want} first"
             f"{' with Chain.java and their lines ' + str(want_lines) if detail else ''}; "
             f"others: {bad}")
    return good, total, inlined, bad


# ---- the vmstructs path: no JVM flags ---------------------------------------------------------

RUN = WARMUP + SECONDS + 8
tag = classes  # in these JVMs' command lines only
script = write_script("vmstructs.lua", "", tag)
# Both start before sonded: offered at exec, a JVM has no libjvm.so yet and
# could only be declined later, where `sondectl ps` does not show it.
jit = subprocess.Popen([java, "-cp", tag, "Chain", str(RUN)], cwd=work)
xint = subprocess.Popen([java, "-Xint", "-cp", tag, "Chain", str(RUN)], cwd=work)
# Not a flag the profiler needs: it keeps the chain in separate nmethods, so
# that compiled frames are stepped over by their frame size and named at
# their return addresses.
sep = subprocess.Popen([java, "-XX:CompileCommand=quiet", "-XX:CompileCommand=dontinline,Chain::*",
                        "-cp", tag, "Chain", str(RUN)], cwd=work)
fake = subprocess.Popen([fixture(os.path.join("unwind-jvm", "fakejvm")), str(RUN)])
late = None
out = os.path.join(work, "vmstructs.pb.gz")
try:
    time.sleep(WARMUP)  # C2 compiles the chain
    with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
                hz=HZ) as d:
        # A JVM started under sonded is offered at exec, before its libjvm.so
        # is loaded: it waits as "pending" and gets its path once up.
        late = subprocess.Popen([java, "-cp", tag, "Chain", str(SECONDS + 4)], cwd=work)
        procs = ps(d)
        for jp, name in ((jit, "the JVM"), (xint, "the -Xint JVM"), (sep, "the dontinline JVM")):
            got = procs.get(jp.pid)
            if (not got or got["unwinders"] != ["unwind-jvm"] or got["declined"]
                    or got["notes"] != [{"plugin": "unwind-jvm", "note": "path vmstructs"}]):
                fail(f"{name} not on the vmstructs path in sondectl ps: {got}\n{d.output()}")
        fp = procs.get(fake.pid)
        if not fp or fp["unwinders"] != [] or fp["declined"] != [
                {"plugin": "unwind-jvm", "reason": declined_reason}]:
            fail(f"fakejvm not declined with its reason: {fp}")
        wait_log(d, rf"pid {late.pid}: JDK 17 .*path vmstructs")
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        _, metrics = http_get(d.url("/metrics"))
        late_note = ps(d).get(late.pid, {}).get("notes")
        log = d.output()
finally:
    for proc in (jit, xint, sep, fake, late):
        if proc:
            proc.wait()
with open(out, "wb") as f:
    f.write(body)
for jp in (jit, xint, sep, late):
    if not re.search(rf"pid {jp.pid}: JDK 17 \(17\.[^)]*\), \d+ VMStructs fields, \d+ types, "
                     r"code cache 0x[0-9a-f]+-0x[0-9a-f]+: path vmstructs \(interpreter "
                     r"0x[0-9a-f]+-0x[0-9a-f]+, [1-4] code heaps\)", log):
        fail(f"no vmstructs path for pid {jp.pid} in the log:\n{log}")
if late_note != [{"plugin": "unwind-jvm", "note": "path vmstructs"}]:
    fail(f"the JVM started under sonded: notes {late_note}")

p = Profile(out)
jit_good, jit_total, jit_inlined, jit_bad = check_chain(p, jit.pid, "the JVM (C2)", True)
xint_good, xint_total, _, xint_bad = check_chain(p, xint.pid, "the -Xint JVM", True)
sep_good, sep_total, _, _ = check_chain(p, sep.pid, "the dontinline JVM", True)
if not jit_inlined:
    fail("the C2 JVM's samples show no inlined method as a frame of its caller's location")
native_ok = native_total = late_named = 0
for s in p.samples:
    pid = s["labels"].get("pid")
    if pid == str(fake.pid):
        names = [f for f, m in p.frames(s) if m != "[kernel.kallsyms]"]
        native_total += s["count"]
        native_ok += s["count"] if "fake_gamma;fake_beta;fake_alpha;main" in ";".join(
            names) else 0
    elif pid == str(late.pid) and ("Chain.leaf", "[jvm]") in p.frames(s):
        late_named += s["count"]
if native_total < 100 or native_ok < 0.95 * native_total:
    fail(f"fakejvm: {native_ok} of {native_total} samples show its native chain: "
         f"{[s for s in p.stacks(pid=fake.pid)][:3]}")
if not late_named:
    fail("no sample of the JVM started under sonded names Chain.leaf")
m = dict(re.findall(r'^sonde_unwind_jvm_processes\{path="(\w+)"\} (\d+)$', metrics.decode(),
                    re.M))
if m.get("vmstructs") != "4" or m.get("declined") != "1" or m.get("perfmap") != "0":
    fail(f"sonde_unwind_jvm_processes on /metrics: {m}")
errors = dict(re.findall(r'^sonde_unwind_jvm_errors_total\{reason="(\w+)"\} (\d+)$',
                         metrics.decode(), re.M))
if len(errors) != 13:
    fail(f"error counters on /metrics: {errors}")
print(f"ok: vmstructs: {jit_good} of {jit_total} samples of the C2 JVM ({jit_inlined} with "
      f"inlined frames) and {xint_good} of {xint_total} of the -Xint JVM show "
      f"{' <- '.join(want)} with Chain.java:{want_lines}, {sep_good} of {sep_total} of the "
      f"dontinline JVM; {late_named} of the late JVM name "
      f"Chain.leaf; fakejvm declined, {native_ok}/{native_total} native; processes {m}; "
      f"errors {errors}; not the chain: {jit_bad[:2]}, {xint_bad[:2]}")

# ---- threads and native code, on the vmstructs path -------------------------------------------

RUN = WARMUP + SECONDS + 30  # ended once profiled: the run is only a bound
colours = ["red", "green", "blue"]
# Per thread: its chain, innermost first, and the lines each frame must carry.
thread_want = {c: ([f"Threads.{c}Leaf", f"Threads.{c}Mid", f"Threads.{c}", "Threads.run"],
                   [lines_with(f"// {c} leaf", "Threads.java"),
                    lines_with(f"return {c}Leaf(x)", "Threads.java"),
                    lines_with(f"x = {c}Mid(x)", "Threads.java"),
                    lines_with(f"sink = {c}(end)", "Threads.java")]) for c in colours}
zip_want = ["Zip.compress", "Zip.b", "Zip.a", "Zip.main"]
zip_lines = [lines_with(text, "Zip.java") for text in ("n = d.deflate(out)",
                                                     "return compress(in, out)",
                                                     "return b(in, out)", "sink += a(in, out)")]
script = write_script("threads.lua", "", tag)
thr = subprocess.Popen([java, "-cp", tag, "Threads", str(RUN)], cwd=work)
zjvm = subprocess.Popen([java, "-cp", tag, "Zip", str(RUN)], cwd=work)


def thread_cpu(pid):
    """{comm: (tid, utime + stime in ticks)} of the spinning threads of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if comm.startswith("spin-"):
            out[comm] = (int(tid), int(fields[11]) + int(fields[12]))
    return out


out = os.path.join(work, "threads.pb.gz")
try:
    time.sleep(WARMUP)
    with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
                hz=HZ) as d:
        procs = ps(d)
        for jp, name in ((thr, "the Threads JVM"), (zjvm, "the Zip JVM")):
            got = procs.get(jp.pid)
            if not got or got["notes"] != [{"plugin": "unwind-jvm", "note": "path vmstructs"}]:
                fail(f"{name} not on the vmstructs path in sondectl ps: {got}\n{d.output()}")
        time.sleep(1.5)  # a tick: the threads' frame anchors are known
        cpu0 = thread_cpu(thr.pid)
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        cpu1 = thread_cpu(thr.pid)
        _, metrics = http_get(d.url("/metrics"))
finally:
    for jp in (thr, zjvm):  # the profile is named: they are done
        jp.terminate()
        jp.wait()
with open(out, "wb") as f:
    f.write(body)
p = Profile(out)

# HotSpot names each OS thread after its Java thread: the three tids.
if sorted(cpu0) != sorted(f"spin-{c}" for c in colours) or any(
        cpu0[k][0] != cpu1.get(k, (0,))[0] for k in cpu0):
    fail(f"the Threads JVM's OS threads: {cpu0} then {cpu1}")
ticks = {c: cpu1[f"spin-{c}"][1] - cpu0[f"spin-{c}"][1] for c in colours}
per = {c: 0 for c in colours}
total = 0
bad = []
for s in p.samples:
    if s["labels"].get("pid") != str(thr.pid):
        continue
    total += s["count"]
    jframes, native = java_frames(p, s)
    for c, (names, lines) in thread_want.items():
        head = jframes[:len(names)]
        if ([fn for fn, *_ in head] == names and any(m.endswith("/libjvm.so") for m in native)
                and all(fl == "Threads.java" and ln in want_ln
                        for (_, fl, ln, _), want_ln in zip(head, lines))):
            per[c] += s["count"]
            break
    else:
        if len(bad) < 3:
            bad.append([(fn, fl, ln) for fn, fl, ln, _ in jframes[:6]] + native[:2])
good = sum(per.values())
if total < 150 or good < 0.95 * total:
    fail(f"the Threads JVM: {good} of {total} samples show one of the threads' chains "
         f"{thread_want}; by thread {per}; others: {bad}")
for c in colours:
    # The thread's share of the JVM's samples against its tid's share of
    # the three threads' CPU time meanwhile.
    share, cpu_share = per[c] / good, ticks[c] / max(sum(ticks.values()), 1)
    if per[c] < 0.2 * good or abs(share - cpu_share) > 0.1:
        fail(f"spin-{c} (tid {cpu0[f'spin-{c}'][0]}): {per[c]} of {good} samples "
             f"({share:.0%}) show its chain, its CPU time was {cpu_share:.0%} of the threads'")

ztotal = zgood = 0
zbad = []
for s in p.samples:
    if s["labels"].get("pid") != str(zjvm.pid):
        continue
    ztotal += s["count"]
    # Native frames first (the kernel's left out), then the Java ones.
    frames = []
    for lid in s["locations"]:
        loc = p.locations[lid]
        mfile = p.mappings.get(loc["mapping"], {}).get("file", "")
        if mfile != "[kernel.kallsyms]":
            frames += [(fn, fl, ln, mfile) for fn, fl, ln in loc["lines"]] or [
                (hex(loc["address"]), "", 0, mfile)]
    n = 0
    while n < len(frames) and frames[n][3] != "[jvm]":
        n += 1
    j = n
    while j < len(frames) and frames[j][0].startswith("java.util.zip.Deflater."):
        j += 1
    chain = frames[j:j + len(zip_want)]
    ok = (n >= 1 and re.search(r"/libz\.so|/libzip\.so", frames[0][3]) and j > n
          and all(fl == "Deflater.java" for _, fl, _, _ in frames[n:j])
          and [fn for fn, *_ in chain] == zip_want
          and all(m == "[jvm]" and fl == "Zip.java" and ln in want_ln
                  for (_, fl, ln, m), want_ln in zip(chain, zip_lines))
          and any(m.endswith("/libjvm.so") for *_, m in frames[j + len(zip_want):]))
    if ok:
        zgood += s["count"]
    elif len(zbad) < 3:
        zbad.append([(fn, fl, ln, os.path.basename(m)) for fn, fl, ln, m in frames[:12]])
if ztotal < 100 or zgood < 0.95 * ztotal:
    fail(f"the Zip JVM: {zgood} of {ztotal} samples show a native leaf in zlib or libzip above "
         f"the Deflater frames and {zip_want} with Zip.java:{zip_lines}; others: {zbad}")
print(f"ok: threads: {good} of {total} samples of the Threads JVM show a thread's chain with "
      f"Threads.java and its lines: " + ", ".join(
          f"spin-{c} (tid {cpu0[f'spin-{c}'][0]}) {per[c]}, CPU {ticks[c]} ticks" for c in colours)
      + f"; native: {zgood} of {ztotal} samples of the Zip JVM show zlib/libzip above "
      f"Deflater.* <- {' <- '.join(zip_want)} with Zip.java:{zip_lines}; "
      f"not the chain: {bad[:2]}, {zbad[:2]}")

# ---- the perfmap fallback: -XX:+PreserveFramePointer, jcmd Compiler.perfmap -------------------

RUN = WARMUP + SECONDS + 6
want = want[:4]  # main runs in the interpreter or OSR code the perf map names differently
script = write_script("perfmap.lua", ', path = "perfmap"', tag)
jvm = subprocess.Popen([java, "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
                        "-XX:CompileCommand=dontinline,Chain::*", "-cp", tag, "Chain", str(RUN)],
                       cwd=work)
out = os.path.join(work, "perfmap.pb.gz")
try:
    time.sleep(WARMUP)
    with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
                hz=HZ) as d:
        got = ps(d).get(jvm.pid)
        if not got or got["notes"] != [{"plugin": "unwind-jvm", "note": "path perfmap"}]:
            fail(f"the JVM not on the perfmap path in sondectl ps: {got}\n{d.output()}")
        wait_log(d, rf"pid {jvm.pid}: JDK 17 .*path perfmap")
        time.sleep(1)  # the first perf map
        _, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        _, metrics = http_get(d.url("/metrics"))
        log = d.output()
finally:
    jvm.wait()
with open(out, "wb") as f:
    f.write(body)
if not re.search(rf"pid {jvm.pid}: JDK 17 \(17\.[^)]*\), \d+ VMStructs fields, \d+ types, "
                 r"code cache 0x[0-9a-f]+-0x[0-9a-f]+: path perfmap", log):
    fail(f"no perfmap path for the JVM in the log:\n{log}")
if "jcmd Compiler.perfmap:" in log:
    fail(f"the attach interface failed:\n{log}")
good, total, _, bad = check_chain(Profile(out), jvm.pid, "the perfmap JVM", False)
m = dict(re.findall(r'^sonde_unwind_jvm_processes\{path="(\w+)"\} (\d+)$', metrics.decode(),
                    re.M))
if m.get("perfmap") != "1" or m.get("vmstructs") != "0":
    fail(f"sonde_unwind_jvm_processes on /metrics (perfmap): {m}")
print(f"ok: perfmap: {good} of {total} samples of the JVM show {' <- '.join(want)}; "
      f"processes {m}; not the chain: {bad[:2]}")
