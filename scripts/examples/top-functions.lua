-- SPDX-License-Identifier: MIT
-- Every window, publish the 10 functions most often on CPU (the leaf frame of
-- each stack) on the "top" topic of the export socket.
export { listen = "ipc:///run/sonde/export.ipc" }

on_window(function(w)
  local self = {}
  for _, stack in ipairs(w.stacks) do
    local leaf = stack.frames[1] or "?"
    self[leaf] = (self[leaf] or 0) + stack.count
  end
  local top = {}
  for name, samples in pairs(self) do
    top[#top + 1] = { name = name, samples = samples }
  end
  table.sort(top, function(a, b)
    if a.samples ~= b.samples then
      return a.samples > b.samples
    end
    return a.name < b.name
  end)
  for i = #top, 11, -1 do
    top[i] = nil
  end
  local ok, err = publish("top", {
    start = w.start,
    duration = w.duration,
    samples = w.samples,
    top = top,
  })
  if not ok then
    log("top: not published:", err)
  end
end)
