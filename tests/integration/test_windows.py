#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--output writes one gzip'd pprof per window that go tool pprof reads;
SIGTERM flushes the last window, detaches every BPF program and exits 0;
/metrics counts what was sampled."""
import glob
import os
import re
import subprocess
import time

from sondetest import (Profile, Sonded, bpf_programs, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")
require_tool("bpftool")

OURS = {"sample", "unwind_fp", "sched_process_exec", "sched_process_fork",
        "sched_process_exit"}
outdir = scratch_dir("sonde-windows-")
d = Sonded("--output", outdir, "--window", "2")
fx = subprocess.Popen([fixture("fp_chain"), "5"])
time.sleep(5.5)
fx.wait()
# This sonded's own programs (other sondeds may run on the machine).
ids = d.prog_ids()
loaded = {name for i, name in bpf_programs().items() if i in ids}
if loaded != OURS:
    fail(f"while running, only {loaded} of sonded's programs are loaded")

status, body = http_get(d.url("/metrics"))
text = body.decode()
for family in ("sonde_samples_total", "sonde_samples_received_total",
               "sonde_samples_dropped_total", "sonde_stacks_truncated_total",
               "sonde_symbol_misses_total", "process_resident_memory_bytes"):
    if not re.search(rf"^# TYPE {family} ", text, re.M):
        fail(f"/metrics has no {family}:\n{text}")
taken = d.metric("sonde_samples_total")
received = d.metric("sonde_samples_received_total")
if not taken or taken < 300 or not received:
    fail(f"sonde_samples_total {taken}, sonde_samples_received_total {received}")
d.stop()

# The kernel frees programs after an RCU grace period (trampolines of
# tp_btf programs take longest): give it a few seconds.
deadline = time.time() + 10
while (left := ids & set(bpf_programs())) and time.time() < deadline:
    time.sleep(0.2)
if left:
    fail(f"BPF programs still loaded after sonded stopped: {left}")
files = sorted(glob.glob(os.path.join(outdir, "cpu-*.pb.gz")))
if len(files) < 3:
    fail(f"{len(files)} window files in {outdir} after about 6 s of 2 s windows: {files}")
if glob.glob(os.path.join(outdir, ".*.tmp")):
    fail("a temporary window file was left behind")
chain = 0
for path in files:
    p = Profile(path)
    chain += sum(c for c, st in p.stacks(comm="fp_chain") if st[:4] == ["gamma", "beta", "alpha", "main"])
if chain < 200:
    fail(f"the windows hold only {chain} samples of the fixture's chain")
print(f"ok: {len(files)} windows, {chain} chain samples, all programs detached")
