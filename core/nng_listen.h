/* SPDX-License-Identifier: MIT */
/*
 * The one way sonded listens on an nng socket (exports, control). For
 * ipc:// URLs: the socket's directory is created (0755) if missing, a path
 * that exists and is not a socket is refused (nng would delete whatever it
 * cannot connect to), and the socket file is 0600 from the start.
 */
#ifndef SONDE_NNG_LISTEN_H
#define SONDE_NNG_LISTEN_H

#include <stddef.h>

#include <nng/nng.h>

/* nng's error codes as errno values. */
int sonde_nng_errno(int rv);

/*
 * Starts a listener for sock on url; *out may be NULL. 0, or -errno with a
 * one-line reason in err (naming the URL, with a hint for "address in use").
 */
int sonde_nng_listen(nng_socket sock, const char *url, nng_listener *out, char *err,
		     size_t errlen);

#endif /* SONDE_NNG_LISTEN_H */
