-- SPDX-License-Identifier: MIT
-- Language unwinders only where they are needed, and labels that say whose
-- service a sample comes from.
plugin "unwind-native"
plugin "unwind-python"
plugin "unwind-jvm"

unwinders { "unwind-native" }

local teams = { checkout = "payments", search = "discovery" }

on_process(function(p)
  local labels = {}
  -- /system.slice/checkout.service belongs to the payments team
  local unit = p.cgroup and p.cgroup:match("/([%w_-]+)%.service$")
  if unit and teams[unit] then
    labels.team = teams[unit]
  end
  if p.container_id then
    labels.container = p.container_id:sub(1, 12)
  end
  if p.exe and p.exe:match("/python3[%d.]*$") then
    labels.runtime = "python"
    return { unwinders = { "unwind-native", "unwind-python" }, labels = labels }
  end
  if p.comm == "java" then
    labels.runtime = "jvm"
    return { unwinders = { "unwind-native", "unwind-jvm" }, labels = labels }
  end
  return { labels = labels } -- the default unwinders
end)
