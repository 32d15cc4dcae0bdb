#include "checks.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ref {
	uint32_t shard, index;
};

static void name_of(const struct source *src, const struct ref *r, const char **name, size_t *len)
{
	const struct st_header *h = &src->shards[r->shard].hdr;

	*name = st_tensor_name(h, &h->tensors[r->index]);
	*len = h->tensors[r->index].name_len;
}

static int compare(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	return c ? c : (alen > blen) - (alen < blen);
}

static int by_name(const void *x, const void *y, void *src)
{
	const char *a, *b;
	size_t alen, blen;

	name_of(src, x, &a, &alen);
	name_of(src, y, &b, &blen);
	return compare(a, alen, b, blen);
}

static int fail(char *err, const char *name, size_t len, const char *fmt, const char *a, const char *b)
{
	char q[ST_ERR_LEN / 4], what[ST_ERR_LEN / 2];

	st_quote(q, sizeof(q), name, len);
	snprintf(what, sizeof(what), fmt, a, b);
	snprintf(err, ST_ERR_LEN, "tensor '%s' %s", q, what);
	return -EINVAL;
}

/* Every tensor of the component, sorted by name; a name in two shards is refused. */
static int sorted_refs(const struct source *src, const struct component *c, struct ref **out,
		       size_t *n, char *err)
{
	size_t total = 0, k = 0;
	struct ref *refs;

	for (size_t s = c->first; s < c->first + c->count; s++)
		total += src->shards[s].hdr.n_tensors;
	if (!(refs = malloc((total ? total : 1) * sizeof(*refs))))
		return -ENOMEM;
	for (size_t s = c->first; s < c->first + c->count; s++)
		for (size_t i = 0; i < src->shards[s].hdr.n_tensors; i++)
			refs[k++] = (struct ref){(uint32_t)s, (uint32_t)i};
	qsort_r(refs, total, sizeof(*refs), by_name, (void *)src);
	for (size_t i = 1; i < total; i++)
		if (by_name(&refs[i - 1], &refs[i], (void *)src) == 0) {
			const char *name;
			size_t len;
			name_of(src, &refs[i], &name, &len);
			int rc = fail(err, name, len, "is in two shards: %s and %s",
				      src->shards[refs[i - 1].shard].label, src->shards[refs[i].shard].label);
			free(refs);
			return rc;
		}
	*out = refs;
	*n = total;
	return 0;
}

static const struct ref *find(const struct source *src, const struct ref *refs, size_t n,
			      const char *name, size_t len)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const char *m;
		size_t mlen;
		name_of(src, &refs[mid], &m, &mlen);
		int c = compare(name, len, m, mlen);
		if (c == 0)
			return &refs[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* The index and the shards must name the same tensors, each in the same shard. */
static int match_index(const struct source *src, const struct component *c, const struct ref *refs,
		       size_t n, char *err)
{
	const struct st_index *ix = &c->ix;
	char *seen = calloc(n ? n : 1, 1);
	int rc = 0;

	if (!seen)
		return -ENOMEM;
	for (size_t i = 0; i < ix->n_entries && !rc; i++) {
		const struct st_index_entry *e = &ix->entries[i];
		const char *name = ix->strings + e->name;
		const struct shard *want = &src->shards[c->first + e->file];
		const struct ref *r = find(src, refs, n, name, e->name_len);
		if (!r)
			rc = fail(err, name, e->name_len, "is in the index (in %s) but in no shard%s",
				  want->label, "");
		else if (&src->shards[r->shard] != want)
			rc = fail(err, name, e->name_len, "is in %s but the index puts it in %s",
				  src->shards[r->shard].label, want->label);
		else
			seen[r - refs] = 1;
	}
	for (size_t i = 0; i < n && !rc; i++)
		if (!seen[i]) {
			const char *name;
			size_t len;
			name_of(src, &refs[i], &name, &len);
			rc = fail(err, name, len, "in %s is not in the index%s", src->shards[refs[i].shard].label, "");
		}
	free(seen);
	return rc;
}

/*
 * total_size is advisory: tools in the wild write the sum of tensor bytes or
 * the sum of file sizes.  Anything else earns a warning, not a refusal.
 */
static int check_total_size(struct source *src, const struct component *c)
{
	uint64_t tensors = 0, files = 0;

	if (!c->has_index || !c->ix.has_total_size || src->warning)
		return 0;
	for (size_t s = c->first; s < c->first + c->count; s++) {
		tensors += src->shards[s].hdr.file_size - src->shards[s].hdr.data_start;
		files += src->shards[s].hdr.file_size;
	}
	if (c->ix.total_size == tensors || c->ix.total_size == files)
		return 0;
	return asprintf(&src->warning,
			"warning: %s%sindex total_size %" PRIu64 " is neither the tensors' %" PRIu64
			" bytes nor the shards' %" PRIu64 "; mounting anyway",
			c->name, c->name[0] ? "/ " : "", c->ix.total_size, tensors, files) < 0 ? -ENOMEM : 0;
}

int check_shards(struct source *src, char err[ST_ERR_LEN])
{
	int rc = 0;

	for (size_t i = 0; i < src->n_components && !rc; i++) {
		const struct component *c = &src->components[i];
		struct ref *refs = NULL;
		size_t n = 0;
		if ((rc = sorted_refs(src, c, &refs, &n, err)))
			break;
		if (c->has_index)
			rc = match_index(src, c, refs, n, err);
		free(refs);
		if (!rc)
			rc = check_total_size(src, c);
	}
	return rc;
}
