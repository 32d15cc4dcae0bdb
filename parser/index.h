/*
 * A shard index (transformers' `*.safetensors.index.json`):
 * {"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}.
 */
#ifndef ST_INDEX_H
#define ST_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "header.h"

struct st_index_entry {
	uint32_t name, name_len; /* the tensor's name, in st_index.strings */
	uint32_t file;           /* index into st_index.files */
};

struct st_index_file {
	uint32_t name, name_len; /* a shard's file name, in st_index.strings */
};

struct st_index {
	char *strings;
	size_t n_strings, cap_strings;
	struct st_index_entry *entries; /* weight_map, in index order */
	size_t n_entries, cap_entries;
	struct st_index_file *files; /* the distinct shard files, sorted by name */
	size_t n_files, cap_files;
	struct st_meta *meta; /* "metadata": strings as they are, other values as JSON text */
	size_t n_meta, cap_meta;
	char *metadata_json; /* the "metadata" object as written, "{}" if none */
	bool has_total_size;
	uint64_t total_size;
};

/* The reference refuses no index size; this bound keeps a wrong file from filling memory. */
#define ST_MAX_INDEX_LEN ST_MAX_HEADER_LEN

/* Parses an index file's text; returns 0 or -EINVAL/-ENOMEM with one line in `err`. */
int st_index_parse(const char *json, size_t n, struct st_index *ix, char err[ST_ERR_LEN]);
/* st_index_parse for a whole index file's text: a file that is no JSON is named for what it is. */
int st_index_parse_file(const char *text, size_t len, struct st_index *ix, char err[ST_ERR_LEN]);
int st_index_read_fd(int fd, struct st_index *ix, char err[ST_ERR_LEN]);
void st_index_free(struct st_index *ix);

/* `s` as a JSON string literal, quotes included; malloc'ed, NULL when out of memory. */
char *st_json_quote(const char *s, size_t len);

/* Key/value pairs and the same as one JSON object's text. */
struct st_metadata {
	char *strings;
	size_t n_strings, cap_strings;
	struct st_meta *items;
	size_t n_items, cap_items;
	char *json;
	size_t json_len;
};

/*
 * One metadata object from several: the shards' __metadata__ in order (the
 * first shard to set a key wins), then the index's "metadata" over them.  A
 * lone shard without an index keeps its __metadata__ text exactly as written.
 * `ix` may be NULL.  Returns 0 or -ENOMEM.
 */
int st_metadata_merge(const struct st_header *const *shards, size_t n, const struct st_index *ix,
		      struct st_metadata *out);
/*
 * The __metadata__ pairs that every one of the shards holds with the same value, in the
 * first shard's order: what can be said of several unrelated files together.
 */
int st_metadata_common(const struct st_header *const *shards, size_t n, struct st_metadata *out);
void st_metadata_free(struct st_metadata *m);

#endif
