/*
 * The request loop: a pool of threads that take turns reading /dev/fuse.
 */
#ifndef SAFETENSORSFS_LOOP_H
#define SAFETENSORSFS_LOOP_H

#include <fuse_lowlevel.h>

/* The default -o spin_us: how long the reader polls for the next request before it sleeps. */
#define LOOP_DEFAULT_SPIN_US 50

/*
 * Serves SE with THREADS threads (1 answers every request in turn) until the
 * session ends: unmounted, or fuse_session_exit() from a signal handler.
 * SPIN_US 0 never polls, and uses libfuse's own loops.  Returns 0 (or, from
 * libfuse's loops, the signal that ended it), or a negative errno when
 * reading the device failed for another reason.
 */
int loop_run(struct fuse_session *se, unsigned threads, unsigned spin_us);

#endif
