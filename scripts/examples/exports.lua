-- SPDX-License-Identifier: MIT
-- The nng sockets: the pub socket the exports go out on (the core's topics
-- and the script's own, see top-functions.lua), and the req/rep socket
-- sondectl talks to.
export { listen = "ipc:///run/sonde/export.ipc" }
control { listen = "ipc:///run/sonde/control.ipc" }
