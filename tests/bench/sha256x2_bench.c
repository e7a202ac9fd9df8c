/* Two SHA-256 passes over the same bytes (the upload's whole-file checksum and
 * its 1 MiB block map): OpenSSL twice against common/sha256x2 (two streams
 * interleaved on SHA-NI), in the same run, reported as CPU seconds per GiB
 * and as ratios (HACKING.md).
 *
 *   (a) OpenSSL: each 1 MiB piece into a running whole-file context, then
 *       EVP_Digest of the piece (two passes, as the upload does today);
 *   (b) sha256x2_block: the running state and the piece's own digest in one
 *       pass over the same bytes;
 *   (c) sha256x2_update over two different buffers (the same piece index in
 *       the two halves of the data), per GiB of each stream;
 *   (d) sha256_update, one stream: the single-stream path;
 *   (e) OpenSSL, one pass only: what (b) tries to get close to;
 *   (f) sha256x3_block: a signed upload's three digests (whole file, block,
 *       part) in one pass over the same bytes;
 *   (g) sha256x2_block, then OpenSSL once more over the same bytes: the
 *       three digests in two passes, what (f) replaces.
 *
 * Each figure is the best of --runs runs, the variants interleaved so that
 * other work on the machine disturbs them alike; then the same on 2 x 64 KiB
 * in cache, the fastest of 2000 runs (steadier on a loaded machine).  (b), (c), (d) and (f) are
 * checked against OpenSSL first.  IMGSTORE_SHA_NI=off measures the OpenSSL
 * fallback instead.
 *
 *   sha256x2_bench [--size MIB] [--runs N]
 */
#include "common/sha256x2.h"
#include "common/timefmt.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIECE    (1024 * 1024)
#define VARIANTS 7

struct digests {
	unsigned char whole[32];
	unsigned char whole2[32];
	unsigned char part[32];
	unsigned char first_block[32];
	unsigned char last_block[32];
};

struct run {
	const unsigned char *data;
	size_t npieces, piece;
	struct sha256_state *a, *b;
	EVP_MD_CTX *ctx; /* (g)'s part */
	struct digests d;
};

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

static void openssl_digest(const void *p, size_t n, unsigned char out[32])
{
	unsigned int len = 32;
	EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

static void run_openssl_twice(struct run *r)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len;
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < r->npieces; i++) {
		const unsigned char *p = r->data + i * r->piece;
		EVP_DigestUpdate(ctx, p, r->piece);
		openssl_digest(p, r->piece, i ? r->d.last_block : r->d.first_block);
	}
	EVP_DigestFinal_ex(ctx, r->d.whole, &len);
	EVP_MD_CTX_free(ctx);
}

static void run_x2_block(struct run *r)
{
	for (size_t i = 0; i < r->npieces; i++)
		sha256x2_block(r->a, r->data + i * r->piece, r->piece,
		               i ? r->d.last_block : r->d.first_block);
	sha256_final(r->a, r->d.whole);
}

static void run_x2_two(struct run *r)
{
	size_t half = r->npieces / 2;
	for (size_t i = 0; i < half; i++)
		sha256x2_update(r->a, r->data + i * r->piece, r->b, r->data + (half + i) * r->piece,
		                r->piece);
	sha256_final(r->a, r->d.whole);
	sha256_final(r->b, r->d.whole2);
}

static void run_single(struct run *r)
{
	for (size_t i = 0; i < r->npieces; i++)
		sha256_update(r->a, r->data + i * r->piece, r->piece);
	sha256_final(r->a, r->d.whole);
}

static void run_openssl_once(struct run *r)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len;
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < r->npieces; i++)
		EVP_DigestUpdate(ctx, r->data + i * r->piece, r->piece);
	EVP_DigestFinal_ex(ctx, r->d.whole, &len);
	EVP_MD_CTX_free(ctx);
}

static void run_x3_block(struct run *r)
{
	for (size_t i = 0; i < r->npieces; i++)
		sha256x3_block(r->a, r->b, r->data + i * r->piece, r->piece,
		               i ? r->d.last_block : r->d.first_block);
	sha256_final(r->a, r->d.whole);
	sha256_final(r->b, r->d.part);
}

static void run_x2_block_openssl(struct run *r)
{
	unsigned int len;
	EVP_DigestInit_ex(r->ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < r->npieces; i++) {
		const unsigned char *p = r->data + i * r->piece;
		sha256x2_block(r->a, p, r->piece, i ? r->d.last_block : r->d.first_block);
		EVP_DigestUpdate(r->ctx, p, r->piece);
	}
	sha256_final(r->a, r->d.whole);
	EVP_DigestFinal_ex(r->ctx, r->d.part, &len);
}

static const struct {
	const char *name;
	void (*fn)(struct run *r);
	double per_gib; /* GiB of each stream hashed per GiB of data */
} variants[VARIANTS] = {
        {"(a) OpenSSL twice", run_openssl_twice, 1},
        {"(b) sha256x2_block, same bytes", run_x2_block, 1},
        {"(c) sha256x2_update, two buffers", run_x2_two, 0.5},
        {"(d) sha256_update, one stream", run_single, 1},
        {"(e) OpenSSL once", run_openssl_once, 1},
        {"(f) sha256x3_block, same bytes", run_x3_block, 1},
        {"(g) sha256x2_block + OpenSSL once", run_x2_block_openssl, 1},
};

/* (b), (c), (d) and (f) against OpenSSL. */
static int verify(struct run *r)
{
	struct digests ref;
	size_t half = r->npieces / 2 * r->piece;
	int bad = 0;

	run_openssl_twice(r);
	ref = r->d;
	memcpy(ref.part, ref.whole, 32);
	run_x3_block(r);
	if (memcmp(&r->d, &ref, sizeof(ref))) {
		fprintf(stderr, "(f) digests differ from OpenSSL\n");
		bad = 1;
	}
	run_x2_block(r);
	memcpy(r->d.part, ref.part, 32);
	if (memcmp(&r->d, &ref, sizeof(ref))) {
		fprintf(stderr, "(b) digests differ from OpenSSL\n");
		bad = 1;
	}
	openssl_digest(r->data, half, ref.whole);
	openssl_digest(r->data + half, half, ref.whole2);
	run_x2_two(r);
	if (memcmp(r->d.whole, ref.whole, 32) || memcmp(r->d.whole2, ref.whole2, 32)) {
		fprintf(stderr, "(c) digests differ from OpenSSL\n");
		bad = 1;
	}
	openssl_digest(r->data, r->npieces * r->piece, ref.whole);
	run_single(r);
	if (memcmp(r->d.whole, ref.whole, 32)) {
		fprintf(stderr, "(d) digest differs from OpenSSL\n");
		bad = 1;
	}
	return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
	size_t mib = 1024;
	int runs = 3, rc = 1;
	unsigned char *data = NULL;
	double best[VARIANTS], wall[VARIANTS];
	struct run r = {0};

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
		fprintf(stderr, "--size must be even and at least 2, --runs at least 1\n");
		return 2;
	}
	data = malloc(mib * PIECE);
	r.a = sha256_state_new();
	r.b = sha256_state_new();
	r.ctx = EVP_MD_CTX_new();
	if (!data || !r.a || !r.b || !r.ctx) {
		fprintf(stderr, "out of memory (%zu MiB)\n", mib);
		goto out;
	}
	fill(data, mib * PIECE);
	r.data = data;
	r.npieces = mib;
	r.piece = PIECE;
	if (verify(&r))
		goto out;

	for (int v = 0; v < VARIANTS; v++)
		best[v] = wall[v] = 1e30;
	for (int i = 0; i < runs; i++) {
		for (int v = 0; v < VARIANTS; v++) {
			double c0 = time_cpu(), w0 = time_mono(), cpu;
			double gib = (double)mib / 1024.0 * variants[v].per_gib;
			variants[v].fn(&r);
			cpu = (time_cpu() - c0) / gib;
			if (cpu < best[v]) {
				best[v] = cpu;
				wall[v] = (time_mono() - w0) / gib;
			}
		}
	}
	printf("%zu MiB in 1 MiB pieces, best of %d, sha256x2 on %s\n", mib, runs,
	       sha256_accelerated() ? "SHA-NI" : "OpenSSL (no SHA-NI, or IMGSTORE_SHA_NI=off)");
	printf("%-34s %12s %12s %10s\n", "", "CPU s/GiB", "wall s/GiB", "vs (a)");
	for (int v = 0; v < VARIANTS; v++)
		printf("%-34s %12.3f %12.3f %9.2fx\n", variants[v].name, best[v], wall[v],
		       best[0] / best[v]);
	printf("(c): per GiB of each of the two streams\n");

	/* Two 64 KiB pieces, in cache, the fastest of many runs: the minimum
	 * is what the code costs when nothing else runs on the core, a steadier
	 * figure than the above on a loaded machine. */
	r.npieces = 2;
	r.piece = 64 * 1024;
	for (int v = 0; v < VARIANTS; v++)
		best[v] = 1e30;
	for (int i = 0; i < 2000; i++) {
		for (int v = 0; v < VARIANTS; v++) {
			double c0 = time_mono(), c;
			variants[v].fn(&r);
			c = (time_mono() - c0) / (128.0 / (1024 * 1024) * variants[v].per_gib);
			if (c < best[v])
				best[v] = c;
		}
	}
	printf("\n2 x 64 KiB in cache, fastest of 2000 runs\n");
	printf("%-34s %12s %10s\n", "", "s/GiB", "vs (a)");
	for (int v = 0; v < VARIANTS; v++)
		printf("%-34s %12.3f %9.2fx\n", variants[v].name, best[v], best[0] / best[v]);
	rc = 0;
out:
	sha256_state_free(r.a);
	sha256_state_free(r.b);
	EVP_MD_CTX_free(r.ctx);
	free(data);
	return rc;
}
