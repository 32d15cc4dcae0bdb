#include "escape.h"

#include <stdio.h>
#include <string.h>

static size_t put_hex(char *out, unsigned char c)
{
	static const char hex[] = "0123456789ABCDEF";

	out[0] = '%';
	out[1] = hex[c >> 4];
	out[2] = hex[c & 15];
	return 3;
}

/* "." and ".." cannot be entries of any directory: their dot is escaped wherever they occur. */
static bool is_dot_name(const char *part, size_t len)
{
	return (len == 1 && part[0] == '.') || (len == 2 && part[0] == '.' && part[1] == '.');
}

size_t escape_part(char *out, const char *part, size_t len, bool in_root)
{
	bool dot = in_root || is_dot_name(part, len);
	size_t o = 0;

	if (len == 0) {
		out[0] = '%';
		out[1] = '\0';
		return 1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)part[i];
		if (c == '%' || c == '/' || c == '\0' || (i == 0 && c == '.' && dot))
			o += put_hex(out + o, c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	return o;
}

/* Where an alias's prefix of escaped text e[0..len) ends: never inside a %XX or a UTF-8 character. */
static size_t prefix_end(const char *e, size_t len)
{
	size_t cut = len < ALIAS_PREFIX ? len : ALIAS_PREFIX;

	for (;;) {
		if (cut >= 1 && e[cut - 1] == '%')
			cut -= 1;
		else if (cut >= 2 && e[cut - 2] == '%')
			cut -= 2;
		else if (cut > 0 && cut < len && ((unsigned char)e[cut] & 0xC0) == 0x80)
			cut--;
		else
			return cut;
	}
}

size_t name_part(char *out, const char *part, size_t len, bool in_root, size_t room)
{
	size_t elen = escape_part(out, part, len, in_root);
	uint8_t h[32];

	if (elen <= room)
		return elen;
	size_t o = prefix_end(out, elen);
	sha256(part, len, h);
	out[o++] = '%';
	out[o++] = '~';
	for (size_t i = 0; i < ALIAS_HASH_HEX / 2; i++)
		o += (size_t)snprintf(out + o, 3, "%02x", h[i]);
	out[o] = '\0';
	return o;
}

/* ---- SHA-256 (FIPS 180-4), for aliases a user can compute with any tool ---- */

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
	return x >> n | x << (32 - n);
}

static void sha_block(uint32_t h[8], const uint8_t *b)
{
	uint32_t w[64], s[8];

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
	for (int i = 16; i < 64; i++)
		w[i] = w[i - 16] + (ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3) + w[i - 7] +
		       (ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10);
	memcpy(s, h, sizeof(s));
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = s[7] + (ror(s[4], 6) ^ ror(s[4], 11) ^ ror(s[4], 25)) + ((s[4] & s[5]) ^ (~s[4] & s[6])) +
			      sha_k[i] + w[i];
		uint32_t t2 = (ror(s[0], 2) ^ ror(s[0], 13) ^ ror(s[0], 22)) +
			      ((s[0] & s[1]) ^ (s[0] & s[2]) ^ (s[1] & s[2]));
		memmove(s + 1, s, 7 * sizeof(*s));
		s[4] += t1;
		s[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		h[i] += s[i];
}

void sha256(const void *data, size_t len, uint8_t out[32])
{
	/* The first 32 bits of the fractional parts of the square roots of the first 8 primes. */
	uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	const uint8_t *p = data;
	uint8_t last[128] = {0};
	size_t full = len / 64 * 64, rest = len - full, n = rest < 56 ? 64 : 128;

	for (size_t i = 0; i < full; i += 64)
		sha_block(h, p + i);
	memcpy(last, p + full, rest);
	last[rest] = 0x80;
	for (int i = 0; i < 8; i++)
		last[n - 1 - i] = (uint8_t)((uint64_t)len * 8 >> (8 * i));
	for (size_t i = 0; i < n; i += 64)
		sha_block(h, last + i);
	for (int i = 0; i < 32; i++)
		out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}
