/*
 * libFuzzer target for fs/folder.c: the input is file names, one per line (the first line,
 * if it starts with '@', names a variant).  Checks that what folder_pick keeps is a subset
 * of its input, that its groups cover the kept names exactly once, and that no two groups
 * share a directory name and none has an empty one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../fs/folder.h"

static int by_string(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **split(const uint8_t *data, size_t size, size_t *n, char **variant)
{
	char **names = calloc(size + 1, sizeof(*names));
	size_t start = 0;

	*n = 0;
	*variant = NULL;
	for (size_t i = 0; names && i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		size_t len = i - start;
		if (!memchr(data + start, '\0', len)) {
			if (start == 0 && len > 1 && data[0] == '@') {
				*variant = strndup((const char *)data + 1, len - 1);
			} else if (len > 0) {
				char *s = malloc(len + strlen(WEIGHTS_SUFFIX) + 1);
				memcpy(s, data + start, len);
				strcpy(s + len, WEIGHTS_SUFFIX);
				names[(*n)++] = s;
			}
		}
		start = i + 1;
	}
	qsort(names, *n, sizeof(*names), by_string);
	return names;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t n, kept;
	char *variant, err[256];
	char **names = split(data, size, &n, &variant);
	char **input = malloc((n + 1) * sizeof(*input));
	struct folder_pick p;

	for (size_t i = 0; i < n; i++)
		input[i] = strdup(names[i]);
	kept = n;
	if (folder_pick(names, &kept, variant, &p, err, sizeof(err)) == 0) {
		size_t covered = 0;
		for (size_t g = 0; g < p.n_groups; g++) {
			if (p.groups[g].first != covered || p.groups[g].count == 0 || !p.groups[g].name[0])
				__builtin_trap();
			covered += p.groups[g].count;
			for (size_t h = 0; h < g; h++)
				if (strcmp(p.groups[g].name, p.groups[h].name) == 0)
					__builtin_trap();
		}
		if (covered != kept || (n > 0 && kept == 0))
			__builtin_trap();
		for (size_t i = 0; i < kept; i++)
			if (!bsearch(&names[i], input, n, sizeof(*input), by_string))
				__builtin_trap();
		folder_pick_free(&p);
	}
	for (size_t i = 0; i < kept; i++)
		free(names[i]);
	for (size_t i = 0; i < n; i++)
		free(input[i]);
	free(names);
	free(input);
	free(variant);
	return 0;
}
