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

struct fs;
struct gpu_buffer;

struct control_buffer {
	uint64_t id;
	char device[32];
	uint64_t bytes;
	size_t tensors;
	struct gpu_buffer *buf;
};

/* The lock guards only the buffer table and the two totals: short updates, never a copy. */
struct control {
	pthread_mutex_t lock;
	struct control_buffer *bufs;
	size_t n, cap;
	uint64_t next_id;
	const char *default_device; /* -o gpu=: auto, cuda, hip, host or none */
	uint64_t max_upload;        /* -o max_upload=: bytes all buffers may hold together */
	uint64_t resident;          /* bytes the buffers (and uploads under way) hold */
	size_t pending_in;          /* bytes of unfinished lines over all sessions */
};

/* One open /.control.  Its lock serialises that handle's reads and writes (io_uring
 * can send both at once); other sessions never wait for it. */
struct control_session {
	pthread_mutex_t lock;
	struct control *owner;  /* set at the first write: whose pending_in to give back */
	char *in, *out;
	size_t in_len, in_cap, out_len, out_off, out_cap;
	int skipping;           /* a line passed MAX_LINE: dropped up to its newline */
};

/* max_upload: "123", "64K", "8M", "2G" (powers of 1024) or NULL for half the RAM.
 * Returns 0 or -EINVAL (bad size) or -errno. */
int control_init(struct control *c, const char *default_device, const char *max_upload);
void control_free(struct control *c); /* frees every buffer: unmount */

struct control_session *control_open(void);
void control_close(struct control_session *s);
/* Takes bytes written; each complete line is run and its reply queued.  Returns 0, -ENOMEM,
 * or -ENOBUFS when the sessions' unfinished lines together pass their bound. */
int control_write(struct fs *fs, struct control_session *s, const char *data, size_t len);
/* Copies queued reply bytes; returns how many. */
size_t control_read(struct control_session *s, char *buf, size_t size);

#endif
