#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The daemon as its script says: only one fixture profiled (the others
dropped in the kernel), its samples labeled (and relabeled) by the script, a custom topic
published from on_window; a subscriber (sondectl tail, over nng) receives
the profile and the custom messages; sondectl record writes a pprof that go
tool pprof reads; a reload with a broken script keeps the old one running."""
import json
import os
import signal
import subprocess
import time

from sondetest import (Profile, Sonded, fail, fixture, http_get, require_root, require_tool, scratch_dir, sondectl_path)

require_root()
require_tool("go")

SCRIPT = """
sampling { hz = 99, window = 2 }
on_process(function(p)
  if p.comm == "fp_chain" then
    return { labels = { team = "chain", exe = "" } }
  end
  return false
end)
on_window(function(w)
  local gamma = 0
  for _, s in ipairs(w.stacks) do
    if s.frames[1] == "gamma" then gamma = gamma + s.count end
  end
  publish("gamma", { samples = gamma, total = w.samples })
end)
"""

work = scratch_dir("sonde-script-")
script = os.path.join(work, "chain.lua")
with open(script, "w") as f:
    f.write(SCRIPT)


def tail(d, topic, count):
    return subprocess.Popen([sondectl_path(), "--export", d.export_url, "--timeout", "20",
                             "tail", topic, "--count", str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def messages(p):
    out, err = p.communicate(timeout=30)
    if p.returncode != 0:
        fail(f"sondectl tail exited {p.returncode}: {err}")
    return [json.loads(line) for line in out.splitlines()]


with Sonded("--script", script) as d:
    profiles = tail(d, "profile", 2)
    gammas = tail(d, "gamma", 2)
    fx = subprocess.Popen([fixture("fp_chain"), "6"])
    try:
        time.sleep(0.5)
        pb = os.path.join(work, "record.pb.gz")
        r = subprocess.run([sondectl_path(), "--control", d.control_url, "record",
                            "--seconds", "2", "-o", pb], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            fail(f"sondectl record: {r.returncode} {r.stderr}")
        prof = messages(profiles)
        gam = messages(gammas)
    finally:
        fx.wait()

    # The profile topic: only the fixture, labeled by the script.
    chain_samples = 0
    for m in prof:
        if m.get("v") != 1 or m.get("sample_type") != "cpu":
            fail(f"profile message header: { {k: m.get(k) for k in ('v', 'sample_type')} }")
        for s in m["stacks"]:
            labels = s["labels"]
            if labels.get("comm") != "fp_chain" or labels.get("team") != "chain":
                fail(f"a stack of another process, or without the script's label: {labels}")
            if "exe" in labels:
                fail(f"the script dropped the exe label, yet: {labels}")
            names = [m["frames"][i]["function"] for i in s["frames"]]
            if names[:4] == ["gamma", "beta", "alpha", "main"]:
                chain_samples += s["count"]
    if chain_samples < 100:
        fail(f"the profile topic holds {chain_samples} samples of the fixture's chain")

    # The script's own topic, computed from the same windows.
    if not all(g.get("samples", 0) > 0 and g["samples"] <= g["total"] for g in gam):
        fail(f"gamma messages: {gam}")

    # sondectl record: a pprof go tool pprof reads, of the fixture only.
    p = Profile(pb)
    if p.total(comm="fp_chain", team="chain") < 100 or p.total() != p.total(comm="fp_chain"):
        fail(f"record: {p.total()} samples, {p.total(comm='fp_chain')} of fp_chain")

    # Everything else was dropped in the kernel, not in userspace.
    if not d.metric("sonde_samples_not_profiled_total"):
        fail("no sample was dropped in the kernel for the processes the script refused")

    # A broken script on reload: the old one stays.
    with open(script, "w") as f:
        f.write("sampling { hz = 99 \n on_process(\n")
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    if "reload failed, the old script stays: " + script + ":" not in d.output():
        fail(f"no reload error naming the file and line:\n{d.output()}")
    r = subprocess.run([sondectl_path(), "--control", d.control_url, "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    status = json.loads(r.stdout)
    if status.get("script") != script or status.get("hz") != 99:
        fail(f"status after the failed reload: {status}")
    _, body = http_get(d.url("/metrics"))
    if 'sonde_script_reloads_total{result="failed"} 1' not in body.decode():
        fail("the failed reload is not counted")
    fx = subprocess.Popen([fixture("fp_chain"), "3"])
    try:
        again = messages(tail(d, "gamma", 1))
    finally:
        fx.wait()
    if not again or again[0].get("samples", 0) <= 0:
        fail(f"the old script stopped publishing after the failed reload: {again}")
print(f"ok: {chain_samples} chain samples on the profile topic, {len(gam)} gamma messages, "
      f"record read by pprof, failed reload kept the old script")
