/*
 * A parsed and fully validated safetensors header.
 *
 * One compact record per tensor; names, metadata keys and values live in one
 * string arena, dimensions in one array.  Nothing here knows about FUSE.
 */
#ifndef ST_HEADER_H
#define ST_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* The reference implementation refuses larger headers. */
#define ST_MAX_HEADER_LEN 100000000ULL

/* Room for one error line: the rule, the tensor and the byte offset. */
#define ST_ERR_LEN 1024

struct st_tensor {
	uint64_t begin, end; /* data_offsets, relative to the data region */
	uint32_t name;       /* offset of the name in st_header.strings */
	uint32_t name_len;   /* names may hold NUL bytes: always use the length */
	uint32_t dims;       /* index of the first dimension in st_header.dims */
	uint32_t rank;
	uint8_t dtype;       /* enum st_dtype */
};

struct st_meta {
	uint32_t key, key_len, value, value_len; /* offsets into strings */
};

struct st_header {
	uint64_t header_len; /* N, the JSON's length */
	uint64_t data_start; /* 8 + N: where the data region begins */
	uint64_t file_size;

	struct st_tensor *tensors; /* in header order */
	size_t n_tensors, cap_tensors;
	uint64_t *dims;
	size_t n_dims, cap_dims;
	char *strings;
	size_t n_strings, cap_strings;
	struct st_meta *meta; /* __metadata__ entries, in header order */
	size_t n_meta, cap_meta;
	char *metadata_json; /* the __metadata__ object as written, "{}" if none */
	size_t metadata_json_len;
};

/*
 * Parse and validate a whole safetensors file held in memory (`len` bytes).
 * Returns 0, or -EINVAL / -ENOMEM with one line in `err` naming the rule
 * broken, the tensor and the byte offset in the file where there is one.
 */
int st_header_parse_buffer(const uint8_t *file, size_t len, struct st_header *h,
			   char err[ST_ERR_LEN]);

/* Reads exactly len bytes at off of some file: 0 or a negative errno. */
typedef int st_read_fn(void *ctx, void *buf, size_t len, uint64_t off);

/* The same for a file of file_size bytes read through READ: only its header is read, in two
 * calls (its first bytes, then the header). */
int st_header_read(st_read_fn *read, void *ctx, uint64_t file_size, struct st_header *h,
		   char err[ST_ERR_LEN]);

/* The same for an open file: reads only the header, checks sizes with fstat. */
int st_header_read_fd(int fd, struct st_header *h, char err[ST_ERR_LEN]);

/*
 * What the first bytes of a file that was refused say it is (a GGUF file, an HTML page,
 * ...), as one line for its refusal, or NULL.  `json_expected`: the file was to be JSON
 * (an index), so looking like JSON says nothing.
 */
const char *st_wrong_kind(const uint8_t *head, size_t len, bool json_expected);

/*
 * Parse the N-byte JSON header of a file of `file_size` bytes.  Both entry
 * points above end here.
 */
int st_header_parse_json(const char *json, uint64_t n, uint64_t file_size,
			 struct st_header *h, char err[ST_ERR_LEN]);

/* Check the parsed records against the reference's rules (validate.c). */
int st_header_validate(const struct st_header *h, char err[ST_ERR_LEN]);

void st_header_free(struct st_header *h);

static inline const char *st_tensor_name(const struct st_header *h,
					 const struct st_tensor *t)
{
	return h->strings + t->name;
}

static inline uint64_t st_tensor_nbytes(const struct st_tensor *t)
{
	return t->end - t->begin;
}

/* Reads exactly `len` bytes at `off`; returns 0, -EIO on a short read, or -errno. */
int st_pread_exact(int fd, void *buf, size_t len, uint64_t off);

/* Grows the array *buf to hold at least `need` elements of `size` bytes (doubling). */
int st_reserve(void *buf, size_t *cap, size_t need, size_t size);

/* Quote a possibly hostile name for an error line: printable, bounded. */
void st_quote(char *out, size_t outlen, const char *s, size_t len);

#endif
