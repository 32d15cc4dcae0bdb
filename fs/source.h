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

#include "../parser/header.h"
#include "../parser/index.h"
#include "http.h"
#include "remote.h"
#include "store.h"

struct shard {
	struct store *store; /* where its bytes are: a local file or a remote object */
	char *path;          /* its file, or its URL (never shown: it may hold a signature) */
	char *label;         /* the path below SOURCE: the user.safetensors.file value */
	uint32_t component;  /* index into source.components */
	struct st_header hdr;
	const uint8_t *hidden; /* per tensor, 1: a packed part of a dense tensor (dequant.h); or NULL */
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
	size_t n_dense;      /* dense shards (dequant.h), after the n_shards files: shards[n_shards..] */
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
	/* Remote sources only (NULL otherwise): what SOURCE resolved to, and how to fetch. */
	struct remote_listing *remote;
	char **remote_esc;   /* remote->paths[i] percent-encoded, as they appear in URLs */
	struct http_settings http; /* the options', and https_only from what SOURCE resolved to */
	struct http_source from; /* what every remote shard's store shares */
};

/* How to open SOURCE: -o variant=, and for remote sources -o cacert=, block_size=, ... */
struct source_opts {
	const char *variant;
	struct http_settings http;
	uint32_t block_size;
	uint64_t cache_size;    /* memory for blocks, or with cache_dir the disk's bound */
	const char *cache_dir;  /* -o cache=DIR, or NULL */
};

/* -o cache_size='s default with -o cache=DIR. */
#define SOURCE_DEFAULT_DISK_CACHE (10ull << 30)

/* Returns 0, or a negative errno with one line in `err` (without the "SOURCE: " prefix). */
int source_open(const char *path, const struct source_opts *opts, struct source *src, char err[ST_ERR_LEN]);
void source_close(struct source *src);

/*
 * Whether the backing file or object changed since its header was read: then its bytes
 * can no longer be trusted to match the header.  What "changed" means is its store's
 * (store.h): checked after a read, it catches every change the read could have seen.
 */
static inline int shard_changed(const struct shard *sh)
{
	return store_changed(sh->store);
}

/* Reads exactly `len` bytes at `off`; returns 0, -EIO on a short read, or -errno. */
static inline int shard_pread(const struct shard *sh, void *buf, size_t len, uint64_t off)
{
	return store_read(sh->store, buf, len, off);
}

/* What of [off, off+len) comes at once from OFF on (the page cache, fetched blocks),
 * without waiting for the disk or the network: the bytes read. */
static inline size_t shard_pread_cached(const struct shard *sh, void *buf, size_t len, uint64_t off)
{
	return store_read_cached(sh->store, buf, len, off);
}

#endif
