/*
 * Which of a folder's .safetensors files make up its model(s), from their
 * names alone (no index in the folder):
 *
 *   STEM.safetensors   STEM = BASE[.VARIANT][-I-of-N]  or  BASE[-I-of-N][.VARIANT]
 *
 * Variants follow diffusers and transformers, which save `model.fp16.safetensors`
 * next to `model.safetensors` (and shard as `model.fp16-00001-of-00002.safetensors`):
 * without -o variant a file whose plain counterpart is in the folder is left
 * out; with -o variant=V the files of variant V are taken, and a folder with
 * none of them keeps its plain files (as diffusers falls back per component).
 *
 * The files left form groups: the shards of one model (the same BASE and N)
 * are one group, every other file is a group of its own.  One group is the
 * folder's model; several (a ComfyUI loras/ folder) become one directory
 * each, named after the file with "-I-of-N" taken out.
 */
#ifndef FS_FOLDER_H
#define FS_FOLDER_H

#include <stdbool.h>
#include <stddef.h>

#define WEIGHTS_SUFFIX ".safetensors"

struct folder_group {
	char *name;          /* the directory it becomes when the folder has several */
	size_t first, count; /* its files: names[first .. first+count) after folder_groups */
};

struct folder_pick {
	struct folder_group *groups;
	size_t n_groups;
	bool variant_found; /* some file of -o variant's name was taken */
};

/*
 * Keeps in names[0..*n) (sorted, each ending in WEIGHTS_SUFFIX) the files the
 * folder's models are made of, ordered group by group; the files left out are
 * freed.  variant may be NULL.  Returns 0, -ENOMEM, or -EINVAL with a line in
 * err (two groups would be one directory).
 */
int folder_pick(char **names, size_t *n, const char *variant, struct folder_pick *pick, char *err,
		size_t errlen);
void folder_pick_free(struct folder_pick *pick);

/* Whether `name` can be a variant: a letter, then letters, digits and '_' (fp16, non_ema). */
bool folder_variant_name(const char *name);

#endif
