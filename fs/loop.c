/*
 * The request loop.  Threads take turns as the one reader of /dev/fuse
 * (leader and followers).  The reader answers metadata requests (lookup,
 * getattr, xattr, readdir: all from memory) itself, and a small read too while
 * nothing else waits; then it keeps reading the non-blocking device for
 * spin_us before it sleeps in poll(): on a VM whose idle vCPUs halt, waking a
 * sleeping thread on another vCPU costs more than the request itself
 * (docs/BENCHMARKS.md, "Round trips"), and a caller just answered is likely
 * to ask again at once.  Before any other request (a bulk read, a control
 * write), and from inside an answer that turns out slow (loop_step_aside: a
 * gathered view, a read that waits on the disk), it hands its turn to a
 * follower, so that nothing waits behind a slow answer.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

/* Small reads wait on their reply (random access); larger ones are readahead, throughput-bound. */
#define SMALL_READ_MAX (64 * 1024)
/* serve_while_reader's answer when an answer gave the turn away. */
#define STEPPED_ASIDE (-EINPROGRESS)

struct loop {
	struct fuse_session *se;
	int fd;      /* /dev/fuse, non-blocking while the loop runs */
	int wake_fd; /* eventfd, written once: stops a reader asleep in poll() */
	long spin_ns;
	atomic_bool stop;
	pthread_mutex_t lock;
	pthread_cond_t turn_free;
	bool turn_taken;  /* under lock */
	pthread_t holder; /* under lock: who has it, while turn_taken */
	bool turn_warm;   /* under lock: the next reader polls before it sleeps */
	int error;        /* under lock: the first unexpected device error */
	sem_t ended;      /* posted by each thread that leaves */
};

/* How the reader treats a request it has read. */
enum kind {
	METADATA,   /* from memory: answered by the reader, which then polls on */
	SMALL_READ, /* answered by the reader too, unless more requests already wait */
	OTHER,      /* bulk reads, control writes: handed over; the next reader sleeps */
};

static enum kind kind_of(const struct fuse_buf *buf)
{
	const struct fuse_in_header *in = buf->mem;
	const struct fuse_read_in *rd = (const void *)(in + 1);

	/* A request spliced into a pipe (-o splice_read) is not in memory to look at. */
	if ((buf->flags & FUSE_BUF_IS_FD) || !buf->mem || buf->size < sizeof(*in))
		return OTHER;
	switch (in->opcode) {
	case FUSE_LOOKUP: case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_GETATTR:
	case FUSE_GETXATTR: case FUSE_LISTXATTR: case FUSE_OPEN: case FUSE_OPENDIR:
	case FUSE_READDIR: case FUSE_READDIRPLUS: case FUSE_RELEASE: case FUSE_RELEASEDIR:
	case FUSE_FLUSH: case FUSE_STATFS: case FUSE_ACCESS: case FUSE_INTERRUPT:
		return METADATA;
	case FUSE_READ:
		return buf->size >= sizeof(*in) + sizeof(*rd) && rd->size <= SMALL_READ_MAX ? SMALL_READ : OTHER;
	default:
		return OTHER;
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

static bool more_waiting(const struct loop *lp)
{
	struct pollfd pfd = {.fd = lp->fd, .events = POLLIN};

	return poll(&pfd, 1, 0) > 0;
}

/*
 * The next request into BUF: its size, 0 when the session has ended, or a
 * negative errno.  SPIN: poll for spin_ns before sleeping.  Only a reader
 * that has just answered a request itself spins: it is likely to be asked
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

/* Waits for the reader's turn; returns whether to poll before sleeping. */
static bool take_turn(struct loop *lp)
{
	bool warm;

	pthread_mutex_lock(&lp->lock);
	while (lp->turn_taken)
		pthread_cond_wait(&lp->turn_free, &lp->lock);
	lp->turn_taken = true;
	lp->holder = pthread_self();
	warm = lp->turn_warm;
	pthread_mutex_unlock(&lp->lock);
	return warm;
}

static void pass_turn_locked(struct loop *lp, bool warm)
{
	lp->turn_taken = false;
	lp->turn_warm = warm;
	pthread_cond_signal(&lp->turn_free);
}

static void pass_turn(struct loop *lp, bool warm)
{
	pthread_mutex_lock(&lp->lock);
	pass_turn_locked(lp, warm);
	pthread_mutex_unlock(&lp->lock);
}

static bool holds_turn(struct loop *lp)
{
	bool mine;

	pthread_mutex_lock(&lp->lock);
	mine = lp->turn_taken && pthread_equal(lp->holder, pthread_self());
	pthread_mutex_unlock(&lp->lock);
	return mine;
}

void loop_step_aside(struct loop *lp)
{
	if (!lp)
		return;
	pthread_mutex_lock(&lp->lock);
	if (lp->turn_taken && pthread_equal(lp->holder, pthread_self()))
		pass_turn_locked(lp, true);
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

/*
 * While this thread holds the turn: answers metadata itself, and a small read
 * too while nothing else waits (one caller reading at random).  Returns the
 * first request it leaves to be answered after the turn is passed (> 0, in
 * BUF, KIND set), 0 or a negative errno when the session ends, or
 * STEPPED_ASIDE when an answer gave the turn away.
 */
static int serve_while_reader(struct loop *lp, struct fuse_buf *buf, bool spin, enum kind *kind)
{
	int res;

	while ((res = receive(lp, buf, spin)) > 0) {
		*kind = kind_of(buf);
		if (*kind == OTHER || (*kind == SMALL_READ && more_waiting(lp)))
			return res;
		fuse_session_process_buf(lp->se, buf);
		if (!holds_turn(lp))
			return STEPPED_ASIDE;
		spin = true;
	}
	return res;
}

static void *worker(void *arg)
{
	struct loop *lp = arg;
	struct fuse_buf buf = {.mem = NULL};

	for (;;) {
		enum kind kind = OTHER;
		int res = serve_while_reader(lp, &buf, take_turn(lp), &kind);

		if (res == STEPPED_ASIDE)
			continue;
		if (res <= 0) {
			leave(lp, res); /* before the next reader can read a request it would drop */
			pass_turn(lp, false);
			break;
		}
		/* Small reads pass a warm turn: the next one is likely to follow at once. */
		pass_turn(lp, kind == SMALL_READ);
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
 * that lands between the check and the wait, or on a thread other than this one). */
static void wait_for_end(struct loop *lp)
{
	while (!fuse_session_exited(lp->se)) {
		struct timespec until;

		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += 1;
		if (sem_clockwait(&lp->ended, CLOCK_MONOTONIC, &until) == 0)
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

static int polling_loop(struct fuse_session *se, unsigned threads, unsigned spin_us, struct loop **running)
{
	struct loop lp = {.se = se, .fd = fuse_session_fd(se), .spin_ns = 1000L * spin_us,
			  .lock = PTHREAD_MUTEX_INITIALIZER, .turn_free = PTHREAD_COND_INITIALIZER};
	int flags = fcntl(lp.fd, F_GETFL);
	pthread_t *ids = calloc(threads ? threads : 1, sizeof(*ids));
	unsigned started = 0;

	if (!ids || flags < 0 || (lp.wake_fd = eventfd(0, EFD_CLOEXEC)) < 0) {
		int err = errno;

		fprintf(stderr, "safetensorsfs: cannot start serving requests: %s\n", strerror(err));
		free(ids);
		return -err;
	}
	sem_init(&lp.ended, 0, 0);
	if (fcntl(lp.fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		lp.error = -errno;
	} else {
		if (running)
			*running = &lp; /* before any worker can answer a request */
		if ((started = start_workers(&lp, ids, threads)) == 0)
			lp.error = -EAGAIN;
		else
			wait_for_end(&lp);
	}
	if (lp.error && !started)
		fprintf(stderr, "safetensorsfs: cannot start serving requests: %s\n", strerror(-lp.error));
	stop_workers(&lp, ids, started);
	if (running)
		*running = NULL;
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

int loop_run(struct fuse_session *se, unsigned threads, unsigned spin_us, struct loop **running)
{
	if (spin_us == 0)
		return libfuse_loop(se, threads);
	return polling_loop(se, threads, spin_us, running);
}
