#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""red-metrics against real servers: Python's http.server (keep-alive, a
route that sleeps 50 ms), nginx (sendfile, keep-alive, wrk) and bare-socket
servers (tests/fixtures/red/rawserver.py) that read with recvmsg or readv,
answer with sendmsg, or answer pipelined requests, and a client on IPv6,
with exact numbers of requests per route and status. The histograms on
/metrics must count them exactly, put /slow in the 0.05 < d <= 0.075
bucket, name server_address from Host (else the peer, client side), never
show a query string, and a real Prometheus scraping sonded must return
them.

Then watch = "listeners", with no on_process choosing anything: a
server started before sonded (with a keep-alive connection accepted
before it too) and one started after are counted exactly, with the
script's route patterns, their series leave /metrics series_ttl_s after
their last request, and a server's exit takes it out of the listeners
map; with listen_ports naming other ports, neither is counted (and
the servers on those ports, started before and after sonded, are).

Then on_http_route: the script renames /users/* to /users/{id}, drops /ok
and fails on /fail. The counts land exactly under the new route, /ok has
no series and sonde_plugin_red_metrics_dropped_by_script_total equals the
/ok requests sent, a failure keeps the route and is counted once, and the
callback ran once per distinct route (its own log lines say so), however
many requests; after a reload without the callback, routes are as made."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse

from sondetest import (Sonded, build_dir, fail, free_port, http_get, require_root, require_tool, scratch_dir, sondectl_path)

require_root()
curl = require_tool("curl")
nginx = require_tool("nginx")
wrk = require_tool("wrk")
prometheus = require_tool("prometheus")

source = os.environ["SONDE_SOURCE_DIR"]
# the plugin's capture setting: "auto" (the sock tracepoints where the
# kernel has them) or "syscalls" (the syscall exits, what 6.1 gets)
capture = os.environ.get("SONDE_RED_CAPTURE", "auto")
if capture not in ("auto", "syscalls"):
    fail(f"SONDE_RED_CAPTURE must be auto or syscalls, not {capture!r}")


def expected_hooks():
    """What the plugin's log must say it watches through; asked once sonded
    runs, which mounts tracefs where it is not."""
    sock_hooks = any(os.path.exists(f"{t}/events/sock/sock_recv_length")
                     for t in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))
    if capture == "auto" and sock_hooks:
        return "the sock_recv_length/sock_send_length tracepoints"
    return "the syscall exits of read, write and the like"


plugin_dir = os.path.join(build_dir(), "plugins", "red-metrics")
work = scratch_dir("sonde-red-")
procs = []


def start(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    procs.append(p)
    return p


def parse_metrics(text):
    """{(name, frozenset(labels)): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def sample(metrics, name, without=(), **labels):
    """The one value of name whose labels include these and none named in
    without; None if none."""
    want = {(k, str(v)) for k, v in labels.items()}
    hits = [v for (n, ls), v in metrics.items()
            if n == name and want <= ls and not any(k in without for k, _ in ls)]
    if len(hits) > 1:
        fail(f"{name}{labels} matches {len(hits)} series")
    return hits[0] if hits else None


def read_head(s, buf, closed):
    """(a head, the bytes after it) from socket s, buf what was already read
    from it; fails saying `closed` if the connection ends first."""
    while b"\r\n\r\n" not in buf:
        more = s.recv(65536)
        if not more:
            fail(f"{closed}: {buf!r}")
        buf += more
    return buf.split(b"\r\n\r\n", 1)


def read_response(s, buf):
    """(status, the bytes after the response) from socket s, buf what was
    already read from it."""
    head, buf = read_head(s, buf, "the connection closed in a response head")
    lines = head.split(b"\r\n")
    length = int(next(ln.split(b":", 1)[1] for ln in lines[1:]
                      if ln.lower().startswith(b"content-length:")))
    while len(buf) < length:
        buf += s.recv(65536)
    return int(lines[0].split()[1]), buf[length:]


def raw_exchange(port, heads, pipelined=False):
    """Sends the request heads on one connection to 127.0.0.1:port, each
    after the previous response, or all in one send() when pipelined; the
    statuses, in order."""
    statuses, buf = [], b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        if pipelined:
            s.sendall(b"".join(heads))
        for head in heads:
            if not pipelined:
                s.sendall(head)
            status, buf = read_response(s, buf)
            statuses.append(status)
    return statuses


def get(path, host=None):
    return (f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host else "") +
            "Accept: */*\r\n\r\n").encode()


try:
    # Python's http.server, the fixture with known routes.
    py = start(["/usr/bin/python3", os.path.join(source, "tests/fixtures/red/server.py")],
               stdout=subprocess.PIPE, text=True)
    py_port = int(py.stdout.readline().split()[1])

    # nginx serving static files with sendfile and keep-alive.
    www = os.path.join(work, "www")
    os.makedirs(os.path.join(work, "logs"))
    os.makedirs(www)
    big = os.urandom(20000)
    with open(os.path.join(www, "big.bin"), "wb") as f:
        f.write(big)
    with open(os.path.join(www, "small.txt"), "w") as f:
        f.write("small\n")
    ng_port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 2;
user root;
pid {work}/nginx.pid;
error_log {work}/logs/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {work}/logs/access.log;
  sendfile on;
  keepalive_requests 100000;
  server {{ listen 127.0.0.1:{ng_port}; root {www}; }}
}}
""")
    ng = start([nginx, "-c", conf, "-p", work])
    deadline = time.time() + 10
    while not os.path.exists(f"{work}/nginx.pid") and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # its workers

    # A client (http.client) of that server, waiting on stdin to start.
    cl = start(["/usr/bin/python3", os.path.join(source, "tests/fixtures/red/client.py"),
                str(py_port), "5", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               text=True)
    if cl.stdout.readline().strip() != "ready":
        fail("the client fixture did not start")

    # Bare-socket servers: recvmsg/sendmsg, readv, pipelining, and one on
    # ::1 that the IPv6 client fixture (no Host header) talks to.
    raw = {}
    for mode, family in (("msg", "4"), ("readv", "4"), ("pipe", "4"), ("recv", "6")):
        p = start(["/usr/bin/python3", os.path.join(source, "tests/fixtures/red/rawserver.py"),
                   mode, family], stdout=subprocess.PIPE, text=True)
        raw[mode] = (p, int(p.stdout.readline().split()[1]))
    cl6 = start(["/usr/bin/python3", os.path.join(source, "tests/fixtures/red/rawclient.py"),
                 "::1", str(raw["recv"][1]), "/v6", "3"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
    if cl6.stdout.readline().strip() != "ready":
        fail("the IPv6 client fixture did not start")
    pids = [py.pid, cl.pid, cl6.pid] + [p.pid for p, _ in raw.values()]

    lua_pids = ", ".join(f"[{pid}] = true" for pid in pids)
    script = os.path.join(work, "red.lua")
    with open(script, "w") as f:
        f.write(f"""
plugin "red-metrics" {{ required = true, window_s = 1, capture = "{capture}" }}
on_process(function(p)
  local pids = {{ {lua_pids} }}
  if pids[p.pid] or p.comm == "nginx" then
    return {{ unwinders = {{ "red-metrics" }} }}
  end
  return false
end)
""")

    with Sonded("--script", script, "--plugin-dir", plugin_dir) as d:
        # Wait until the servers are attached, so no request is missed.
        deadline = time.time() + 20
        while True:
            r = subprocess.run([sondectl_path(), "--control", d.control_url, "ps", "--json"],
                               capture_output=True, text=True, timeout=30)
            ps = json.loads(r.stdout)["processes"] if r.returncode == 0 else []
            attached = [p for p in ps if p["unwinders"] == ["red-metrics"]]
            if set(pids) <= {p["pid"] for p in attached} and \
                    sum(p["comm"] == "nginx" for p in attached) >= 3:
                break
            if time.time() > deadline:
                fail(f"the servers were not attached within 20 s: {attached}\n{d.output()}")
            time.sleep(0.2)
        hooks = expected_hooks()
        if f"watching HTTP/1.x servers through {hooks}," not in d.output():
            fail(f"capture = {capture}: the log does not say it watches through {hooks}:\n"
                 f"{d.output()}")
        print(f"ok: capture = {capture}: watching through {hooks}")

        # Python: one keep-alive connection through http.client ...
        want_py = {("/ok", 200): 7, ("/missing", 404): 3, ("/fail", 500): 2, ("/slow", 200): 4,
                   ("/users/*", 200): 5}
        conn = http.client.HTTPConnection("127.0.0.1", py_port, timeout=30)
        paths = (["/ok"] * 6 + ["/ok?token=secret123"] + ["/missing"] * 3 + ["/fail"] * 2 +
                 ["/slow"] * 4 + [f"/users/{1000 + i}" for i in range(5)])
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
        conn.close()
        # ... the client fixture: 5 /ok and 3 /missing on one connection,
        # /fail on another ...
        cl.stdin.write("go\n")
        cl.stdin.flush()
        if cl.stdout.readline().strip() != "done" or cl.wait(timeout=30) != 0:
            fail("the client fixture failed")
        want_py[("/ok", 200)] += 5
        want_py[("/missing", 404)] += 3
        want_py[("/fail", 500)] += 1
        # ... and curl: several URLs on one connection.
        base = f"http://127.0.0.1:{py_port}"
        subprocess.run([curl, "-sf", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                        f"{base}/ok", f"{base}/ok", f"{base}/slow"], check=True, timeout=30)
        want_py[("/ok", 200)] += 2
        want_py[("/slow", 200)] += 1
        # Expect: 100-continue (http.server answers "100 Continue" first):
        # the interim response is skipped, the final one counted once.
        with socket.create_connection(("127.0.0.1", py_port), timeout=30) as s:
            buf = b""
            for _ in range(2):
                s.sendall(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Expect: 100-continue\r\n\r\n")
                interim, buf = read_head(s, buf, "no answer to Expect: 100-continue")
                if not interim.startswith(b"HTTP/1.1 100"):
                    fail(f"http.server sent no 100 Continue: {interim!r}")
                status, buf = read_response(s, buf)
                if status != 200:
                    fail(f"Expect: 100-continue: final status {status}")
        want_py[("/ok", 200)] += 2

        # recvmsg + sendmsg (head and body in two iovecs), keep-alive.
        msg_port, readv_port, pipe_port, v6_port = (raw[m][1] for m in ("msg", "readv", "pipe",
                                                                          "recv"))
        got = raw_exchange(msg_port, [get("/msg", "127.0.0.1")] * 4 +
                           [get("/msg-missing", "127.0.0.1")] * 2)
        if got != [200] * 4 + [404] * 2:
            fail(f"the recvmsg server answered {got}")
        # readv; server_address from Host (lower case, no port), none without.
        raw_exchange(readv_port, [get("/readv", "Shop.Example.com:8080")] * 3 + [get("/readv")] * 2)
        # Pipelining: three heads in one send(), answered in order, one send()
        # each; twice on one connection. Then three answered in one send().
        pipe3 = [get("/pipe/a", "127.0.0.1"), get("/pipe/b", "127.0.0.1"),
                 get("/pipe/c", "127.0.0.1")]
        s = socket.create_connection(("127.0.0.1", pipe_port), timeout=30)
        buf, got = b"", []
        for _ in range(2):
            s.sendall(b"".join(pipe3))
            for _ in pipe3:
                status, buf = read_response(s, buf)
                got.append(status)
        s.close()
        got += raw_exchange(pipe_port, [get(f"/batch/{x}", "127.0.0.1") for x in "abc"],
                            pipelined=True)
        if got != [200, 404, 201] * 3:
            fail(f"the pipelining server answered {got}")
        # The IPv6 client: 3 requests to [::1] without a Host header.
        cl6.stdin.write("go\n")
        cl6.stdin.flush()
        if cl6.stdout.readline().strip() != "done" or cl6.wait(timeout=30) != 0:
            fail("the IPv6 client fixture failed")

        # nginx: curl with several URLs on one connection, sendfile bodies.
        base = f"http://127.0.0.1:{ng_port}"
        urls = [f"{base}/big.bin"] * 4 + [f"{base}/small.txt"] * 3 + [f"{base}/nope"] * 2
        subprocess.run([curl, "-s", *sum((["-o", "/dev/null"] for _ in urls), []), *urls],
                       check=True, timeout=30)
        subprocess.run([curl, "-sf", "-I", "-o", "/dev/null", f"{base}/big.bin"], check=True,
                       timeout=30)
        # wrk: many keep-alive connections; nginx's access log says how many.
        w = subprocess.run([wrk, "-t2", "-c8", "-d2s", f"{base}/small.txt?from=wrk"],
                           capture_output=True, text=True, timeout=60)
        if w.returncode != 0:
            fail(f"wrk failed: {w.stdout}{w.stderr}")
        time.sleep(0.5)  # wrk's last responses, and nginx's log
        with open(f"{work}/logs/access.log") as f:
            wrk_count = sum(1 for line in f if "/small.txt?from=wrk" in line)

        _, body = http_get(d.url("/metrics"))
        text = body.decode()
        m = parse_metrics(text)

        def count(**labels):
            return sample(m, "http_server_request_duration_seconds_count", **labels)

        for (route, status), n in want_py.items():
            got = count(service_name="python3", http_route=route, http_request_method="GET",
                        http_response_status_code=status, server_port=py_port,
                        url_scheme="http")
            if got != n:
                fail(f"python3 {route} {status}: {got} requests counted, {n} sent\n{text}")
        if count(service_name="python3", http_route="/fail", error_type=500) != 3:
            fail("the 5xx series carries no error_type=\"500\"")
        slow = dict(service_name="python3", http_route="/slow")
        le05 = sample(m, "http_server_request_duration_seconds_bucket", le="0.05", **slow)
        le075 = sample(m, "http_server_request_duration_seconds_bucket", le="0.075", **slow)
        if le05 != 0 or le075 != want_py[("/slow", 200)]:
            fail(f"/slow (50 ms): le=0.05 holds {le05}, le=0.075 holds {le075}, wanted 0 and "
                 f"{want_py[('/slow', 200)]}")
        fast = sample(m, "http_server_request_duration_seconds_bucket", le="0.05",
                      service_name="python3", http_route="/ok")
        if fast != want_py[("/ok", 200)]:
            fail(f"/ok: {fast} of {want_py[('/ok', 200)]} under 50 ms")
        # The client side of the fixture client's requests.
        for route, status, n in (("/ok", 200, 5), ("/missing", 404, 3), ("/fail", 500, 1)):
            labels = dict(service_name="python3", http_route=route, http_request_method="GET",
                          http_response_status_code=status, server_address="127.0.0.1",
                          server_port=py_port, url_scheme="http")
            if status >= 400:
                labels["error_type"] = status
            got = sample(m, "http_client_request_duration_seconds_count", **labels)
            if got != n:
                fail(f"client {route} {status}: {got} counted, {n} sent\n{text}")
            got = sample(m, "http_client_response_body_size_bytes_sum", **labels)
            body = {"/ok": 3, "/missing": 14, "/fail": 9}[route]
            if got != n * body:
                fail(f"client {route} response bytes: {got}, wanted {n * body}")
        def exact(what, got, n):
            if got != n:
                fail(f"{what}: {got} counted, {n} sent\n{text}")

        for route, status, n, body in (("/msg", 200, 4, 7), ("/msg-missing", 404, 2, 12)):
            labels = dict(service_name="python3", http_route=route, http_response_status_code=status,
                          server_port=msg_port, server_address="127.0.0.1")
            exact(f"recvmsg/sendmsg {route}", count(**labels), n)
            exact(f"recvmsg/sendmsg {route} response bytes",
                  sample(m, "http_server_response_body_size_bytes_sum", **labels), n * body)
        exact("readv with Host: Shop.Example.com:8080",
              count(http_route="/readv", server_port=readv_port, server_address="shop.example.com"),
              3)
        exact("readv without Host",
              count(http_route="/readv", server_port=readv_port, without=("server_address",)), 2)
        for route, status, n in (("/pipe/a", 200, 2), ("/pipe/b", 404, 2), ("/pipe/c", 201, 2),
                                 ("/batch/a", 200, 1), ("/batch/b", 404, 1), ("/batch/c", 201, 1)):
            exact(f"pipelined {route} {status}",
                  count(http_route=route, http_response_status_code=status, server_port=pipe_port),
                  n)
        exact("IPv6 client /v6", sample(m, "http_client_request_duration_seconds_count",
                                        http_route="/v6", http_response_status_code=200,
                                        server_address="::1", server_port=v6_port), 3)
        exact("IPv6 server /v6 (no Host: no server_address)",
              count(http_route="/v6", http_response_status_code=200, server_port=v6_port,
                    without=("server_address",)), 3)
        print("ok: recvmsg/sendmsg 6, readv 5 (3 with Host), pipelined 9 and IPv6 3 requests "
              "counted exactly")

        if 'http_response_status_code="100"' in text:
            fail("an interim 100 Continue was counted as a response")
        for secret in ("secret123", "token=", "from=wrk", "/users/100"):
            if secret in text:
                fail(f"'{secret}' (a raw path or query) is on /metrics")

        want_ng = {("/big.bin", "GET", 200): 4, ("/small.txt", "GET", 200): 3 + wrk_count,
                   ("/nope", "GET", 404): 2, ("/big.bin", "HEAD", 200): 1}
        for (route, method, status), n in want_ng.items():
            got = count(service_name="nginx", http_route=route, http_request_method=method,
                        http_response_status_code=status, server_port=ng_port)
            if got != n:
                fail(f"nginx {method} {route} {status}: {got} counted, {n} sent "
                     f"(wrk: {wrk_count})\n{text[:3000]}")
        size = sample(m, "http_server_response_body_size_bytes_sum", service_name="nginx",
                      http_route="/big.bin", http_request_method="GET")
        if size != 4 * len(big):
            fail(f"nginx /big.bin response bytes: {size}, wanted {4 * len(big)}")
        for name in ("aborted", "unpaired", "bad_heads", "ringbuf_drops", "forced_next"):
            v = d.metric(f"sonde_plugin_red_metrics_{name}_total")
            if v != 0:
                fail(f"sonde_plugin_red_metrics_{name}_total is {v}")
        print("ok: the client fixture's 9 requests counted exactly on the client side")

        # Closes, on the sendmsg server: a request it hangs up on is no
        # request counted (no status is invented), an answer with no length
        # ends with the close, whole.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", msg_port), timeout=30) as s:
                s.sendall(get("/hangup", "127.0.0.1"))
                if s.recv(1024) != b"":
                    fail("the server answered /hangup")
        # ... and one whose client resets the connection after its request,
        # by exiting with SO_LINGER 0: the server's socket closes in the
        # client's exit, before the server's close(), which stores no state.
        subprocess.run([
            "/usr/bin/python3", "-c",
            "import os, socket, struct, sys, time\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "s.sendall(sys.argv[2].encode())\n"
            "time.sleep(0.2)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
            "os._exit(0)\n",
            str(msg_port), get("/reset", "127.0.0.1").decode()], check=True, timeout=30)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", msg_port), timeout=30) as s:
                s.sendall(get("/until-close", "127.0.0.1"))
                answer = b""
                while more := s.recv(65536):
                    answer += more
                if not answer.startswith(b"HTTP/1.0 200 OK\r\n"):
                    fail(f"the server's /until-close answer: {answer!r}")
                body_len = len(answer.split(b"\r\n\r\n", 1)[1])
        deadline = time.time() + 10
        while True:
            _, body = http_get(d.url("/metrics"))
            mc = parse_metrics(body.decode())
            closed = sample(mc, "http_server_request_duration_seconds_count",
                            service_name="python3", http_route="/until-close",
                            http_response_status_code=200, server_port=msg_port)
            aborted = d.metric("sonde_plugin_red_metrics_aborted_total")
            if (closed, aborted) == (2, 4) or time.time() > deadline:
                break
            time.sleep(0.2)
        size = sample(mc, "http_server_response_body_size_bytes_sum", service_name="python3",
                      http_route="/until-close", server_port=msg_port)
        if closed != 2 or aborted != 4 or size != 2 * body_len or \
                d.metric("sonde_plugin_red_metrics_forced_close_total") != 2 or \
                any(sample(mc, "http_server_request_duration_seconds_count",
                           http_route=r) is not None for r in ("/hangup", "/reset")):
            fail(f"closes: /until-close {closed} of 2 ({size} body bytes, wanted "
                 f"{2 * body_len}), aborted {aborted} of 4, or a /hangup or /reset series")
        print("ok: 3 requests hung up on and 1 reset by its client counted as aborted and "
              "in no series, 2 answers ended by the close counted whole")
        print(f"ok: python3 {sum(want_py.values())} and nginx {sum(want_ng.values())} "
              f"requests (wrk {wrk_count}) counted exactly")

        # The red topic: each 1 s window's series, as msgpack on the export
        # socket. A subscriber that was there before the requests sees every
        # one of them, once, across the windows it received.
        sub = subprocess.Popen([sondectl_path(), "--export", d.export_url, "--timeout", "20",
                                "tail", "red", "--count", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # connected, and the window it joined in flushed
        conn = http.client.HTTPConnection("127.0.0.1", py_port, timeout=30)
        for _ in range(6):
            conn.request("GET", "/red-topic")
            conn.getresponse().read()
        conn.close()
        out, err = sub.communicate(timeout=60)
        if sub.returncode != 0:
            fail(f"sondectl tail red exited {sub.returncode}: {err}")
        msgs = [json.loads(line) for line in out.splitlines()]
        if len(msgs) != 4 or any(m.get("v") != 1 for m in msgs):
            fail(f"sondectl tail red --count 4 gave {out}")
        got = [s for m in msgs for s in m["series"] if s["http_route"] == "/red-topic"]
        if sum(s["count"] for s in got) != 6 or any(
                s["service_name"] != "python3" or s["http_response_status_code"] != 404 or
                s["server_port"] != py_port or sum(s["duration_buckets"]) != s["count"] or
                len(s["duration_buckets"]) != 16 for s in got):
            fail(f"the red topic's /red-topic series: {got}, wanted 6 requests in all")
        if msgs[0]["duration_bounds"][4] != 0.05 or not all(m["duration"] > 0 for m in msgs):
            fail(f"the red topic's header: {msgs[0]}")
        print(f"ok: the red topic carried the 6 requests in {len(got)} window(s)")

        # A real Prometheus scrapes sonded and answers for the series.
        prom_port = free_port()
        pconf = os.path.join(work, "prometheus.yml")
        with open(pconf, "w") as f:
            f.write(f"""global: {{ scrape_interval: 1s }}
scrape_configs:
  - job_name: sonde
    static_configs: [{{ targets: ["{d.addr}"] }}]
""")
        start([prometheus, f"--config.file={pconf}", f"--storage.tsdb.path={work}/tsdb",
               f"--web.listen-address=127.0.0.1:{prom_port}"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        query = ('http_server_request_duration_seconds_count{service_name="python3",'
                 'http_route="/fail",http_response_status_code="500"}')
        url = (f"http://127.0.0.1:{prom_port}/api/v1/query?" +
               urllib.parse.urlencode({"query": query}))
        deadline = time.time() + 40
        result = None
        while time.time() < deadline:
            try:
                _, b = http_get(url, timeout=5)
                result = json.loads(b)["data"]["result"]
                if result:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        if not result or float(result[0]["value"][1]) != 3:
            fail(f"Prometheus returned {result} for {query}")
        print("ok: Prometheus scraped the series and returns /fail = 3")

    # A bad setting stops sonded's start, with one line naming it.
    def bad_start(settings, want):
        bad = os.path.join(work, "bad.lua")
        with open(bad, "w") as f:
            f.write(f'plugin "red-metrics" {{ required = true, {settings} }}\n')
        sock = scratch_dir("sonde-bad-")
        r = subprocess.run([os.path.join(build_dir(), "core", "sonded"), "--script", bad,
                            "--plugin-dir", plugin_dir, "--http", f"127.0.0.1:{free_port()}",
                            "--export", f"ipc://{sock}/e.ipc", "--control",
                            f"ipc://{sock}/c.ipc"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0 or want not in r.stderr:
            fail(f"sonded with {settings} exited {r.returncode}: {r.stderr}")
        print(f"ok: {settings} stops the start:",
              next(ln for ln in r.stderr.splitlines() if want in ln))

    bad_start('routes = "/ok /users/{id"', "routes: bad pattern '/users/{id': unbalanced braces")
    bad_start('capture = "kprobes"', 'capture must be "auto" or "syscalls", not "kprobes"')

    # watch = "listeners": the script chooses no process at all.
    server_py = os.path.join(source, "tests/fixtures/red/server.py")

    def serve(port):
        p = start(["/usr/bin/python3", server_py, str(port)], stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().split() != ["ready", str(port)]:
            fail(f"server.py did not start on {port}")
        return p

    def requests(port, paths, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for path in paths:
            c.request("GET", path)
            c.getresponse().read()
        if not conn:
            c.close()

    def listeners_script(name, **settings):
        path = os.path.join(work, name)
        opts = "".join(f", {k} = {json.dumps(v)}" for k, v in settings.items())
        with open(path, "w") as f:
            f.write(f"""
plugin "red-metrics" {{ required = true, watch = "listeners", capture = "{capture}"{opts} }}
on_process(function(p) return false end)
""")
        return path

    def series(d):
        _, b = http_get(d.url("/metrics"))
        return b.decode(), parse_metrics(b.decode())

    def bpf_map_id(d, name):
        for fd in os.listdir(f"/proc/{d.proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{d.proc.pid}/fd/{fd}") != "anon_inode:bpf-map":
                    continue
                with open(f"/proc/{d.proc.pid}/fdinfo/{fd}") as f:
                    mid = re.search(r"^map_id:\s*(\d+)$", f.read(), re.M).group(1)
            except OSError:
                continue
            r = subprocess.run(["bpftool", "-j", "map", "show", "id", mid], capture_output=True,
                               text=True)
            if r.returncode == 0 and json.loads(r.stdout).get("name") == name:
                return mid
        fail(f"sonded holds no BPF map named {name}")

    def in_map(mid, pid):
        key = [str(b) for b in pid.to_bytes(4, "little")]
        return subprocess.run(["bpftool", "map", "lookup", "id", mid, "key", *key],
                              capture_output=True).returncode == 0

    port_a, port_b = free_port(), free_port()
    srv_a = serve(port_a)
    old = http.client.HTTPConnection("127.0.0.1", port_a, timeout=30)
    requests(port_a, ["/ok"], old)  # accepted, and answered, before sonded
    script = listeners_script("listeners.lua", window_s=1, series_ttl_s=4,
                              routes="/users/{id}/orders, /files/*")
    with Sonded("--script", script, "--plugin-dir", plugin_dir) as d:
        srv_b = serve(port_b)
        requests(port_a, ["/ok"] * 4, old)
        requests(port_a, ["/users/17/orders"] * 3 + ["/files/a/b.txt"] * 2 + ["/users/17"])
        requests(port_b, ["/ok"] * 5 + ["/missing"] * 2)
        text, m = series(d)
        want = {(port_a, "/ok", 200): 4, (port_a, "/users/{id}/orders", 200): 3,
                (port_a, "/files/*", 404): 2, (port_a, "/users/*", 200): 1,
                (port_b, "/ok", 200): 5, (port_b, "/missing", 404): 2}
        for (port, route, status), n in want.items():
            got = sample(m, "http_server_request_duration_seconds_count", service_name="python3",
                         server_port=port, http_route=route, http_response_status_code=status,
                         http_request_method="GET")
            if got != n:
                fail(f"watch = listeners, port {port} {route} {status}: {got} counted, {n} sent"
                     f"\n{text}\n{d.output()}")
        for port in (port_a, port_b):
            if sum(v for (name, ls), v in m.items() if ("server_port", str(port)) in ls and
                   name == "http_server_request_duration_seconds_count") != \
                    sum(n for (p, _, _), n in want.items() if p == port):
                fail(f"watch = listeners: port {port} has series beyond those sent\n{text}")
        print(f"ok: watch = listeners counted the servers started before ({port_a}, with a "
              f"connection from before) and after ({port_b}) sonded exactly, with patterns")
        # The exit of B takes it out of the listeners map (and the targets).
        mid = bpf_map_id(d, "listeners")
        if not in_map(mid, srv_a.pid) or not in_map(mid, srv_b.pid):
            fail(f"the servers {srv_a.pid} and {srv_b.pid} are not both in the listeners map")
        srv_b.terminate()
        srv_b.wait(timeout=10)
        deadline = time.time() + 5
        while in_map(mid, srv_b.pid):
            if time.time() > deadline:
                fail(f"server {srv_b.pid} exited but is still in the listeners map")
            time.sleep(0.1)
        if not in_map(mid, srv_a.pid):
            fail(f"server {srv_a.pid} left the listeners map while it runs")
        # series_ttl_s = 4: both servers' series leave /metrics (a window,
        # 1 s, sends them first; the sweep runs every second).
        deadline = time.time() + 12
        while True:
            text, m = series(d)
            left = [ls for (name, ls), _ in m.items()
                    if name == "http_server_request_duration_seconds_count" and
                    ({("server_port", str(port_a)), ("server_port", str(port_b))} & ls)]
            if not left:
                break
            if time.time() > deadline:
                fail(f"series still on /metrics 12 s after their last request: {left}")
            time.sleep(0.5)
        if d.metric("sonde_plugin_red_metrics_series_expired_total") < len(want):
            fail("sonde_plugin_red_metrics_series_expired_total does not count them")
        print("ok: the exited server left the listeners map, the series left /metrics "
              "after series_ttl_s")

    # listen_ports: A (before sonded) and D (after) are not on it, C (before)
    # and E (after) are.
    port_c, port_d, port_e = free_port(), free_port(), free_port()
    serve(port_c)
    script = listeners_script("ports.lua", listen_ports=f"{port_c} {port_e}")
    with Sonded("--script", script, "--plugin-dir", plugin_dir) as d:
        serve(port_d)
        serve(port_e)
        requests(port_a, ["/ok"] * 3)
        requests(port_d, ["/ok"] * 3)
        requests(port_c, ["/ok"] * 2)
        requests(port_e, ["/missing"] * 4)
        text, m = series(d)
        for port in (port_a, port_d):
            if any(("server_port", str(port)) in ls for (_, ls) in m):
                fail(f"listen_ports = {port_c} {port_e}: port {port} is counted\n{text}")
        for port, route, status, n in ((port_c, "/ok", 200, 2), (port_e, "/missing", 404, 4)):
            got = sample(m, "http_server_request_duration_seconds_count", service_name="python3",
                         server_port=port, http_route=route, http_response_status_code=status)
            if got != n:
                fail(f"listen_ports: port {port} {route}: {got} counted, {n} sent\n{text}")
        print(f"ok: listen_ports kept ports {port_a} and {port_d} out and counted {port_c} "
              f"(before sonded) and {port_e} (after) exactly")

    # on_http_route: asked once per (service, method, route), never per request.
    port_f = free_port()
    serve(port_f)
    hook_lua = os.path.join(work, "hook.lua")
    head = f"""
plugin "red-metrics" {{ required = true, watch = "listeners", listen_ports = "{port_f}",
                      capture = "{capture}" }}
on_process(function(p) return false end)
"""
    with open(hook_lua, "w") as f:
        f.write(head + """
on_http_route(function(r) return "/replaced" end) -- the next one takes its place
on_http_route(function(r)
  log("on_http_route:", r.service, r.method, r.route, r.path, tostring(r.server_address))
  if r.route == "/users/*" then
    return "/users/{id}"
  end
  if r.route == "/ok" then
    return false
  end
  if r.route == "/fail" then
    error("no opinion on failures")
  end
end)
""")
    with Sonded("--script", hook_lua, "--plugin-dir", plugin_dir) as d:
        conn = http.client.HTTPConnection("127.0.0.1", port_f, timeout=30)
        requests(port_f, [f"/users/{1000 + i}" for i in range(7)] + ["/ok"] * 5 +
                 ["/missing"] * 3 + ["/fail"] * 2, conn)
        conn.close()
        requests(port_f, ["/users/2000?x=1"] * 3 + ["/ok"] * 2)  # another connection
        sent_ok = 7
        text, m = series(d)

        def on_port(route, status):
            return sample(m, "http_server_request_duration_seconds_count",
                          service_name="python3", server_port=port_f, http_route=route,
                          http_response_status_code=status, http_request_method="GET")

        for route, status, n in (("/users/{id}", 200, 10), ("/missing", 404, 3),
                                 ("/fail", 500, 2)):
            if on_port(route, status) != n:
                fail(f"on_http_route: {route} {status}: {on_port(route, status)} counted, "
                     f"{n} sent\n{text}\n{d.output()}")
        for route in ("/ok", "/users/*", "/replaced"):
            if any(("http_route", route) in ls and ("server_port", str(port_f)) in ls
                   for (_, ls) in m):
                fail(f"on_http_route: a series with http_route={route}\n{text}")
        dropped = d.metric("sonde_plugin_red_metrics_dropped_by_script_total")
        if dropped != sent_ok:
            fail(f"dropped_by_script is {dropped}, {sent_ok} /ok requests were sent")
        calls = [ln for ln in d.output().splitlines() if "on_http_route:" in ln and
                 "script:" not in ln]
        want_calls = ["python3 GET /users/* /users/1000 127.0.0.1", "python3 GET /ok /ok",
                      "python3 GET /missing /missing", "python3 GET /fail /fail"]
        if len(calls) != 4 or not all(w in c for w, c in zip(want_calls, calls)):
            fail(f"on_http_route ran {len(calls)} times for 22 requests of 4 routes, "
                 f"wanted 4 calls: {want_calls}\n{calls}")
        if d.metric("sonde_plugin_red_metrics_script_route_calls_total") != 4:
            fail("sonde_plugin_red_metrics_script_route_calls_total is not 4")
        errors = sample(m, "sonde_script_errors_total", reason="error")
        if errors != 1 or "no opinion on failures" not in d.output():
            fail(f"the failing call: sonde_script_errors_total{{reason=\"error\"}} is "
                 f"{errors}, wanted 1, logged\n{d.output()}")
        print(f"ok: on_http_route renamed 10 requests, dropped {sent_ok}, kept /fail when "
              f"it failed, in 4 calls for 22 requests")

        # A reload without the callback: the cache goes, the routes are as made.
        with open(hook_lua, "w") as f:
            f.write(head)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "reloaded " + hook_lua not in d.output():
            if time.time() > deadline:
                fail(f"no reload within 10 s:\n{d.output()}")
            time.sleep(0.1)
        requests(port_f, ["/users/3000"] * 2 + ["/ok"] * 3)
        text, m = series(d)
        if on_port("/users/*", 200) != 2 or on_port("/ok", 200) != 3 or \
                on_port("/users/{id}", 200) != 10:
            fail(f"after a reload without on_http_route:\n{text}")
        if d.metric("sonde_plugin_red_metrics_dropped_by_script_total") != sent_ok or \
                d.metric("sonde_plugin_red_metrics_script_route_calls_total") != 4:
            fail("the reloaded script without on_http_route was asked, or dropped")
        print("ok: after a reload without on_http_route, /users/* and /ok are counted as made")
finally:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    shutil.rmtree(work, ignore_errors=True)
