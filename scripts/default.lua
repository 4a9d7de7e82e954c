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
