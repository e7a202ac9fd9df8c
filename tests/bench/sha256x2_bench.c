/* Two SHA-256 passes over the same bytes (the upload's whole-file checksum and
 * its 1 MiB block map): OpenSSL twice against two streams interleaved on
 * SHA-NI, in the same run, reported as CPU seconds per GiB and as ratios
 * (HACKING.md).
 *
 *   (a) OpenSSL: each 1 MiB piece into a running whole-file context, then
 *       EVP_Digest of the piece (two passes, as the upload does today);
 *   (b) 2-way SHA-NI: the running state and a fresh block state advance
 *       together over the same piece;
 *   (c) 2-way SHA-NI over two different buffers (the same piece index in
 *       the two halves of the data), per GiB of each stream;
 *   (1) OpenSSL, one pass only: the floor for (b).
 *
 * Each figure is the best of --runs runs, the variants interleaved so that
 * other work on the machine disturbs them alike.  (b) and (c) are checked
 * against (a)'s digests.
 *
 *   sha256x2_bench [--size MIB] [--runs N]
 */
#include <immintrin.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PIECE (1024 * 1024)

#define SHA_TARGET __attribute__((target("sha,sse4.1")))

static const uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* sha256rnds2 wants the state as {A,B,E,F} and {C,D,G,H}. */
SHA_TARGET static inline void load_state(const uint32_t h[8], __m128i *abef, __m128i *cdgh)
{
	__m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);
	__m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
	__m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
	__m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
	*abef = _mm_alignr_epi8(cdab, efgh, 8);
	*cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
}

SHA_TARGET static inline void store_state(uint32_t h[8], __m128i abef, __m128i cdgh)
{
	__m128i feba = _mm_shuffle_epi32(abef, 0x1B);
	__m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
	_mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
	_mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* W[t..t+3] from W[t-16..t-13], W[t-12..t-9], W[t-8..t-5], W[t-4..t-1]. */
SHA_TARGET static inline __m128i schedule(__m128i w0, __m128i w1, __m128i w2, __m128i w3)
{
	__m128i x = _mm_sha256msg1_epu32(w0, w1);
	x = _mm_add_epi32(x, _mm_alignr_epi8(w3, w2, 4));
	return _mm_sha256msg2_epu32(x, w3);
}

SHA_TARGET static inline void rounds4(__m128i *abef, __m128i *cdgh, __m128i w, int i)
{
	__m128i m = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)&K[4 * i]));
	*cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, m);
	*abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(m, 0x0E));
}

SHA_TARGET static void compress2(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8],
                                 const unsigned char *pb, size_t nblocks)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i a0, a1, b0, b1;
	load_state(ha, &a0, &a1);
	load_state(hb, &b0, &b1);
	for (; nblocks; nblocks--, pa += 64, pb += 64) {
		__m128i sa0 = a0, sa1 = a1, sb0 = b0, sb1 = b1;
		__m128i wa[4], wb[4];
#pragma GCC unroll 16
		for (int i = 0; i < 16; i++) {
			if (i < 4) {
				wa[i] = _mm_shuffle_epi8(
				        _mm_loadu_si128((const __m128i *)(pa + 16 * i)), bswap);
				wb[i] = _mm_shuffle_epi8(
				        _mm_loadu_si128((const __m128i *)(pb + 16 * i)), bswap);
			} else {
				wa[i & 3] = schedule(wa[i & 3], wa[(i + 1) & 3], wa[(i + 2) & 3],
				                     wa[(i + 3) & 3]);
				wb[i & 3] = schedule(wb[i & 3], wb[(i + 1) & 3], wb[(i + 2) & 3],
				                     wb[(i + 3) & 3]);
			}
			rounds4(&a0, &a1, wa[i & 3], i);
			rounds4(&b0, &b1, wb[i & 3], i);
		}
		a0 = _mm_add_epi32(a0, sa0);
		a1 = _mm_add_epi32(a1, sa1);
		b0 = _mm_add_epi32(b0, sb0);
		b1 = _mm_add_epi32(b1, sb1);
	}
	store_state(ha, a0, a1);
	store_state(hb, b0, b1);
}

SHA_TARGET static void compress1(uint32_t h[8], const unsigned char *p, size_t nblocks)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i s0, s1;
	load_state(h, &s0, &s1);
	for (; nblocks; nblocks--, p += 64) {
		__m128i o0 = s0, o1 = s1;
		__m128i w[4];
#pragma GCC unroll 16
		for (int i = 0; i < 16; i++) {
			if (i < 4)
				w[i] = _mm_shuffle_epi8(
				        _mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
			else
				w[i & 3] = schedule(w[i & 3], w[(i + 1) & 3], w[(i + 2) & 3],
				                    w[(i + 3) & 3]);
			rounds4(&s0, &s1, w[i & 3], i);
		}
		s0 = _mm_add_epi32(s0, o0);
		s1 = _mm_add_epi32(s1, o1);
	}
	store_state(h, s0, s1);
}

/* Final block for a message of len bytes, a multiple of 64 (all the
 * benchmark needs). */
static void finish(uint32_t h[8], uint64_t len, unsigned char out[32])
{
	unsigned char pad[64] = {0x80};
	uint64_t bits = len * 8;
	for (int i = 0; i < 8; i++)
		pad[63 - i] = (unsigned char)(bits >> (8 * i));
	compress1(h, pad, 1);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (unsigned char)(h[i] >> 24);
		out[4 * i + 1] = (unsigned char)(h[i] >> 16);
		out[4 * i + 2] = (unsigned char)(h[i] >> 8);
		out[4 * i + 3] = (unsigned char)h[i];
	}
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(unsigned char *p, size_t n)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i + 8 <= n; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

struct digests {
	unsigned char whole[32];
	unsigned char whole2[32];
	unsigned char first_block[32];
	unsigned char last_block[32];
};

static void run_openssl(const unsigned char *data, size_t npieces, struct digests *d)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len;
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < npieces; i++) {
		const unsigned char *p = data + i * PIECE;
		EVP_DigestUpdate(ctx, p, PIECE);
		EVP_Digest(p, PIECE, i ? d->last_block : d->first_block, &len, EVP_sha256(), NULL);
	}
	EVP_DigestFinal_ex(ctx, d->whole, &len);
	EVP_MD_CTX_free(ctx);
}

static void run_openssl_once(const unsigned char *data, size_t npieces, struct digests *d)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len;
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < npieces; i++)
		EVP_DigestUpdate(ctx, data + i * PIECE, PIECE);
	EVP_DigestFinal_ex(ctx, d->whole, &len);
	EVP_MD_CTX_free(ctx);
}

static void run_x2_same(const unsigned char *data, size_t npieces, struct digests *d)
{
	uint32_t whole[8];
	memcpy(whole, H0, sizeof(whole));
	for (size_t i = 0; i < npieces; i++) {
		const unsigned char *p = data + i * PIECE;
		uint32_t block[8];
		memcpy(block, H0, sizeof(block));
		compress2(whole, p, block, p, PIECE / 64);
		finish(block, PIECE, i ? d->last_block : d->first_block);
	}
	finish(whole, (uint64_t)npieces * PIECE, d->whole);
}

static void run_x2_two(const unsigned char *data, size_t npieces, struct digests *d)
{
	uint32_t a[8], b[8];
	size_t half = npieces / 2;
	memcpy(a, H0, sizeof(a));
	memcpy(b, H0, sizeof(b));
	for (size_t i = 0; i < half; i++)
		compress2(a, data + i * PIECE, b, data + (half + i) * PIECE, PIECE / 64);
	finish(a, (uint64_t)half * PIECE, d->whole);
	finish(b, (uint64_t)half * PIECE, d->whole2);
}

static void whole_of(const unsigned char *p, size_t n, unsigned char out[32])
{
	unsigned int len;
	EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

int main(int argc, char **argv)
{
	size_t mib = 1024;
	int runs = 3;
	unsigned char *data;
	size_t npieces;
	double best[4] = {1e9, 1e9, 1e9, 1e9}, wall[4] = {0};
	const char *names[4] = {"(a) OpenSSL twice", "(b) 2-way SHA-NI, same bytes",
	                        "(c) 2-way SHA-NI, two buffers", "(1) OpenSSL once"};
	struct digests ref, got;
	int bad = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: %s [--size MIB] [--runs N]\n", argv[0]);
			return 2;
		}
	}
	if (mib < 2 || mib % 2 || runs < 1) {
		fprintf(stderr, "--size must be even and >= 2, --runs >= 1\n");
		return 2;
	}
	npieces = mib;
	data = malloc(npieces * PIECE);
	if (!data) {
		fprintf(stderr, "cannot allocate %zu MiB\n", mib);
		return 1;
	}
	fill(data, npieces * PIECE);

	run_openssl(data, npieces, &ref);
	whole_of(data, npieces / 2 * PIECE, ref.whole2);
	run_x2_same(data, npieces, &got);
	if (memcmp(got.whole, ref.whole, 32) || memcmp(got.first_block, ref.first_block, 32) ||
	    memcmp(got.last_block, ref.last_block, 32)) {
		fprintf(stderr, "(b) digests differ from OpenSSL\n");
		bad = 1;
	}
	run_x2_two(data, npieces, &got);
	if (memcmp(got.whole, ref.whole2, 32) ||
	    (whole_of(data + npieces / 2 * PIECE, npieces / 2 * PIECE, ref.whole2),
	     memcmp(got.whole2, ref.whole2, 32))) {
		fprintf(stderr, "(c) digests differ from OpenSSL\n");
		bad = 1;
	}
	if (bad)
		return 1;

	for (int r = 0; r < runs; r++) {
		for (int v = 0; v < 4; v++) {
			double c0 = cpu_now(), w0 = wall_now(), c;
			switch (v) {
			case 0: run_openssl(data, npieces, &got); break;
			case 1: run_x2_same(data, npieces, &got); break;
			case 2: run_x2_two(data, npieces, &got); break;
			case 3: run_openssl_once(data, npieces, &got); break;
			}
			c = cpu_now() - c0;
			/* (c) hashed mib/2 MiB in each of two streams. */
			c *= (v == 2 ? 2048.0 : 1024.0) / (double)mib;
			if (c < best[v]) {
				best[v] = c;
				wall[v] = (wall_now() - w0) * (v == 2 ? 2048.0 : 1024.0) /
				          (double)mib;
			}
		}
	}
	printf("%zu MiB in 1 MiB pieces, best of %d; CPU s per GiB (of each stream for (c))\n", mib,
	       runs);
	for (int v = 0; v < 4; v++)
		printf("%-32s %6.3f CPU s/GiB  (wall %6.3f s/GiB)  %5.2fx (a)\n", names[v], best[v],
		       wall[v], best[0] / best[v]);
	free(data);
	return 0;
}
