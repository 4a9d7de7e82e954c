// SPDX-License-Identifier: MIT
/*
 * sonded: samples every CPU with eBPF, names the frames, and serves the
 * profiles (pprof over HTTP, files per window, nng exports) and its own
 * metrics, as its Lua script says.
 */
#include <errno.h>
#include <getopt.h>
#include <linux/capability.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"

static const char usage[] =
	"Usage: sonded [OPTION]...\n"
	"Profiles every process on this node with eBPF and serves the profiles.\n"
	"Options given here win over the script's.\n"
	"\n"
	"  -s, --script FILE    Lua script that configures sonded and decides what is\n"
	"                       profiled and exported (see docs/lua.md); default:\n"
	"                       " SONDE_DEFAULT_SCRIPT " if it exists;\n"
	"                       'none': no script, every process profiled\n"
	"      --unsafe-script  open os, io, package and load to the script\n"
	"  -F, --hz N           samples per second on each CPU (default 19)\n"
	"  -w, --window SEC     length of a profile window in seconds (default 10)\n"
	"  -o, --output DIR     write one gzip'd pprof file per window into DIR\n"
	"      --http ADDR      serve /metrics and /debug/pprof/profile on ADDR\n"
	"                       (default 127.0.0.1:7470; 'none' turns it off)\n"
	"      --export URL     nng pub socket of the exports (docs/export.md)\n"
	"                       (default ipc:///run/sonde/export.ipc; 'none': off)\n"
	"      --control URL    nng req/rep socket sondectl talks to (docs/control.md)\n"
	"                       (default ipc:///run/sonde/control.ipc; 'none': off)\n"
	"      --plugin-dir DIR where the script's plugins are (default " SONDE_PLUGIN_DIR ")\n"
	"      --check          load and attach everything, take samples for a second,\n"
	"                       report what works on this kernel, and exit\n"
	"  -v, --verbose        log debug messages (libbpf's too)\n"
	"  -h, --help           show this help and exit\n"
	"      --version        show the version and exit\n"
	"\n"
	"Profiles: go tool pprof http://127.0.0.1:7470/debug/pprof/profile?seconds=10\n"
	"(narrow with &pid=N or &comm=NAME), or sondectl record/folded/top.\n"
	"SIGHUP reloads the script. Needs root, or CAP_BPF and CAP_PERFMON.\n";

enum {
	OPT_HTTP = 256,
	OPT_EXPORT,
	OPT_CONTROL,
	OPT_PLUGIN_DIR,
	OPT_UNSAFE,
	OPT_CHECK,
	OPT_VERSION,
};

static const struct option long_options[] = {
	{ "script", required_argument, NULL, 's' },
	{ "unsafe-script", no_argument, NULL, OPT_UNSAFE },
	{ "hz", required_argument, NULL, 'F' },
	{ "window", required_argument, NULL, 'w' },
	{ "output", required_argument, NULL, 'o' },
	{ "http", required_argument, NULL, OPT_HTTP },
	{ "export", required_argument, NULL, OPT_EXPORT },
	{ "control", required_argument, NULL, OPT_CONTROL },
	{ "plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR },
	{ "check", no_argument, NULL, OPT_CHECK },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ 0 },
};

static int parse_uint(const char *opt, const char *s, unsigned long lo, unsigned long hi,
		      unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi || *s == '-') {
		fprintf(stderr, "sonded: %s takes a whole number from %lu to %lu, not '%s'\n", opt,
			lo, hi, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* "none" turns a listener off. */
static const char *listener(const char *arg)
{
	return strcmp(arg, "none") == 0 ? NULL : arg;
}

static int parse_args(int argc, char **argv, struct sonde_daemon_opts *opts)
{
	unsigned long v;
	int c;

	while ((c = getopt_long(argc, argv, "s:F:w:o:vh", long_options, NULL)) != -1) {
		switch (c) {
		case 's':
			opts->script = optarg;
			break;
		case OPT_UNSAFE:
			opts->unsafe_script = true;
			break;
		case 'F':
			if (parse_uint("--hz", optarg, 1, 100000, &v))
				return 2;
			opts->hz = v;
			break;
		case 'w':
			if (parse_uint("--window", optarg, 1, 3600, &v))
				return 2;
			opts->window_s = v;
			break;
		case 'o':
			opts->output_dir = optarg;
			break;
		case OPT_HTTP:
			opts->http_set = true;
			opts->http_addr = listener(optarg);
			break;
		case OPT_EXPORT:
			opts->export_set = true;
			opts->export_url = listener(optarg);
			break;
		case OPT_CONTROL:
			opts->control_set = true;
			opts->control_url = listener(optarg);
			break;
		case OPT_PLUGIN_DIR:
			opts->plugin_dir = optarg;
			break;
		case OPT_CHECK:
			opts->check = true;
			break;
		case 'v':
			sonde_log_set_level(SONDE_LOG_DEBUG);
			break;
		case 'h':
			fputs(usage, stdout);
			exit(0);
		case OPT_VERSION:
			printf("sonded %s\n", SONDE_VERSION);
			exit(0);
		default:
			fputs("Try 'sonded --help'.\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "sonded: unexpected argument '%s'\nTry 'sonded --help'.\n",
			argv[optind]);
		return 2;
	}
	return 0;
}

/* Root, or CAP_BPF and CAP_PERFMON in the effective set. */
static bool privileged(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = { 0 };
	const int cap_bpf = 39, cap_perfmon = 38;

	if (geteuid() == 0)
		return true;
	if (syscall(SYS_capget, &hdr, data) != 0)
		return false;
	return (data[cap_bpf / 32].effective & (1U << (cap_bpf % 32))) &&
	       (data[cap_perfmon / 32].effective & (1U << (cap_perfmon % 32)));
}

int main(int argc, char **argv)
{
	struct sonde_daemon_opts opts = { 0 };
	struct stat st;
	int err;

	err = parse_args(argc, argv, &opts);
	if (err)
		return err;
	if (!opts.script && access(SONDE_DEFAULT_SCRIPT, F_OK) == 0)
		opts.script = SONDE_DEFAULT_SCRIPT;
	else if (!opts.script)
		sonde_info("no script (%s does not exist): every process is profiled with the "
			   "defaults", SONDE_DEFAULT_SCRIPT);
	else if (strcmp(opts.script, "none") == 0)
		opts.script = NULL;
	if (opts.output_dir && (stat(opts.output_dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
		sonde_err("--output %s: not a directory", opts.output_dir);
		return 2;
	}
	if (!privileged()) {
		sonde_err("sonded needs root, or the capabilities CAP_BPF and CAP_PERFMON: run it "
			  "as root (sudo sonded)");
		return 1;
	}
	return sonde_daemon_run(&opts) ? 1 : 0;
}
