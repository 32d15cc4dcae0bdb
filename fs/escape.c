#include "escape.h"

#include <stdio.h>

static size_t put_hex(char *out, unsigned char c)
{
	static const char hex[] = "0123456789ABCDEF";

	out[0] = '%';
	out[1] = hex[c >> 4];
	out[2] = hex[c & 15];
	return 3;
}

size_t escape_part(char *out, const char *part, size_t len, bool in_root)
{
	size_t o = 0;

	if (len == 0) {
		out[0] = '%';
		out[1] = '\0';
		return 1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)part[i];
		if (c == '%' || c == '/' || c == '\0' || (i == 0 && c == '.' && in_root))
			o += put_hex(out + o, c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	return o;
}
