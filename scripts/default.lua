-- SPDX-License-Identifier: MIT
-- What `scripts/run` starts sonded with. Options given on sonded's command
-- line win over these. Everything a script can do: docs/lua.md, with the
-- examples of scripts/examples/.

-- 19 samples per second on every CPU (a prime, so sampling never falls in
-- step with periodic work), aggregated into 10-second windows.
sampling { hz = 19, window = 10 }

-- /metrics and /debug/pprof/profile, on loopback only.
http { listen = "127.0.0.1:7470" }

-- Keep one pprof file per window on disk:
-- output { dir = "/var/lib/sonde/profiles" }

-- HTTP/1.x RED metrics (http_server_request_duration_seconds, ... on
-- /metrics) for every process that listens on TCP: those listening when
-- sonded starts and those that accept a connection later, whatever the
-- script chooses below. Not required: sonded starts without the plugin
-- (and says why) when it is missing or cannot load on this kernel.
-- plugins/red-metrics/README.md lists its settings (listen_ports to watch
-- some ports only, routes for route patterns, series_ttl_s).
plugin "red-metrics" { watch = "listeners" }

-- Whole stacks for every process: DWARF unwinding in BPF for the binaries
-- and libraries built without frame pointers (most of Debian), with the
-- Python (CPython 3.11-3.13) and Java (HotSpot) frames written in place
-- where their interpreters run. Not required either: without one of them
-- sonded goes on with frame pointers. Each plugin's README says what it
-- costs (plugins/unwind-native: tables built once per library and shared;
-- BPF time per frame).
plugin "unwind-native"
plugin "unwind-python"
plugin "unwind-jvm"
unwinders { "unwind-native", "unwind-python", "unwind-jvm" }
