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

/* Why the directory FD cannot be mounted on, or 0. */
static int check(int fd, const char *source, char *why, size_t n)
{
	struct stat mst, sst;
	int root = fuse_mount_root(fd);

	if (root < 0)
		return refuse(why, n, -root);
	if (root)
		return say(why, n, "a FUSE mount is already there: unmount it first (fusermount3 -u), "
				   "or mount elsewhere");
	if (fstat(fd, &mst) < 0)
		return refuse(why, n, errno);
	if (stat(source, &sst) == 0 && sst.st_dev == mst.st_dev && sst.st_ino == mst.st_ino)
		return say(why, n, "is SOURCE itself: mounting over it would hide the model");
	return 0;
}

int mountpoint_open(const char *mountpoint, const char *source, char fd_path[MOUNTPOINT_FD_PATH_MAX],
		    char *why, size_t n)
{
	/* O_NOFOLLOW: libfuse has resolved every link in MOUNTPOINT already, so a
	 * link here was put there since. */
	int fd = open(mountpoint, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return errno == ELOOP ? say(why, n, "became a symbolic link while being mounted") : refuse(why, n, errno);
	if (check(fd, source, why, n) < 0) {
		close(fd);
		return -1;
	}
	/* Root's libfuse mounts with mount(2), which follows the fd's link to the very directory.
	 * Others' goes through fusermount3, which refuses a link and makes its own checks. */
	if (geteuid() == 0)
		snprintf(fd_path, MOUNTPOINT_FD_PATH_MAX, "/proc/self/fd/%d", fd);
	else
		fd_path[0] = '\0';
	return fd;
}
