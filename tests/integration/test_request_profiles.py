#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Profiles meet requests (issue 5): while a thread serves a request, its
CPU samples carry the request's http_route and http_request_method, so
/debug/pprof/profile?http_route=R is the flame graph of that endpoint
alone. A Python server (tests/fixtures/red/busy_server.py) burns CPU in
users_work() for /users/<n> and in orders_work() for /orders; a client
keeps both routes busy on two keep-alive connections. With red-metrics
and unwind-python on the server:

- ?http_route=/users/* holds users_work samples and no orders_work one,
  ?http_route=/orders the reverse, each sample labeled with its route and
  method GET;
- the unfiltered profile of the same time holds both;
- a server that forks a child per connection (busy_server.py --forking)
  gets its child's samples labeled the same way;
- a request answered by another thread than the one that read it (the
  server's /handoff) leaves no label behind: the reading thread's work
  after the answer (after_handoff) carries no http_route;
- no sample waits past its deadline (sonde_samples_tag_unlabeled_total
  late/full stay 0) and none is held once the requests have stopped."""
import http.client
import os
import re
import subprocess
import threading
import time
import urllib.parse

from sondetest import Profile, Sonded, build_dir, fail, http_get, require_root, require_tool, scratch_dir

require_root()
require_tool("go")
PYTHON = "/usr/bin/python3.11"
SECONDS = 5
MIN_SAMPLES = 40

src = os.environ.get("SONDE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
server_py = os.path.realpath(os.path.join(src, "tests", "fixtures", "red", "busy_server.py"))
work = scratch_dir("sonde-reqprof-")
script = os.path.join(work, "reqprof.lua")
with open(script, "w") as f:
    f.write(f"""
plugin "red-metrics" {{ required = true }}
plugin "unwind-python" {{ required = true }}
on_process(function(p)
  if p.cmdline and p.cmdline:find("{server_py}", 1, true) then
    return {{ unwinders = {{ "unwind-python" }}, plugins = {{ "red-metrics" }} }}
  end
  return false
end)
""")


def hammer(port, path, stop, counts, key=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n = 0
    while not stop.is_set():
        conn.request("GET", path.replace("{n}", str(1000 + n % 50)))
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            fail(f"{path}: status {r.status}")
        n += 1
    conn.close()
    counts[key or path] = n


def functions(profile, sample):
    return [f for f, _ in profile.frames(sample)]


with Sonded("--script", script, "--plugin-dir", os.path.join(build_dir(), "plugins"),
            hz=499) as d:
    server = subprocess.Popen([PYTHON, server_py], stdout=subprocess.PIPE, text=True)
    forking = subprocess.Popen([PYTHON, server_py, "--forking"], stdout=subprocess.PIPE,
                               text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        fork_port = int(forking.stdout.readline().split()[1])
        stop = threading.Event()
        counts = {}
        clients = [threading.Thread(target=hammer, args=(port, p, stop, counts))
                   for p in ("/users/{n}", "/orders", "/handoff")]
        clients.append(threading.Thread(target=hammer,
                                        args=(fork_port, "/users/{n}", stop, counts),
                                        kwargs={"key": "forked /users/{n}"}))
        for c in clients:
            c.start()
        time.sleep(1)  # the server's threads are up and sampled
        got = {}

        def fetch(name, query):
            status, body = http_get(d.url(f"/debug/pprof/profile?seconds={SECONDS}{query}"))
            if status != 200:
                fail(f"{name}: HTTP {status}: {body[:200]!r}")
            path = os.path.join(work, f"{name}.pb.gz")
            with open(path, "wb") as f:
                f.write(body)
            got[name] = Profile(path)

        route = urllib.parse.quote("/users/*", safe="")
        fetchers = [threading.Thread(target=fetch, args=a) for a in (
            ("users", f"&http_route={route}&pid={server.pid}"),
            ("orders", "&http_route=%2Forders"),
            ("orders_get", "&http_route=%2Forders&http_request_method=GET"),
            ("all", f"&pid={server.pid}"), ("forked", f"&http_route={route}&comm=python3.11"))]
        for t in fetchers:
            t.start()
        for t in fetchers:
            t.join()
        stop.set()
        for c in clients:
            c.join()
        time.sleep(0.5)
        _, metrics = http_get(d.url("/metrics"))
        metrics = metrics.decode()
    finally:
        for p in (server, forking):
            p.kill()
            p.wait()

print(f"ok: {counts['/users/{n}']} /users, {counts['/orders']} /orders and "
      f"{counts['/handoff']} /handoff requests served")

for name, want, other, route in (("users", "users_work", "orders_work", "/users/*"),
                                 ("orders", "orders_work", "users_work", "/orders")):
    p = got[name]
    total = mine = 0
    for s in p.samples:
        funcs = functions(p, s)
        total += s["count"]
        if other in funcs:
            fail(f"?http_route={route}: a sample of {other}: {funcs}")
        if s["labels"].get("http_route") != route or s["labels"].get("http_request_method") != "GET":
            fail(f"?http_route={route}: a sample labeled {s['labels']}")
        if s["labels"].get("pid") != str(server.pid):
            fail(f"?http_route={route}: a sample of pid {s['labels'].get('pid')}")
        mine += s["count"] if want in funcs else 0
    if total < MIN_SAMPLES or mine < 0.8 * total:
        fail(f"?http_route={route}: {mine} of {total} samples in {want}")
    print(f"ok: ?http_route={route}: {total} samples, {mine} in {want}, none in {other}")

both = {f for s in got["all"].samples for f in functions(got["all"], s)}
if not {"users_work", "orders_work"} <= both:
    fail(f"the unfiltered profile lacks a route's work: {sorted(both)[:40]}")
routes = {s["labels"].get("http_route") for s in got["all"].samples}
if not {"/users/*", "/orders"} <= routes:
    fail(f"the unfiltered profile's http_route labels: {routes}")
if got["orders_get"].total() != got["orders_get"].total(http_request_method="GET") or \
        got["orders_get"].total() < MIN_SAMPLES:
    fail(f"?http_route=/orders&http_request_method=GET: {got['orders_get'].total()} samples")
print(f"ok: the unfiltered profile holds both routes' work and labels {sorted(r for r in routes if r)}")

child = [s for s in got["forked"].samples
         if s["labels"].get("pid") not in (str(server.pid), str(forking.pid))]
child_work = sum(s["count"] for s in child if "users_work" in functions(got["forked"], s))
if child_work < MIN_SAMPLES or any(s["labels"].get("http_route") != "/users/*" for s in child):
    fail(f"the forking server's children: {child_work} samples in users_work, labels "
         f"{sorted({s['labels'].get('http_route') for s in child}, key=str)}")
print(f"ok: ?http_route=/users/* holds {child_work} samples of users_work in the forking "
      f"server's child (pids {sorted({s['labels']['pid'] for s in child})}), "
      f"{counts['forked /users/{n}']} requests")

after = [s for s in got["all"].samples if "after_handoff" in functions(got["all"], s)]
if sum(s["count"] for s in after) < MIN_SAMPLES // 2:
    fail(f"after_handoff: {sum(s['count'] for s in after)} samples")
stale = [s["labels"] for s in after if s["labels"].get("http_route")]
if stale:
    fail(f"after_handoff samples still labeled with a request: {stale[:5]}")
print(f"ok: {sum(s['count'] for s in after)} samples of after_handoff, none labeled "
      "(the answer came from another thread)")

unlabeled = dict(re.findall(r'^sonde_samples_tag_unlabeled_total\{reason="(\w+)"\} (\d+)$',
                            metrics, re.M))
waiting = re.search(r"^sonde_samples_tag_waiting (\S+)$", metrics, re.M)
if unlabeled.get("late") != "0" or unlabeled.get("full") != "0" or not waiting or \
        float(waiting.group(1)) != 0:
    fail(f"tagged samples: unlabeled {unlabeled}, waiting {waiting and waiting.group(1)}")
print(f"ok: no tagged sample went unlabeled ({unlabeled}) or is still waiting")
