#include "dtype.h"

#include <string.h>

static const struct {
	const char *name;
	unsigned bits;
} dtypes[ST_DTYPE_COUNT] = {
	[ST_BOOL] = {"BOOL", 8},
	[ST_F4] = {"F4", 4},
	[ST_F6_E2M3] = {"F6_E2M3", 6},
	[ST_F6_E3M2] = {"F6_E3M2", 6},
	[ST_U8] = {"U8", 8},
	[ST_I8] = {"I8", 8},
	[ST_F8_E5M2] = {"F8_E5M2", 8},
	[ST_F8_E4M3] = {"F8_E4M3", 8},
	[ST_F8_E8M0] = {"F8_E8M0", 8},
	[ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
	[ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
	[ST_I16] = {"I16", 16},
	[ST_U16] = {"U16", 16},
	[ST_F16] = {"F16", 16},
	[ST_BF16] = {"BF16", 16},
	[ST_I32] = {"I32", 32},
	[ST_U32] = {"U32", 32},
	[ST_F32] = {"F32", 32},
	[ST_C64] = {"C64", 64},
	[ST_F64] = {"F64", 64},
	[ST_I64] = {"I64", 64},
	[ST_U64] = {"U64", 64},
};

int st_dtype_from_name(const char *name, size_t len)
{
	for (int i = 0; i < ST_DTYPE_COUNT; i++)
		if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0)
			return i;
	return -1;
}

const char *st_dtype_name(enum st_dtype dtype)
{
	return dtypes[dtype].name;
}

unsigned st_dtype_bits(enum st_dtype dtype)
{
	return dtypes[dtype].bits;
}
