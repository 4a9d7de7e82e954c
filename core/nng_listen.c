// SPDX-License-Identifier: MIT
#include "nng_listen.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int sonde_nng_errno(int rv)
{
	if (rv & NNG_ESYSERR)
		return rv & ~NNG_ESYSERR;
	switch (rv) {
	case NNG_ENOMEM:
		return ENOMEM;
	case NNG_EADDRINUSE:
		return EADDRINUSE;
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return EINVAL;
	case NNG_ENOTSUP:
		return EPROTONOSUPPORT;
	case NNG_EPERM:
		return EACCES;
	case NNG_ENOENT:
		return ENOENT;
	case NNG_EAGAIN:
		return EAGAIN;
	case NNG_ENOSPC:
		return ENOSPC;
	case NNG_ENOFILES:
		return EMFILE;
	default:
		return EIO;
	}
}

/* mkdir -p of the directory part of path, new directories 0755. */
static int make_parent_dirs(const char *path, char *err, size_t errlen)
{
	char dir[PATH_MAX];
	char *slash;
	size_t len = strlen(path);

	if (len >= sizeof(dir)) {
		snprintf(err, errlen, "ipc path too long: %s", path);
		return -ENAMETOOLONG;
	}
	memcpy(dir, path, len + 1);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1;; p++) {
		bool last = *p == '\0';

		if (*p != '/' && !last)
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) == 0) {
			chmod(dir, 0755); /* the documented mode, whatever the umask */
		} else if (errno != EEXIST) {
			int e = errno;

			snprintf(err, errlen, "cannot create %s: %s", dir, strerror(e));
			return -e;
		}
		if (last)
			break;
		*p = '/';
	}
	return 0;
}

int sonde_nng_listen(nng_socket sock, const char *url, nng_listener *out, char *err,
		     size_t errlen)
{
	bool ipc = strncmp(url, "ipc://", 6) == 0;
	nng_listener l;
	struct stat st;
	int rv;

	if (!strstr(url, "://")) {
		snprintf(err, errlen, "not a URL: \"%s\" (want ipc://PATH or tcp://HOST:PORT)", url);
		return -EINVAL;
	}
	if (ipc) {
		if (!url[6]) {
			snprintf(err, errlen, "%s: no socket path after ipc://", url);
			return -EINVAL;
		}
		if (!lstat(url + 6, &st) && !S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "%s exists and is not a socket", url + 6);
			return -EEXIST;
		}
		rv = make_parent_dirs(url + 6, err, errlen);
		if (rv)
			return rv;
	}
	rv = nng_listener_create(&l, sock, url);
	/* Before start, so the file never exists with wider permissions. */
	if (!rv && ipc)
		rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
	if (!rv)
		rv = nng_listener_start(l, 0);
	if (rv) {
		snprintf(err, errlen, "cannot listen on %s: %s%s", url, nng_strerror(rv),
			 rv == NNG_EADDRINUSE ? " (is another sonded running?)"
			 : rv == NNG_ENOTSUP  ? " (want ipc://PATH or tcp://HOST:PORT)"
					      : "");
		return -sonde_nng_errno(rv);
	}
	if (out)
		*out = l;
	return 0;
}
