/*
 * SOURCE resolved to its backing files ("shards"), each opened once,
 * read-only, with its header parsed and validated, and checked against the
 * others and against the shard index where there is one.
 */
#ifndef FS_SOURCE_H
#define FS_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "../parser/header.h"
#include "../parser/index.h"

struct shard {
	int fd;
	char *path;
	char *label;        /* the path below SOURCE: the user.safetensors.file value */
	uint32_t component; /* index into source.components */
	struct timespec mtime;      /* the tree's file times */
	struct shard_identity {     /* what the file was when its header was read: shard_changed */
		dev_t dev;
		ino_t ino;
		off_t size;
		struct timespec mtime, ctime;
	} seen;
	struct st_header hdr;
};

/*
 * A set of shards that share one namespace: the model itself, or in a
 * diffusers-style folder one subfolder (unet/, text_encoder/, ...), which
 * becomes a top-level directory.
 */
struct component {
	char *name; /* "" for the model itself */
	char *dir;
	bool has_index;
	struct st_index ix;
	size_t first, count; /* its shards: source.shards[first .. first+count) */
	struct st_metadata metadata; /* its shards' and index's, when it is a directory (name != "") */
};

struct source {
	struct shard *shards;
	size_t n_shards, cap_shards;
	struct component *components;
	size_t n_components, cap_components;
	/* The root's: merged over all shards, with the index's when the model is the root (one
	 * unnamed component); each named component's index stays with its own directory. */
	struct st_metadata metadata;
	/* .header.json of several shards is {"label":header,...}: glue[i] precedes shard i's header. */
	char **glue;
	char *warning; /* a line to print before mounting, or NULL */
	const char *variant; /* -o variant=, or NULL: which files of a folder to take (folder.h) */
	bool variant_found;  /* some folder had a file or index of that variant */
	bool named_file;     /* SOURCE is the one shard itself: main.c prints its name already */
};

/* Returns 0, or a negative errno with one line in `err` (without the "SOURCE: " prefix). */
int source_open(const char *path, const char *variant, struct source *src, char err[ST_ERR_LEN]);
void source_close(struct source *src);

/*
 * Whether the backing file was truncated, written, replaced or deleted since
 * its header was read: then its bytes can no longer be trusted to match the
 * header.  The one definition of "the file changed", for reads and uploads
 * alike: another size, mtime or ctime (to the nanosecond), another inode, or
 * no link left.  Writers update the times before they change bytes, so a
 * check made after reading catches every write that the read could have seen.
 */
int shard_changed(const struct shard *sh);

/* Reads exactly `len` bytes at `off`; returns 0, -EIO on a short read, or -errno. */
int shard_pread(const struct shard *sh, void *buf, size_t len, uint64_t off);
/* What of [off, off+len) the page cache holds from OFF on, without waiting for the disk:
 * the bytes read (0 when none, or when the filesystem cannot say). */
size_t shard_pread_cached(const struct shard *sh, void *buf, size_t len, uint64_t off);

#endif
