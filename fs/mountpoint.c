#include "mountpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

static int say(char *why, size_t n, const char *text)
{
	snprintf(why, n, "%s", text);
	return -1;
}

/*
 * 1 when the directory FD is the root of a FUSE mount, 0 when not, or a
 * negative errno: ENOTCONN where the mount's daemon is gone.  statfs asks the
 * filesystem itself, so a dead mount answers ENOTCONN even where the kernel
 * still has the root's attributes cached; statx knows mount roots.
 */
static int fuse_mount_root(int fd)
{
	struct statx stx;
	struct statfs sfs;

	if (fstatfs(fd, &sfs) < 0)
		return -errno;
	if (sfs.f_type != FUSE_SUPER_MAGIC)
		return 0;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) < 0)
		return -errno;
	return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

/* Why the directory cannot be used, from the errno of opening or looking at it. */
static int refuse(char *why, size_t n, int e)
{
	if (e == ENOTDIR)
		return say(why, n, "not a directory (the mountpoint must be an existing directory)");
	if (e == ENOTCONN)
		return say(why, n, "a FUSE mount whose daemon is gone is still there: unmount it first "
				   "(fusermount3 -u)");
	return say(why, n, strerror(e));
}

int mountpoint_check(const char *mountpoint, const char *source, char *why, size_t n)
{
	struct stat mst, sst;
	int fd = open(mountpoint, O_PATH | O_DIRECTORY | O_CLOEXEC), rc = 0, root;

	if (fd < 0)
		return refuse(why, n, errno);
	if ((root = fuse_mount_root(fd)) < 0)
		rc = refuse(why, n, -root);
	else if (root)
		rc = say(why, n, "a FUSE mount is already there: unmount it first (fusermount3 -u), "
				 "or mount elsewhere");
	else if (fstat(fd, &mst) < 0)
		rc = refuse(why, n, errno);
	else if (stat(source, &sst) == 0 && sst.st_dev == mst.st_dev && sst.st_ino == mst.st_ino)
		rc = say(why, n, "is SOURCE itself: mounting over it would hide the model");
	close(fd);
	return rc;
}
