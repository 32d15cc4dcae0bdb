/*
 * /.control: one command line in, one JSON line out, per open file handle;
 * uploads of tensors (and raw slice views) to a device through gpu_direct/,
 * whose buffers live until `free ID` or unmount.
 */
#ifndef FS_CONTROL_H
#define FS_CONTROL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <fuse_lowlevel.h>

struct fs;
struct gpu_buffer;

struct control_buffer {
	uint64_t id;
	char device[32];
	uint64_t bytes;
	size_t tensors;
	struct gpu_buffer *buf;
};

/* The lock guards only the buffer table, the totals and the list of sessions: short
 * updates, never a copy. */
struct control {
	pthread_mutex_t lock;
	struct control_buffer *bufs;
	size_t n, cap;
	uint64_t next_id;
	const char *default_device; /* -o gpu=: auto, cuda, hip, host or none */
	uint64_t max_upload;        /* -o max_upload=: bytes all buffers may hold together */
	uint64_t resident;          /* bytes the buffers (and uploads under way) hold */
	size_t pending_in;          /* bytes of queued and unfinished lines over all sessions */
	struct control_session *sessions; /* open ones: those the kernel never released go at unmount */
};

/*
 * One open /.control.  A write only queues its lines: the kernel holds the file's lock
 * over every write, so a command run there would make every other session wait for it.
 * The session's next read (or its close) runs what is queued, in order, and no lock is
 * held while a command runs.  `lock` guards the buffers (io_uring can send a read and a
 * write at once); `running` keeps two readers of one handle from running its commands at
 * once, out of order.  Other sessions never wait for either.
 */
struct control_session {
	pthread_mutex_t lock, running;
	struct control *owner;
	struct control_session *prev, *next;
	char *in;               /* queued lines, each a tag byte and text and '\n'; then the unfinished one */
	size_t in_len, in_cap;
	size_t line_start;      /* where the unfinished line's tag is, when in_line */
	int in_line;            /* a line has begun and its newline not come */
	int skipping;           /* a line passed MAX_LINE: dropped up to its newline */
	char *out;
	size_t out_len, out_off, out_cap;
};

/* max_upload: "123", "64K", "8M", "2G" (powers of 1024) or NULL for half the RAM.
 * Returns 0 or -EINVAL (bad size) or -errno. */
int control_init(struct control *c, const char *default_device, const char *max_upload);
void control_free(struct control *c); /* frees every buffer and session left: unmount */

struct control_session *control_open(struct control *c);
void control_close(struct control_session *s);
/* Queues the lines written.  Returns 0, -ENOMEM, or -ENOBUFS when the sessions' queued and
 * unfinished lines together pass their bound. */
int control_write(struct control_session *s, const char *data, size_t len);
/* Runs the queued lines, then copies reply bytes: how many, or -ENOMEM.  A long command
 * gives up when `req` is interrupted or the daemon is stopping. */
ssize_t control_read(struct fs *fs, struct control_session *s, fuse_req_t req, char *buf, size_t size);
/* At close: runs what is queued, so that `echo free 1 > .control` does what it says. */
void control_flush(struct fs *fs, struct control_session *s, fuse_req_t req);

#endif
