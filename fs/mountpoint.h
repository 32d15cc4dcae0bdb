/*
 * MOUNTPOINT checked before anything is mounted, so that a mistake gets one
 * line instead of a mount that answers only errors: it must be a directory
 * (not SOURCE, not a file), and no FUSE mount may already sit on it, live or
 * with its daemon gone (a second mount would stack over the first).
 */
#ifndef FS_MOUNTPOINT_H
#define FS_MOUNTPOINT_H

#include <stddef.h>

/* 0, or -1 with the reason in WHY (without the "MOUNTPOINT: " prefix). */
int mountpoint_check(const char *mountpoint, const char *source, char *why, size_t n);

#endif
