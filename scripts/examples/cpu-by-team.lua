-- SPDX-License-Identifier: MIT
-- Samples per team (the label on_process gives, see per-workload.lua), one
-- message per window on the "cpu.by_team" topic.
on_process(function(p)
  if p.cgroup and p.cgroup:find("checkout", 1, true) then
    return { labels = { team = "payments" } }
  end
  return true
end)

on_window(function(w)
  local by_team = {}
  for _, stack in ipairs(w.stacks) do
    local team = stack.labels.team or "none"
    by_team[team] = (by_team[team] or 0) + stack.count
  end
  publish("cpu.by_team", { start = w.start, samples = by_team })
end)
