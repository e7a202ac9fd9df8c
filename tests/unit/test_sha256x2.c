/* common/sha256x2: two SHA-256 streams advanced together, against the NIST
 * vectors and against OpenSSL byte for byte.  meson runs this binary twice:
 * as it is (SHA-NI on a CPU that has it) and with IMGSTORE_SHA_NI=off (the
 * OpenSSL path). */
#include "check.h"
#include "common/hex.h"
#include "common/sha256x2.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEN (3u << 20)

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Mostly small, sometimes around a block boundary, sometimes large. */
static size_t rand_len(size_t max)
{
	size_t n;
	switch (next() % 4) {
	case 0: n = next() % 130; break;
	case 1: n = 64 * (next() % 4) + 63 + next() % 3; break;
	case 2: n = next() % 70000; break;
	default: n = next() % (max + 1); break;
	}
	return n > max ? max : n;
}

static void openssl_hex(const void *p, size_t n, char *hex)
{
	unsigned char d[32];
	unsigned int len = 32;
	EVP_Digest(p, n, d, &len, EVP_sha256(), NULL);
	hex_encode(d, 32, hex);
}

static void final_hex(struct sha256_state *s, char *hex)
{
	unsigned char d[32];
	sha256_final(s, d);
	hex_encode(d, 32, hex);
}

/* 1 when /proc/cpuinfo lists sha_ni and sse4_1. */
static int cpuinfo_has_sha_ni(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[8192];
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "flags", 5)) {
			found = strstr(line, " sha_ni") && strstr(line, " sse4_1");
			break;
		}
	}
	fclose(f);
	return found;
}

static void test_path(void)
{
	const char *env = getenv("IMGSTORE_SHA_NI");
	int off = env && !strcmp(env, "off");
	printf("path: %s\n", sha256_accelerated() ? "SHA-NI" : "OpenSSL");
	CHECK(sha256_accelerated() == (!off && cpuinfo_has_sha_ni()));
}

static const struct {
	const char *msg;
	const char *hex;
} vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnop"
         "qrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
};

static void test_vectors(void)
{
	struct sha256_state *a = sha256_state_new(), *b = sha256_state_new();
	char hex[65];
	unsigned char d[32];
	CHECK(a && b);
	if (!a || !b)
		goto out;
	/* Nothing, from a NULL pointer: allowed, and the empty digest. */
	sha256_update(a, NULL, 0);
	sha256x2_update(a, NULL, b, NULL, 0);
	sha256x2_block(a, NULL, 0, d);
	hex_encode(d, 32, hex);
	CHECK_STR(hex, vectors[0].hex);
	final_hex(a, hex);
	CHECK_STR(hex, vectors[0].hex);
	final_hex(b, hex);
	CHECK_STR(hex, vectors[0].hex);

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		const char *m = vectors[i].msg;
		size_t n = strlen(m);

		sha256_update(a, m, n);
		final_hex(a, hex);
		CHECK_STR(hex, vectors[i].hex);

		/* One byte at a time, twice over (final resets the state). */
		for (int round = 0; round < 2; round++) {
			for (size_t j = 0; j < n; j++)
				sha256_update(a, m + j, 1);
			final_hex(a, hex);
			CHECK_STR(hex, vectors[i].hex);
		}

		sha256x2_update(a, m, b, m, n);
		final_hex(a, hex);
		CHECK_STR(hex, vectors[i].hex);
		final_hex(b, hex);
		CHECK_STR(hex, vectors[i].hex);

		sha256x2_block(a, m, n, d);
		hex_encode(d, 32, hex);
		CHECK_STR(hex, vectors[i].hex);
		final_hex(a, hex);
		CHECK_STR(hex, vectors[i].hex);
	}
out:
	sha256_state_free(a);
	sha256_state_free(b);
}

static void test_million_a(void)
{
	const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
	struct sha256_state *a = sha256_state_new(), *b = sha256_state_new();
	char *m = malloc(1000000);
	char hex[65];
	CHECK(a && b && m);
	if (!a || !b || !m)
		goto out;
	memset(m, 'a', 1000000);
	sha256_update(a, m, 1000000);
	final_hex(a, hex);
	CHECK_STR(hex, want);
	/* 1000 steps of 1000 bytes: never block-aligned in between. */
	for (size_t i = 0; i < 1000; i++)
		sha256x2_update(a, m + i * 1000, b, m, 1000);
	final_hex(a, hex);
	CHECK_STR(hex, want);
	final_hex(b, hex);
	CHECK_STR(hex, want);
out:
	free(m);
	sha256_state_free(a);
	sha256_state_free(b);
}

/* Two different streams: each takes a random prefix on its own (so the two
 * are at different offsets within a block), then random steps that feed
 * both, or only one of them. */
static void test_two_streams(const unsigned char *data, const unsigned char *other, int iters)
{
	struct sha256_state *a = sha256_state_new(), *b = sha256_state_new();
	char got[65], want[65];
	CHECK(a && b);
	if (!a || !b)
		goto out;
	for (int it = 0; it < iters; it++) {
		size_t total_a = rand_len(MAX_LEN), total_b = rand_len(MAX_LEN);
		size_t fa = 0, fb = 0;
		size_t pre = rand_len(total_a < 200 ? total_a : 200);
		/* Unaligned starts: the SHA-NI loads must not assume alignment. */
		const unsigned char *pa = data + next() % 17, *pb = other + next() % 17;

		sha256_update(a, pa, pre);
		fa = pre;
		while (fa < total_a || fb < total_b) {
			size_t la = total_a - fa, lb = total_b - fb;
			size_t step = rand_len(la < lb ? la : lb);
			unsigned pick = (unsigned)(next() % 4);
			if (la && lb && pick < 2) {
				sha256x2_update(a, pa + fa, b, pb + fb, step);
				fa += step;
				fb += step;
			} else if (la && (pick == 2 || !lb)) {
				step = rand_len(la);
				sha256_update(a, pa + fa, step);
				fa += step;
			} else {
				step = rand_len(lb);
				sha256_update(b, pb + fb, step);
				fb += step;
			}
		}
		final_hex(a, got);
		openssl_hex(pa, total_a, want);
		CHECK_STR(got, want);
		final_hex(b, got);
		openssl_hex(pb, total_b, want);
		CHECK_STR(got, want);
	}
out:
	sha256_state_free(a);
	sha256_state_free(b);
}

/* The same stream into two states, in random steps. */
static void test_same_stream(const unsigned char *data, int iters)
{
	struct sha256_state *a = sha256_state_new(), *b = sha256_state_new();
	char got[65], want[65];
	CHECK(a && b);
	if (!a || !b)
		goto out;
	for (int it = 0; it < iters; it++) {
		size_t total = rand_len(MAX_LEN), fed = 0;
		const unsigned char *p = data + next() % 17;
		while (fed < total) {
			size_t step = rand_len(total - fed);
			sha256x2_update(a, p + fed, b, p + fed, step);
			fed += step;
		}
		openssl_hex(p, total, want);
		final_hex(a, got);
		CHECK_STR(got, want);
		final_hex(b, got);
		CHECK_STR(got, want);
	}
out:
	sha256_state_free(a);
	sha256_state_free(b);
}

/* The upload: a running whole-file state, and each block hashed on its own
 * in the same pass; blocks of 1 MiB and of random sizes, after a random
 * prefix fed to the running state alone. */
static void test_blocks(const unsigned char *data, int iters)
{
	struct sha256_state *run = sha256_state_new();
	char got[65], want[65];
	unsigned char d[32];
	CHECK(run != NULL);
	if (!run)
		goto out;
	for (int it = 0; it < iters; it++) {
		size_t total = rand_len(MAX_LEN), fed = rand_len(100);
		const unsigned char *p = data + next() % 17;
		if (fed > total)
			fed = total;
		sha256_update(run, p, fed);
		while (fed < total) {
			size_t left = total - fed;
			size_t step = it % 2 && left >= (1u << 20) ? (1u << 20) : rand_len(left);
			sha256x2_block(run, p + fed, step, d);
			hex_encode(d, 32, got);
			openssl_hex(p + fed, step, want);
			CHECK_STR(got, want);
			fed += step;
		}
		final_hex(run, got);
		openssl_hex(p, total, want);
		CHECK_STR(got, want);
	}
out:
	sha256_state_free(run);
}

/* A signed upload: the running whole-file state, a part's state and each
 * block's digest in one pass (sha256x3_block), the part finished every few
 * blocks.  Blocks of 1 MiB keep all three states on 64-byte boundaries (the
 * one-schedule path); random sizes and a random prefix fed to the running
 * state alone take the other paths. */
static void test_signed_parts(const unsigned char *data, int iters)
{
	struct sha256_state *run = sha256_state_new(), *part = sha256_state_new();
	char got[65], want[65];
	unsigned char d[32];
	CHECK(run && part);
	if (!run || !part)
		goto out;
	for (int it = 0; it < iters; it++) {
		size_t total = rand_len(MAX_LEN), fed = it % 3 ? 0 : rand_len(100);
		const unsigned char *p = data + next() % 17;
		if (fed > total)
			fed = total;
		sha256_update(run, p, fed);
		while (fed < total) {
			size_t part_start = fed, blocks = 1 + next() % 4;
			for (; blocks && fed < total; blocks--) {
				size_t left = total - fed;
				size_t step =
				        it % 2 && left >= (1u << 20) ? (1u << 20) : rand_len(left);
				sha256x3_block(run, part, p + fed, step, d);
				hex_encode(d, 32, got);
				openssl_hex(p + fed, step, want);
				CHECK_STR(got, want);
				fed += step;
			}
			final_hex(part, got);
			openssl_hex(p + part_start, fed - part_start, want);
			CHECK_STR(got, want);
		}
		final_hex(run, got);
		openssl_hex(p, total, want);
		CHECK_STR(got, want);
	}
out:
	sha256_state_free(run);
	sha256_state_free(part);
}

int main(void)
{
	unsigned char *data = malloc(MAX_LEN + 64), *other = malloc(MAX_LEN + 64);
	const char *seed = getenv("TEST_SEED");
	if (seed)
		rng = strtoull(seed, NULL, 0) | 1;
	printf("seed: 0x%llx (TEST_SEED to repeat)\n", (unsigned long long)rng);
	CHECK(data && other);
	if (!data || !other)
		goto out;
	for (size_t i = 0; i < MAX_LEN + 64; i++) {
		data[i] = (unsigned char)next();
		other[i] = (unsigned char)next();
	}
	test_path();
	test_vectors();
	test_million_a();
	test_two_streams(data, other, 30);
	test_same_stream(data, 30);
	test_blocks(data, 20);
	test_signed_parts(data, 20);
out:
	free(data);
	free(other);
	return check_report("sha256x2");
}
