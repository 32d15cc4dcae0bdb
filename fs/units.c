/* Sizes as users write them in options (-o max_upload=, block_size=, cache_size=). */
#include "units.h"

#include <errno.h>
#include <stdlib.h>

/* "N", "NK", "NM" or "NG" (powers of 1024) to bytes; -EINVAL for anything else or overflow. */
int parse_size(const char *text, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!text || *text < '0' || *text > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (*end && !end[1])
		shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20
			: *end == 'G' || *end == 'g' ? 30 : 0;
	if (errno || (*end && !shift) || v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}
