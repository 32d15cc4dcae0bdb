/*
 * Unit tests of fs/folder.c: which of a folder's file names make up its models, and how
 * they group.  Run from tests/test_folder_c.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../fs/folder.h"

#include "check.h"

/*
 * folder_pick over `files` (a NULL-ended list, sorted), then the result written as
 * "group:file,file;group:file;" into out, or "error: ..." when refused.
 */
static void pick(const char *const *files, const char *variant, char *out, size_t len, int *found)
{
	size_t n = 0;
	while (files[n])
		n++;
	char **names = calloc(n + 1, sizeof(*names)), err[256] = "";
	for (size_t i = 0; i < n; i++)
		names[i] = strdup(files[i]);
	struct folder_pick p;
	int rc = folder_pick(names, &n, variant, &p, err, sizeof(err));
	size_t used = 0;
	out[0] = '\0';
	if (rc) {
		snprintf(out, len, "error: %s", err);
	} else {
		for (size_t g = 0; g < p.n_groups; g++) {
			used += (size_t)snprintf(out + used, len - used, "%s:", p.groups[g].name);
			for (size_t i = p.groups[g].first; i < p.groups[g].first + p.groups[g].count; i++)
				used += (size_t)snprintf(out + used, len - used, "%s%s", names[i],
							 i + 1 < p.groups[g].first + p.groups[g].count ? "," : ";");
		}
	}
	if (found)
		*found = p.variant_found;
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	folder_pick_free(&p);
}

#define EXPECT(variant, want, ...)                                                       \
	do {                                                                             \
		const char *files_[] = {__VA_ARGS__, NULL};                              \
		char got_[1024];                                                         \
		pick(files_, variant, got_, sizeof(got_), NULL);                         \
		CHECK(strcmp(got_, want) == 0, "variant %s: got '%s', want '%s'",        \
		      variant ? variant : "(none)", got_, want);                         \
	} while (0)

int main(void)
{
	/* One file, and the shards of one model, are one group. */
	EXPECT(NULL, "model:model.safetensors;", "model.safetensors");
	EXPECT(NULL, "model:model-00001-of-00002.safetensors,model-00002-of-00002.safetensors;",
	       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
	/* Unrelated files: a group each, named after the file. */
	EXPECT(NULL, "style_a:style_a.safetensors;style_b:style_b.safetensors;", "style_a.safetensors",
	       "style_b.safetensors");
	/* Shards of two models, and a count that differs, are groups apart. */
	EXPECT(NULL, "a:a-00001-of-00002.safetensors,a-00002-of-00002.safetensors;b:b-00001-of-00001.safetensors;",
	       "a-00001-of-00002.safetensors", "a-00002-of-00002.safetensors", "b-00001-of-00001.safetensors");
	EXPECT(NULL, "error: a-00001-of-00002.safetensors and a-00001-of-00003.safetensors would both be the directory 'a': name one of them as SOURCE",
	       "a-00001-of-00002.safetensors", "a-00001-of-00003.safetensors");
	EXPECT(NULL, "error: m.safetensors and m-00001-of-00001.safetensors would both be the directory 'm': name one of them as SOURCE",
	       "m-00001-of-00001.safetensors", "m.safetensors");
	/* Not shard suffixes: no digits, no leading dash. */
	EXPECT(NULL, "a-of-2:a-of-2.safetensors;x1-of-2:x1-of-2.safetensors;", "a-of-2.safetensors", "x1-of-2.safetensors");
	/* Variants: the plain file by default, the variant when asked, else the plain one. */
	EXPECT(NULL, "diffusion_pytorch_model:diffusion_pytorch_model.safetensors;",
	       "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors");
	EXPECT("fp16", "diffusion_pytorch_model.fp16:diffusion_pytorch_model.fp16.safetensors;",
	       "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors");
	EXPECT("bf16", "diffusion_pytorch_model:diffusion_pytorch_model.safetensors;",
	       "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors");
	/* Sharded variants, in both of the places tools put the variant. */
	EXPECT(NULL, "model:model-00001-of-00002.safetensors,model-00002-of-00002.safetensors;",
	       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
	       "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors");
	EXPECT("fp16", "model.fp16:model.fp16-00001-of-00002.safetensors,model.fp16-00002-of-00002.safetensors;",
	       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
	       "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors");
	EXPECT("fp16", "model.fp16:model-00001-of-00002.fp16.safetensors,model-00002-of-00002.fp16.safetensors;",
	       "model-00001-of-00002.fp16.safetensors", "model-00001-of-00002.safetensors",
	       "model-00002-of-00002.fp16.safetensors", "model-00002-of-00002.safetensors");
	/* A plain model sharded and its variant whole are one BASE: the variant goes by default. */
	EXPECT(NULL, "model:model-00001-of-00002.safetensors,model-00002-of-00002.safetensors;",
	       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.fp16.safetensors");
	/* A variant alone is kept (it has no plain file to give way to). */
	EXPECT(NULL, "model.fp16:model.fp16.safetensors;", "model.fp16.safetensors");
	/* Versions are no variants (groups come in name order): the part after the last dot must start with a letter. */
	EXPECT(NULL, "sd_xl_base_1:sd_xl_base_1.safetensors;sd_xl_base_1.0:sd_xl_base_1.0.safetensors;",
	       "sd_xl_base_1.0.safetensors", "sd_xl_base_1.safetensors");
	EXPECT(NULL, "a:a.safetensors;a.b-c:a.b-c.safetensors;", "a.b-c.safetensors", "a.safetensors");
	/* Only known variants give way by default; any other suffix is a file of its own. */
	EXPECT(NULL, "lora:lora.safetensors;lora.v2:lora.v2.safetensors;", "lora.safetensors", "lora.v2.safetensors");
	EXPECT("v2", "lora.v2:lora.v2.safetensors;", "lora.safetensors", "lora.v2.safetensors");
	EXPECT(NULL, "m:m.safetensors;", "m.bf16.safetensors", "m.ema.safetensors", "m.non_ema.safetensors",
	       "m.safetensors");
	/* "-I-of-N" needs a BASE before it. */
	EXPECT(NULL, "-00001-of-00002:-00001-of-00002.safetensors;-00002-of-00002:-00002-of-00002.safetensors;"
	       "other:other.safetensors;",
	       "-00001-of-00002.safetensors", "-00002-of-00002.safetensors", "other.safetensors");
	/* Without an index, a shard set must be whole: a partial download is refused. */
	EXPECT(NULL, "error: 'model' has 2 of its 3 shards here (model-00001-of-00003.safetensors, ...; a download cut short?): fetch the rest, or mount the model's index",
	       "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors");
	EXPECT(NULL, "error: 'm' has shards numbered twice or outside 1 to 2 (m-01-of-2.safetensors, ...): mount the model's index",
	       "m-01-of-2.safetensors", "m-1-of-2.safetensors");
	EXPECT(NULL, "error: 'm' has shards numbered twice or outside 1 to 2 (m-00002-of-00002.safetensors, ...): mount the model's index",
	       "m-00002-of-00002.safetensors", "m-00003-of-00002.safetensors");
	EXPECT(NULL, "error: 'm' has shards numbered twice or outside 1 to 1 (m-00000-of-00001.safetensors, ...): mount the model's index",
	       "m-00000-of-00001.safetensors");
	/* variant_found says whether any file of the variant was taken. */
	{
		const char *files[] = {"x.fp16.safetensors", "x.safetensors", "y.safetensors", NULL};
		char out[256];
		int found = -1;
		pick(files, "fp16", out, sizeof(out), &found);
		CHECK(found == 1 && strcmp(out, "x.fp16:x.fp16.safetensors;y:y.safetensors;") == 0, "found %d: %s", found, out);
		pick(files, "bf16", out, sizeof(out), &found);
		CHECK(found == 0, "bf16 found %d", found);
	}
	printf("folder: %d passed, %d failed\n", passed, failed);
	return failed != 0;
}
