/*
 * Raising the mount's readahead window.  The kernel cuts buffered reads on a
 * FUSE mount to its bdi's read_ahead_kb (128 KiB by default), far below
 * max_read, and only root may raise it.  FUSE_INIT's reply lowers the window
 * to its max_readahead, so it is set while INIT is answered (op_init): the
 * window first, then a max_readahead as large.  The bdi is found through
 * /proc/self/mountinfo, not by a stat of the mountpoint, which would hold
 * the mount busy while it waits for INIT and make an unmount right after
 * the mount fail with EBUSY.
 */
#ifndef FS_READAHEAD_H
#define FS_READAHEAD_H

/* Sets read_ahead_kb of the FUSE mount at MOUNTPOINT (the newest there); 0 or a negative errno. */
int readahead_set(const char *mountpoint, unsigned kb);

#endif
