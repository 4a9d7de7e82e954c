-- SPDX-License-Identifier: MIT
-- log() writes one line to the daemon's log, after the script's file and
-- line; its arguments are joined with spaces. print() is the same function.
log("profiling at", 19, "Hz")
sampling { hz = 19 }

on_process(function(p)
  if p.comm == "postgres" then
    log("postgres started, pid", p.pid)
  end
  return true
end)
