/* Extended attributes: the values of docs/CONTRACT.md's table, built on demand. */
#ifndef FS_XATTR_H
#define FS_XATTR_H

#include <stddef.h>

#include "fs.h"

#define XATTR_PREFIX "user.safetensors."

/* *value is malloc'ed; returns 0, -ENODATA for a name the node lacks, or -ENOMEM. */
int xattr_get(const struct fs *fs, const struct node *n, const char *name, char **value, size_t *len);

/* The NUL-separated list of every name xattr_get answers for `n`; *list is malloc'ed. */
int xattr_list(const struct fs *fs, const struct node *n, char **list, size_t *len);

#endif
