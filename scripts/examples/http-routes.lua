-- red-metrics asks this once per distinct service, method and route (what
-- the patterns and the heuristic made), never per request, and keeps the
-- answer until the script is reloaded.
plugin "red-metrics" { watch = "listeners", routes = "/static/*" }

local probes = { ["/healthz"] = true, ["/readyz"] = true }

on_http_route(function(r)
  if probes[r.route] then
    return false -- health checks: in no series, and not in the profiles
  end
  if r.route == "/users/*" then
    return "/users/{id}" -- the name the dashboards use
  end
  if r.service == "legacy" and r.route:find("^/api/v1/") then
    return "/api/v1/*" -- one series for the whole old API
  end
  -- nil: r.route as it is
end)
