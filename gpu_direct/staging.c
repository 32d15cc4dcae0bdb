/*
 * Reader threads, shared by every backend.
 *
 * gd_parallel: threads take pieces (at most `chunk` bytes of one range) from a shared cursor
 * and hand each to a callback: preads straight into host memory (host backend), or one
 * cuFileRead each (GPUDirect Storage).
 *
 * gd_pipeline: the staging pipeline of the GPU backends. Each staging buffer ("slot") goes
 * round FREE -> READING (a reader thread preads a batch into it) -> FILLED -> IN FLIGHT (the
 * calling thread has started its copy to the device) -> FREE (the copy is complete). With
 * two slots per reader, a reader fills one buffer while the other's copy runs, so reads and
 * bus transfers overlap. Only the calling thread talks to the GPU runtime.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

int gd_fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

int gd_say(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!buf || !len)
		return 0;
	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n;
}

double gd_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

unsigned gd_readers(unsigned asked)
{
	long cpus;

	if (asked)
		return asked > GD_MAX_READERS ? GD_MAX_READERS : asked;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		cpus = 1;
	return cpus > GD_DEFAULT_MAX_READERS ? GD_DEFAULT_MAX_READERS : (unsigned)cpus;
}

int gd_read_range(const struct gpu_range *r, void *buf, size_t len, uint64_t off, char *err, size_t errlen)
{
	int rc;

	if (r->fd >= 0)
		return gd_pread_full(r->fd, buf, len, off, err, errlen);
	if ((rc = r->read(r->read_ctx, buf, len, off)) < 0)
		return gd_fail(rc, err, errlen, "read at offset %llu: %s", (unsigned long long)off, strerror(-rc));
	return 0;
}

int gd_pread_full(int fd, void *buf, size_t len, uint64_t off, char *err, size_t errlen)
{
	char *p = buf;

	while (len) {
		size_t want = len > (1u << 30) ? (1u << 30) : len;
		ssize_t got = pread(fd, p, want, (off_t)off);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			return gd_fail(-errno, err, errlen, "read at offset %llu: %s",
				       (unsigned long long)off, strerror(errno));
		}
		if (got == 0)
			return gd_fail(-EIO, err, errlen,
				       "file ends before offset %llu (it shrank?)",
				       (unsigned long long)off);
		p += got;
		off += (uint64_t)got;
		len -= (size_t)got;
	}
	return 0;
}

/* The next piece of at most chunk bytes, or 0 when all have been handed out. */
struct cursor {
	const struct gpu_range *r;
	size_t n, i;
	uint64_t off, chunk;
};

static int next_piece(struct cursor *c, struct gpu_range *piece)
{
	while (c->i < c->n && c->off >= c->r[c->i].nbytes) {
		c->i++;
		c->off = 0;
	}
	if (c->i >= c->n)
		return 0;
	const struct gpu_range *r = &c->r[c->i];
	uint64_t len = r->nbytes - c->off;

	if (len > c->chunk)
		len = c->chunk;
	piece->fd = r->fd;
	piece->read = r->read;
	piece->read_ctx = r->read_ctx;
	piece->file_offset = r->file_offset + c->off;
	piece->dst_offset = r->dst_offset + c->off;
	piece->nbytes = len;
	c->off += len;
	return 1;
}

uint64_t gd_count_pieces(const struct gpu_range *r, size_t n, uint64_t chunk)
{
	uint64_t pieces = 0;

	for (size_t i = 0; i < n; i++)
		pieces += r[i].nbytes / chunk + (r[i].nbytes % chunk != 0);
	return pieces;
}

/*
 * The pipeline's unit: up to chunk bytes that land side by side in the buffer, read from one
 * range or from several whose destinations follow each other (a column slice is one small
 * range per row), so that one staging buffer and one copy carry them all.
 */
struct batch {
	size_t i;     /* first range */
	uint64_t off; /* into it */
	uint64_t nbytes, dst;
};

static int next_batch(struct cursor *c, struct batch *b)
{
	struct gpu_range piece;

	if (!next_piece(c, &piece))
		return 0;
	b->i = c->i;
	b->off = c->off - piece.nbytes;
	b->nbytes = piece.nbytes;
	b->dst = piece.dst_offset;
	/* Whole following ranges join while they land right after it and fit. */
	while (c->off == c->r[c->i].nbytes && c->i + 1 < c->n) {
		const struct gpu_range *next = &c->r[c->i + 1];

		if (next->dst_offset != b->dst + b->nbytes || next->nbytes > c->chunk - b->nbytes)
			break;
		c->i++;
		c->off = next->nbytes;
		b->nbytes += next->nbytes;
	}
	return 1;
}

/* Reads batch b's bytes into buf, range by range. */
static int read_batch(const struct gpu_range *r, const struct batch *b, char *buf, char *err,
		      size_t errlen)
{
	uint64_t done = 0, off = b->off;

	for (size_t i = b->i; done < b->nbytes; i++, off = 0) {
		uint64_t len = r[i].nbytes - off;

		if (len > b->nbytes - done)
			len = b->nbytes - done;
		int rc = gd_read_range(&r[i], buf + done, (size_t)len, r[i].file_offset + off, err, errlen);
		if (rc < 0)
			return rc;
		done += len;
	}
	return 0;
}

/* ---- gd_parallel ---- */

struct par {
	pthread_mutex_t lock;
	struct cursor cur;
	gd_piece_fn fn;
	void *ctx;
	int rc;
	char *err;
	size_t errlen;
};

static void *par_worker(void *arg)
{
	struct par *p = arg;
	struct gpu_range piece;
	char msg[256];

	for (;;) {
		pthread_mutex_lock(&p->lock);
		int more = p->rc == 0 && next_piece(&p->cur, &piece);
		pthread_mutex_unlock(&p->lock);
		if (!more)
			return NULL;
		msg[0] = 0;
		int rc = p->fn(p->ctx, &piece, msg, sizeof msg);
		if (rc < 0) {
			pthread_mutex_lock(&p->lock);
			if (p->rc == 0) {
				p->rc = rc;
				gd_fail(rc, p->err, p->errlen, "%s", msg);
			}
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
	}
}

int gd_parallel(const struct gpu_range *r, size_t n, uint64_t chunk, unsigned threads,
		gd_piece_fn fn, void *ctx, char *err, size_t errlen)
{
	struct par p = {
		.cur = { .r = r, .n = n, .chunk = chunk ? chunk : GD_DEFAULT_CHUNK },
		.fn = fn,
		.ctx = ctx,
		.err = err,
		.errlen = errlen,
	};
	pthread_t tid[GD_MAX_READERS];
	unsigned started = 0;
	uint64_t pieces = gd_count_pieces(r, n, p.cur.chunk);

	if (threads > GD_MAX_READERS)
		threads = GD_MAX_READERS;
	if (threads > pieces)
		threads = (unsigned)pieces;
	pthread_mutex_init(&p.lock, NULL);
	/* The caller is one of the threads; if some cannot be started, fewer do the work. */
	while (started + 1 < threads && pthread_create(&tid[started], NULL, par_worker, &p) == 0)
		started++;
	par_worker(&p);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&p.lock);
	return p.rc;
}

/* ---- gd_pipeline ---- */

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_FILLED, SLOT_IN_FLIGHT };

struct pipe {
	pthread_mutex_t lock;
	pthread_cond_t slot_freed;  /* readers wait for a free slot */
	pthread_cond_t slot_filled; /* the caller waits for a filled slot */
	struct cursor cur;
	void *const *slots;
	unsigned nslots;
	enum slot_state *state;
	struct batch *piece;     /* what each slot holds */
	unsigned *filled;        /* FIFO of FILLED slots */
	unsigned filled_head, filled_n;
	unsigned reading;        /* slots in READING */
	int stop;                /* no more pieces or an error: readers finish */
	int rc;
	char *err;
	size_t errlen;
};

static void pipe_error(struct pipe *p, int rc, const char *msg)
{
	if (p->rc == 0) {
		p->rc = rc;
		gd_fail(rc, p->err, p->errlen, "%s", msg);
	}
	p->stop = 1;
	pthread_cond_broadcast(&p->slot_freed);
	pthread_cond_broadcast(&p->slot_filled);
}

static void *pipe_reader(void *arg)
{
	struct pipe *p = arg;
	char msg[256];

	pthread_mutex_lock(&p->lock);
	for (;;) {
		unsigned s = p->nslots;

		if (p->stop)
			break;
		for (unsigned i = 0; i < p->nslots; i++)
			if (p->state[i] == SLOT_FREE) {
				s = i;
				break;
			}
		if (s == p->nslots) {
			pthread_cond_wait(&p->slot_freed, &p->lock);
			continue;
		}
		if (!next_batch(&p->cur, &p->piece[s])) {
			p->stop = 1; /* the others find no piece either */
			pthread_cond_broadcast(&p->slot_freed);
			pthread_cond_broadcast(&p->slot_filled);
			break;
		}
		p->state[s] = SLOT_READING;
		p->reading++;
		struct batch piece = p->piece[s];
		pthread_mutex_unlock(&p->lock);

		int rc = read_batch(p->cur.r, &piece, p->slots[s], msg, sizeof msg);

		pthread_mutex_lock(&p->lock);
		p->reading--;
		if (rc < 0) {
			p->state[s] = SLOT_FREE;
			pipe_error(p, rc, msg);
			break;
		}
		p->state[s] = SLOT_FILLED;
		p->filled[(p->filled_head + p->filled_n++) % p->nslots] = s;
		pthread_cond_signal(&p->slot_filled);
	}
	/* The caller may be waiting for this reader's last slot. */
	pthread_cond_broadcast(&p->slot_filled);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int gd_pipeline(const struct gpu_range *r, size_t n, void *const *slots, unsigned nslots,
		size_t slot_bytes, unsigned readers, const struct gd_sink *sink, char *err,
		size_t errlen)
{
	struct pipe p = {
		.cur = { .r = r, .n = n, .chunk = slot_bytes },
		.slots = slots,
		.nslots = nslots,
		.err = err,
		.errlen = errlen,
	};
	pthread_t tid[GD_MAX_READERS];
	unsigned started = 0;
	unsigned *in_flight; /* FIFO of IN_FLIGHT slots, oldest first */
	unsigned flight_head = 0, flight_n = 0;
	char msg[256];

	if (nslots == 0 || slot_bytes == 0)
		return gd_fail(-EINVAL, err, errlen, "staging: no buffers");
	if (readers > GD_MAX_READERS)
		readers = GD_MAX_READERS;
	if (readers > nslots)
		readers = nslots;
	if (readers == 0)
		readers = 1;
	p.state = calloc(nslots, sizeof *p.state);
	p.piece = calloc(nslots, sizeof *p.piece);
	p.filled = calloc(nslots, sizeof *p.filled);
	in_flight = calloc(nslots, sizeof *in_flight);
	if (!p.state || !p.piece || !p.filled || !in_flight) {
		free(p.state);
		free(p.piece);
		free(p.filled);
		free(in_flight);
		return gd_fail(-ENOMEM, err, errlen, "staging: out of memory");
	}
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.slot_freed, NULL);
	pthread_cond_init(&p.slot_filled, NULL);

	while (started < readers && pthread_create(&tid[started], NULL, pipe_reader, &p) == 0)
		started++;

	pthread_mutex_lock(&p.lock);
	if (started == 0)
		pipe_error(&p, -EAGAIN, "staging: cannot start a reader thread");
	for (;;) {
		if (p.filled_n && p.rc == 0) {
			/* Start the copy of the oldest filled slot. */
			unsigned s = p.filled[p.filled_head];

			p.filled_head = (p.filled_head + 1) % nslots;
			p.filled_n--;
			p.state[s] = SLOT_IN_FLIGHT;
			struct batch piece = p.piece[s];
			pthread_mutex_unlock(&p.lock);
			int rc = sink->submit(sink->ctx, s, slots[s], piece.dst, (size_t)piece.nbytes,
					      msg, sizeof msg);
			pthread_mutex_lock(&p.lock);
			/* Even a failed submit is completed below: part of it may be queued. */
			in_flight[(flight_head + flight_n++) % nslots] = s;
			if (rc < 0)
				pipe_error(&p, rc, msg);
			continue;
		}
		if (flight_n) {
			/* Wait for the oldest copy and give its slot back to the readers. */
			unsigned s = in_flight[flight_head];

			flight_head = (flight_head + 1) % nslots;
			flight_n--;
			pthread_mutex_unlock(&p.lock);
			int rc = sink->complete(sink->ctx, s, msg, sizeof msg);
			pthread_mutex_lock(&p.lock);
			p.state[s] = SLOT_FREE;
			pthread_cond_signal(&p.slot_freed);
			if (rc < 0)
				pipe_error(&p, rc, msg);
			continue;
		}
		if (p.stop && p.reading == 0 && (p.filled_n == 0 || p.rc != 0))
			break;
		pthread_cond_wait(&p.slot_filled, &p.lock);
	}
	p.stop = 1;
	pthread_cond_broadcast(&p.slot_freed);
	pthread_mutex_unlock(&p.lock);

	for (unsigned i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_cond_destroy(&p.slot_filled);
	pthread_cond_destroy(&p.slot_freed);
	pthread_mutex_destroy(&p.lock);
	free(p.state);
	free(p.piece);
	free(p.filled);
	free(in_flight);
	return p.rc;
}
