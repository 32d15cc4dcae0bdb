/*
 * The request loop: a pool of threads that take turns reading /dev/fuse.
 */
#ifndef SAFETENSORSFS_LOOP_H
#define SAFETENSORSFS_LOOP_H

#include <fuse_lowlevel.h>

/* The default -o spin_us: how long the reader polls for the next request before it sleeps. */
#define LOOP_DEFAULT_SPIN_US 50

struct loop;

/*
 * Serves SE with THREADS threads (1 answers every request in turn) until the
 * session ends: unmounted, or fuse_session_exit() from a signal handler.
 * SPIN_US 0 never polls, and uses libfuse's own loops.  RUNNING, when not
 * NULL, points at the polling loop while it runs (NULL otherwise), for
 * loop_step_aside().  Returns 0 (or, from libfuse's loops, the signal that
 * ended it), or a negative errno when reading the device failed for another
 * reason.
 */
int loop_run(struct fuse_session *se, unsigned threads, unsigned spin_us, struct loop **running);

/*
 * Called while answering a request that will take long (a gathered view, a
 * read that waits on the disk): if this thread is the reader, it hands the
 * reader's turn on now, so that other requests are read meanwhile.  LP may
 * be NULL (libfuse's loops).
 */
void loop_step_aside(struct loop *lp);

#endif
