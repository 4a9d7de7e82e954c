-- SPDX-License-Identifier: MIT
-- The daemon's options. Options given on sonded's command line win over these.

-- 49 samples per second on every CPU, aggregated into 15-second windows.
sampling { hz = 49, window = 15 }

-- /metrics and /debug/pprof/profile on every address (the default is loopback).
http { listen = "0.0.0.0:7470" }

-- One pprof file per window, in this directory (it must exist).
output { dir = "/var/lib/sonde/profiles" }
