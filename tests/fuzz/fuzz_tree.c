/*
 * libFuzzer target: a parsed header fed to the tree builder in both layouts,
 * checking that every tensor is reachable by its escaped path, that escaping
 * reverses, and that no directory holds two entries of one name.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../fs/escape.h"
#include "../../fs/tree.h"

static int unhex(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The inverse of escape_part, as a user would apply it. */
static size_t unescape(char *out, const char *in, size_t len)
{
	size_t o = 0;

	if (len == 1 && in[0] == '%')
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '%') {
			if (i + 2 >= len || unhex(in[i + 1]) < 0 || unhex(in[i + 2]) < 0)
				__builtin_trap();
			out[o++] = (char)(unhex(in[i + 1]) * 16 + unhex(in[i + 2]));
			i += 2;
		} else {
			out[o++] = in[i];
		}
	}
	return o;
}

static void check_escape(const char *part, size_t len, int in_root)
{
	char *e = malloc(ESCAPED_MAX(len)), *d = malloc(len + 1);
	size_t elen = escape_part(e, part, len, in_root);

	if (memchr(e, '/', elen) || memchr(e, '\0', elen) || elen == 0 ||
	    (in_root && e[0] == '.') || unescape(d, e, elen) != len || memcmp(d, part, len) != 0)
		__builtin_trap();
	free(e);
	free(d);
}

static long lookup_part(const struct tree *t, long dir, const char *part, size_t len)
{
	char *e = malloc(ESCAPED_MAX(len));
	size_t elen = escape_part(e, part, len, dir == 0);
	long n = tree_lookup(t, (uint32_t)dir, e, elen);

	free(e);
	return n;
}

/* The file of tensor i: its escaped path, or the same with the collision suffix. */
static void check_reachable(const struct tree *t, const struct st_header *h, size_t i, enum layout layout)
{
	const struct st_tensor *ts = &h->tensors[i];
	const char *name = st_tensor_name(h, ts), *end = name + ts->name_len, *dot;
	long dir = 0, n;

	check_escape(name, ts->name_len, 1);
	while (layout == LAYOUT_TREE && (dot = memchr(name, '.', (size_t)(end - name)))) {
		check_escape(name, (size_t)(dot - name), dir == 0);
		dir = lookup_part(t, dir, name, (size_t)(dot - name));
		if (dir < 0 || t->nodes[dir].kind != NODE_DIR)
			__builtin_trap();
		name = dot + 1;
	}
	n = lookup_part(t, dir, name, (size_t)(end - name));
	if (n >= 0 && t->nodes[n].kind == NODE_DIR) {
		char *e = malloc(ESCAPED_MAX((size_t)(end - name)) + sizeof(COLLISION_SUFFIX));
		size_t elen = escape_part(e, name, (size_t)(end - name), dir == 0);
		memcpy(e + elen, COLLISION_SUFFIX, sizeof(COLLISION_SUFFIX));
		n = tree_lookup(t, (uint32_t)dir, e, elen + strlen(COLLISION_SUFFIX));
		free(e);
	}
	if (n < 0 || t->nodes[n].kind != NODE_TENSOR || t->nodes[n].tensor.index != i)
		__builtin_trap();
}

static void check_tree(const struct source *src, enum layout layout)
{
	const struct st_header *h = &src->shards[0].hdr;
	struct tree t;
	char err[256];

	if (tree_build(&t, src, layout, err, sizeof(err)) < 0)
		return;
	for (size_t i = 1; i < t.n_nodes; i++) /* a lookup of each name finds that very node */
		if (tree_lookup(&t, t.nodes[i].parent, node_name(&t, &t.nodes[i]), t.nodes[i].name_len) != (long)i)
			__builtin_trap();
	for (size_t i = 0; i < h->n_tensors; i++)
		check_reachable(&t, h, i, layout);
	tree_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct shard sh = {.fd = -1, .label = "fuzz.safetensors"};
	struct component comp = {.name = "", .count = 1};
	struct source src = {.shards = &sh, .n_shards = 1, .components = &comp, .n_components = 1};
	char err[ST_ERR_LEN];

	if (st_header_parse_buffer(data, size, &sh.hdr, err) != 0)
		return 0;
	check_tree(&src, LAYOUT_TREE);
	check_tree(&src, LAYOUT_FLAT);
	st_header_free(&sh.hdr);
	return 0;
}
