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

struct control {
	pthread_mutex_t lock;
	struct control_buffer *bufs;
	size_t n, cap;
	uint64_t next_id;
	const char *default_device; /* -o gpu=: auto, cuda, hip, host or none */
};

struct control_session {
	char *in, *out;
	size_t in_len, out_len, out_off;
};

int control_init(struct control *c, const char *default_device);
void control_free(struct control *c); /* frees every buffer: unmount */

struct control_session *control_open(void);
void control_close(struct control_session *s);
/* Takes bytes written; each complete line is run and its reply queued. Returns 0 or -ENOMEM. */
int control_write(struct fs *fs, struct control_session *s, const char *data, size_t len);
/* Copies queued reply bytes; returns how many. */
size_t control_read(struct control_session *s, char *buf, size_t size);

#endif
