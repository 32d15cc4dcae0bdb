/*
 * MOUNTPOINT opened once and checked before anything is mounted, then, as
 * root, mounted on through that descriptor (/proc/self/fd/N), so the mount lands
 * on the very directory that was checked even if its path is changed
 * meanwhile (a parent renamed, a symbolic link swapped in: a root daemon
 * would mount over whatever that led to).  A mistake gets one line instead
 * of a mount that answers only errors: it must be a directory (not SOURCE,
 * not a file), and no FUSE mount may already sit on it, live or with its
 * daemon gone (a second mount would stack over the first).
 */
#ifndef FS_MOUNTPOINT_H
#define FS_MOUNTPOINT_H

#include <stddef.h>

#define MOUNTPOINT_FD_PATH_MAX 32

/*
 * An O_PATH descriptor of MOUNTPOINT and, when run as root, its
 * /proc/self/fd path in FD_PATH to mount on ("" otherwise: fusermount3
 * refuses links, and resolves and checks the path itself); or -1 with the
 * reason in WHY (without the "MOUNTPOINT: " prefix).
 */
int mountpoint_open(const char *mountpoint, const char *source, char fd_path[MOUNTPOINT_FD_PATH_MAX],
		    char *why, size_t n);

#endif
