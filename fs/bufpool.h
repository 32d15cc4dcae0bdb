/*
 * A few reply buffers of the largest read the kernel sends, allocated and touched at mount
 * time, so that reading adds nothing to the daemon's memory (per-request malloc left about
 * a megabyte in each worker thread's arena) and no request pays for fresh pages.
 */
#ifndef SAFETENSORSFS_BUFPOOL_H
#define SAFETENSORSFS_BUFPOOL_H

#include <pthread.h>
#include <stddef.h>

#define BUFPOOL_MAX 16

struct bufpool {
	pthread_mutex_t lock;
	pthread_cond_t freed;
	size_t size;               /* bytes per buffer */
	unsigned nfree;
	char *free[BUFPOOL_MAX];
};

/* count buffers (1 to BUFPOOL_MAX) of size bytes each; 0, -EINVAL or -ENOMEM. */
int bufpool_init(struct bufpool *p, unsigned count, size_t size);
void bufpool_free(struct bufpool *p);

/* A buffer of at least n bytes: from the pool (waiting for one while all are in use) when
 * n fits, else malloc'd. NULL only when malloc fails. */
char *bufpool_get(struct bufpool *p, size_t n);
/* Gives back what bufpool_get returned for n bytes. */
void bufpool_put(struct bufpool *p, char *buf, size_t n);

#endif
