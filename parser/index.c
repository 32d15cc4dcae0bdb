/*
 * Shard indexes, walked entry by entry like headers, and the metadata merge
 * that gives a sharded model one metadata object.
 */
#include "index.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_walk.h"

/* Index files are small next to the weights; this bounds a hostile one. */
#define MAX_INDEX_LEN ST_MAX_INDEX_LEN

struct index_parse {
	struct st_index *ix;
	bool seen_map, seen_meta;
};

static struct index_parse *ip(struct jw *w)
{
	return w->ctx;
}

static int push(char **strings, size_t *n, size_t *cap, const char *s, size_t len, uint32_t *off)
{
	if (*n + len + 1 > UINT32_MAX || st_reserve(strings, cap, *n + len + 1, 1))
		return -ENOMEM;
	memcpy(*strings + *n, s, len);
	(*strings)[*n + len] = '\0';
	*off = (uint32_t)*n;
	*n += len + 1;
	return 0;
}

static int on_weight(struct jw *w, const char *key, size_t key_len, size_t key_at)
{
	struct st_index *ix = ip(w)->ix;
	struct st_index_entry e = {.name_len = (uint32_t)key_len};
	json_object *file;
	size_t at = w->pos;
	int rc;

	(void)key_at;
	if ((rc = jw_string(w, "a weight_map value", &file)))
		return rc;
	const char *f = json_object_get_string(file);
	size_t flen = (size_t)json_object_get_string_len(file);
	if (flen == 0 || memchr(f, '/', flen) || memchr(f, '\0', flen) || strcmp(f, ".") == 0 ||
	    strcmp(f, "..") == 0) {
		json_object_put(file);
		return jw_fail(w, at, "weight_map names a shard that is not a file name in the index's folder");
	}
	rc = push(&ix->strings, &ix->n_strings, &ix->cap_strings, key, key_len, &e.name);
	/* Until the files are sorted, `file` holds the offset of the file name. */
	if (!rc)
		rc = push(&ix->strings, &ix->n_strings, &ix->cap_strings, f, flen, &e.file);
	json_object_put(file);
	if (rc || st_reserve(&ix->entries, &ix->cap_entries, ix->n_entries + 1, sizeof(*ix->entries)))
		return -ENOMEM;
	ix->entries[ix->n_entries++] = e;
	return 0;
}

static int on_meta(struct jw *w, const char *key, size_t key_len, size_t key_at)
{
	struct st_index *ix = ip(w)->ix;
	struct st_meta m = {.key_len = (uint32_t)key_len};
	json_object *v;
	const char *text;
	size_t len;
	int rc;

	(void)key_at;
	if ((rc = jw_value(w, &v)))
		return rc;
	if (v && json_object_get_type(v) == json_type_string) {
		text = json_object_get_string(v);
		len = (size_t)json_object_get_string_len(v);
	} else {
		text = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
		len = strlen(text);
	}
	if (key_len == strlen("total_size") && memcmp(key, "total_size", key_len) == 0 && v &&
	    json_object_get_type(v) == json_type_int && json_object_get_int64(v) >= 0) {
		ix->has_total_size = true;
		ix->total_size = json_object_get_uint64(v);
	}
	rc = push(&ix->strings, &ix->n_strings, &ix->cap_strings, key, key_len, &m.key);
	if (!rc)
		rc = push(&ix->strings, &ix->n_strings, &ix->cap_strings, text, len, &m.value);
	m.value_len = (uint32_t)len;
	json_object_put(v);
	if (rc || st_reserve(&ix->meta, &ix->cap_meta, ix->n_meta + 1, sizeof(*ix->meta)))
		return -ENOMEM;
	ix->meta[ix->n_meta++] = m;
	return 0;
}

static int skip_value(struct jw *w)
{
	json_object *v;
	int rc = jw_value(w, &v);

	json_object_put(v);
	return rc;
}

static int on_top(struct jw *w, const char *key, size_t key_len, size_t key_at)
{
	struct index_parse *p = ip(w);
	bool map = key_len == 10 && memcmp(key, "weight_map", 10) == 0;
	bool meta = key_len == 8 && memcmp(key, "metadata", 8) == 0;

	if (!map && !meta)
		return skip_value(w); /* other keys are not ours to judge */
	if ((map && p->seen_map) || (meta && p->seen_meta))
		return jw_fail(w, key_at, "duplicate key '%s'", map ? "weight_map" : "metadata");
	p->seen_map |= map;
	p->seen_meta |= meta;
	if (jw_peek(w) != '{')
		return jw_fail(w, w->pos, "%s is not an object", map ? "weight_map" : "metadata");
	size_t start = w->pos;
	int rc = jw_object(w, map ? on_weight : on_meta);
	if (!rc && meta && !(p->ix->metadata_json = strndup(w->json + start, w->pos - start)))
		rc = -ENOMEM;
	return rc;
}

static int by_file_then_name(const void *a, const void *b, void *strings)
{
	const struct st_index_entry *x = a, *y = b;
	const char *s = strings;
	int c = strcmp(s + x->file, s + y->file);

	return c ? c : x->name < y->name ? -1 : x->name > y->name;
}

static int by_name(const void *a, const void *b, void *strings)
{
	const struct st_index_entry *x = a, *y = b;
	size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
	int c = memcmp((const char *)strings + x->name, (const char *)strings + y->name, n);

	return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Turn the entries' file-name offsets into indexes of the distinct, sorted file list. */
static int collect_files(struct st_index *ix, char *err)
{
	const char *s = ix->strings;

	if (ix->n_entries == 0)
		return 0; /* qsort_r of no array is undefined (entries is NULL) */
	qsort_r(ix->entries, ix->n_entries, sizeof(*ix->entries), by_name, ix->strings);
	for (size_t i = 1; i < ix->n_entries; i++)
		if (by_name(&ix->entries[i - 1], &ix->entries[i], ix->strings) == 0) {
			char q[ST_ERR_LEN / 2];
			st_quote(q, sizeof(q), s + ix->entries[i].name, ix->entries[i].name_len);
			snprintf(err, ST_ERR_LEN, "index: tensor '%s' appears twice in weight_map", q);
			return -EINVAL;
		}
	qsort_r(ix->entries, ix->n_entries, sizeof(*ix->entries), by_file_then_name, ix->strings);
	for (size_t i = 0; i < ix->n_entries; i++) {
		uint32_t off = ix->entries[i].file;
		if (!ix->n_files || strcmp(s + ix->files[ix->n_files - 1].name, s + off) != 0) {
			if (st_reserve(&ix->files, &ix->cap_files, ix->n_files + 1, sizeof(*ix->files)))
				return -ENOMEM;
			ix->files[ix->n_files++] = (struct st_index_file){off, (uint32_t)strlen(s + off)};
		}
		ix->entries[i].file = (uint32_t)(ix->n_files - 1);
	}
	return 0;
}

int st_index_parse(const char *json, size_t n, struct st_index *ix, char err[ST_ERR_LEN])
{
	struct index_parse p = {.ix = ix};
	struct jw w;
	int rc;

	memset(ix, 0, sizeof(*ix));
	rc = jw_init(&w, "index", json, n, 0, err, &p);
	if (!rc)
		rc = jw_object(&w, on_top);
	if (!rc)
		rc = jw_end(&w);
	jw_fini(&w);
	if (!rc && !p.seen_map) {
		snprintf(err, ST_ERR_LEN, "index has no weight_map");
		rc = -EINVAL;
	}
	if (!rc)
		rc = collect_files(ix, err);
	/* Nothing to mount, and no shard to take the model's file times from. */
	if (!rc && ix->n_files == 0) {
		snprintf(err, ST_ERR_LEN, "index: weight_map is empty: it names no tensor and no shard");
		rc = -EINVAL;
	}
	if (!rc && !ix->metadata_json && !(ix->metadata_json = strdup("{}")))
		rc = -ENOMEM;
	if (rc == -ENOMEM && !err[0])
		snprintf(err, ST_ERR_LEN, "out of memory while parsing the index");
	if (rc)
		st_index_free(ix);
	return rc;
}

int st_index_parse_file(const char *text, size_t len, struct st_index *ix, char err[ST_ERR_LEN])
{
	int rc = st_index_parse(text, len, ix, err);
	/* An error page saved as the index says more than where its JSON breaks. */
	const char *kind = rc == -EINVAL ? st_wrong_kind((const uint8_t *)text, len, true) : NULL;

	if (kind)
		snprintf(err, ST_ERR_LEN, "%s", kind);
	return rc;
}

int st_index_read_fd(int fd, struct st_index *ix, char err[ST_ERR_LEN])
{
	struct stat st;
	char *text;
	size_t done = 0;
	int rc;

	memset(ix, 0, sizeof(*ix));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > MAX_INDEX_LEN) {
		snprintf(err, ST_ERR_LEN, "index is not a regular file of at most %llu bytes", MAX_INDEX_LEN);
		return -EINVAL;
	}
	if (!(text = malloc((size_t)st.st_size + 1)))
		return -ENOMEM;
	while (done < (size_t)st.st_size) {
		ssize_t r = pread(fd, text + done, (size_t)st.st_size - done, (off_t)done);
		if (r <= 0) {
			snprintf(err, ST_ERR_LEN, "cannot read the index: %s", r ? strerror(errno) : "short read");
			free(text);
			return -EIO;
		}
		done += (size_t)r;
	}
	rc = st_index_parse_file(text, done, ix, err);
	free(text);
	return rc;
}

void st_index_free(struct st_index *ix)
{
	free(ix->strings);
	free(ix->entries);
	free(ix->files);
	free(ix->meta);
	free(ix->metadata_json);
	memset(ix, 0, sizeof(*ix));
}

char *st_json_quote(const char *s, size_t len)
{
	json_object *o = json_object_new_string_len(s, (int)len);
	char *q = o ? strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
								    JSON_C_TO_STRING_NOSLASHESCAPE)) : NULL;

	json_object_put(o);
	return q;
}

static int add_item(struct st_metadata *m, const char *key, size_t key_len, const char *value,
		    size_t value_len)
{
	struct st_meta it = {.key_len = (uint32_t)key_len, .value_len = (uint32_t)value_len};

	if (push(&m->strings, &m->n_strings, &m->cap_strings, key, key_len, &it.key) ||
	    push(&m->strings, &m->n_strings, &m->cap_strings, value, value_len, &it.value) ||
	    st_reserve(&m->items, &m->cap_items, m->n_items + 1, sizeof(*m->items)))
		return -ENOMEM;
	m->items[m->n_items++] = it;
	return 0;
}

static int copy_one(const struct st_header *h, struct st_metadata *out)
{
	for (size_t i = 0; i < h->n_meta; i++)
		if (add_item(out, h->strings + h->meta[i].key, h->meta[i].key_len,
			     h->strings + h->meta[i].value, h->meta[i].value_len))
			return -ENOMEM;
	out->json = strndup(h->metadata_json, h->metadata_json_len);
	out->json_len = h->metadata_json_len;
	return out->json ? 0 : -ENOMEM;
}

/* The merged object's pairs, strings as they are and other values as JSON text. */
static int items_of(json_object *obj, struct st_metadata *out)
{
	const int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;

	json_object_object_foreach(obj, key, v) {
		const char *text = json_object_get_type(v) == json_type_string ? json_object_get_string(v)
			: json_object_to_json_string_ext(v, flags);
		size_t len = json_object_get_type(v) == json_type_string ? (size_t)json_object_get_string_len(v)
			: strlen(text);
		if (add_item(out, key, strlen(key), text, len))
			return -ENOMEM;
	}
	out->json = strdup(json_object_to_json_string_ext(obj, flags));
	out->json_len = out->json ? strlen(out->json) : 0;
	return out->json ? 0 : -ENOMEM;
}

/* The merge built in obj (unless rc says it failed) into out; obj is let go. */
static int finish_merge(json_object *obj, int rc, struct st_metadata *out)
{
	if (!rc)
		rc = items_of(obj, out);
	json_object_put(obj);
	if (rc)
		st_metadata_free(out);
	return rc;
}

/* Adds key = the string value[0..len) to obj (whose keys are unique): 0 or -ENOMEM. */
static int add_string(json_object *obj, const char *key, const char *value, size_t len)
{
	json_object *v = json_object_new_string_len(value, (int)len);

	if (!v || json_object_object_add(obj, key, v)) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

int st_metadata_merge(const struct st_header *const *shards, size_t n, const struct st_index *ix,
		      struct st_metadata *out)
{
	json_object *obj;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (n == 1 && !ix)
		return copy_one(shards[0], out);
	/* The index was validated when parsed; its metadata object parses again. */
	obj = ix ? json_tokener_parse(ix->metadata_json) : json_object_new_object();
	if (!obj)
		return -ENOMEM;
	for (size_t s = 0; s < n && !rc; s++) {
		const struct st_header *h = shards[s];
		for (size_t i = 0; i < h->n_meta && !rc; i++) {
			const char *key = h->strings + h->meta[i].key;
			if (memchr(key, '\0', h->meta[i].key_len) || json_object_object_get_ex(obj, key, NULL))
				continue;
			rc = add_string(obj, key, h->strings + h->meta[i].value, h->meta[i].value_len);
		}
	}
	return finish_merge(obj, rc, out);
}

/* Whether header h's __metadata__ holds key with exactly this value. */
static bool has_pair(const struct st_header *h, const char *key, size_t key_len, const char *value,
		     size_t value_len)
{
	for (size_t i = 0; i < h->n_meta; i++) {
		const struct st_meta *m = &h->meta[i];
		if (m->key_len == key_len && m->value_len == value_len &&
		    memcmp(h->strings + m->key, key, key_len) == 0 &&
		    memcmp(h->strings + m->value, value, value_len) == 0)
			return true;
	}
	return false;
}

int st_metadata_common(const struct st_header *const *shards, size_t n, struct st_metadata *out)
{
	json_object *obj = json_object_new_object();
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (!obj)
		return -ENOMEM;
	for (size_t i = 0; n > 0 && i < shards[0]->n_meta && !rc; i++) {
		const struct st_header *h = shards[0];
		const char *key = h->strings + h->meta[i].key, *value = h->strings + h->meta[i].value;
		size_t key_len = h->meta[i].key_len, value_len = h->meta[i].value_len;
		bool everywhere = !memchr(key, '\0', key_len);
		for (size_t s = 1; s < n && everywhere; s++)
			everywhere = has_pair(shards[s], key, key_len, value, value_len);
		if (!everywhere)
			continue;
		rc = add_string(obj, key, value, value_len);
	}
	return finish_merge(obj, rc, out);
}

void st_metadata_free(struct st_metadata *m)
{
	free(m->strings);
	free(m->items);
	free(m->json);
	memset(m, 0, sizeof(*m));
}
