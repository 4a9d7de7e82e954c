// SPDX-License-Identifier: MIT
#include "loop.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/*
 * Registrations live in a list; epoll carries a pointer to them. A
 * registration deleted during dispatch is only marked dead and freed after
 * the batch, so a later event of the same batch never touches freed memory.
 */
struct registration {
	int fd;
	bool dead;
	sonde_loop_fd_cb cb;
	void *ctx;
	struct sonde_loop_timer *timer; /* set for timers: the loop owns the fd */
	struct registration *next;
};

struct sonde_loop_timer {
	struct registration *reg;
	sonde_loop_timer_cb cb;
	void *ctx;
};

struct sonde_loop {
	int epfd;
	bool stop;
	bool dispatching;
	struct registration *regs;
};

uint64_t sonde_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct sonde_loop *sonde_loop__new(void)
{
	struct sonde_loop *loop = calloc(1, sizeof(*loop));

	if (!loop)
		return NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		int err = errno;

		free(loop);
		errno = err;
		return NULL;
	}
	return loop;
}

static void free_registration(struct registration *reg)
{
	if (reg->timer) {
		close(reg->fd);
		free(reg->timer);
	}
	free(reg);
}

static void sweep(struct sonde_loop *loop)
{
	struct registration **pp = &loop->regs;

	while (*pp) {
		struct registration *reg = *pp;

		if (reg->dead) {
			*pp = reg->next;
			free_registration(reg);
		} else {
			pp = &reg->next;
		}
	}
}

void sonde_loop__free(struct sonde_loop *loop)
{
	struct registration *reg, *next;

	if (!loop)
		return;
	for (reg = loop->regs; reg; reg = next) {
		next = reg->next;
		free_registration(reg);
	}
	close(loop->epfd);
	free(loop);
}

static struct registration *find(struct sonde_loop *loop, int fd)
{
	struct registration *reg;

	for (reg = loop->regs; reg; reg = reg->next)
		if (reg->fd == fd && !reg->dead)
			return reg;
	return NULL;
}

static struct registration *add(struct sonde_loop *loop, int fd, uint32_t events,
				sonde_loop_fd_cb cb, void *ctx)
{
	struct epoll_event ev = { .events = events };
	struct registration *reg;

	if (find(loop, fd)) {
		errno = EEXIST;
		return NULL;
	}
	reg = calloc(1, sizeof(*reg));
	if (!reg)
		return NULL;
	reg->fd = fd;
	reg->cb = cb;
	reg->ctx = ctx;
	ev.data.ptr = reg;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int err = errno;

		free(reg);
		errno = err;
		return NULL;
	}
	reg->next = loop->regs;
	loop->regs = reg;
	return reg;
}

int sonde_loop__add_fd(struct sonde_loop *loop, int fd, uint32_t events, sonde_loop_fd_cb cb,
		       void *ctx)
{
	return add(loop, fd, events, cb, ctx) ? 0 : -errno;
}

int sonde_loop__mod_fd(struct sonde_loop *loop, int fd, uint32_t events)
{
	struct registration *reg = find(loop, fd);
	struct epoll_event ev = { .events = events };

	if (!reg)
		return -ENOENT;
	ev.data.ptr = reg;
	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

static void remove_registration(struct sonde_loop *loop, struct registration *reg)
{
	epoll_ctl(loop->epfd, EPOLL_CTL_DEL, reg->fd, NULL);
	reg->dead = true;
	if (!loop->dispatching)
		sweep(loop);
}

int sonde_loop__del_fd(struct sonde_loop *loop, int fd)
{
	struct registration *reg = find(loop, fd);

	if (!reg)
		return -ENOENT;
	remove_registration(loop, reg);
	return 0;
}

static void on_timer(void *ctx, int fd, uint32_t revents)
{
	struct sonde_loop_timer *timer = ctx;
	uint64_t expirations;

	(void)revents;
	if (read(fd, &expirations, sizeof(expirations)) != sizeof(expirations))
		return; /* spurious wake-up */
	timer->cb(timer->ctx);
}

static struct timespec ms_to_timespec(uint64_t ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };

	return ts;
}

struct sonde_loop_timer *sonde_loop__add_timer(struct sonde_loop *loop, uint64_t first_ms,
					       uint64_t interval_ms, sonde_loop_timer_cb cb,
					       void *ctx)
{
	struct itimerspec spec = {
		.it_value = ms_to_timespec(first_ms ? first_ms : 1),
		.it_interval = ms_to_timespec(interval_ms),
	};
	struct sonde_loop_timer *timer;
	int fd, err;

	timer = calloc(1, sizeof(*timer));
	if (!timer)
		return NULL;
	fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (fd < 0)
		goto fail;
	if (timerfd_settime(fd, 0, &spec, NULL) < 0)
		goto fail;
	timer->cb = cb;
	timer->ctx = ctx;
	timer->reg = add(loop, fd, EPOLLIN, on_timer, timer);
	if (!timer->reg)
		goto fail;
	timer->reg->timer = timer;
	return timer;
fail:
	err = errno;
	if (fd >= 0)
		close(fd);
	free(timer);
	errno = err;
	return NULL;
}

void sonde_loop__cancel_timer(struct sonde_loop *loop, struct sonde_loop_timer *timer)
{
	if (timer)
		remove_registration(loop, timer->reg);
}

int sonde_loop__run(struct sonde_loop *loop)
{
	struct epoll_event events[32];
	int n, i;

	loop->stop = false;
	while (!loop->stop) {
		n = epoll_wait(loop->epfd, events, 32, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		loop->dispatching = true;
		for (i = 0; i < n; i++) {
			struct registration *reg = events[i].data.ptr;

			if (!reg->dead)
				reg->cb(reg->ctx, reg->fd, events[i].events);
		}
		loop->dispatching = false;
		sweep(loop);
	}
	return 0;
}

void sonde_loop__stop(struct sonde_loop *loop)
{
	loop->stop = true;
}
