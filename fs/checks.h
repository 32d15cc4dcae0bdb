/* The rules between shards: unique names, and an index that matches its shards exactly. */
#ifndef FS_CHECKS_H
#define FS_CHECKS_H

#include "source.h"

/* Returns 0, or -EINVAL/-ENOMEM with one line in `err`; may set src->warning. */
int check_shards(struct source *src, char err[ST_ERR_LEN]);

#endif
