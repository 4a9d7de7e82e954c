#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Bad start-ups fail with one clear line and the right exit code."""
import os
import socket
import subprocess

from sondetest import fail, require_root, sonded_path


def run(*args, user=None):
    cmd = [sonded_path(), *args]
    if user:
        cmd = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups",
               "--inh-caps=-all", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def expect(r, code, text):
    if r.returncode != code or text not in r.stderr + r.stdout:
        fail(f"expected exit {code} and '{text}', got {r.returncode}:\n{r.stdout}{r.stderr}")


r = run("--help")
expect(r, 0, "--hz N")
for opt in ("--window", "--output", "--http", "--script", "--check", "pprof"):
    if opt not in r.stdout:
        fail(f"--help does not mention {opt}")
expect(run("--version"), 0, "sonded 0.")
expect(run("--hz", "0"), 2, "--hz takes a whole number from 1 to 100000, not '0'")
expect(run("--hz", "fast"), 2, "not 'fast'")
expect(run("--frobnicate"), 2, "Try 'sonded --help'")
expect(run("--output", "/nonexistent/dir"), 2, "--output /nonexistent/dir: not a directory")

require_root()
expect(run("--http", "127.0.0.1:1", user="65534"), 1,
       "sonded needs root, or the capabilities CAP_BPF and CAP_PERFMON")
bad = "/tmp/sonde-bad-script.lua"
with open(bad, "w") as f:
    f.write("sampling { hz = 19 }\n\non_process(function(p)\n  return { labels = { team = } }\nend)\n")
expect(run("--script", bad, "--http", "none"), 1, f"{bad}:4: unexpected symbol near '}}'")
os.unlink(bad)
with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    r = run("--http", f"127.0.0.1:{port}")
    expect(r, 1, f"cannot listen on 127.0.0.1:{port}: Address already in use")
print("ok")
