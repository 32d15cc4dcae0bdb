/*
 * dtype conversion kernels; convert.h says which rounding and NaN rules
 * each cast follows and why.  Every load and store goes through memcpy so
 * that buffers need no alignment; the compiler turns them into plain moves.
 */
#include "convert.h"

#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensorsfs reads little-endian tensor data as host integers"
#endif

/* Elements taken through the float32 intermediate at a time: a 2 KiB stack
 * buffer, large enough that the per-block dispatch costs nothing. */
#define BLOCK 512
/* Inner loops of a fixed trip count: GCC's -O2 cost model only vectorizes
 * loops whose count is a known multiple of the vector width. */
#define LANES 16

static inline uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static inline uint64_t ld64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static inline void st16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, sizeof v);
}

static inline void st32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, sizeof v);
}

static inline void st64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, sizeof v);
}

static inline float f32_from_bits(uint32_t b)
{
	float f;
	memcpy(&f, &b, sizeof f);
	return f;
}

static inline uint32_t f32_bits(float f)
{
	uint32_t b;
	memcpy(&b, &f, sizeof b);
	return b;
}

static inline double f64_from_bits(uint64_t b)
{
	double d;
	memcpy(&d, &b, sizeof d);
	return d;
}

static inline uint64_t f64_bits(double d)
{
	uint64_t b;
	memcpy(&b, &d, sizeof b);
	return b;
}

static bool is_minifloat(enum st_dtype t)
{
	switch (t) {
	case ST_F4: case ST_F6_E2M3: case ST_F6_E3M2: case ST_F8_E5M2: case ST_F8_E4M3:
	case ST_F8_E8M0: case ST_F8_E4M3FNUZ: case ST_F8_E5M2FNUZ:
		return true;
	default:
		return false;
	}
}

/* The types ml_dtypes provides: its casts go through float32 and make every
 * NaN the quiet NaN of its sign (see convert.h). */
static bool is_ml_dtype(enum st_dtype t)
{
	return t == ST_BF16 || is_minifloat(t);
}

bool convert_supported(enum st_dtype src, enum st_dtype dst)
{
	if (src >= ST_DTYPE_COUNT || dst >= ST_DTYPE_COUNT)
		return false;
	if (src == dst)
		return true;
	if (src == ST_C64)
		return false;
	return dst == ST_F64 || dst == ST_F32 || dst == ST_F16 || dst == ST_BF16;
}

unsigned convert_out_size(enum st_dtype dst)
{
	unsigned bits = st_dtype_bits(dst);

	return bits < 8 ? 1 : bits / 8;
}

/* ---- Decoding minifloats (F8, F6, F4) through a table of float32 bits ---- */

enum nan_rule {
	NAN_NONE,	/* every code is finite (F6, F4) */
	NAN_IEEE,	/* exponent all ones: Inf if mantissa 0, else NaN (E5M2) */
	NAN_FN,		/* only exponent and mantissa all ones: NaN, no Inf (E4M3FN) */
	NAN_FNUZ,	/* only 0x80 ("-0"): NaN (the FNUZ types) */
	NAN_ALLONES,	/* 0xff: NaN; unsigned, no zero, no subnormals (E8M0) */
};

struct minifloat {
	unsigned ebits, mbits;
	int bias;
	enum nan_rule nan;
};

static struct minifloat minifloat_of(enum st_dtype t)
{
	switch (t) {
	case ST_F4: return (struct minifloat){2, 1, 1, NAN_NONE};
	case ST_F6_E2M3: return (struct minifloat){2, 3, 1, NAN_NONE};
	case ST_F6_E3M2: return (struct minifloat){3, 2, 3, NAN_NONE};
	case ST_F8_E5M2: return (struct minifloat){5, 2, 15, NAN_IEEE};
	case ST_F8_E4M3: return (struct minifloat){4, 3, 7, NAN_FN};
	case ST_F8_E4M3FNUZ: return (struct minifloat){4, 3, 8, NAN_FNUZ};
	case ST_F8_E5M2FNUZ: return (struct minifloat){5, 2, 16, NAN_FNUZ};
	default: return (struct minifloat){8, 0, 127, NAN_ALLONES};	/* ST_F8_E8M0 */
	}
}

/* float32 bits of m * 2^e, exact for every minifloat value (m < 16). */
static uint32_t f32_bits_of_scaled(uint32_t m, int e)
{
	if (m == 0)
		return 0;
	int top = 31 - __builtin_clz(m);
	int fe = e + top + 127;

	if (fe <= 0)	/* float32 subnormal: only E8M0's 2^-127 */
		return m << (e + 149);
	return (uint32_t)fe << 23 | ((m - (1u << top)) << (23 - top));
}

/* float32 bits of one minifloat code; NaNs are ml_dtypes' 0x7fc00000 with
 * the code's sign bit (so an FNUZ NaN, 0x80, is negative). */
static uint32_t minifloat_decode(struct minifloat f, unsigned code)
{
	unsigned emask = (1u << f.ebits) - 1, mmask = (1u << f.mbits) - 1;
	unsigned e = (code >> f.mbits) & emask, m = code & mmask;
	uint32_t sign = f.nan == NAN_ALLONES ? 0 : (uint32_t)(code >> (f.ebits + f.mbits) & 1) << 31;
	bool nan = (f.nan == NAN_IEEE && e == emask && m) ||
		   (f.nan == NAN_FN && e == emask && m == mmask) ||
		   (f.nan == NAN_FNUZ && code == 0x80) || (f.nan == NAN_ALLONES && code == 0xff);

	if (nan)
		return sign | 0x7fc00000;
	if (f.nan == NAN_IEEE && e == emask)
		return sign | 0x7f800000;
	if (e == 0 && f.nan != NAN_ALLONES)	/* subnormal: no implicit 1 */
		return sign | f32_bits_of_scaled(m, 1 - f.bias - (int)f.mbits);
	return sign | f32_bits_of_scaled(m | (1u << f.mbits), (int)e - f.bias - (int)f.mbits);
}

/* ---- Decoding anything to float32 bits ---- */

struct decoder {
	enum st_dtype src;
	unsigned bits;
	uint32_t table[256];	/* minifloats: float32 bits of each code */
};

static void decoder_init(struct decoder *d, enum st_dtype src)
{
	d->src = src;
	d->bits = st_dtype_bits(src);
	if (is_minifloat(src)) {
		struct minifloat f = minifloat_of(src);

		for (unsigned c = 0; c < (1u << d->bits); c++)
			d->table[c] = minifloat_decode(f, c);
	}
}

/* Bits [bit, bit+width) of a little-endian bit stream. */
static inline unsigned get_bits(const uint8_t *in, size_t bit, unsigned width)
{
	size_t byte = bit >> 3;
	unsigned shift = bit & 7, v = in[byte] >> shift;

	if (shift + width > 8)
		v |= (unsigned)in[byte + 1] << (8 - shift);
	return v & ((1u << width) - 1);
}

/* c ? a : b as arithmetic: GCC's -O2 vectorizer gives up on a loop whose
 * ?: it left as branches. */
static inline uint32_t select32(bool c, uint32_t a, uint32_t b)
{
	uint32_t m = 0u - (uint32_t)c;

	return (a & m) | (b & ~m);
}

/* NumPy's half->float: exact, and NaN payloads (signalling ones too) kept.
 * Branch-free so that the loop over it vectorizes. */
static inline uint32_t f16_to_f32_bits(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7fff;
	uint32_t normal = (em << 13) + (112u << 23);	/* rebias 15 -> 127 */
	uint32_t special = (em << 13) | 0x7f800000;	/* Inf/NaN */
	uint32_t sub = f32_bits((float)(int32_t)em * 0x1p-24f);	/* subnormal or zero: exact */
	uint32_t r = select32(em >= 0x7c00, special, normal);

	return select32(em < 0x400, sub, r) | sign;
}

static void f16_to_f32_run(const uint8_t *restrict in, uint8_t *restrict out, size_t n)
{
	size_t i = 0;

	for (; i + LANES <= n; i += LANES)
		for (size_t j = i; j < i + LANES; j++)
			st32(out + 4 * j, f16_to_f32_bits(ld16(in + 2 * j)));
	for (; i < n; i++)
		st32(out + 4 * i, f16_to_f32_bits(ld16(in + 2 * i)));
}

static void bf16_to_f32_run(const uint8_t *restrict in, uint8_t *restrict out, size_t n)
{
	size_t i = 0;

	for (; i + LANES <= n; i += LANES)
		for (size_t j = i; j < i + LANES; j++)
			st32(out + 4 * j, (uint32_t)ld16(in + 2 * j) << 16);
	for (; i < n; i++)
		st32(out + 4 * i, (uint32_t)ld16(in + 2 * i) << 16);
}

/* Integers through C's conversion: round to nearest even, as NumPy's. */
#define INT_TO_F32(T)                                                         \
	for (size_t i = 0; i < n; i++) {                                      \
		T v;                                                          \
		memcpy(&v, in + (first + i) * sizeof v, sizeof v);            \
		st32(out + 4 * i, f32_bits((float)v));                        \
	}

static void decode_ints(const struct decoder *d, const uint8_t *in, size_t first, uint8_t *out,
			size_t n)
{
	switch (d->src) {
	case ST_U8: INT_TO_F32(uint8_t) break;
	case ST_I8: INT_TO_F32(int8_t) break;
	case ST_U16: INT_TO_F32(uint16_t) break;
	case ST_I16: INT_TO_F32(int16_t) break;
	case ST_U32: INT_TO_F32(uint32_t) break;
	case ST_I32: INT_TO_F32(int32_t) break;
	case ST_U64: INT_TO_F32(uint64_t) break;
	case ST_I64: INT_TO_F32(int64_t) break;
	default: break;
	}
}

/* Elements first..first+n of `in` (from bit bit_off of in[0]) as float32
 * bits into out (4 bytes each). */
static void decode_f32(const struct decoder *d, const uint8_t *in, unsigned bit_off, size_t first,
		       uint8_t *out, size_t n)
{
	switch (d->src) {
	case ST_BOOL:
		for (size_t i = 0; i < n; i++)
			st32(out + 4 * i, in[first + i] ? 0x3f800000 : 0);
		return;
	case ST_F16:
		f16_to_f32_run(in + 2 * first, out, n);
		return;
	case ST_BF16:
		bf16_to_f32_run(in + 2 * first, out, n);
		return;
	case ST_F32:
		memcpy(out, in + 4 * first, 4 * n);
		return;
	case ST_F64:	/* the CPU's double->float, as NumPy's and ml_dtypes' casts */
		for (size_t i = 0; i < n; i++)
			st32(out + 4 * i, f32_bits((float)f64_from_bits(ld64(in + 8 * (first + i)))));
		return;
	case ST_F8_E5M2: case ST_F8_E4M3: case ST_F8_E8M0: case ST_F8_E4M3FNUZ: case ST_F8_E5M2FNUZ:
		for (size_t i = 0; i < n; i++)
			st32(out + 4 * i, d->table[in[first + i]]);
		return;
	case ST_F4: case ST_F6_E2M3: case ST_F6_E3M2:
		for (size_t i = 0; i < n; i++)
			st32(out + 4 * i, d->table[get_bits(in, bit_off + (first + i) * d->bits, d->bits)]);
		return;
	default:
		decode_ints(d, in, first, out, n);
		return;
	}
}

/* ---- Encoders ---- */

/* v >> s (1 <= s <= 63), rounded to nearest, ties to even. */
static inline uint64_t rne_shr(uint64_t v, unsigned s)
{
	uint64_t q = v >> s, rem = v & ((UINT64_C(1) << s) - 1), half = UINT64_C(1) << (s - 1);

	return q + (rem > half || (rem == half && (q & 1)));
}

/* NumPy's npy_doublebits_to_halfbits: one rounding from double; a NaN keeps
 * its top payload bits (and stays a NaN) unless canon_nan asks for ml_dtypes'
 * 0x7e00. */
static uint16_t f64_to_f16(uint64_t d, bool canon_nan)
{
	uint16_t sign = (uint16_t)(d >> 48 & 0x8000);
	unsigned exp = (unsigned)(d >> 52 & 0x7ff);
	uint64_t mant = d & ((UINT64_C(1) << 52) - 1);

	if (exp == 0x7ff && mant) {
		uint16_t r = (uint16_t)(0x7c00 + (mant >> 42));

		return sign | (canon_nan ? 0x7e00 : r == 0x7c00 ? 0x7c01 : r);
	}
	if (exp >= 1023 + 16)	/* |d| >= 65536, or Inf */
		return sign | 0x7c00;
	if (exp >= 1023 - 14) {	/* normal half; a carry may round it up to Inf */
		uint64_t h = rne_shr((uint64_t)(exp - 1008) << 52 | mant, 42);

		return sign | (uint16_t)(h > 0x7c00 ? 0x7c00 : h);
	}
	if (exp < 1023 - 25)	/* below half the smallest subnormal */
		return sign;
	return sign | (uint16_t)rne_shr(UINT64_C(1) << 52 | mant, 1051 - exp);
}

/* float->half with NumPy's rounding (Eigen's for ml_dtypes types: the same
 * but for NaNs), branch-free so that loops over it vectorize.  A NaN keeps
 * its top payload bits as npy_floatbits_to_halfbits does, or becomes 0x7e00
 * under canon_nan. */
static inline uint16_t f32_to_f16(uint32_t f, bool canon_nan)
{
	uint32_t sign = f >> 16 & 0x8000, a = f & 0x7fffffff;
	/* normal: rebias 127 -> 15 and round the 13 dropped bits to even; a
	 * carry out of the mantissa bumps the exponent, up to Inf at 65520 */
	uint32_t normal = (a + 0xc8000fff + (a >> 13 & 1)) >> 13;
	/* below 2^-14: adding 0.5f makes the FPU round x at 2^-24, half's
	 * subnormal step, into the low mantissa bits */
	uint32_t sub = f32_bits(f32_from_bits(a) + 0.5f) - 0x3f000000;
	uint32_t payload = 0x7c00 | (a >> 13 & 0x3ff);
	uint32_t nan = select32(canon_nan, 0x7e00, payload + (payload == 0x7c00));
	uint32_t r = select32(a >= 0x47800000, 0x7c00, normal);	/* >= 65536 and Inf */

	r = select32(a < 0x38800000, sub, r);
	r = select32(a > 0x7f800000, nan, r);
	return (uint16_t)(sign | r);
}

static void f32_to_f16_run(const uint32_t *restrict in, uint8_t *restrict out, size_t n,
			   bool canon_nan)
{
	size_t i = 0;

	for (; i + LANES <= n; i += LANES)
		for (size_t j = i; j < i + LANES; j++)
			st16(out + 2 * j, f32_to_f16(in[j], canon_nan));
	for (; i < n; i++)
		st16(out + 2 * i, f32_to_f16(in[i], canon_nan));
}

/* Eigen's float_to_bfloat16_rtne, which ml_dtypes uses. */
static inline uint16_t f32_to_bf16(uint32_t u)
{
	uint32_t nan = (u >> 16 & 0x8000) | 0x7fc0, r = (u + 0x7fff + (u >> 16 & 1)) >> 16;

	return (uint16_t)select32((u & 0x7fffffff) > 0x7f800000, nan, r);
}

static void f32_to_bf16_run(const uint32_t *restrict in, uint8_t *restrict out, size_t n)
{
	size_t i = 0;

	for (; i + LANES <= n; i += LANES)
		for (size_t j = i; j < i + LANES; j++)
			st16(out + 2 * j, f32_to_bf16(in[j]));
	for (; i < n; i++)
		st16(out + 2 * i, f32_to_bf16(in[i]));
}

/* NumPy's half->double, direct: a signalling NaN stays signalling. */
static inline uint64_t f16_to_f64_bits(uint16_t h)
{
	if ((h & 0x7c00) == 0x7c00)
		return (uint64_t)(h & 0x8000) << 48 | UINT64_C(0x7ff0000000000000) |
		       (uint64_t)(h & 0x3ff) << 42;
	return f64_bits((double)f32_from_bits(f16_to_f32_bits(h)));
}

/* ---- Per-target drivers ---- */

#define INT_TO_F64(T)                                                         \
	for (size_t i = 0; i < n; i++) {                                      \
		T v;                                                          \
		memcpy(&v, in + i * sizeof v, sizeof v);                      \
		st64(out + 8 * i, f64_bits((double)v));                       \
	}

/* The sources whose double is not their float's double: integers wider than
 * float's 24 bits, and F16's signalling NaNs.  Returns false for the rest. */
static bool to_f64_direct(enum st_dtype src, const uint8_t *in, uint8_t *out, size_t n)
{
	switch (src) {
	case ST_U8: INT_TO_F64(uint8_t) return true;
	case ST_I8: INT_TO_F64(int8_t) return true;
	case ST_U16: INT_TO_F64(uint16_t) return true;
	case ST_I16: INT_TO_F64(int16_t) return true;
	case ST_U32: INT_TO_F64(uint32_t) return true;
	case ST_I32: INT_TO_F64(int32_t) return true;
	case ST_U64: INT_TO_F64(uint64_t) return true;
	case ST_I64: INT_TO_F64(int64_t) return true;
	case ST_F16:
		for (size_t i = 0; i < n; i++)
			st64(out + 8 * i, f16_to_f64_bits(ld16(in + 2 * i)));
		return true;
	default:
		return false;
	}
}

/* Through float32 blocks: F32 (exact), BOOL, BF16, the minifloats (as
 * ml_dtypes: static_cast<double>(static_cast<float>(x))). */
static void to_f64(const struct decoder *d, const uint8_t *in, unsigned bit_off, uint8_t *out,
		   size_t n)
{
	uint32_t tmp[BLOCK];

	if (to_f64_direct(d->src, in, out, n))
		return;
	for (size_t i = 0; i < n; i += BLOCK) {
		size_t k = n - i < BLOCK ? n - i : BLOCK;

		decode_f32(d, in, bit_off, i, (uint8_t *)tmp, k);
		for (size_t j = 0; j < k; j++)
			st64(out + 8 * (i + j), f64_bits((double)f32_from_bits(tmp[j])));
	}
}

static void to_f16(const struct decoder *d, const uint8_t *in, unsigned bit_off, uint8_t *out,
		   size_t n)
{
	uint32_t tmp[BLOCK];
	bool canon = is_ml_dtype(d->src);

	if (d->src == ST_F64) {	/* NumPy rounds double->half once */
		for (size_t i = 0; i < n; i++)
			st16(out + 2 * i, f64_to_f16(ld64(in + 8 * i), false));
		return;
	}
	for (size_t i = 0; i < n; i += BLOCK) {
		size_t k = n - i < BLOCK ? n - i : BLOCK;

		decode_f32(d, in, bit_off, i, (uint8_t *)tmp, k);
		f32_to_f16_run(tmp, out + 2 * i, k, canon);
	}
}

/*
 * double -> float rounded to odd: the float toward zero, its last bit set when
 * the double lay between two floats.  A float has 16 bits more than a bfloat16
 * at every exponent, so rounding this float to nearest-even once more gives
 * what one rounding of the double would: F64->BF16 rounds once, as ml_dtypes
 * 0.7 does.  A NaN goes as the CPU converts it (the NaN rule of the float path).
 */
static uint32_t f64_to_f32_odd(double v)
{
	float t = (float)v;
	uint32_t b = f32_bits(t);

	if (v != v || (double)t == v)
		return b;
	if (v > 0 ? (double)t > v : (double)t < v)
		b--; /* one step toward zero: t is not 0 here, and inf steps to the largest float */
	return b | 1;
}

/* Every other source through float32 (exact for all but I64/U64/I32/U32). */
static void to_bf16(const struct decoder *d, const uint8_t *in, unsigned bit_off, uint8_t *out,
		    size_t n)
{
	uint32_t tmp[BLOCK];

	for (size_t i = 0; i < n; i += BLOCK) {
		size_t k = n - i < BLOCK ? n - i : BLOCK;

		if (d->src == ST_F64)
			for (size_t j = 0; j < k; j++)
				tmp[j] = f64_to_f32_odd(f64_from_bits(ld64(in + 8 * (i + j))));
		else
			decode_f32(d, in, bit_off, i, (uint8_t *)tmp, k);
		f32_to_bf16_run(tmp, out + 2 * i, k);
	}
}

/* Sub-byte codes, one per byte: the layout ml_dtypes (and so .npy) uses. */
static void unpack(unsigned bits, const uint8_t *in, unsigned bit_off, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (uint8_t)get_bits(in, bit_off + i * bits, bits);
}

void convert(enum st_dtype src, enum st_dtype dst, const void *in_v, unsigned bit_off,
	     void *out_v, size_t n)
{
	const uint8_t *in = in_v;
	uint8_t *out = out_v;
	struct decoder d;

	if (src == dst) {
		if (st_dtype_bits(src) < 8)
			unpack(st_dtype_bits(src), in, bit_off, out, n);
		else
			memcpy(out, in, n * (st_dtype_bits(src) / 8));
		return;
	}
	decoder_init(&d, src);
	switch (dst) {
	case ST_F32: decode_f32(&d, in, bit_off, 0, out, n); break;
	case ST_F64: to_f64(&d, in, bit_off, out, n); break;
	case ST_F16: to_f16(&d, in, bit_off, out, n); break;
	case ST_BF16: to_bf16(&d, in, bit_off, out, n); break;
	default: break;	/* not convert_supported() */
	}
}
