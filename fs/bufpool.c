#include "bufpool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int bufpool_init(struct bufpool *p, unsigned count, size_t size)
{
	memset(p, 0, sizeof(*p));
	if (count == 0 || count > BUFPOOL_MAX)
		return -EINVAL;
	p->size = size;
	while (p->nfree < count) {
		char *b = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
		if (!b) {
			while (p->nfree)
				free(p->free[--p->nfree]);
			return -ENOMEM;
		}
		memset(b, 0, size); /* touched now: resident from the start, not on first read */
		p->free[p->nfree++] = b;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->freed, NULL);
	return 0;
}

/* At unmount: no request is being answered, so every buffer is back. */
void bufpool_free(struct bufpool *p)
{
	while (p->nfree)
		free(p->free[--p->nfree]);
	pthread_cond_destroy(&p->freed);
	pthread_mutex_destroy(&p->lock);
}

char *bufpool_get(struct bufpool *p, size_t n)
{
	char *b;

	if (n > p->size)
		return malloc(n ? n : 1);
	pthread_mutex_lock(&p->lock);
	while (p->nfree == 0)
		pthread_cond_wait(&p->freed, &p->lock);
	b = p->free[--p->nfree];
	pthread_mutex_unlock(&p->lock);
	return b;
}

void bufpool_put(struct bufpool *p, char *buf, size_t n)
{
	if (!buf)
		return;
	if (n > p->size) {
		free(buf);
		return;
	}
	pthread_mutex_lock(&p->lock);
	p->free[p->nfree++] = buf;
	pthread_cond_signal(&p->freed);
	pthread_mutex_unlock(&p->lock);
}
