/* libFuzzer target: any bytes -> recindex_decode (gunzip + JSON), the record
 * index a reader takes from the bucket.  Invariants: what decodes is sorted
 * with unique keys, each entry is a C string with a bounded ETag, lookups
 * find exactly the entries they may trust, and encode -> decode gives the
 * same entries back.
 *
 * Mutating gzip bytes almost always breaks the CRC, so the JSON parser would
 * rarely see a mutated text: the custom mutator inflates the input, mutates
 * the JSON and deflates it again (and sometimes mutates the raw bytes, for
 * the gzip framing). */
#include "store/record_index.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define TEXT_MAX (1u << 20)

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

static void check_index(const struct recindex *ix)
{
	for (size_t i = 0; i < ix->n; i++) {
		const struct recindex_entry *en = &ix->v[i];
		if (!en->key || !en->json || en->json[en->len] || strlen(en->json) != en->len ||
		    strlen(en->etag) >= S3_ETAG_MAX)
			abort();
		if (i && strcmp(ix->v[i - 1].key, en->key) >= 0)
			abort(); /* sorted, unique */
	}
}

/* "\"<32 hex>\"" */
static int is_md5_etag(const char *s)
{
	if (strlen(s) != 34 || s[0] != '"' || s[33] != '"')
		return 0;
	for (int i = 1; i < 33; i++)
		if (!strchr("0123456789abcdefABCDEF", s[i]))
			return 0;
	return 1;
}

static int md5_is(const struct recindex_entry *en)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	static const char hx[] = "0123456789abcdef";
	if (!EVP_Digest(en->json, en->len, md, &n, EVP_md5(), NULL) || n != 16)
		abort();
	for (unsigned i = 0; i < 16; i++) {
		char c1 = en->etag[1 + 2 * i] | 0x20, c2 = en->etag[2 + 2 * i] | 0x20;
		if (c1 != hx[md[i] >> 4] || c2 != hx[md[i] & 15])
			return 0;
	}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct recindex ix, back;
	struct err e;
	size_t skipped = 0;
	char *gz = NULL;
	size_t gzlen = 0;

	/* generous, but bounded like a reader's: a listing of 64k records */
	static const struct recindex_bound bound = {1u << 16, 16u << 20, 1u << 20};

	if (recindex_decode(data, size, &bound, &ix, &skipped, &e)) {
		if (e.code != ERR_INVALID || ix.n || ix.v)
			abort();
		return 0;
	}
	check_index(&ix);
	for (size_t i = 0; i < ix.n; i++) {
		const struct recindex_entry *en = &ix.v[i];
		const struct recindex_entry *got = recindex_lookup(&ix, en->key, en->etag);
		/* only an MD5 ETag that the bytes hash to is trusted */
		int trusted = is_md5_etag(en->etag) && md5_is(en);
		if (got != (trusted ? en : NULL))
			abort();
		if (recindex_lookup(&ix, en->key, "\"another etag\"") &&
		    strcmp(en->etag, "\"another etag\""))
			abort();
	}

	if (recindex_encode(&ix, &gz, &gzlen, &e) ||
	    recindex_decode(gz, gzlen, &bound, &back, &skipped, &e))
		abort();
	/* Decoded text is UTF-8 already, so encode keeps every entry. */
	if (back.n != ix.n || skipped)
		abort();
	for (size_t i = 0; i < ix.n; i++)
		if (strcmp(ix.v[i].key, back.v[i].key) || strcmp(ix.v[i].etag, back.v[i].etag) ||
		    ix.v[i].len != back.v[i].len ||
		    memcmp(ix.v[i].json, back.v[i].json, ix.v[i].len))
			abort();
	recindex_free(&back);
	free(gz);
	recindex_free(&ix);
	return 0;
}

/* The mutator's zlib streams live as long as the process: set up once, reset
 * for each input. */
static z_stream inf, def;

static size_t inflate_all(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	static int ready;
	if (!ready && inflateInit2(&inf, 15 + 16) != Z_OK)
		abort();
	ready = 1;
	inflateReset(&inf);
	inf.next_in = (Bytef *)in;
	inf.avail_in = (uInt)n;
	inf.next_out = out;
	inf.avail_out = (uInt)cap;
	return inflate(&inf, Z_FINISH) == Z_STREAM_END ? inf.total_out : SIZE_MAX;
}

static size_t deflate_all(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	static int ready;
	if (!ready && deflateInit2(&def, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		abort();
	ready = 1;
	deflateReset(&def);
	def.next_in = (Bytef *)in;
	def.avail_in = (uInt)n;
	def.next_out = out;
	def.avail_out = (uInt)cap;
	return deflate(&def, Z_FINISH) == Z_STREAM_END ? def.total_out : SIZE_MAX;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
	static uint8_t text[TEXT_MAX], out[TEXT_MAX];
	size_t len, n, cap = max_size * 4 < TEXT_MAX ? max_size * 4 : TEXT_MAX;

	if (seed % 8 == 0)
		return LLVMFuzzerMutate(data, size, max_size);
	len = inflate_all(data, size, text, cap);
	if (len == SIZE_MAX)
		return LLVMFuzzerMutate(data, size, max_size);
	len = LLVMFuzzerMutate(text, len, cap);
	n = deflate_all(text, len, out, sizeof(out));
	if (n == SIZE_MAX || n > max_size)
		return LLVMFuzzerMutate(data, size, max_size);
	memcpy(data, out, n);
	return n;
}
