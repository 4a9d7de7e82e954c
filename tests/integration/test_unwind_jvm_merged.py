#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Java frames in place among DWARF-unwound native ones (issues 4 and 7).

JVMs given unwinders { "unwind-native", "unwind-jvm" } (no JVM flags) get
their native frames from the CFI walker, which hands every frame in the
code cache to the JVM walker; that one writes the Java frames and gives
the walk back at the first native frame below them. In >= 95% of each
fixture's samples, leaf first:

- Zip (Deflater.deflate over 4 MiB): libz's frames, libzip's
  Java_java_util_zip_Deflater_deflateBytesBytes (the JNI function, which
  frame pointers alone lose under zlib), java.util.zip.Deflater.* ...
  Zip.compress <- Zip.b <- Zip.a <- Zip.main, then libjvm's
  JavaCalls::call_helper ... down to the thread's start (clone3);
- Chain (C2-compiled): Chain.leaf <- c <- b <- a <- main, then the same
  native frames down to clone3;

and hand-overs are counted, none failed."""
import os
import re
import shutil
import subprocess
import time

from sondetest import (Profile, Sonded, build_dir, fail, fixture, http_get, require_root,
                       require_tool, scratch_dir, skip)

require_root()
require_tool("go")
java = shutil.which("java")
classes = fixture("unwind-jvm")
if not java or not os.path.exists(os.path.join(classes, "Zip.class")):
    skip("java or javac is missing, so the fixtures were not built "
         "(scripts/setup installs openjdk-17-jdk-headless)")
HZ = 249
WARMUP, SECONDS = 3, 5
OUTERMOST = ("clone3", "__clone3")

work = scratch_dir("sonde-jvm-merged-")
tag = os.path.join(work, "classes")  # the script picks these JVMs by this path
shutil.copytree(classes, tag)
script = os.path.join(work, "merged.lua")
with open(script, "w") as f:
    f.write(f"""
plugin "unwind-native" {{ required = true, cache_dir = "" }}
plugin "unwind-jvm" {{ required = true }}
on_process(function(p)
  if p.cmdline and p.cmdline:find("{tag}", 1, true) then
    return {{ unwinders = {{ "unwind-native", "unwind-jvm" }} }}
  end
  return false
end)
""")

zjvm = subprocess.Popen([java, "-cp", tag, "Zip", str(WARMUP + SECONDS + 30)], cwd=work)
cjvm = subprocess.Popen([java, "-cp", tag, "Chain", str(WARMUP + SECONDS + 30)], cwd=work)
try:
    time.sleep(WARMUP)  # C2 compiles the hot chains
    with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
                hz=HZ) as d:
        time.sleep(2)  # tables built, the JVMs on the vmstructs path
        status, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}"))
        if status != 200:
            fail(f"profile: HTTP {status}")
        out = os.path.join(work, "merged.pb.gz")
        with open(out, "wb") as f:
            f.write(body)
        p = Profile(out)  # names the Java frames from the live JVMs
        _, metrics = http_get(d.url("/metrics"))
        metrics = metrics.decode()
finally:
    for jp in (zjvm, cjvm):
        jp.kill()
        jp.wait()


def user_frames(s):
    return [(f, m) for f, m in p.frames(s) if m != "[kernel.kallsyms]"]


def native_below_ok(frames, k):
    """The frames after index k are native, through libjvm, to the thread's start."""
    rest = frames[k:]
    return (len(rest) >= 3 and all(m != "[jvm]" for _, m in rest[1:])
            and any(f.startswith("JavaCalls::call_helper") for f, _ in rest)
            and rest[-1][0] in OUTERMOST)


def zip_ok(frames):
    names = [f for f, _ in frames]
    java = [i for i, (_, m) in enumerate(frames) if m == "[jvm]"]
    if not java or not re.search(r"libz\.so", frames[0][1]):
        return "not a zlib leaf"
    first = java[0]
    if frames[first - 1][0] != "Java_java_util_zip_Deflater_deflateBytesBytes":
        return f"above the Java frames: {names[first - 1]}"
    jnames = [names[i] for i in java]
    chain = [n for n in jnames if n.startswith("Zip.")]
    if chain != ["Zip.compress", "Zip.b", "Zip.a", "Zip.main"] or \
            not jnames[0].startswith("java.util.zip.Deflater."):
        return f"java frames {jnames}"
    if not native_below_ok(frames, java[-1] + 1):
        return f"below the Java frames: {names[java[-1] + 1:]}"
    return None


def chain_ok(frames):
    names = [f for f, _ in frames]
    if names[:5] != ["Chain.leaf", "Chain.c", "Chain.b", "Chain.a", "Chain.main"]:
        return f"top {names[:6]}"
    java = [i for i, (_, m) in enumerate(frames) if m == "[jvm]"]
    if not native_below_ok(frames, java[-1] + 1):
        return f"below the Java frames: {names[java[-1] + 1:]}"
    return None


for jp, name, check in ((zjvm, "Zip", zip_ok), (cjvm, "Chain", chain_ok)):
    good = total = 0
    bad = {}
    for s in p.samples:
        if s["labels"].get("pid") != str(jp.pid):
            continue
        frames = user_frames(s)
        total += s["count"]
        why = check(frames) if frames else "no user frames"
        if why is None:
            good += s["count"]
        else:
            bad.setdefault(why, [0, [f for f, _ in frames]])[0] += s["count"]
    if total < 100 or good < 0.95 * total:
        worst = sorted(bad.items(), key=lambda kv: -kv[1][0])[:3]
        fail(f"{name}: {good} of {total} samples are the merged stack; others: {worst}")
    example = next(s for s in p.samples if s["labels"].get("pid") == str(jp.pid)
                   and check(user_frames(s)) is None)
    print(f"ok: {name}: {good}/{total} samples merged, e.g. "
          f"{[f for f, _ in user_frames(example)]}")

handovers = re.search(r"^sonde_unwind_native_handovers_total (\d+)$", metrics, re.M)
failed = re.search(r'^sonde_unwind_native_stops_total\{reason="handover_failed"\} (\d+)$',
                   metrics, re.M)
if not handovers or int(handovers.group(1)) < 200 or not failed or failed.group(1) != "0":
    fail(f"hand-overs {handovers and handovers.group(1)}, failed {failed and failed.group(1)}")
print(f"ok: {handovers.group(1)} hand-overs, none failed")
