#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A syscall-heavy fixture: its samples show named kernel frames above its
user frames (raw_read, inlined, <- read_zeros <- main), in one stack."""
import os
import subprocess
import time

from sondetest import (Profile, Sonded, fail, fixture, http_get, require_root, require_tool, scratch_dir)

require_root()
require_tool("go")

out = os.path.join(scratch_dir("sonde-kernel-"), "kernel.pb.gz")
with Sonded() as d:
    fx = subprocess.Popen([fixture("syscall_loop"), "5"])
    try:
        time.sleep(0.3)
        status, body = http_get(d.url(f"/debug/pprof/profile?seconds=3&pid={fx.pid}"))
    finally:
        fx.wait()
    with open(out, "wb") as f:
        f.write(body)

p = Profile(out)
total = p.total()
if total < 100:
    fail(f"only {total} samples of the fixture in 3 s at 99 Hz")

mixed = 0
for s in p.samples:
    frames = p.frames(s)
    kinds = ["k" if m == "[kernel.kallsyms]" else "u" for _, m in frames]
    names = [f for f, _ in frames]
    if "k" not in kinds:
        continue
    first_user = kinds.index("u") if "u" in kinds else len(kinds)
    if "k" in kinds[first_user:]:
        fail(f"a kernel frame below a user frame: {frames}")
    user = names[first_user:]
    if "vfs_read" in names[:first_user] and user[:3] == ["raw_read", "read_zeros", "main"]:
        mixed += s["count"]
if mixed < 0.5 * total:
    stacks = sorted(p.stacks(), key=lambda cs: -cs[0])[:5]
    fail(f"only {mixed} of {total} samples show vfs_read above raw_read <- read_zeros <- main; top: {stacks}")
print(f"ok: {mixed}/{total} samples hold kernel frames (vfs_read) above read_zeros <- main")
