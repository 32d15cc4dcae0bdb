/* Building one line of JSON text (the /.control replies) without the daemon writing JSON syntax itself. */
#ifndef ST_JSON_OUT_H
#define ST_JSON_OUT_H

#include <stddef.h>
#include <stdint.h>

struct jout {
	char *p;
	size_t len, cap;
	int failed; /* out of memory: the text is unusable */
	int need_comma;
};

void jout_begin(struct jout *j, char open);  /* '{' or '[' */
void jout_end(struct jout *j, char close);   /* '}' or ']' */
void jout_key(struct jout *j, const char *key);
void jout_str(struct jout *j, const char *s, size_t len);
void jout_u64(struct jout *j, uint64_t v);
void jout_double(struct jout *j, double v);
void jout_bool(struct jout *j, int v);
void jout_free(struct jout *j);

#endif
