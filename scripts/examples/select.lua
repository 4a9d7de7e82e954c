-- SPDX-License-Identifier: MIT
-- Profile containers and system services; leave everything else alone.
on_process(function(p)
  if p.comm == "sonded" then
    return false -- never the profiler itself
  end
  if p.container_id then
    return true -- every container, with the default unwinders
  end
  if p.cgroup and p.cgroup:find("/system.slice/", 1, true) then
    return true -- systemd services
  end
  if p.cmdline and p.cmdline:find("--profile-me", 1, true) then
    return true -- anything started with this flag
  end
  return false -- user sessions, cron jobs, ...
end)
