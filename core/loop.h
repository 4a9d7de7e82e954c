/* SPDX-License-Identifier: MIT */
/*
 * The daemon's one epoll loop. Everything that waits (ringbufs, perf
 * side-band buffers, timers, signals, sockets) registers a file descriptor
 * and a callback here; callbacks run on the loop thread, one at a time, and
 * must not block.
 *
 * Threading: not thread-safe; call everything from the loop thread.
 */
#ifndef SONDE_LOOP_H
#define SONDE_LOOP_H

#include <stdint.h>

struct sonde_loop;
struct sonde_loop_timer;

/* events: EPOLLIN/EPOLLOUT/... as given to epoll; revents as epoll reports. */
typedef void (*sonde_loop_fd_cb)(void *ctx, int fd, uint32_t revents);
typedef void (*sonde_loop_timer_cb)(void *ctx);

/* NULL and errno on failure. */
struct sonde_loop *sonde_loop__new(void);
/* Closes no registered fd (their owners do); frees timers. Accepts NULL. */
void sonde_loop__free(struct sonde_loop *loop);

/* 0 or -errno. One registration per fd. */
int sonde_loop__add_fd(struct sonde_loop *loop, int fd, uint32_t events, sonde_loop_fd_cb cb,
		       void *ctx);
int sonde_loop__mod_fd(struct sonde_loop *loop, int fd, uint32_t events);
/* Safe to call from inside that fd's own callback. */
int sonde_loop__del_fd(struct sonde_loop *loop, int fd);

/*
 * A timer that fires after first_ms, then every interval_ms (0: once).
 * NULL and errno on failure. The timer belongs to the loop until
 * sonde_loop__cancel_timer(), which is safe inside its own callback.
 */
struct sonde_loop_timer *sonde_loop__add_timer(struct sonde_loop *loop, uint64_t first_ms,
					       uint64_t interval_ms, sonde_loop_timer_cb cb,
					       void *ctx);
void sonde_loop__cancel_timer(struct sonde_loop *loop, struct sonde_loop_timer *timer);

/* Runs until sonde_loop__stop(). 0, or -errno if epoll itself failed. */
int sonde_loop__run(struct sonde_loop *loop);
void sonde_loop__stop(struct sonde_loop *loop);

/* CLOCK_MONOTONIC in nanoseconds: the clock of every event timestamp. */
uint64_t sonde_now_ns(void);

#endif /* SONDE_LOOP_H */
