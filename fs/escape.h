/*
 * Reversible escaping of tensor name parts into file names.
 *
 * '%', '/' and NUL become %XX; an empty part becomes a lone "%"; a part that
 * would start with '.' in the root (where the reserved names live, and where
 * "." and ".." could appear in the flat layout) gets that dot as %2E.
 */
#ifndef FS_ESCAPE_H
#define FS_ESCAPE_H

#include <stdbool.h>
#include <stddef.h>

/* Worst case: every byte becomes three, or an empty part becomes "%"; plus the NUL. */
#define ESCAPED_MAX(len) ((len) * 3 + 2)

/* Writes the escaped part into `out` (ESCAPED_MAX(len) bytes) and returns its length. */
size_t escape_part(char *out, const char *part, size_t len, bool in_root);

#endif
