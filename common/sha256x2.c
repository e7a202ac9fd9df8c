/* Why this is hand-written (the one place imgstore does not leave hashing to
 * OpenSSL): the upload hashes every byte twice, into the whole-file checksum
 * and into its block's digest.  OpenSSL 3 has no multi-buffer SHA-256, and
 * one stream on SHA-NI is bound by the latency of sha256rnds2, not by its
 * throughput, so two independent streams with their instructions interleaved
 * run at nearly the speed of one (on this EPYC: latency about 4 cycles, one
 * every 2 cycles).  Measured with tests/bench/sha256x2_bench (1 GiB in 1 MiB
 * pieces, AMD EPYC family 26, OpenSSL 3.0.19, GCC 12 -O2, a loaded machine):
 * OpenSSL twice 1.33 CPU s/GiB, sha256x2_block 0.82 (1.63x), one OpenSSL
 * pass 0.67; in cache, fastest run: 1.17, 0.71 (1.66x), 0.58.  Over plain
 * HTTP a part's bytes go into a third state, the SHA-256 its request is
 * signed with: three chains sharing one message schedule cost 0.64 CPU s/GiB
 * against 1.18 for two and one more OpenSSL pass (quiet host, same bench).
 *
 * Without SHA-NI (or with IMGSTORE_SHA_NI=off) every call goes to OpenSSL's
 * EVP, so the portable path is OpenSSL's, not ours. */
#include "sha256x2.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_SHA_NI 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define HAVE_SHA_NI 0
#endif

struct sha256_state {
	uint32_t h[8];
	uint64_t len; /* bytes fed so far; len % 64 of them wait in buf */
	unsigned char buf[64];
	EVP_MD_CTX *ctx; /* the OpenSSL path; NULL on the SHA-NI path */
};

/* FIPS 180-4 section 5.3.3 */
static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#if HAVE_SHA_NI
#define SHA_TARGET __attribute__((target("sha,sse4.1")))

/* FIPS 180-4 section 4.2.2 */
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

/* Message words 4i..4i+3 of the 64-byte block at p: loaded for the first
 * four, scheduled from w (the last 16 words, in rotation) after that. */
SHA_TARGET static inline __attribute__((always_inline)) __m128i message4(const unsigned char *p,
                                                                         __m128i w[4], int i)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	if (i < 4)
		w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
	else
		w[i & 3] = schedule(w[i & 3], w[(i + 1) & 3], w[(i + 2) & 3], w[(i + 3) & 3]);
	return w[i & 3];
}

SHA_TARGET static inline void rounds4(__m128i *abef, __m128i *cdgh, __m128i w, int i)
{
	__m128i m = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)&K[4 * i]));
	*cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, m);
	*abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(m, 0x0E));
}

/* Four rounds of each stream, alternating between them. */
SHA_TARGET static inline void rounds4x2(__m128i *a0, __m128i *a1, __m128i wa, __m128i *b0,
                                        __m128i *b1, __m128i wb, int i)
{
	__m128i k = _mm_loadu_si128((const __m128i *)&K[4 * i]);
	__m128i ma = _mm_add_epi32(wa, k), mb = _mm_add_epi32(wb, k);
	*a1 = _mm_sha256rnds2_epu32(*a1, *a0, ma);
	*b1 = _mm_sha256rnds2_epu32(*b1, *b0, mb);
	*a0 = _mm_sha256rnds2_epu32(*a0, *a1, _mm_shuffle_epi32(ma, 0x0E));
	*b0 = _mm_sha256rnds2_epu32(*b0, *b1, _mm_shuffle_epi32(mb, 0x0E));
}

/* The two streams' instructions interleaved: each stream's sha256rnds2 waits
 * on its own previous one, so the other stream's fill the gap. */
SHA_TARGET static inline __attribute__((always_inline)) void
compress2_body(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8], const unsigned char *pb,
               size_t nblocks)
{
	__m128i a0, a1, b0, b1;
	load_state(ha, &a0, &a1);
	load_state(hb, &b0, &b1);
	for (; nblocks; nblocks--, pa += 64, pb += 64) {
		__m128i sa0 = a0, sa1 = a1, sb0 = b0, sb1 = b1;
		__m128i wa[4], wb[4];
#pragma GCC unroll 16
		for (int i = 0; i < 16; i++) {
			__m128i ma = message4(pa, wa, i), mb = message4(pb, wb, i);
			rounds4x2(&a0, &a1, ma, &b0, &b1, mb, i);
		}
		a0 = _mm_add_epi32(a0, sa0);
		a1 = _mm_add_epi32(a1, sa1);
		b0 = _mm_add_epi32(b0, sb0);
		b1 = _mm_add_epi32(b1, sb1);
	}
	store_state(ha, a0, a1);
	store_state(hb, b0, b1);
}

SHA_TARGET static void compress2(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8],
                                 const unsigned char *pb, size_t nblocks)
{
	compress2_body(ha, pa, hb, pb, nblocks);
}

/* The same bytes into both (the upload's block and whole-file states): the
 * compiler computes the message schedule once for both, which leaves
 * sha256rnds2 alone on the SHA unit (about 5% faster with GCC 12 here). */
SHA_TARGET static void compress2_same(uint32_t ha[8], uint32_t hb[8], const unsigned char *p,
                                      size_t nblocks)
{
	compress2_body(ha, p, hb, p, nblocks);
}

/* The same bytes into three states (a signed upload's whole-file, block and
 * part states): one message schedule, three chains of sha256rnds2.  Two
 * chains already keep the SHA unit about busy, so the third costs about
 * half a pass more instead of a whole one. */
SHA_TARGET static void compress3_same(uint32_t ha[8], uint32_t hb[8], uint32_t hc[8],
                                      const unsigned char *p, size_t nblocks)
{
	uint32_t *h[3] = {ha, hb, hc};
	__m128i s[3][2]; /* each state as {A,B,E,F}, {C,D,G,H} */
#pragma GCC unroll 3
	for (int k = 0; k < 3; k++)
		load_state(h[k], &s[k][0], &s[k][1]);
	for (; nblocks; nblocks--, p += 64) {
		__m128i saved[3][2], w[4];
		memcpy(saved, s, sizeof(s));
#pragma GCC unroll 16
		for (int i = 0; i < 16; i++) {
			__m128i m = _mm_add_epi32(message4(p, w, i),
			                          _mm_loadu_si128((const __m128i *)&K[4 * i]));
			__m128i mh = _mm_shuffle_epi32(m, 0x0E);
#pragma GCC unroll 3
			for (int k = 0; k < 3; k++)
				s[k][1] = _mm_sha256rnds2_epu32(s[k][1], s[k][0], m);
#pragma GCC unroll 3
			for (int k = 0; k < 3; k++)
				s[k][0] = _mm_sha256rnds2_epu32(s[k][0], s[k][1], mh);
		}
#pragma GCC unroll 3
		for (int k = 0; k < 3; k++) {
			s[k][0] = _mm_add_epi32(s[k][0], saved[k][0]);
			s[k][1] = _mm_add_epi32(s[k][1], saved[k][1]);
		}
	}
#pragma GCC unroll 3
	for (int k = 0; k < 3; k++)
		store_state(h[k], s[k][0], s[k][1]);
}

SHA_TARGET static void compress1(uint32_t h[8], const unsigned char *p, size_t nblocks)
{
	__m128i s0, s1;
	load_state(h, &s0, &s1);
	for (; nblocks; nblocks--, p += 64) {
		__m128i o0 = s0, o1 = s1;
		__m128i w[4];
#pragma GCC unroll 16
		for (int i = 0; i < 16; i++)
			rounds4(&s0, &s1, message4(p, w, i), i);
		s0 = _mm_add_epi32(s0, o0);
		s1 = _mm_add_epi32(s1, o1);
	}
	store_state(h, s0, s1);
}

static int cpu_has_sha_ni(void)
{
	unsigned int a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return (b & bit_SHA) != 0;
}
#else
static int cpu_has_sha_ni(void)
{
	return 0;
}

/* Never called: no state takes the SHA-NI path without SHA-NI. */
static void compress1(uint32_t h[8], const unsigned char *p, size_t nblocks)
{
	(void)h;
	(void)p;
	(void)nblocks;
	abort();
}

static void compress2(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8],
                      const unsigned char *pb, size_t nblocks)
{
	(void)ha;
	(void)pa;
	(void)hb;
	(void)pb;
	(void)nblocks;
	abort();
}

static void compress2_same(uint32_t ha[8], uint32_t hb[8], const unsigned char *p, size_t nblocks)
{
	(void)ha;
	(void)hb;
	(void)p;
	(void)nblocks;
	abort();
}

static void compress3_same(uint32_t ha[8], uint32_t hb[8], uint32_t hc[8], const unsigned char *p,
                           size_t nblocks)
{
	(void)ha;
	(void)hb;
	(void)hc;
	(void)p;
	(void)nblocks;
	abort();
}
#endif

static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static int use_sha_ni;

static void detect(void)
{
	const char *env = getenv("IMGSTORE_SHA_NI");
	use_sha_ni = !(env && !strcmp(env, "off")) && cpu_has_sha_ni();
}

int sha256_accelerated(void)
{
	pthread_once(&detect_once, detect);
	return use_sha_ni;
}

static void reset(struct sha256_state *s)
{
	memcpy(s->h, H0, sizeof(s->h));
	s->len = 0;
}

struct sha256_state *sha256_state_new(void)
{
	struct sha256_state *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	reset(s);
	if (!sha256_accelerated()) {
		s->ctx = EVP_MD_CTX_new();
		if (!s->ctx || !EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL)) {
			sha256_state_free(s);
			return NULL;
		}
	}
	return s;
}

void sha256_state_free(struct sha256_state *s)
{
	if (!s)
		return;
	EVP_MD_CTX_free(s->ctx);
	free(s);
}

/* Complete a partly filled buf from p; returns the bytes taken (all of n
 * when that does not fill it). */
static size_t fill_buf(struct sha256_state *s, const unsigned char *p, size_t n)
{
	size_t used = (size_t)(s->len % 64), take;
	if (!used || !n)
		return 0;
	take = 64 - used < n ? 64 - used : n;
	memcpy(s->buf + used, p, take);
	s->len += take;
	if (used + take == 64)
		compress1(s->h, s->buf, 1);
	return take;
}

/* Whole blocks, then the tail into buf; buf must be empty. */
static void feed_aligned(struct sha256_state *s, const unsigned char *p, size_t n)
{
	compress1(s->h, p, n / 64);
	if (n % 64)
		memcpy(s->buf, p + (n - n % 64), n % 64);
	s->len += n;
}

/* update_ni and update2_ni do no pointer arithmetic when n == 0: p may then
 * be NULL, and NULL + 0 is undefined. */
static void update_ni(struct sha256_state *s, const unsigned char *p, size_t n)
{
	size_t took = fill_buf(s, p, n);
	if (took == n)
		return;
	feed_aligned(s, p + took, n - took);
}

static void update2_ni(struct sha256_state *a, const unsigned char *pa, struct sha256_state *b,
                       const unsigned char *pb, size_t n)
{
	size_t ta, tb, na, nb, blocks;

	if (!n)
		return;
	ta = fill_buf(a, pa, n);
	tb = fill_buf(b, pb, n);
	na = n - ta;
	nb = n - tb;
	blocks = (na < nb ? na : nb) / 64;
	pa += ta;
	pb += tb;
	/* Both buffers are empty now, or that stream has nothing left. */
	if (blocks) {
		if (pa == pb)
			compress2_same(a->h, b->h, pa, blocks);
		else
			compress2(a->h, pa, b->h, pb, blocks);
		a->len += 64 * blocks;
		b->len += 64 * blocks;
		pa += 64 * blocks;
		pb += 64 * blocks;
		na -= 64 * blocks;
		nb -= 64 * blocks;
	}
	if (na)
		feed_aligned(a, pa, na);
	if (nb)
		feed_aligned(b, pb, nb);
}

/* The same n bytes into three states.  The upload's states all stand on
 * 64-byte boundaries (blocks and parts are whole MiB), so they share one
 * schedule; any other case takes two passes, which is correct, only slower. */
static void update3_same_ni(struct sha256_state *a, struct sha256_state *b, struct sha256_state *c,
                            const unsigned char *p, size_t n)
{
	size_t blocks = n / 64;

	if (!n)
		return;
	if (a->len % 64 || b->len % 64 || c->len % 64) {
		update2_ni(a, p, b, p, n);
		update_ni(c, p, n);
		return;
	}
	if (blocks) {
		compress3_same(a->h, b->h, c->h, p, blocks);
		a->len += 64 * blocks;
		b->len += 64 * blocks;
		c->len += 64 * blocks;
	}
	if (n % 64) {
		feed_aligned(a, p + 64 * blocks, n % 64);
		feed_aligned(b, p + 64 * blocks, n % 64);
		feed_aligned(c, p + 64 * blocks, n % 64);
	}
}

static void final_ni(struct sha256_state *s, unsigned char out[32])
{
	uint64_t bits = s->len * 8;
	size_t used = (size_t)(s->len % 64);

	s->buf[used++] = 0x80;
	if (used > 56) {
		memset(s->buf + used, 0, 64 - used);
		compress1(s->h, s->buf, 1);
		used = 0;
	}
	memset(s->buf + used, 0, 56 - used);
	for (int i = 0; i < 8; i++)
		s->buf[63 - i] = (unsigned char)(bits >> (8 * i));
	compress1(s->h, s->buf, 1);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (unsigned char)(s->h[i] >> 24);
		out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
		out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
		out[4 * i + 3] = (unsigned char)s->h[i];
	}
	reset(s);
}

void sha256_update(struct sha256_state *s, const void *p, size_t n)
{
	if (s->ctx)
		EVP_DigestUpdate(s->ctx, p, n);
	else
		update_ni(s, p, n);
}

void sha256x2_update(struct sha256_state *a, const void *pa, struct sha256_state *b, const void *pb,
                     size_t n)
{
	if (!a->ctx && !b->ctx) {
		update2_ni(a, pa, b, pb, n);
		return;
	}
	sha256_update(a, pa, n);
	sha256_update(b, pb, n);
}

void sha256_final(struct sha256_state *s, unsigned char out[32])
{
	unsigned int len = 32;
	if (!s->ctx) {
		final_ni(s, out);
		return;
	}
	EVP_DigestFinal_ex(s->ctx, out, &len);
	EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL);
}

void sha256x2_block(struct sha256_state *run, const void *p, size_t n, unsigned char out[32])
{
	unsigned int len = 32;
	struct sha256_state block = {.ctx = NULL};

	if (run->ctx) {
		EVP_DigestUpdate(run->ctx, p, n);
		EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
		return;
	}
	reset(&block);
	update2_ni(run, p, &block, p, n);
	final_ni(&block, out);
}

void sha256x3_block(struct sha256_state *run, struct sha256_state *part, const void *p, size_t n,
                    unsigned char out[32])
{
	unsigned int len = 32;
	struct sha256_state block = {.ctx = NULL};

	if (run->ctx || part->ctx) {
		sha256_update(run, p, n);
		sha256_update(part, p, n);
		EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
		return;
	}
	reset(&block);
	update3_same_ni(run, part, &block, p, n);
	final_ni(&block, out);
}
