/*
 * -o cache=DIR: fetched blocks kept on local disk across mounts, bounded by -o cache_size=.
 *
 * One file per block, named by a hash of its key (the object's URL without credentials or
 * query, its ETag or Last-Modified, its size, the block size and number).  The file holds
 * the whole key and a checksum of its bytes, checked on every read, so that a block of
 * another object (a hash collision), a cut-short file or one changed by hand is a miss,
 * and removed, never served.  Files are written under a temporary name and renamed into
 * place, so two mounts may share a directory.  Every failure (the directory deleted or
 * full) only makes a miss or a block not kept: the network has the bytes.
 */
#ifndef FS_DISKCACHE_H
#define FS_DISKCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../parser/header.h"

struct diskcache;

/* DIR (made if missing), at most max_bytes of blocks. 0 or -errno with one line in err. */
int diskcache_open(const char *dir, uint64_t max_bytes, struct diskcache **out, char err[ST_ERR_LEN]);
void diskcache_close(struct diskcache *c);

/* The block under KEY into buf when it is there whole, len bytes, and intact: 0, else -ENOENT. */
int diskcache_get(struct diskcache *c, const char *key, void *buf, size_t len);

/* Keeps the block (best effort: no error is the reader's). */
void diskcache_put(struct diskcache *c, const char *key, const void *buf, size_t len);

#endif
