/*
 * Where a shard's bytes live: one interface for every reader (the parser at mount, the
 * FUSE reads, views, /.control uploads), with two implementations: a local file
 * (store_file.c) and an object over HTTP(S) (store_http.c; S3 and the Hub resolve to it).
 * The rule "the backing object changed: its bytes are no longer trusted" lives here,
 * once per implementation: every read after a change fails with -EIO.
 */
#ifndef FS_STORE_H
#define FS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "../parser/header.h"

struct store;

struct store_ops {
	/* Exactly len bytes at off: 0, -EIO (short, or the object changed) or -errno. */
	int (*read)(struct store *s, void *buf, size_t len, uint64_t off);
	/* The same in one request, past the cache (remote only; NULL: read): headers at mount. */
	int (*read_direct)(struct store *s, void *buf, size_t len, uint64_t off);
	/* What of [off, off+len) can be had at once from off on, without waiting: bytes read. */
	size_t (*read_cached)(struct store *s, void *buf, size_t len, uint64_t off);
	/* Whether the object changed since it was opened (checked after a read: source.h). */
	bool (*changed)(struct store *s);
	void (*close)(struct store *s);
};

struct store {
	const struct store_ops *ops;
	uint64_t size;
	struct timespec mtime; /* what the tree shows as the file's times */
	int fd;                /* a local file's, for splice and GPUDirect; -1 for remote objects */
};

static inline int store_read(struct store *s, void *buf, size_t len, uint64_t off)
{
	return len ? s->ops->read(s, buf, len, off) : 0;
}

/* For the header at mount: a remote shard's is one request past what the first one brought. */
static inline int store_read_direct(struct store *s, void *buf, size_t len, uint64_t off)
{
	return !len ? 0 : s->ops->read_direct ? s->ops->read_direct(s, buf, len, off) : s->ops->read(s, buf, len, off);
}

static inline size_t store_read_cached(struct store *s, void *buf, size_t len, uint64_t off)
{
	return s->ops->read_cached ? s->ops->read_cached(s, buf, len, off) : 0;
}

static inline bool store_changed(struct store *s)
{
	return s->ops->changed(s);
}

static inline void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

/* A local regular file (a fifo or device is refused, never waited on). 0 or -errno with err. */
int store_file_open(const char *path, struct store **out, char err[ST_ERR_LEN]);

/* How remote objects of one source are fetched and cached (store_http.c). */
struct http_settings;
struct http_auth;
struct http_pool;
struct block_cache;
struct diskcache;

/* -o block_size= and -o cache_size=: the defaults. */
#define STORE_DEFAULT_BLOCK (1u << 20)
#define STORE_DEFAULT_CACHE (256ull << 20)
/* The memory cache holds at least this many blocks (-o cache_size= is refused below it). */
#define STORE_MIN_BLOCKS 16

struct block_cache *block_cache_new(uint32_t block_size, uint64_t cache_bytes);
void block_cache_free(struct block_cache *c);

/* The threads that fetch blocks, for every object of a source. */
struct fetchers;
struct fetchers *fetchers_new(void);
void fetchers_free(struct fetchers *f);

/* What every object of one remote source shares; all of it outlives the stores. */
struct http_source {
	const struct http_auth *auth;
	const struct http_settings *settings;
	struct http_pool *pool;
	struct block_cache *cache;
	struct fetchers *fetchers;
	struct diskcache *disk; /* -o cache=DIR, or NULL */
};

/* The object at URL, pinned by its first range request (size, ETag), which also brings its
 * first block.  0, or a negative errno with one line in err that names the URL. */
int store_http_open(const char *url, const struct http_source *from, struct store **out, char err[ST_ERR_LEN]);

/* The header is parsed: what the first request brought goes to the cache (no-op locally). */
void store_http_done_opening(struct store *s);


#endif
