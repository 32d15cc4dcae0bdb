/*
 * The request loop.  Threads take turns as the one reader of /dev/fuse
 * (leader and followers).  The reader answers a quick request (lookup,
 * getattr, xattr, readdir, a read of up to 64 KiB) itself, then keeps reading
 * the non-blocking device for spin_us before it sleeps in poll(): on a VM
 * whose idle vCPUs halt, waking a sleeping thread on another vCPU costs more
 * than the request itself (docs/BENCHMARKS.md, "Round trips"), and a caller
 * just answered is likely to ask again at once.  Before any other request (a
 * bulk read, a control write) it hands its turn to a follower, so that bulk
 * reads still run side by side and a slow upload holds up nothing else.
 *
 * libfuse 3.14's own loops cannot do this: their threads sleep in read(),
 * and the kernel wakes one of them for every request.  They still serve
 * -o spin_us=0.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

/* Small reads wait on their reply (random access); larger ones are readahead, throughput-bound. */
#define QUICK_READ_MAX (64 * 1024)

struct loop {
	struct fuse_session *se;
	int fd;      /* /dev/fuse, non-blocking while the loop runs */
	int wake_fd; /* eventfd, written once: stops a reader asleep in poll() */
	long spin_ns;
	atomic_bool stop;
	pthread_mutex_t lock;
	pthread_cond_t turn_free;
	bool turn_taken; /* under lock */
	int error;       /* under lock: the first unexpected device error */
	sem_t ended;     /* posted by each thread that leaves */
};

static bool is_quick(const struct fuse_buf *buf)
{
	const struct fuse_in_header *in = buf->mem;
	const struct fuse_read_in *rd = (const void *)(in + 1);

	if (buf->size < sizeof(*in))
		return false;
	switch (in->opcode) {
	case FUSE_LOOKUP: case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_GETATTR:
	case FUSE_GETXATTR: case FUSE_LISTXATTR: case FUSE_OPEN: case FUSE_OPENDIR:
	case FUSE_READDIR: case FUSE_READDIRPLUS: case FUSE_RELEASE: case FUSE_RELEASEDIR:
	case FUSE_FLUSH: case FUSE_STATFS: case FUSE_ACCESS: case FUSE_INTERRUPT:
		return true;
	case FUSE_READ:
		return buf->size >= sizeof(*in) + sizeof(*rd) && rd->size <= QUICK_READ_MAX;
	default:
		return false;
	}
}

static long elapsed_ns(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - since->tv_sec) * 1000000000L + (now.tv_nsec - since->tv_nsec);
}

/* Sleeps until the device has a request, fails, or the loop is told to stop. */
static void sleep_until_readable(struct loop *lp)
{
	struct pollfd fds[2] = {{.fd = lp->fd, .events = POLLIN}, {.fd = lp->wake_fd, .events = POLLIN}};

	(void)poll(fds, 2, -1); /* EINTR or not, the caller reads again */
}

/*
 * The next request into BUF: its size, 0 when the session has ended, or a
 * negative errno.  SPIN: poll for spin_ns before sleeping.  Only a reader
 * that has just answered a quick request spins: it is likely to be asked
 * again at once, while bulk reads keep enough in flight to hide a wakeup.
 */
static int receive(struct loop *lp, struct fuse_buf *buf, bool spin)
{
	struct timespec since;

	clock_gettime(CLOCK_MONOTONIC, &since);
	for (;;) {
		int res = fuse_session_receive_buf(lp->se, buf);

		if (res != -EAGAIN && res != -EINTR)
			return res;
		if (atomic_load(&lp->stop))
			return 0;
		if (res == -EINTR)
			continue;
		if (spin && elapsed_ns(&since) < lp->spin_ns) {
			sched_yield(); /* a caller waiting for this CPU goes first */
			continue;
		}
		sleep_until_readable(lp);
		spin = true;
		clock_gettime(CLOCK_MONOTONIC, &since);
	}
}

static void take_turn(struct loop *lp)
{
	pthread_mutex_lock(&lp->lock);
	while (lp->turn_taken)
		pthread_cond_wait(&lp->turn_free, &lp->lock);
	lp->turn_taken = true;
	pthread_mutex_unlock(&lp->lock);
}

static void pass_turn(struct loop *lp)
{
	pthread_mutex_lock(&lp->lock);
	lp->turn_taken = false;
	pthread_cond_signal(&lp->turn_free);
	pthread_mutex_unlock(&lp->lock);
}

/* The session is over for everyone: each thread that takes the turn next reads 0 and leaves. */
static void leave(struct loop *lp, int res)
{
	if (res < 0) {
		pthread_mutex_lock(&lp->lock);
		if (!lp->error)
			lp->error = res;
		pthread_mutex_unlock(&lp->lock);
	}
	fuse_session_exit(lp->se);
	sem_post(&lp->ended);
}

static void *worker(void *arg)
{
	struct loop *lp = arg;
	struct fuse_buf buf = {.mem = NULL};

	for (;;) {
		bool spin = false; /* a fresh reader sleeps at once: it was handed the turn by a bulk request */
		int res;

		take_turn(lp);
		while ((res = receive(lp, &buf, spin)) > 0 && is_quick(&buf)) {
			fuse_session_process_buf(lp->se, &buf);
			spin = true;
		}
		pass_turn(lp);
		if (res <= 0) {
			leave(lp, res);
			break;
		}
		fuse_session_process_buf(lp->se, &buf);
	}
	free(buf.mem);
	return NULL;
}

/* Threads started with every signal blocked, so that libfuse's handlers run on the caller. */
static unsigned start_workers(struct loop *lp, pthread_t *ids, unsigned threads)
{
	sigset_t all, old;
	unsigned n = 0;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	while (n < threads && pthread_create(&ids[n], NULL, worker, lp) == 0)
		n++;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return n;
}

/* Until a worker leaves or a signal handler ends the session (the 1 s bound covers a signal
 * that lands between the check and the wait). */
static void wait_for_end(struct loop *lp)
{
	while (!fuse_session_exited(lp->se)) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		if (sem_timedwait(&lp->ended, &until) == 0)
			break;
	}
}

static void stop_workers(struct loop *lp, pthread_t *ids, unsigned n)
{
	atomic_store(&lp->stop, true);
	fuse_session_exit(lp->se);
	(void)eventfd_write(lp->wake_fd, 1);
	for (unsigned i = 0; i < n; i++)
		pthread_join(ids[i], NULL);
}

static int polling_loop(struct fuse_session *se, unsigned threads, unsigned spin_us)
{
	struct loop lp = {.se = se, .fd = fuse_session_fd(se), .spin_ns = 1000L * spin_us,
			  .lock = PTHREAD_MUTEX_INITIALIZER, .turn_free = PTHREAD_COND_INITIALIZER};
	int flags = fcntl(lp.fd, F_GETFL);
	pthread_t *ids = calloc(threads ? threads : 1, sizeof(*ids));
	unsigned started = 0;

	if (!ids || flags < 0 || (lp.wake_fd = eventfd(0, EFD_CLOEXEC)) < 0) {
		free(ids);
		return -errno;
	}
	sem_init(&lp.ended, 0, 0);
	if (fcntl(lp.fd, F_SETFL, flags | O_NONBLOCK) < 0)
		lp.error = -errno;
	else if ((started = start_workers(&lp, ids, threads)) == 0)
		lp.error = -EAGAIN;
	else
		wait_for_end(&lp);
	stop_workers(&lp, ids, started);
	fcntl(lp.fd, F_SETFL, flags);
	close(lp.wake_fd);
	sem_destroy(&lp.ended);
	free(ids);
	return lp.error;
}

/*
 * Without polling, libfuse's own loops serve better than one reader that sleeps:
 * their several sleeping readers (one /dev/fuse fd each) are woken wherever the
 * scheduler puts them, often on the caller's CPU, where the wakeup is cheap.
 */
static int libfuse_loop(struct fuse_session *se, unsigned threads)
{
	struct fuse_loop_config *cfg;
	int rc;

	if (threads == 1)
		return fuse_session_loop(se);
	if (!(cfg = fuse_loop_cfg_create()))
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	fuse_loop_cfg_set_max_threads(cfg, threads);
	rc = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return rc;
}

int loop_run(struct fuse_session *se, unsigned threads, unsigned spin_us)
{
	if (spin_us == 0)
		return libfuse_loop(se, threads);
	return polling_loop(se, threads, spin_us);
}
