// SPDX-License-Identifier: MIT
/*
 * hook-floor sock|syscalls: attaches empty BPF programs to the hooks
 * red-metrics uses with that capture setting, prints "attached" and
 * waits for SIGINT or SIGTERM. bench/red-overhead runs it as its floor
 * configuration: the cost of the hooks alone, loaded the way the plugin
 * loads its own (libbpf), so the floor and the plugin differ only in
 * what their programs do.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include "hook_floor.skel.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	struct hook_floor_bpf *skel;
	struct bpf_program *sock[2], *sys[9];
	int use_sock, rc;
	size_t i;

	if (argc != 2 || (strcmp(argv[1], "sock") && strcmp(argv[1], "syscalls"))) {
		fprintf(stderr, "usage: hook-floor sock|syscalls\n");
		return 2;
	}
	use_sock = !strcmp(argv[1], "sock");
	skel = hook_floor_bpf__open();
	if (!skel) {
		fprintf(stderr, "hook-floor: cannot open the BPF object: %s\n", strerror(errno));
		return 1;
	}
	sock[0] = skel->progs.sock_recv;
	sock[1] = skel->progs.sock_send;
	sys[0] = skel->progs.sys_read;
	sys[1] = skel->progs.sys_recvfrom;
	sys[2] = skel->progs.sys_readv;
	sys[3] = skel->progs.sys_recvmsg;
	sys[4] = skel->progs.sys_write;
	sys[5] = skel->progs.sys_sendto;
	sys[6] = skel->progs.sys_sendmsg;
	sys[7] = skel->progs.sys_writev;
	sys[8] = skel->progs.sys_sendfile64;
	for (i = 0; i < 2; i++)
		bpf_program__set_autoload(sock[i], use_sock);
	for (i = 0; i < 9; i++)
		bpf_program__set_autoload(sys[i], !use_sock);
	rc = hook_floor_bpf__load(skel);
	if (!rc)
		rc = hook_floor_bpf__attach(skel);
	if (rc) {
		fprintf(stderr, "hook-floor: cannot load or attach the %s hooks: %s\n", argv[1],
			strerror(-rc));
		hook_floor_bpf__destroy(skel);
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("attached\n");
	fflush(stdout);
	while (!stop)
		pause();
	hook_floor_bpf__destroy(skel);
	return 0;
}
