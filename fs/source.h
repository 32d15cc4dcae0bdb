/*
 * SOURCE resolved to its backing files ("shards"), each opened once,
 * read-only, with its header parsed and validated.
 */
#ifndef FS_SOURCE_H
#define FS_SOURCE_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "../parser/header.h"

struct shard {
	int fd;
	char *path;
	const char *name; /* basename of path: the user.safetensors.file value */
	struct timespec mtime;
	off_t size;
	struct st_header hdr;
};

struct source {
	struct shard *shards;
	size_t n_shards;
};

/* Returns 0, or a negative errno with one line in `err` (without the "SOURCE: " prefix). */
int source_open(const char *path, struct source *src, char err[ST_ERR_LEN]);
void source_close(struct source *src);

/*
 * Whether the backing file was truncated, written or deleted since it was
 * opened: its bytes can no longer be trusted to match the header.
 */
int shard_changed(const struct shard *sh);

/* Reads exactly `len` bytes at `off`; returns 0, -EIO on a short read, or -errno. */
int shard_pread(const struct shard *sh, void *buf, size_t len, uint64_t off);

#endif
