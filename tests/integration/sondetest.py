# SPDX-License-Identifier: MIT
"""Shared pieces of the integration tests: privilege checks, a sonded
process under test, fixtures, and pprof read through `go tool pprof`."""
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77  # meson's exit code for a skipped test


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def skip(reason):
    """Skips the test, but under CI=true a skip is a failure: CI runs as
    root and must run every privileged test."""
    if os.environ.get("CI") == "true":
        fail(f"would skip under CI=true: {reason}")
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


def require_root():
    if os.geteuid() != 0:
        skip("needs root (BPF programs and perf events); run the suite as root")


def require_tool(name):
    path = shutil.which(name)
    if not path:
        skip(f"{name} is not installed (scripts/setup installs it)")
    return path


def scratch_dir(prefix):
    """A temporary directory removed when the test exits, pass or fail."""
    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, d, True)
    return d


def build_dir():
    return os.environ["SONDE_BUILD_DIR"]


def sonded_path():
    return os.path.join(build_dir(), "core", "sonded")


def sondectl_path():
    return os.path.join(build_dir(), "core", "sondectl")


def fixture(name):
    return os.path.join(build_dir(), "tests", "fixtures", name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def bpf_programs():
    """{id: name} of the BPF programs loaded on the machine."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return {int(i): n for i, n in re.findall(r"^(\d+): \S+\s+name (\S+)", out, re.M)}


class Sonded:
    """sonded running with a free HTTP port; stop() sends SIGTERM and checks
    it exits 0."""

    def __init__(self, *args, hz=99):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="sonded-", suffix=".log", delete=False)
        # Sockets of its own, so tests never meet another sonded's.
        self.sockdir = scratch_dir("sonde-sock-")
        self.export_url = f"ipc://{self.sockdir}/export.ipc"
        self.control_url = f"ipc://{self.sockdir}/control.ipc"
        cmd = [sonded_path(), "--http", self.addr, "--hz", str(hz),
               "--export", self.export_url, "--control", self.control_url, *args]
        if "--script" not in args:  # never an installed default script
            cmd += ["--script", "none"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self._kill)  # a failing test must not leave sonded running
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"sonded exited with {self.proc.returncode} at start:\n{self.output()}")
            with contextlib.suppress(OSError):
                http_get(self.url("/metrics"), timeout=2)
                return
            time.sleep(0.1)
        self.proc.kill()
        fail(f"sonded did not serve HTTP within 20 s:\n{self.output()}")

    def prog_ids(self):
        """Ids of the BPF programs this sonded holds open (from its fdinfo)."""
        ids = set()
        fd_dir = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}") != "anon_inode:bpf-prog":
                    continue
                with open(f"/proc/{self.proc.pid}/fdinfo/{fd}") as f:
                    m = re.search(r"^prog_id:\s*(\d+)$", f.read(), re.M)
                if m:
                    ids.add(int(m.group(1)))
        return ids

    def _kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            print(self.output(), file=sys.stderr)

    def url(self, path):
        return f"http://{self.addr}{path}"

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def metric(self, name):
        """The value of an unlabelled metric line from /metrics."""
        _, body = http_get(self.url("/metrics"))
        m = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                fail(f"sonded did not stop within 20 s of SIGTERM:\n{self.output()}")
        if self.proc.returncode != 0:
            fail(f"sonded exited with {self.proc.returncode}:\n{self.output()}")
        os.unlink(self.log.name)
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            print(self.output(), file=sys.stderr)
            return False
        self.stop()
        return False


def go_env():
    env = dict(os.environ)
    home = scratch_dir("sonde-go-")
    env.setdefault("HOME", home)
    env.setdefault("GOCACHE", os.path.join(home, "cache"))
    env["GOFLAGS"] = "-mod=mod"
    env["PPROF_TMPDIR"] = home
    return env


def pprof(*args):
    """Runs `go tool pprof ARGS` and returns its standard output."""
    require_tool("go")
    r = subprocess.run(["go", "tool", "pprof", "-symbolize=none", *args],
                       capture_output=True, text=True, env=go_env(), timeout=300)
    if r.returncode != 0:
        fail(f"go tool pprof {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


class Profile:
    """A pprof file as `go tool pprof -raw` prints it: samples with their
    stacks (function names, leaf first, inlined frames expanded) and
    labels, locations and mappings."""

    def __init__(self, path):
        self.path = path
        self.text = pprof("-raw", path)
        self.samples = []     # dicts: count, nanos, locations, labels
        self.locations = {}   # id -> {"address", "mapping", "lines": [(func, file, line)]}
        self.mappings = {}    # id -> {"file", "build_id"}
        self.period = None
        self._parse()

    def _parse(self):
        section = None
        loc = None
        for line in self.text.splitlines():
            if line.startswith("Period: "):
                self.period = int(line.split()[1])
                continue
            if line in ("Samples:", "Locations", "Mappings"):
                section = line
                continue
            if section == "Samples:":
                m = re.match(r"^\s+(\d+)\s+(\d+): ([\d ]*)$", line)
                if m:
                    self.samples.append({"count": int(m.group(1)), "nanos": int(m.group(2)),
                                         "locations": [int(x) for x in m.group(3).split()],
                                         "labels": {}})
                    continue
                for key, value in re.findall(r"(\w+):\[([^\]]*)\]", line):
                    if self.samples:
                        self.samples[-1]["labels"][key] = value
            elif section == "Locations":
                m = re.match(r"^\s*(\d+): (0x[0-9a-f]+) (?:M=(\d+) )?(.*)$", line)
                if m:
                    loc = {"address": int(m.group(2), 16),
                           "mapping": int(m.group(3)) if m.group(3) else None, "lines": []}
                    self.locations[int(m.group(1))] = loc
                    rest = m.group(4)
                else:
                    rest = line.strip()
                fm = re.match(r"^(.*) (\S*):(\d+)(?::\d+)? s=\d+", rest)
                if loc is not None and fm:
                    loc["lines"].append((fm.group(1), fm.group(2), int(fm.group(3))))
            elif section == "Mappings":
                m = re.match(r"^(\d+): 0x[0-9a-f]+/0x[0-9a-f]+/0x[0-9a-f]+ (\S*) ?(\S*)", line)
                if m:
                    bid = m.group(3) if not m.group(3).startswith("[") else ""
                    self.mappings[int(m.group(1))] = {"file": m.group(2), "build_id": bid}

    def frames(self, sample):
        """(function, mapping file) pairs of a sample, leaf first."""
        out = []
        for lid in sample["locations"]:
            loc = self.locations[lid]
            mfile = self.mappings.get(loc["mapping"], {}).get("file", "")
            for func, _file, _line in loc["lines"]:
                out.append((func, mfile))
            if not loc["lines"]:
                out.append((hex(loc["address"]), mfile))
        return out

    def stacks(self, **labels):
        """(count, [function, ...] leaf first) for samples with these labels."""
        out = []
        for s in self.samples:
            if all(s["labels"].get(k) == str(v) for k, v in labels.items()):
                out.append((s["count"], [f for f, _ in self.frames(s)]))
        return out

    def total(self, **labels):
        return sum(c for c, _ in self.stacks(**labels))
