// SPDX-License-Identifier: MIT
/*
 * A fixed amount of CPU-bound work on every online CPU, for bench/overhead.
 *
 * The work is a fixed number of chunks, each a dependent multiply/xor hash
 * chain of fixed length, so it never changes between runs and the only thing
 * that can change the wall time is what else takes the CPUs (a profiler's
 * interrupts, its BPF programs, its userspace). Threads take chunks from one
 * shared counter rather than owning a fixed share: CPU time a profiler takes
 * on one core is then absorbed by all threads, and the wall time measures the
 * capacity the machine lost, not which thread the scheduler happened to delay.
 *
 * The work sits a few calls deep behind functions that are never inlined and
 * built with frame pointers, so a profiler that walks stacks has real frames
 * to walk, as in a service; -d adds that many more frames (a service's
 * stack is often tens of frames deep, and a walker's cost grows with it). It prints one checksum line (a XOR over chunks, so
 * independent of which thread did which) so the compiler cannot drop the work
 * and a reader can check that two runs did the same thing.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* About 4 s on the 2 vCPU VM the README's figures come from. */
#define DEFAULT_ITERATIONS 2000000000ULL
/* Iterations per innermost call: small enough that samples land in all frames. */
#define BLOCK 4096
/* Iterations per chunk taken from the shared counter (about 2 ms of work). */
#define CHUNK (256 * BLOCK)

struct work {
	atomic_uint_fast64_t next_chunk;
	uint64_t chunks;
	uint64_t last_chunk_len; /* the last chunk may be short */
	uint64_t depth;		 /* frames added above run() */
};

struct worker {
	pthread_t thread;
	struct work *work;
	uint64_t result;
};

static __attribute__((noinline)) uint64_t mix_block(uint64_t x, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		x ^= x >> 31;
		x *= 0x9e3779b97f4a7c15ULL;
		x ^= x >> 29;
		x += i;
	}
	return x;
}

static __attribute__((noinline)) uint64_t stage(uint64_t x, uint64_t n)
{
	x = mix_block(x, n);
	/* Keeps the call from being a tail call, so the frame stays on the stack. */
	__asm__ volatile("" : "+r"(x));
	return x;
}

static __attribute__((noinline)) uint64_t run(uint64_t seed, uint64_t iterations)
{
	uint64_t x = seed;

	while (iterations > 0) {
		uint64_t n = iterations < BLOCK ? iterations : BLOCK;

		x = stage(x, n);
		iterations -= n;
	}
	__asm__ volatile("" : "+r"(x));
	return x;
}

/* depth more frames, then the work. */
static __attribute__((noinline)) uint64_t descend(uint64_t depth, uint64_t seed, uint64_t iterations)
{
	uint64_t x = depth ? descend(depth - 1, seed, iterations) : run(seed, iterations);

	/* Keeps the call from being a tail call, so the frame stays on the stack. */
	__asm__ volatile("" : "+r"(x));
	return x;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct work *work = w->work;
	uint64_t c;

	while ((c = atomic_fetch_add(&work->next_chunk, 1)) < work->chunks) {
		uint64_t len = c == work->chunks - 1 ? work->last_chunk_len : CHUNK;

		w->result ^= descend(work->depth, c + 1, len);
	}
	return NULL;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: workload [-t THREADS] [-n ITERATIONS] [-d DEPTH]\n"
		"Runs THREADS x ITERATIONS rounds of a hash loop, shared out in chunks\n"
		"among THREADS threads (default: one per online CPU, %llu iterations),\n"
		"DEPTH frames (default 0, at most 1000) deeper than it would be, and\n"
		"prints a checksum.\n",
		(unsigned long long)DEFAULT_ITERATIONS);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v == 0)
		return -EINVAL;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t iterations = DEFAULT_ITERATIONS, threads;
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	struct worker *workers = NULL;
	struct work work = { 0 };
	uint64_t total;
	uint64_t sum = 0, started = 0;
	int opt, err, ret = 1;

	threads = online > 0 ? (uint64_t)online : 1;
	while ((opt = getopt(argc, argv, "t:n:d:h")) != -1) {
		switch (opt) {
		case 'd':
			if (!strcmp(optarg, "0")) {
				work.depth = 0;
			} else if (parse_u64(optarg, &work.depth) || work.depth > 1000) {
				fprintf(stderr, "workload: bad depth '%s'\n", optarg);
				return 2;
			}
			break;
		case 't':
			if (parse_u64(optarg, &threads) || threads > 4096) {
				fprintf(stderr, "workload: bad thread count '%s'\n", optarg);
				return 2;
			}
			break;
		case 'n':
			if (parse_u64(optarg, &iterations)) {
				fprintf(stderr, "workload: bad iteration count '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	if (__builtin_mul_overflow(iterations, threads, &total)) {
		fprintf(stderr, "workload: %" PRIu64 " x %" PRIu64 " iterations is too many\n",
			threads, iterations);
		return 2;
	}
	work.chunks = (total + CHUNK - 1) / CHUNK;
	work.last_chunk_len = total - (work.chunks - 1) * CHUNK;
	atomic_init(&work.next_chunk, 0);

	workers = calloc(threads, sizeof(*workers));
	if (!workers) {
		fprintf(stderr, "workload: out of memory\n");
		return 1;
	}
	for (; started < threads; started++) {
		struct worker *w = &workers[started];

		w->work = &work;
		err = pthread_create(&w->thread, NULL, worker_main, w);
		if (err) {
			fprintf(stderr, "workload: pthread_create: %s\n", strerror(err));
			goto cleanup;
		}
	}
	ret = 0;
cleanup:
	for (uint64_t i = 0; i < started; i++) {
		pthread_join(workers[i].thread, NULL);
		sum ^= workers[i].result;
	}
	if (!ret)
		printf("workload: %" PRIu64 " threads x %" PRIu64 " iterations, checksum %016" PRIx64
		       "\n", threads, iterations, sum);
	free(workers);
	return ret;
}
