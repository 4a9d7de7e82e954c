-- SPDX-License-Identifier: MIT
-- Plugins to load, with their settings, and the unwinders every process gets
-- unless on_process chooses others.

-- The daemon does not start without this one; depth is its own setting.
plugin "unwind-native" { required = true, depth = 64 }

-- Loaded if it can be; without settings.
plugin "unwind-python"

-- A plugin from a path; the same thing with a second argument.
plugin("/opt/sonde/plugins/sonde-unwind-jvm.so", { required = false })

-- Plugin names, tried in order.
unwinders { "unwind-native" }
