#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A frame-pointer fixture spinning in main -> alpha -> beta -> gamma: the
profile of its pid holds that exact chain, named, for most of its samples,
with its labels, file names and build id."""
import os
import subprocess
import time

from sondetest import (Profile, Sonded, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

out = os.path.join(scratch_dir("sonde-chain-"), "chain.pb.gz")
with Sonded() as d:
    fx = subprocess.Popen([fixture("fp_chain"), "6"])
    try:
        time.sleep(0.5)
        status, body = http_get(d.url(f"/debug/pprof/profile?seconds=4&pid={fx.pid}"))
    finally:
        fx.wait()
    if status != 200:
        fail(f"profile request answered {status}")
    with open(out, "wb") as f:
        f.write(body)

p = Profile(out)
total = p.total()
# 4 s at 99 Hz of a process that spins on one CPU: close to 396 samples.
if total < 150:
    fail(f"only {total} samples of the fixture in 4 s at 99 Hz")
if p.period != 10101010:
    fail(f"period {p.period}, expected 1e9/99 = 10101010 ns")
others = [s for s in p.samples if s["labels"].get("pid") != str(fx.pid)]
if others:
    fail(f"?pid={fx.pid} let in samples of other processes: {others[:3]}")

expected = ["gamma", "beta", "alpha", "main"]
chain = sum(c for c, st in p.stacks() if st[:4] == expected)
if chain < 0.95 * total:
    worst = sorted(p.stacks(), key=lambda cs: -cs[0])[:5]
    fail(f"{chain} of {total} samples hold {expected}; most common stacks: {worst}")

sample = p.samples[0]
labels = sample["labels"]
if labels.get("comm") != "fp_chain" or not labels.get("exe", "").endswith("/fp_chain"):
    fail(f"labels {labels}")
gamma = [loc for loc in p.locations.values() if loc["lines"] and loc["lines"][0][0] == "gamma"]
if not gamma or not gamma[0]["lines"][0][1].endswith("fp_chain.c") or gamma[0]["lines"][0][2] <= 0:
    fail(f"gamma has no file:line: {gamma[:1]}")
mapping = p.mappings[gamma[0]["mapping"]]
if not mapping["file"].endswith("/fp_chain") or len(mapping["build_id"]) != 40:
    fail(f"gamma's mapping {mapping}")
readelf = subprocess.run(["readelf", "-n", fixture("fp_chain")], capture_output=True, text=True)
if mapping["build_id"] not in readelf.stdout:
    fail(f"build id {mapping['build_id']} is not the fixture's:\n{readelf.stdout}")
print(f"ok: {chain}/{total} samples hold gamma <- beta <- alpha <- main")
