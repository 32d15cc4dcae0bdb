/* The dtypes the safetensors format knows, with their widths. */
#ifndef ST_DTYPE_H
#define ST_DTYPE_H

#include <stddef.h>

enum st_dtype {
	ST_BOOL, ST_F4, ST_F6_E2M3, ST_F6_E3M2, ST_U8, ST_I8, ST_F8_E5M2,
	ST_F8_E4M3, ST_F8_E8M0, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_I16, ST_U16,
	ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_C64, ST_F64, ST_I64, ST_U64,
	ST_DTYPE_COUNT
};

/* The dtype spelled exactly (case-sensitive) as `name[0..len)`, or -1. */
int st_dtype_from_name(const char *name, size_t len);
const char *st_dtype_name(enum st_dtype dtype);
unsigned st_dtype_bits(enum st_dtype dtype);

#endif
