/*
 * A folder's weights by their names (folder.h): parse each name, keep per
 * BASE the files of the variant asked for (else the plain ones), then group
 * the shards of one model.
 */
#include "folder.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../parser/header.h"

/* What a name says, as ranges of its stem (the name without WEIGHTS_SUFFIX). */
struct parsed {
	const char *name;
	size_t stem_len;
	size_t var_at, var_len;     /* ".VARIANT" starts at var_at; var_len 0: none */
	size_t shard_at, shard_len; /* "-I-of-N"; shard_len 0: not a shard */
	size_t part_at, part_len;   /* I's digits */
	size_t of_at, of_len;       /* N's digits */
	char *base;                 /* the stem without either: files of one model share it */
	char *group;                /* the stem without "-I-of-N": the group's directory */
	int keep;
};

/*
 * The variants diffusers and transformers save next to the plain weights.  Only these
 * give way to a plain file by default: a loras/ folder's "style.v2" is a file of its own,
 * unless -o variant=v2 names it.
 */
static const char *const known_variants[] = {"fp16", "bf16", "fp32", "fp8", "ema", "non_ema"};

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* The length of a "-I-of-N" that ends s[0..len) after a BASE of at least one byte, or 0. */
static size_t shard_suffix(const char *s, size_t len, struct parsed *p)
{
	size_t i = len;

	while (i > 0 && is_digit(s[i - 1]))
		i--;
	if (i == len || i < 4 || memcmp(s + i - 4, "-of-", 4) != 0)
		return 0;
	size_t j = i - 4;
	while (j > 0 && is_digit(s[j - 1]))
		j--;
	if (j == i - 4 || j < 2 || s[j - 1] != '-')
		return 0;
	p->part_at = j;
	p->part_len = i - 4 - j;
	p->of_at = i;
	p->of_len = len - i;
	return len - (j - 1);
}

bool folder_variant_name(const char *name)
{
	if (!is_letter(name[0]))
		return false;
	for (const char *c = name; *c; c++)
		if (!(is_letter(*c) || is_digit(*c) || *c == '_'))
			return false;
	return true;
}

/* The ".VARIANT" that ends s[0..len) (a known variant, or the one asked for), or 0. */
static size_t variant_suffix(const char *s, size_t len, const char *variant)
{
	const char *dot = memrchr(s, '.', len);

	if (!dot || dot == s)
		return 0;
	size_t n = len - (size_t)(dot + 1 - s);
	if (variant && strlen(variant) == n && memcmp(dot + 1, variant, n) == 0)
		return n + 1;
	for (size_t i = 0; i < sizeof(known_variants) / sizeof(*known_variants); i++)
		if (strlen(known_variants[i]) == n && memcmp(dot + 1, known_variants[i], n) == 0)
			return n + 1;
	return 0;
}

/* s[0..len) without the bytes [cut, cut+n). */
static char *without(const char *s, size_t len, size_t cut, size_t n)
{
	char *out = malloc(len - n + 1);

	if (!out)
		return NULL;
	memcpy(out, s, cut);
	memcpy(out + cut, s + cut + n, len - cut - n);
	out[len - n] = '\0';
	return out;
}

static int parse(const char *name, const char *variant, struct parsed *p)
{
	const char *s = name;
	size_t len = strlen(name) - strlen(WEIGHTS_SUFFIX), v;

	*p = (struct parsed){.name = name, .stem_len = len};
	/* BASE.VARIANT-I-of-N, or BASE-I-of-N.VARIANT, or BASE.VARIANT, or BASE-I-of-N */
	if ((p->shard_len = shard_suffix(s, len, p))) {
		p->shard_at = len - p->shard_len;
		if ((v = variant_suffix(s, p->shard_at, variant)))
			p->var_at = p->shard_at - v, p->var_len = v - 1;
	} else if ((v = variant_suffix(s, len, variant))) {
		p->var_at = len - v;
		p->var_len = v - 1;
		if ((p->shard_len = shard_suffix(s, p->var_at, p)))
			p->shard_at = p->var_at - p->shard_len;
	}
	p->group = without(s, len, p->shard_at, p->shard_len);
	char *plain = p->var_len ? without(s, len, p->var_at, p->var_len + 1) : strndup(s, len);
	if (plain && p->shard_len) {
		size_t at = p->shard_at < p->var_at || !p->var_len ? p->shard_at : p->shard_at - p->var_len - 1;
		p->base = without(plain, strlen(plain), at, p->shard_len);
		free(plain);
	} else {
		p->base = plain;
	}
	return p->group && p->base ? 0 : -ENOMEM;
}

static int is_variant(const struct parsed *p, const char *variant)
{
	return variant && p->var_len == strlen(variant) && memcmp(p->name + p->var_at + 1, variant, p->var_len) == 0;
}

static int by_base(const void *a, const void *b)
{
	const struct parsed *x = a, *y = b;
	int c = strcmp(x->base, y->base);

	return c ? c : strcmp(x->name, y->name);
}

/* Per BASE: the files of the variant asked for, else the plain ones, else all of them. */
static void choose(struct parsed *ps, size_t n, const char *variant, bool *found)
{
	for (size_t i = 0, j; i < n; i = j) {
		int has_variant = 0, has_plain = 0;
		for (j = i; j < n && strcmp(ps[j].base, ps[i].base) == 0; j++) {
			has_variant |= is_variant(&ps[j], variant);
			has_plain |= ps[j].var_len == 0;
		}
		for (size_t k = i; k < j; k++)
			ps[k].keep = has_variant ? is_variant(&ps[k], variant) : has_plain ? ps[k].var_len == 0 : 1;
		*found |= has_variant;
	}
}

/* Kept files first, then by group: its name, singles before shards, then N, then the name. */
static int by_group(const void *a, const void *b)
{
	const struct parsed *x = a, *y = b;
	int c;

	if (x->keep != y->keep)
		return y->keep - x->keep;
	if ((c = strcmp(x->group, y->group)))
		return c;
	if ((x->shard_len != 0) != (y->shard_len != 0))
		return (x->shard_len != 0) - (y->shard_len != 0);
	if (x->of_len != y->of_len)
		return x->of_len < y->of_len ? -1 : 1;
	if ((c = memcmp(x->name + x->of_at, y->name + y->of_at, x->of_len)))
		return c;
	return strcmp(x->name, y->name);
}

static int same_group(const struct parsed *x, const struct parsed *y)
{
	return x->shard_len && y->shard_len && strcmp(x->group, y->group) == 0 && x->of_len == y->of_len &&
	       memcmp(x->name + x->of_at, y->name + y->of_at, x->of_len) == 0;
}

static int add_group(struct folder_pick *pick, size_t *cap, const char *name, size_t first)
{
	if (st_reserve(&pick->groups, cap, pick->n_groups + 1, sizeof(*pick->groups)))
		return -ENOMEM;
	struct folder_group *g = &pick->groups[pick->n_groups];
	*g = (struct folder_group){.name = strdup(name), .first = first};
	if (!g->name)
		return -ENOMEM;
	pick->n_groups++;
	return 0;
}

/* The decimal number s[0..len), or ULONG_MAX past nine digits (no shard count is that large). */
static unsigned long number(const char *s, size_t len)
{
	unsigned long v = 0;

	if (len > 9)
		return ULONG_MAX;
	for (size_t i = 0; i < len; i++)
		v = v * 10 + (unsigned long)(s[i] - '0');
	return v;
}

/*
 * Shards ps[0..count) of one model, all "-I-of-N" with one N: every I from 1 to N once.
 * Without an index nothing else says what the model holds, so a partial download must not
 * mount as if it were whole.
 */
static int check_complete(const struct parsed *ps, size_t count, char *err, size_t errlen)
{
	unsigned long of = number(ps[0].name + ps[0].of_at, ps[0].of_len);
	char *seen = of == count ? calloc(count + 1, 1) : NULL;
	int rc = 0;

	if (of == count && !seen)
		return -ENOMEM;
	for (size_t i = 0; seen && i < count && !rc; i++) {
		unsigned long part = number(ps[i].name + ps[i].part_at, ps[i].part_len);
		if (part < 1 || part > of || seen[part])
			rc = -EINVAL;
		else
			seen[part] = 1;
	}
	free(seen);
	if (of != count)
		snprintf(err, errlen, "'%s' has %zu of its %lu shards here (%s, ...; a download cut short?): "
			 "fetch the rest, or mount the model's index", ps[0].group, count, of, ps[0].name);
	else if (rc)
		snprintf(err, errlen, "'%s' has shards numbered twice or outside 1 to %lu (%s, ...): mount the model's index",
			 ps[0].group, of, ps[0].name);
	return of != count || rc ? -EINVAL : 0;
}

/* Runs of one group among the first `kept` entries; two runs of one name would be one directory. */
static int make_groups(const struct parsed *ps, size_t kept, struct folder_pick *pick, char *err, size_t errlen)
{
	size_t cap = 0;

	for (size_t i = 0; i < kept; i++) {
		if (i > 0 && same_group(&ps[i - 1], &ps[i])) {
			pick->groups[pick->n_groups - 1].count++;
			continue;
		}
		if (i > 0 && strcmp(ps[i - 1].group, ps[i].group) == 0) {
			snprintf(err, errlen, "%s and %s would both be the directory '%s': name one of them as SOURCE",
				 ps[i - 1].name, ps[i].name, ps[i].group);
			return -EINVAL;
		}
		if (add_group(pick, &cap, ps[i].group, i))
			return -ENOMEM;
		pick->groups[pick->n_groups - 1].count = 1;
	}
	for (size_t g = 0; g < pick->n_groups; g++) {
		const struct folder_group *gr = &pick->groups[g];
		int rc = ps[gr->first].shard_len ? check_complete(ps + gr->first, gr->count, err, errlen) : 0;
		if (rc)
			return rc;
	}
	return 0;
}

int folder_pick(char **names, size_t *n, const char *variant, struct folder_pick *pick, char *err,
		size_t errlen)
{
	struct parsed *ps = calloc(*n ? *n : 1, sizeof(*ps));
	size_t kept = 0;
	int rc = 0;

	memset(pick, 0, sizeof(*pick));
	if (!ps)
		return -ENOMEM;
	for (size_t i = 0; i < *n; i++)
		ps[i].name = names[i]; /* all of them, so that each is freed also when one parse fails */
	for (size_t i = 0; i < *n && !rc; i++)
		rc = parse(names[i], variant, &ps[i]);
	if (!rc) {
		qsort(ps, *n, sizeof(*ps), by_base);
		choose(ps, *n, variant, &pick->variant_found);
		qsort(ps, *n, sizeof(*ps), by_group);
		while (kept < *n && ps[kept].keep)
			kept++;
		rc = make_groups(ps, kept, pick, err, errlen);
	}
	/* names[] takes the new order; the names left out go. */
	for (size_t i = 0; i < *n; i++) {
		names[i] = (char *)ps[i].name;
		free(ps[i].base);
		free(ps[i].group);
	}
	for (size_t i = kept; i < *n; i++)
		free(names[i]);
	*n = kept;
	free(ps);
	if (rc)
		folder_pick_free(pick);
	return rc;
}

void folder_pick_free(struct folder_pick *pick)
{
	for (size_t i = 0; i < pick->n_groups; i++)
		free(pick->groups[i].name);
	free(pick->groups);
	memset(pick, 0, sizeof(*pick));
}
