/*
 * The header of a NumPy .npy file, byte for byte what np.save writes for
 * NumPy's own dtypes: format 1.0 (2.0 when the header passes 65535 bytes),
 * the dict in sorted-key order, NumPy's spare spaces for growing the first
 * axis, then spaces and '\n' so that the data starts at a multiple of 64,
 * which lets np.load(path, mmap_mode="r") map it.
 *
 * Types NumPy lacks: np.save writes a bfloat16 array as descr '<V2', which
 * loads as raw void.  Instead the descr is the ml_dtypes name ('bfloat16',
 * 'float8_e4m3fn', ...): np.load passes a string descr to np.dtype(), which
 * knows these names once ml_dtypes is imported.  So a user runs
 * `import ml_dtypes; np.load("w.npy", mmap_mode="r")` and gets a bfloat16
 * array (checked with NumPy 2.4, ml_dtypes 0.6); without the import np.load
 * raises "descr is not a valid dtype descriptor".  Sub-byte dtypes (F4, F6)
 * are stored as ml_dtypes stores them, one element per byte.
 *
 * np.load refuses headers over 10000 bytes unless allow_pickle=True: only a
 * tensor of rank above ~400 gets there.
 */
#ifndef SAFETENSORSFS_NPY_H
#define SAFETENSORSFS_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "../parser/dtype.h"

/* The descr string for dtype, or NULL when .npy cannot hold it. */
const char *npy_descr(enum st_dtype dtype);

/* A malloc'd header for an array of dtype and shape into *out, its length (a
 * multiple of 64) into *len.  0, -ENOENT for a dtype without descr, -ENOMEM. */
int npy_header(enum st_dtype dtype, const uint64_t *shape, uint32_t rank, char **out, size_t *len);

#endif
