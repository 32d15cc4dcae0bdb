#include "json_walk.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "header.h"

#define JSON_DEPTH 64

/* Grow `*buf` so that it holds at least `need` elements of `size` bytes. */
int st_reserve(void *buf, size_t *cap, size_t need, size_t size)
{
	void **b = buf;
	size_t c = *cap ? *cap : 16;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	void *nb = realloc(*b, c * size);
	if (!nb)
		return -ENOMEM;
	*b = nb;
	*cap = c;
	return 0;
}

/* Offset of the first byte that breaks strict UTF-8, or n if none does. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		size_t len;
		unsigned min, cp;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, min = 0x80, cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, min = 0x800, cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, min = 0x10000, cp = c & 0x07;
		} else {
			return i;
		}
		if (n - i < len)
			return i;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return i;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return i;
		i += len;
	}
	return n;
}

/*
 * Offset of the first raw control byte inside a JSON string, or n.  JSON
 * forbids them and serde_json refuses them; json-c lets them through.
 */
static size_t control_in_string_at(const char *s, size_t n)
{
	bool in_string = false;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!in_string) {
			in_string = c == '"';
		} else if (c == '\\') {
			i++;
		} else if (c == '"') {
			in_string = false;
		} else if (c < 0x20) {
			return i;
		}
	}
	return n;
}

/* JSON's four whitespace bytes; the reference accepts them around the object. */
void jw_skip_ws(struct jw *p)
{
	while (p->pos < p->n) {
		char c = p->json[p->pos];
		if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
			break;
		p->pos++;
	}
}

int jw_peek(const struct jw *p)
{
	return p->pos < p->n ? (unsigned char)p->json[p->pos] : -1;
}

/* One JSON value at the cursor; *out is NULL for `null`. */
int jw_value(struct jw *p, json_object **out)
{
	size_t at = p->pos;
	size_t left = p->n - p->pos;

	json_tokener_reset(p->tok);
	*out = json_tokener_parse_ex(p->tok, p->json + at, (int)left);
	enum json_tokener_error e = json_tokener_get_error(p->tok);
	if (e == json_tokener_continue)
		return jw_fail(p, at, "unterminated JSON value");
	if (e != json_tokener_success)
		return jw_fail(p, at + json_tokener_get_parse_end(p->tok),
			       "malformed JSON (%s)", json_tokener_error_desc(e));
	p->pos = at + json_tokener_get_parse_end(p->tok);
	return 0;
}

int jw_string(struct jw *p, const char *what, json_object **out)
{
	size_t at = p->pos;
	int rc = jw_value(p, out);

	if (rc)
		return rc;
	if (!*out || json_object_get_type(*out) != json_type_string) {
		json_object_put(*out);
		return jw_fail(p, at, "%s is not a string", what);
	}
	return 0;
}

/* Walk `{ "key": value, ... }`, handing each key to `on_entry`, which parses the value. */
int jw_object(struct jw *p, jw_entry_fn *on_entry)
{
	int rc;

	jw_skip_ws(p);
	if (jw_peek(p) != '{')
		return jw_fail(p, p->pos, "expected a JSON object");
	p->pos++;
	jw_skip_ws(p);
	if (jw_peek(p) == '}') {
		p->pos++;
		return 0;
	}
	for (;;) {
		json_object *key;
		size_t key_at;

		jw_skip_ws(p);
		key_at = p->pos;
		if (jw_peek(p) != '"')
			return jw_fail(p, key_at, "expected a string key");
		if ((rc = jw_string(p, "key", &key)))
			return rc;
		jw_skip_ws(p);
		if (jw_peek(p) != ':') {
			json_object_put(key);
			return jw_fail(p, p->pos, "expected ':'");
		}
		p->pos++;
		jw_skip_ws(p);
		rc = on_entry(p, json_object_get_string(key),
			      (size_t)json_object_get_string_len(key), key_at);
		json_object_put(key);
		if (rc)
			return rc;
		jw_skip_ws(p);
		if (jw_peek(p) == ',') {
			p->pos++;
			continue;
		}
		if (jw_peek(p) == '}') {
			p->pos++;
			return 0;
		}
		return jw_fail(p, p->pos, "expected ',' or '}'");
	}
}

int jw_fail(struct jw *p, size_t at, const char *fmt, ...)
{
	char what[ST_ERR_LEN - 64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(p->err, ST_ERR_LEN, "%s at byte %zu", what, (size_t)(at + p->base));
	return -EINVAL;
}


int jw_init(struct jw *w, const char *what, const char *json, size_t n, uint64_t base, char *err,
	    void *ctx)
{
	size_t bad;

	*w = (struct jw){.what = what, .json = json, .n = n, .base = base, .err = err, .ctx = ctx};
	err[0] = '\0';
	if ((bad = utf8_invalid_at((const unsigned char *)json, n)) != n)
		return jw_fail(w, bad, "%s is not valid UTF-8", what);
	if ((bad = control_in_string_at(json, n)) != n)
		return jw_fail(w, bad, "unescaped control character in a JSON string");
	if (!(w->tok = json_tokener_new_ex(JSON_DEPTH)))
		return -ENOMEM;
	json_tokener_set_flags(w->tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
	return 0;
}

void jw_fini(struct jw *w)
{
	if (w->tok)
		json_tokener_free(w->tok);
	w->tok = NULL;
}

int jw_end(struct jw *w)
{
	jw_skip_ws(w);
	return w->pos == w->n ? 0 : jw_fail(w, w->pos, "trailing bytes after the %s's JSON object", w->what);
}
