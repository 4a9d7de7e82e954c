// SPDX-License-Identifier: MIT
/*
 * sonded: samples every CPU with eBPF, names the frames, and serves the
 * profiles (pprof over HTTP, one file per window) and its own metrics.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bpf_host.h"
#include "daemon.h"
#include "log.h"
#include "script.h"

static const char usage[] =
	"Usage: sonded [OPTION]...\n"
	"Profiles every process on this node with eBPF and serves the profiles.\n"
	"\n"
	"  -F, --hz N           samples per second on each CPU (default 19)\n"
	"  -w, --window SEC     length of a profile window in seconds (default 10)\n"
	"  -o, --output DIR     write one gzip'd pprof file per window into DIR\n"
	"      --http ADDR      serve /metrics and /debug/pprof/profile on ADDR\n"
	"                       (default 127.0.0.1:7470; 'none' turns it off)\n"
	"  -s, --script FILE    Lua configuration script, e.g. scripts/default.lua\n"
	"                       (default: none; options given here win over it)\n"
	"      --check          load and attach everything, take samples for a second,\n"
	"                       report what works on this kernel, and exit\n"
	"  -v, --verbose        log debug messages (libbpf's too)\n"
	"  -h, --help           show this help and exit\n"
	"      --version        show the version and exit\n"
	"\n"
	"Profiles: go tool pprof http://127.0.0.1:7470/debug/pprof/profile?seconds=10\n"
	"(narrow with &pid=N or &comm=NAME). Needs root, or CAP_BPF and CAP_PERFMON.\n";

enum { OPT_HTTP = 256, OPT_CHECK, OPT_VERSION };

static const struct option long_options[] = {
	{ "hz", required_argument, NULL, 'F' },
	{ "window", required_argument, NULL, 'w' },
	{ "output", required_argument, NULL, 'o' },
	{ "http", required_argument, NULL, OPT_HTTP },
	{ "script", required_argument, NULL, 's' },
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

/* Options the command line set, which the script must not override. */
struct cli_set {
	bool hz, window, output, http;
};

static int parse_args(int argc, char **argv, struct sonde_daemon_opts *opts, struct cli_set *set)
{
	unsigned long v;
	int c;

	while ((c = getopt_long(argc, argv, "F:w:o:s:vh", long_options, NULL)) != -1) {
		switch (c) {
		case 'F':
			if (parse_uint("--hz", optarg, 1, 100000, &v))
				return 2;
			opts->hz = v;
			set->hz = true;
			break;
		case 'w':
			if (parse_uint("--window", optarg, 1, 3600, &v))
				return 2;
			opts->window_s = v;
			set->window = true;
			break;
		case 'o':
			opts->output_dir = optarg;
			set->output = true;
			break;
		case OPT_HTTP:
			opts->http_addr = strcmp(optarg, "none") == 0 ? NULL : optarg;
			set->http = true;
			break;
		case 's':
			opts->script = optarg;
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
	struct sonde_daemon_opts opts = {
		.hz = 19,
		.window_s = 10,
		.http_addr = "127.0.0.1:7470",
	};
	struct sonde_script_config script = { 0 };
	struct cli_set set = { 0 };
	char why[512];
	int err;

	err = parse_args(argc, argv, &opts, &set);
	if (err)
		return err;
	if (opts.script) {
		if (sonde_script_load(opts.script, &script, why, sizeof(why))) {
			sonde_err("%s", why);
			return 2;
		}
		if (script.hz && !set.hz)
			opts.hz = script.hz;
		if (script.window_s && !set.window)
			opts.window_s = script.window_s;
		if (script.output_dir && !set.output)
			opts.output_dir = script.output_dir;
		if (script.http_set && !set.http)
			opts.http_addr = script.http_addr;
	}
	if (opts.output_dir) {
		struct stat st;

		if (stat(opts.output_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
			sonde_err("--output %s: not a directory", opts.output_dir);
			sonde_script_config_free(&script);
			return 2;
		}
	}
	if (!privileged()) {
		sonde_err("sonded needs root, or the capabilities CAP_BPF and CAP_PERFMON: run it "
			  "as root (sudo sonded)");
		sonde_script_config_free(&script);
		return 1;
	}
	err = sonde_daemon_run(&opts) ? 1 : 0;
	sonde_script_config_free(&script);
	return err;
}
