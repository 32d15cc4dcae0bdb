/*
 * DMA straight from the page cache: each piece of the backing file is mmap()ed, pinned
 * read-only (cudaHostRegister) and copied to the device, so no CPU copies its bytes. Alone
 * it is slower than the staging pipeline (pinning costs about as much as the copy), but
 * its bytes cross no CPU, so run beside the pipeline it adds to what the bus carries.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

static int mapped_piece(void *ctx, const struct gpu_range *p, char *err, size_t errlen)
{
	struct gpu_buffer *b = ctx;
	const struct gd_runtime *rt = b->rt;
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t start = p->file_offset / page * page, lead = p->file_offset - start;
	size_t len = (size_t)(lead + p->nbytes);
	void *stream = NULL;
	int rc;

	/* The device is per thread, and these are gd_parallel's threads. */
	if ((rc = rt->set_device(b->device, err, errlen)) < 0)
		return rc;
	char *m = mmap(NULL, len, PROT_READ, MAP_SHARED, p->fd, (off_t)start);
	if (m == MAP_FAILED)
		return gd_fail(-errno, err, errlen, "mmap: %s", strerror(errno));
	if ((rc = rt->host_register(m, len, err, errlen)) < 0) {
		munmap(m, len);
		return rc;
	}
	if ((rc = rt->stream_create(&stream, err, errlen)) == 0) {
		rc = rt->h2d_async((char *)b->ptr + p->dst_offset, m + lead, (size_t)p->nbytes,
				   stream, err, errlen);
		/* Even after a failed submit: part of it may be queued. */
		int rc2 = rt->stream_sync(stream, err, errlen);
		rc = rc < 0 ? rc : rc2;
		rt->stream_destroy(stream);
	}
	rt->host_unregister(m);
	munmap(m, len);
	return rc;
}

int gd_upload_mapped(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned threads,
		     uint64_t chunk, char *err, size_t errlen)
{
	if (!b->rt->host_register)
		return gd_fail(-ENOTSUP, err, errlen, "%s cannot pin the page cache", b->rt->name);
	return gd_parallel(r, n, chunk, threads, mapped_piece, b, err, errlen);
}
