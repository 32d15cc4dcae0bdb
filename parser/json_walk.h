/*
 * Walking a JSON object entry by entry: keys and values are parsed one at a
 * time by a reused json-c tokener, so a large document never exists as one
 * DOM.  Shared by the header parser and the shard-index parser.
 */
#ifndef ST_JSON_WALK_H
#define ST_JSON_WALK_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

struct jw {
	const char *what; /* "header", "index": names the document in errors */
	json_tokener *tok;
	const char *json;
	size_t n, pos;
	uint64_t base; /* file offset of json[0], for the byte offsets in errors */
	char *err;     /* ST_ERR_LEN bytes */
	void *ctx;     /* the caller's state, for entry callbacks */
};

/* Checks the text is strict UTF-8 without raw control bytes in strings, then readies the walk. */
int jw_init(struct jw *w, const char *what, const char *json, size_t n, uint64_t base, char *err,
	    void *ctx);
void jw_fini(struct jw *w);

/* Writes "WHAT at byte N" into w->err; returns -EINVAL. */
int jw_fail(struct jw *w, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void jw_skip_ws(struct jw *w);
int jw_peek(const struct jw *w);

/* One JSON value at the cursor; *out is NULL for `null`. */
int jw_value(struct jw *w, json_object **out);
int jw_string(struct jw *w, const char *what, json_object **out);

/* The callback parses the value that follows the key. */
typedef int jw_entry_fn(struct jw *w, const char *key, size_t key_len, size_t key_at);

/* Walks `{ "key": value, ... }` at the cursor. */
int jw_object(struct jw *w, jw_entry_fn *on_entry);

/* After the top-level value only whitespace may remain. */
int jw_end(struct jw *w);

#endif
