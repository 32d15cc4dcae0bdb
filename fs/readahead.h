/*
 * Raising the mount's readahead window.  The kernel cuts buffered reads on a
 * FUSE mount to its bdi's read_ahead_kb (128 KiB by default), far below
 * max_read; only root may raise it, and only after FUSE_INIT has set it.
 */
#ifndef FS_READAHEAD_H
#define FS_READAHEAD_H

#include <pthread.h>

struct readahead_tuner {
	pthread_t thread;
	const char *mountpoint;
	unsigned kb;
	int debug;
	int started;
};

/* Starts a thread that waits for the mount to answer, then sets read_ahead_kb. */
void readahead_start(struct readahead_tuner *r, const char *mountpoint, unsigned kb, int debug);
void readahead_join(struct readahead_tuner *r);

#endif
