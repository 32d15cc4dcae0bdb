/*
 * The host backend: a buffer is a 0600 file in /dev/shm (tmpfs), mapped here while it
 * lives; reader threads pread straight into the mapping. Its handle is the file's path, for
 * clients to open and mmap. Freeing unlinks it; clients' mappings stay valid until they
 * unmap. (A daemon killed with SIGKILL leaves its files there: /dev/shm/safetensorsfs-PID-*.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define SHM_DIR "/dev/shm"

static int create_shm(struct gpu_buffer *b, char *err, size_t errlen)
{
	for (int tries = 0; tries < 16; tries++) {
		uint64_t r = 0;

		if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
			r = (uint64_t)gd_now() * 1000003u ^ (uint64_t)tries << 48 ^ (uint64_t)(uintptr_t)b;
		gd_say(b->path, sizeof b->path, SHM_DIR "/safetensorsfs-%ld-%016llx", (long)getpid(),
			 (unsigned long long)r);
		b->fd = open(b->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (b->fd >= 0)
			return 0;
		if (errno != EEXIST)
			return gd_fail(-errno, err, errlen, "host: creating %s: %s", b->path,
				       strerror(errno));
	}
	return gd_fail(-EEXIST, err, errlen, "host: no free name in " SHM_DIR);
}

int gd_host_alloc(struct gpu_buffer *b, char *err, size_t errlen)
{
	int rc;

	b->fd = -1;
	if ((rc = create_shm(b, err, errlen)) < 0)
		return rc;
	/* Exactly 0600 whatever the umask. */
	if (fchmod(b->fd, 0600) < 0) {
		rc = gd_fail(-errno, err, errlen, "host: chmod %s: %s", b->path, strerror(errno));
		goto fail;
	}
	/* Reserve the pages now: a full /dev/shm is ENOSPC here, not SIGBUS later. */
	rc = posix_fallocate(b->fd, 0, (off_t)b->capacity);
	if (rc == EOPNOTSUPP || rc == EINVAL)
		rc = ftruncate(b->fd, (off_t)b->capacity) < 0 ? errno : 0;
	if (rc) {
		rc = gd_fail(-rc, err, errlen, "host: %llu bytes in " SHM_DIR ": %s",
			     (unsigned long long)b->capacity, strerror(rc));
		goto fail;
	}
	b->ptr = mmap(NULL, (size_t)b->capacity, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (b->ptr == MAP_FAILED) {
		b->ptr = NULL;
		rc = gd_fail(-errno, err, errlen, "host: mmap %s: %s", b->path, strerror(errno));
		goto fail;
	}
	return 0;
fail:
	close(b->fd);
	unlink(b->path);
	b->fd = -1;
	return rc;
}

static int host_piece(void *ctx, const struct gpu_range *p, char *err, size_t errlen)
{
	struct gpu_buffer *b = ctx;

	return gd_read_range(p, (char *)b->ptr + p->dst_offset, (size_t)p->nbytes, p->file_offset, err, errlen);
}

int gd_host_upload(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		   uint64_t chunk, struct gpu_upload_stats *st, char *err, size_t errlen)
{
	char msg[256];
	int rc;

	st->path = "host";
	rc = gd_parallel(r, n, chunk, readers, host_piece, b, msg, sizeof msg);
	if (rc < 0)
		return gd_fail(rc, err, errlen, "host: %s", msg);
	return 0;
}

void gd_host_free(struct gpu_buffer *b)
{
	if (b->ptr)
		munmap(b->ptr, (size_t)b->capacity);
	if (b->fd >= 0) {
		close(b->fd);
		unlink(b->path);
	}
	b->ptr = NULL;
	b->fd = -1;
}
