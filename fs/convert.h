/*
 * dtype conversion kernels for the `@DTYPE` views, bit-exact with
 * `np.asarray(x).astype(target)` where x is the array typed as NumPy or
 * ml_dtypes types it (bfloat16, float8_*, float6_*, float4_e2m1fn).
 *
 * What "bit-exact" means here, as measured against NumPy 2.4 and ml_dtypes
 * 0.7 (tests/test_view_units.py checks every case below):
 *  - Every cast rounds to nearest, ties to even; overflow gives Inf.
 *  - Casts between NumPy's own types (integers, BOOL, F16, F32, F64) are
 *    NumPy's: F64->F16 rounds once (not via F32), F16->F32/F64 keep a
 *    signalling NaN signalling, F32/F64->F16 keep the top NaN payload bits.
 *  - Casts that involve an ml_dtypes type go through float32, as ml_dtypes
 *    does (static_cast<To>(static_cast<float>(from))), which is exact for
 *    every source but the 32- and 64-bit integers; F64->BF16 rounds once
 *    from the double, as ml_dtypes 0.7 does (a float rounded to odd, then
 *    to nearest-even: see f64_to_f32_odd); every NaN becomes the quiet NaN of its sign
 *    (0x7fc0 in BF16, 0x7e00 in F16 from BF16/F8/F6/F4), and a BF16 or F8 NaN
 *    reaching F64 goes through the CPU's float->double, which quiets it.
 *  - BOOL is 0 or 1 (any nonzero byte is 1), as NumPy's casts read it.
 *    ml_dtypes' BOOL->BF16 reads the raw byte instead (0x02 -> 2.0); we keep
 *    NumPy's meaning for every target so that w@BF16 and w@F32 agree.
 *  - C64 is refused: NumPy drops the imaginary part only with a
 *    ComplexWarning, which a file system cannot show.
 *
 * Sub-byte dtypes (F4, F6_*) are packed in the tensor as a little-endian bit
 * stream: element i occupies bits [i*b, i*b+b) counting from bit 0 of byte 0
 * (for F4, the low nibble first, as PyTorch's float4_e2m1fn_x2).  Their
 * "unpacked" form, used in .npy files, is ml_dtypes' one element per byte.
 *
 * Assumes a little-endian host, as the safetensors data is little-endian.
 */
#ifndef SAFETENSORSFS_CONVERT_H
#define SAFETENSORSFS_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../parser/dtype.h"

/* Whether convert() can produce dst from src: src == dst (a copy, or an
 * unpack for sub-byte dtypes), or dst in {F64, F32, F16, BF16} and src any
 * dtype but C64. */
bool convert_supported(enum st_dtype src, enum st_dtype dst);

/* Bytes per element of dst as convert() writes it: 1 for sub-byte dtypes. */
unsigned convert_out_size(enum st_dtype dst);

/*
 * Convert n elements.  `in` holds src elements, the first starting at bit
 * `bit_off` (0..7, nonzero only for sub-byte dtypes) of in[0]; `out` gets n
 * elements of dst, convert_out_size(dst) bytes each.  Neither pointer needs
 * any alignment.  The pair must be convert_supported().
 */
void convert(enum st_dtype src, enum st_dtype dst, const void *in, unsigned bit_off, void *out,
	     size_t n);

#endif
