-- SPDX-License-Identifier: MIT
-- Needs sonded --unsafe-script: reads the team of each systemd unit from a
-- file ("unit team" per line) when the script loads.
local teams = {}
local f = io.open(os.getenv("SONDE_TEAMS") or "/etc/sonde/teams.txt")
if f then
  for line in f:lines() do
    local unit, team = line:match("^(%S+)%s+(%S+)$")
    if unit then
      teams[unit] = team
    end
  end
  f:close()
end

on_process(function(p)
  local unit = p.cgroup and p.cgroup:match("/([%w_-]+)%.service$")
  if unit and teams[unit] then
    return { labels = { team = teams[unit] } }
  end
  return true
end)
