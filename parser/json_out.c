#include "json_out.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"

static void raw(struct jout *j, const char *s, size_t n)
{
	if (j->failed)
		return;
	if (j->len + n + 1 > j->cap) {
		size_t cap = (j->len + n + 1) * 2;
		char *p = realloc(j->p, cap);
		if (!p) {
			j->failed = 1;
			return;
		}
		j->p = p;
		j->cap = cap;
	}
	memcpy(j->p + j->len, s, n);
	j->len += n;
	j->p[j->len] = '\0';
}

/* Values and keys in a container are separated by commas; a key's value is not. */
static void item(struct jout *j)
{
	if (j->need_comma)
		raw(j, ",", 1);
	j->need_comma = 1;
}

void jout_begin(struct jout *j, char open)
{
	item(j);
	raw(j, &open, 1);
	j->need_comma = 0;
}

void jout_end(struct jout *j, char close)
{
	raw(j, &close, 1);
	j->need_comma = 1;
}

void jout_key(struct jout *j, const char *key)
{
	jout_str(j, key, strlen(key));
	raw(j, ":", 1);
	j->need_comma = 0;
}

void jout_str(struct jout *j, const char *s, size_t len)
{
	char *q = st_json_quote(s, len);

	item(j);
	if (!q)
		j->failed = 1;
	else
		raw(j, q, strlen(q));
	free(q);
}

void jout_u64(struct jout *j, uint64_t v)
{
	char num[24];

	item(j);
	raw(j, num, (size_t)snprintf(num, sizeof(num), "%" PRIu64, v));
}

void jout_double(struct jout *j, double v)
{
	char num[32];

	item(j);
	raw(j, num, (size_t)snprintf(num, sizeof(num), "%.6f", v));
}

void jout_bool(struct jout *j, int v)
{
	item(j);
	raw(j, v ? "true" : "false", v ? 4 : 5);
}

void jout_free(struct jout *j)
{
	free(j->p);
	memset(j, 0, sizeof(*j));
}
