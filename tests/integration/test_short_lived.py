#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Processes that live 50 ms (`sh -c` running a fixture) still get their
samples attributed and named after they are gone."""
import os
import subprocess
import threading
import time

from sondetest import (Profile, Sonded, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

RUNS = 30
out = os.path.join(scratch_dir("sonde-short-"), "short.pb.gz")
with Sonded(hz=199) as d:
    result = {}

    def fetch():
        result["status"], result["body"] = http_get(
            d.url("/debug/pprof/profile?seconds=4&comm=short_burn"))

    t = threading.Thread(target=fetch)
    t.start()
    time.sleep(0.3)
    for _ in range(RUNS):
        subprocess.run(["sh", "-c", f"{fixture('short_burn')} 50; true"], check=True)
    t.join()
    with open(out, "wb") as f:
        f.write(result["body"])

p = Profile(out)
total = p.total(comm="short_burn")
# 30 runs x 50 ms at 199 Hz is about 300 samples; a loaded CI machine gets fewer.
if total < 60:
    fail(f"only {total} samples of {RUNS} short-lived runs")
pids = {s["labels"].get("pid") for s in p.samples}
if len(pids) < RUNS // 2:
    fail(f"samples from only {len(pids)} distinct processes of {RUNS}")
named = sum(c for c, st in p.stacks(comm="short_burn") if st[:2] == ["short_spin", "main"])
if named < 0.9 * total:
    stacks = sorted(p.stacks(), key=lambda cs: -cs[0])[:5]
    fail(f"{named} of {total} samples named short_spin <- main; top: {stacks}")
print(f"ok: {named}/{total} samples of {len(pids)} short-lived processes named")
