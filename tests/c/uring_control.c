/*
 * Drives one open /.control with io_uring, writes and reads submitted together with
 * IOSQE_ASYNC: the kernel's workers then send them to the daemon at once, with no f_pos
 * lock between them (what plain write(2)/read(2) on one file would give).
 * Usage: uring_control FILE ROUNDS.  Writes the bytes read to stdout; exit 77 when this
 * kernel (or a seccomp policy) offers no io_uring, so the test can skip visibly.
 * Raw syscalls: liburing need not be installed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DEPTH 64
#define READ_SIZE 96

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static int ring_open(struct ring *r)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	r->fd = (int)syscall(__NR_io_uring_setup, DEPTH, &p);
	if (r->fd < 0)
		return -errno;
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		return -errno;
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	return 0;
}

static void push(struct ring *r, int op, int fd, void *buf, unsigned len, unsigned long long tag)
{
	unsigned tail = *r->sq_tail, i = tail & *r->sq_mask;
	struct io_uring_sqe *e = &r->sqes[i];

	memset(e, 0, sizeof(*e));
	e->opcode = (unsigned char)op;
	e->flags = IOSQE_ASYNC;
	e->fd = fd;
	e->addr = (unsigned long long)(uintptr_t)buf;
	e->len = len;
	e->off = (unsigned long long)-1; /* the file position: what write(2) would use */
	e->user_data = tag;
	r->sq_array[i] = i;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

/* One round: DEPTH/2 writes of `line` and DEPTH/2 reads, all in flight together. */
static int round_trip(struct ring *r, int fd, const char *line, char (*bufs)[READ_SIZE])
{
	for (int i = 0; i < DEPTH / 2; i++) {
		push(r, IORING_OP_WRITE, fd, (void *)line, (unsigned)strlen(line), 0);
		push(r, IORING_OP_READ, fd, bufs[i], READ_SIZE, (unsigned long long)i + 1);
	}
	if (syscall(__NR_io_uring_enter, r->fd, DEPTH, DEPTH, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -errno;
	for (int done = 0; done < DEPTH;) {
		unsigned head = *r->cq_head;
		if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
			if (syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
				return -errno;
			continue;
		}
		struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
		if (c->res < 0) {
			fprintf(stderr, "uring_control: %s: %s\n", c->user_data ? "read" : "write", strerror(-c->res));
			return c->res;
		}
		if (c->user_data)
			fwrite(bufs[c->user_data - 1], 1, (size_t)c->res, stdout);
		__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
		done++;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static char bufs[DEPTH / 2][READ_SIZE];
	struct ring r;
	int rc, fd, rounds = argc > 2 ? atoi(argv[2]) : 0;

	if (argc != 3 || rounds <= 0) {
		fprintf(stderr, "usage: uring_control FILE ROUNDS\n");
		return 2;
	}
	if ((rc = ring_open(&r)) < 0) {
		fprintf(stderr, "uring_control: no io_uring here: %s\n", strerror(-rc));
		return 77;
	}
	if ((fd = open(argv[1], O_RDWR)) < 0) {
		perror(argv[1]);
		return 1;
	}
	for (int i = 0; i < rounds; i++)
		if ((rc = round_trip(&r, fd, i % 2 ? "list\n" : "backends\n", bufs)) < 0)
			return 1;
	/* What is left, in order, by plain reads. */
	for (ssize_t n; (n = read(fd, bufs[0], READ_SIZE)) > 0;)
		fwrite(bufs[0], 1, (size_t)n, stdout);
	close(fd);
	return 0;
}
