/*
 * Header parsing: the 8-byte length, then the JSON object walked entry by
 * entry.  Each value is parsed by one reused json-c tokener and dropped as
 * soon as its fields are copied into a compact record, so a 100k-tensor
 * header never exists as one DOM.
 */
#include "header.h"

#include "json_walk.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define METADATA_KEY "__metadata__"
#define LFS_MAGIC "version https://git-lfs"

/* The header parser's state, reached from the walker's callbacks. */
struct header_parse {
	struct st_header *h;
	bool seen_metadata;
};

static struct header_parse *hp(struct jw *w)
{
	return w->ctx;
}

void st_quote(char *out, size_t outlen, const char *s, size_t len)
{
	static const size_t shown = 80;
	size_t o = 0;

	if (outlen == 0)
		return;
	for (size_t i = 0; i < len && i < shown && o + 5 < outlen; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != 0x7f && c != '\'' && c != '\\')
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
	}
	if (len > shown && o + 4 < outlen)
		o += (size_t)snprintf(out + o, outlen - o, "...");
	out[o < outlen ? o : outlen - 1] = '\0';
}

static int fail_tensor(struct jw *p, const char *name, size_t len, const char *what)
{
	char q[ST_ERR_LEN / 2];

	st_quote(q, sizeof(q), name, len);
	snprintf(p->err, ST_ERR_LEN, "tensor '%s': %s", q, what);
	return -EINVAL;
}

static int push_string(struct st_header *h, const char *s, size_t len, uint32_t *off)
{
	/* The arena holds only header bytes, so it stays far below 4 GiB. */
	if (st_reserve(&h->strings, &h->cap_strings, h->n_strings + len + 1, 1))
		return -ENOMEM;
	memcpy(h->strings + h->n_strings, s, len);
	h->strings[h->n_strings + len] = '\0';
	*off = (uint32_t)h->n_strings;
	h->n_strings += len + 1;
	return 0;
}

static int on_metadata_entry(struct jw *p, const char *key, size_t key_len, size_t key_at)
{
	struct st_header *h = hp(p)->h;
	json_object *value;
	uint32_t k, v, value_len;
	int rc;

	(void)key_at;
	if ((rc = jw_string(p, "__metadata__ value", &value)))
		return rc;
	value_len = (uint32_t)json_object_get_string_len(value);
	rc = push_string(h, key, key_len, &k);
	if (!rc)
		rc = push_string(h, json_object_get_string(value), value_len, &v);
	json_object_put(value);
	if (rc || st_reserve(&h->meta, &h->cap_meta, h->n_meta + 1, sizeof(*h->meta)))
		return -ENOMEM;
	h->meta[h->n_meta++] = (struct st_meta){k, (uint32_t)key_len, v, value_len};
	return 0;
}

static int parse_metadata(struct jw *p, size_t key_at)
{
	size_t start = p->pos;
	int rc;

	if (hp(p)->seen_metadata)
		return jw_fail(p, key_at, "duplicate key '__metadata__'");
	hp(p)->seen_metadata = true;
	if (jw_peek(p) == 'n') {
		json_object *null;
		if ((rc = jw_value(p, &null)))
			return rc;
		if (null) {
			json_object_put(null);
			return jw_fail(p, start, "__metadata__ is not an object of strings");
		}
		return 0;
	}
	if (jw_peek(p) != '{')
		return jw_fail(p, start, "__metadata__ is not an object of strings");
	if ((rc = jw_object(p, on_metadata_entry)))
		return rc;
	free(hp(p)->h->metadata_json);
	hp(p)->h->metadata_json = strndup(p->json + start, p->pos - start);
	hp(p)->h->metadata_json_len = p->pos - start;
	return hp(p)->h->metadata_json ? 0 : -ENOMEM;
}

/* A JSON integer in [0, 2^64-1): json-c saturates larger ones to the maximum. */
static bool get_u64(json_object *o, uint64_t *out)
{
	if (!o || json_object_get_type(o) != json_type_int || json_object_get_int64(o) < 0)
		return false;
	*out = json_object_get_uint64(o);
	return *out != UINT64_MAX;
}

static int tensor_fields(struct jw *p, json_object *obj, const char *key, size_t key_len,
			 struct st_tensor *t)
{
	struct st_header *h = hp(p)->h;
	json_object *dtype, *shape, *offsets;
	int d;

	if (!obj || json_object_get_type(obj) != json_type_object)
		return fail_tensor(p, key, key_len, "entry is not an object");
	if (!json_object_object_get_ex(obj, "dtype", &dtype))
		return fail_tensor(p, key, key_len, "missing field 'dtype'");
	if (!json_object_object_get_ex(obj, "shape", &shape))
		return fail_tensor(p, key, key_len, "missing field 'shape'");
	if (!json_object_object_get_ex(obj, "data_offsets", &offsets))
		return fail_tensor(p, key, key_len, "missing field 'data_offsets'");
	if (json_object_get_type(dtype) != json_type_string ||
	    (d = st_dtype_from_name(json_object_get_string(dtype),
				    (size_t)json_object_get_string_len(dtype))) < 0)
		return fail_tensor(p, key, key_len, "unknown dtype (names are upper-case, e.g. F32, BF16)");
	t->dtype = (uint8_t)d;
	if (json_object_get_type(shape) != json_type_array)
		return fail_tensor(p, key, key_len, "shape is not an array");
	t->rank = (uint32_t)json_object_array_length(shape);
	t->dims = (uint32_t)h->n_dims;
	if (st_reserve(&h->dims, &h->cap_dims, h->n_dims + t->rank, sizeof(*h->dims)))
		return -ENOMEM;
	for (uint32_t i = 0; i < t->rank; i++)
		if (!get_u64(json_object_array_get_idx(shape, i), &h->dims[h->n_dims + i]))
			return fail_tensor(p, key, key_len,
					   "shape holds something other than a non-negative integer below 2^64-1");
	h->n_dims += t->rank;
	if (json_object_get_type(offsets) != json_type_array ||
	    json_object_array_length(offsets) != 2 ||
	    !get_u64(json_object_array_get_idx(offsets, 0), &t->begin) ||
	    !get_u64(json_object_array_get_idx(offsets, 1), &t->end))
		return fail_tensor(p, key, key_len,
				   "data_offsets is not [begin,end] of two non-negative integers");
	return 0;
}

static int on_top_entry(struct jw *p, const char *key, size_t key_len, size_t key_at)
{
	struct st_header *h = hp(p)->h;
	struct st_tensor t = {0};
	json_object *obj;
	int rc;

	if (key_len == strlen(METADATA_KEY) && memcmp(key, METADATA_KEY, key_len) == 0)
		return parse_metadata(p, key_at);
	if ((rc = jw_value(p, &obj)))
		return rc;
	rc = tensor_fields(p, obj, key, key_len, &t);
	json_object_put(obj);
	if (rc)
		return rc;
	if (h->n_tensors >= UINT32_MAX ||
	    st_reserve(&h->tensors, &h->cap_tensors, h->n_tensors + 1, sizeof(*h->tensors)) ||
	    push_string(h, key, key_len, &t.name))
		return -ENOMEM;
	t.name_len = (uint32_t)key_len;
	h->tensors[h->n_tensors++] = t;
	return 0;
}

static int by_key_then_position(const void *a, const void *b, void *strings)
{
	const struct st_meta *x = a, *y = b;
	size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
	int c = memcmp((const char *)strings + x->key, (const char *)strings + y->key, n);

	if (c)
		return c;
	if (x->key_len != y->key_len)
		return x->key_len < y->key_len ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key; /* arena order is header order */
}

/* A key given twice in __metadata__ keeps its last value, as JSON readers do. */
static void dedupe_meta(struct st_header *h)
{
	size_t kept = 0;

	if (h->n_meta < 2)
		return;
	qsort_r(h->meta, h->n_meta, sizeof(*h->meta), by_key_then_position, h->strings);
	for (size_t i = 0; i < h->n_meta; i++) {
		const struct st_meta *m = &h->meta[i], *next = i + 1 < h->n_meta ? m + 1 : NULL;
		if (next && next->key_len == m->key_len &&
		    memcmp(h->strings + next->key, h->strings + m->key, m->key_len) == 0)
			continue;
		h->meta[kept++] = *m;
	}
	h->n_meta = kept;
}

int st_header_parse_json(const char *json, uint64_t n, uint64_t file_size,
			 struct st_header *h, char err[ST_ERR_LEN])
{
	struct header_parse hp = {.h = h};
	struct jw w;
	int rc;

	memset(h, 0, sizeof(*h));
	h->header_len = n;
	h->data_start = 8 + n;
	h->file_size = file_size;
	rc = jw_init(&w, "header", json, (size_t)n, 8, err, &hp);
	if (!rc)
		rc = jw_object(&w, on_top_entry);
	if (!rc)
		rc = jw_end(&w);
	jw_fini(&w);
	if (!rc)
		dedupe_meta(h);
	if (!rc && !h->metadata_json) {
		h->metadata_json = strdup("{}");
		h->metadata_json_len = 2;
		rc = h->metadata_json ? 0 : -ENOMEM;
	}
	if (!rc)
		rc = st_header_validate(h, err);
	if (rc == -ENOMEM && !err[0])
		snprintf(err, ST_ERR_LEN, "out of memory while parsing the header");
	if (rc)
		st_header_free(h);
	return rc;
}

/*
 * Files that get mounted by mistake, told apart by their first bytes so that
 * the refusal says what the file is instead of quoting a nonsense length.
 * They are looked for only in a file that its length already refuses (over
 * ST_MAX_HEADER_LEN, or under 8 bytes): a real or merely truncated
 * safetensors file has a length of at most 10^8 < 2^27, so none of these
 * patterns can turn it away or rename its error.  The messages name no file
 * (not even "config.json" or "model.safetensors"): the caller puts the one
 * name in front.
 */

static size_t skip_space(const uint8_t *p, size_t len)
{
	size_t i = 0;

	while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
		i++;
	return i;
}

/* A UTF-8 byte order mark, then whitespace: editors and web servers leave both before text. */
static size_t skip_bom_space(const uint8_t *p, size_t len)
{
	size_t i = len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;

	return i + skip_space(p + i, len - i);
}

static bool has_prefix(const uint8_t *p, size_t len, const char *word)
{
	return len >= strlen(word) && memcmp(p, word, strlen(word)) == 0;
}

/* `word` in lower case; HTML tags and the doctype may be written in any case. */
static bool has_prefix_nocase(const uint8_t *p, size_t len, const char *word)
{
	size_t n = strlen(word);

	if (len < n)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]) != (uint8_t)word[i])
			return false;
	return true;
}

/* Git LFS pointer spec (git-lfs docs/spec.md): the first line is "version https://git-lfs...". */
static bool is_lfs(const uint8_t *p, size_t len)
{
	return has_prefix(p, len, LFS_MAGIC);
}

/* ggml docs/gguf.md: uint32 magic 0x46554747, the bytes "GGUF", then the uint32 version. */
static bool is_gguf(const uint8_t *p, size_t len)
{
	return has_prefix(p, len, "GGUF");
}

/* PKWARE APPNOTE.TXT 4.3.7: a zip starts with a local file header, signature 0x04034b50;
 * torch.save writes its zip format (archive/data.pkl, archive/data/0, ...) since PyTorch 1.6. */
static bool is_zip(const uint8_t *p, size_t len)
{
	return has_prefix(p, len, "PK\x03\x04");
}

/* pickletools: protocols 2 and later open with the PROTO opcode 0x80 and the protocol number;
 * torch.save's legacy format (and _use_new_zipfile_serialization=False) is pickles, protocol 2. */
static bool is_pickle(const uint8_t *p, size_t len)
{
	return len >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5;
}

/* An error page saved under the weights' name: "<!DOCTYPE html" or "<html", any case. */
static bool is_html(const uint8_t *p, size_t len)
{
	size_t i = skip_bom_space(p, len);

	return has_prefix_nocase(p + i, len - i, "<!doctype html") || has_prefix_nocase(p + i, len - i, "<html");
}

/* S3, GCS and Azure answer a failed download with an XML body: "<?xml ...?><Error>...". */
static bool is_xml(const uint8_t *p, size_t len)
{
	size_t i = skip_bom_space(p, len);

	return has_prefix(p + i, len - i, "<?xml") || has_prefix(p + i, len - i, "<Error>");
}

/* A JSON object or array: '{' or '[', then (after whitespace) what can begin its first member. */
static bool is_json(const uint8_t *p, size_t len)
{
	size_t i = skip_bom_space(p, len);

	if (i >= len || (p[i] != '{' && p[i] != '['))
		return false;
	const char *next = p[i] == '{' ? "\"}" : "\"{[]-0123456789tfn";
	i++;
	i += skip_space(p + i, len - i);
	return i < len && p[i] != '\0' && strchr(next, p[i]) != NULL;
}

static const struct wrong_kind {
	bool (*looks_like)(const uint8_t *p, size_t len);
	const char *what;
} wrong_kinds[] = {
	{is_lfs, "a Git LFS pointer file, not the weights: fetch them with 'git lfs pull'"},
	{is_gguf, "a GGUF file (llama.cpp's format), not safetensors: mount the model's .safetensors weights"},
	{is_zip, "a zip archive (a PyTorch .bin/.pt checkpoint?), not safetensors: convert it with "
		 "safetensors.torch.save_file(torch.load(IN), OUT)"},
	{is_pickle, "a Python pickle (a legacy PyTorch .bin checkpoint?), not safetensors: convert it with "
		    "safetensors.torch.save_file(torch.load(IN), OUT)"},
	{is_html, "an HTML page, not safetensors: the download failed (the server sent an error page)"},
	{is_xml, "an XML document (a storage service's error reply?), not safetensors: the download failed"},
	{is_json, "a JSON file, not safetensors weights: name the .safetensors file, its folder or its index"},
};

const char *st_wrong_kind(const uint8_t *head, size_t len, bool json_expected)
{
	for (size_t i = 0; i < sizeof(wrong_kinds) / sizeof(wrong_kinds[0]); i++)
		if (wrong_kinds[i].looks_like(head, len) && !(json_expected && wrong_kinds[i].looks_like == is_json))
			return wrong_kinds[i].what;
	return NULL;
}

/* The checks that need only the first bytes (`got` of them) and the file's size. */
static int check_preamble(const uint8_t *head, size_t got, uint64_t file_size, uint64_t *n,
			  char err[ST_ERR_LEN])
{
	*n = 0;
	for (int i = 7; i >= 0 && file_size >= 8; i--)
		*n = (*n << 8) | head[i];
	/* Only a file its length refuses anyway is named for what it looks like (see above). */
	const char *kind = file_size < 8 || *n > ST_MAX_HEADER_LEN ? st_wrong_kind(head, got, false) : NULL;
	if (kind) {
		snprintf(err, ST_ERR_LEN, "%s", kind);
		return -EINVAL;
	}
	if (file_size < 8) {
		snprintf(err, ST_ERR_LEN, "file is %llu bytes, shorter than the 8-byte header length",
			 (unsigned long long)file_size);
		return -EINVAL;
	}
	if (*n > ST_MAX_HEADER_LEN) {
		snprintf(err, ST_ERR_LEN, "header length %llu at byte 0 exceeds the limit of %llu bytes",
			 (unsigned long long)*n, ST_MAX_HEADER_LEN);
		return -EINVAL;
	}
	if (*n > file_size - 8) {
		snprintf(err, ST_ERR_LEN,
			 "header length %llu at byte 0 runs past the end of the %llu-byte file",
			 (unsigned long long)*n, (unsigned long long)file_size);
		return -EINVAL;
	}
	return 0;
}

int st_header_parse_buffer(const uint8_t *file, size_t len, struct st_header *h,
			   char err[ST_ERR_LEN])
{
	uint64_t n;
	int rc;

	memset(h, 0, sizeof(*h));
	if ((rc = check_preamble(file, len, len, &n, err)))
		return rc;
	return st_header_parse_json((const char *)file + 8, n, len, h, err);
}

int st_pread_exact(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		done += (size_t)r;
	}
	return 0;
}

int st_header_read(st_read_fn *read, void *ctx, uint64_t file_size, struct st_header *h, char err[ST_ERR_LEN])
{
	uint8_t head[256] = {0}; /* enough for a BOM and blank lines before "<!DOCTYPE html" */
	uint64_t n;
	char *json;
	int rc;

	memset(h, 0, sizeof(*h));
	size_t got = file_size < sizeof(head) ? (size_t)file_size : sizeof(head);
	if ((rc = read(ctx, head, got, 0))) {
		snprintf(err, ST_ERR_LEN, "cannot read: %s", strerror(-rc));
		return rc;
	}
	if ((rc = check_preamble(head, got, file_size, &n, err)))
		return rc;
	if (!(json = malloc(n ? n : 1))) {
		snprintf(err, ST_ERR_LEN, "out of memory for a %llu-byte header", (unsigned long long)n);
		return -ENOMEM;
	}
	/* The first bytes again, so that a reader that fetches can ask for the header at once. */
	if ((rc = read(ctx, json, n, 8)))
		snprintf(err, ST_ERR_LEN, "cannot read the header: %s", strerror(-rc));
	else
		rc = st_header_parse_json(json, n, file_size, h, err);
	free(json);
	return rc;
}

static int read_fd(void *ctx, void *buf, size_t len, uint64_t off)
{
	return st_pread_exact(*(int *)ctx, buf, len, off);
}

int st_header_read_fd(int fd, struct st_header *h, char err[ST_ERR_LEN])
{
	struct stat st;

	memset(h, 0, sizeof(*h));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, ST_ERR_LEN, "not a regular file");
		return -EINVAL;
	}
	return st_header_read(read_fd, &fd, (uint64_t)st.st_size, h, err);
}

void st_header_free(struct st_header *h)
{
	free(h->tensors);
	free(h->dims);
	free(h->strings);
	free(h->meta);
	free(h->metadata_json);
	memset(h, 0, sizeof(*h));
}
