/* Sizes as users write them in options. */
#ifndef FS_UNITS_H
#define FS_UNITS_H

#include <stdint.h>

/* "N", "NK", "NM" or "NG" (powers of 1024) to bytes; -EINVAL for anything else or overflow. */
int parse_size(const char *text, uint64_t *out);

#endif
