/* A shard that is a local file: pread, and "changed" as its inode's identity and times. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

struct file_store {
	struct store s;
	struct stat seen; /* what the file was when it was opened */
};

static int file_read(struct store *s, void *buf, size_t len, uint64_t off)
{
	return st_pread_exact(s->fd, buf, len, off);
}

static size_t file_read_cached(struct store *s, void *buf, size_t len, uint64_t off)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	ssize_t got = preadv2(s->fd, &iov, 1, (off_t)off, RWF_NOWAIT);

	return got > 0 ? (size_t)got : 0;
}

/*
 * Truncated, written, replaced or deleted since it was opened: another size, mtime or
 * ctime (to the nanosecond), another inode, or no link left.  Writers update the times
 * before they change bytes, so a check made after reading catches every write that the
 * read could have seen.
 */
static bool file_changed(struct store *s)
{
	const struct stat *was = &((struct file_store *)s)->seen;
	struct stat st;

	if (fstat(s->fd, &st) < 0)
		return true;
	return st.st_nlink == 0 || st.st_dev != was->st_dev || st.st_ino != was->st_ino ||
	       st.st_size != was->st_size || st.st_mtim.tv_sec != was->st_mtim.tv_sec ||
	       st.st_mtim.tv_nsec != was->st_mtim.tv_nsec || st.st_ctim.tv_sec != was->st_ctim.tv_sec ||
	       st.st_ctim.tv_nsec != was->st_ctim.tv_nsec;
}

static void file_close(struct store *s)
{
	close(s->fd);
	free(s);
}

static const struct store_ops file_ops = {
	.read = file_read,
	.read_cached = file_read_cached,
	.changed = file_changed,
	.close = file_close,
};

int store_file_open(const char *path, struct store **out, char err[ST_ERR_LEN])
{
	struct file_store *f = calloc(1, sizeof(*f));
	int fd;

	*out = NULL;
	if (!f)
		return -ENOMEM;
	/* O_NONBLOCK: a fifo or device must be refused, not waited on. */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0) {
		int e = errno;
		free(f);
		snprintf(err, ST_ERR_LEN, "%s", strerror(e));
		return -e;
	}
	if (fstat(fd, &f->seen) < 0 || !S_ISREG(f->seen.st_mode)) {
		close(fd);
		free(f);
		snprintf(err, ST_ERR_LEN, "not a regular file");
		return -EINVAL;
	}
	f->s = (struct store){&file_ops, (uint64_t)f->seen.st_size, f->seen.st_mtim, fd};
	*out = &f->s;
	return 0;
}
