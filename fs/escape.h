/*
 * Tensor name parts as file names.
 *
 * Escaping is reversible: '%', '/' and NUL become %XX; an empty part becomes
 * a lone "%"; a part that would start with '.' in the root (where the
 * reserved names live, and where "." and ".." could appear in the flat
 * layout) gets that dot as %2E, and so does a part that is "." or ".."
 * anywhere else (the flat layout of a diffusers subfolder).
 *
 * An escaped part longer than a file name may be (NAME_MAX, 255 bytes) would
 * make listings fail (the kernel refuses entries past 1024 bytes; one larger
 * than the reader's buffer ends the listing early), so it gets an alias
 * instead: its first ALIAS_PREFIX bytes (fewer where that would cut a %XX
 * escape or a UTF-8 character), then "%~", then the first 32 hex digits of
 * the SHA-256 of the raw part.  "%~" never occurs in an escaped part, and the
 * hash keeps aliases apart, so an alias names one part only.
 */
#ifndef FS_ESCAPE_H
#define FS_ESCAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Worst case: every byte becomes three, or an empty part becomes "%"; plus the NUL. */
#define ESCAPED_MAX(len) ((len) * 3 + 2)

/* Bytes of the escaped part an alias keeps: 194 in all, leaving room for views' suffixes. */
#define ALIAS_PREFIX 160
#define ALIAS_HASH_HEX 32
#define ALIAS_MAX (ALIAS_PREFIX + 2 + ALIAS_HASH_HEX)

/* Writes the escaped part into `out` (ESCAPED_MAX(len) bytes) and returns its length. */
size_t escape_part(char *out, const char *part, size_t len, bool in_root);

/*
 * The file name of a part: escape_part's, or its alias where that is longer than ROOM
 * (at most NAME_MAX, at least ALIAS_MAX).  `out` as for escape_part; returns the length.
 */
size_t name_part(char *out, const char *part, size_t len, bool in_root, size_t room);

/* SHA-256 of data[0..len) into out. */
void sha256(const void *data, size_t len, uint8_t out[32]);

#endif
