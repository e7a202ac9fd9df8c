/* Unit tests for store/record_index.c: encode/decode and the trust check of
 * an entry (the parts that need no server). */
#include "common/err.h"
#include "store/record_index.h"
#include "tests/unit/check.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* MD5("abc") and MD5("{\"a\":1}"), as a single-part PUT's ETag */
#define ETAG_ABC "\"900150983cd24fb0d6963f7d28e17f72\""
#define ETAG_A1  "\"b9d1f5b7e2b1b3b1a5b7f2c3f0e0c8a1\"" /* not the MD5 of anything here */

static char *gz_of(const char *text, size_t *len)
{
	z_stream z = {0};
	size_t cap = strlen(text) + 128;
	char *o = malloc(cap);
	deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
	z.next_in = (Bytef *)text;
	z.avail_in = (uInt)strlen(text);
	z.next_out = (Bytef *)o;
	z.avail_out = (uInt)cap;
	deflate(&z, Z_FINISH);
	*len = z.total_out;
	deflateEnd(&z);
	return o;
}

static void test_round_trip(void)
{
	struct recindex ix = {0}, back = {0};
	struct err e = {0};
	char *gz = NULL;
	size_t gzlen = 0, skipped = 99;
	/* exact bytes survive: whitespace, escapes, non-ASCII */
	const char *rec2 = "{\n  \"name\": \"caf\xc3\xa9\",\n  \"q\": \"a\\\"b\"\n}\n";
	CHECK(recindex_add(&ix, "metadata/b.raw.json", "\"etag-b-2\"", rec2, strlen(rec2), &e) ==
	      0);
	CHECK(recindex_add(&ix, "metadata/a.raw.json", ETAG_ABC, "abc", 3, &e) == 0);
	recindex_sort(&ix);
	CHECK(ix.n == 2);
	CHECK_STR(ix.v[0].key, "metadata/a.raw.json");
	CHECK(recindex_encode(&ix, &gz, &gzlen, &e) == 0);
	CHECK(gz && gzlen > 18 && (unsigned char)gz[0] == 0x1f && (unsigned char)gz[1] == 0x8b);
	CHECK(recindex_decode(gz, gzlen, &back, &skipped, &e) == 0);
	CHECK(skipped == 0);
	CHECK(back.n == 2);
	if (back.n == 2) {
		CHECK_STR(back.v[1].json, rec2);
		CHECK(back.v[1].len == strlen(rec2));
		CHECK_STR(back.v[1].etag, "\"etag-b-2\"");
		CHECK_STR(back.v[0].json, "abc");
	}
	free(gz);
	recindex_free(&back);

	/* an empty index is a valid one */
	recindex_free(&ix);
	CHECK(recindex_encode(&ix, &gz, &gzlen, &e) == 0);
	CHECK(recindex_decode(gz, gzlen, &back, NULL, &e) == 0 && back.n == 0);
	free(gz);
	recindex_free(&back);
}

static void test_lookup(void)
{
	struct recindex ix = {0};
	struct err e = {0};
	recindex_add(&ix, "metadata/a.json", ETAG_ABC, "abc", 3, &e);
	recindex_add(&ix, "metadata/forged.json", ETAG_A1, "{\"a\":1}", 7, &e);
	recindex_add(&ix, "metadata/sse.json", "\"not-an-md5-3\"", "xyz", 3, &e);
	recindex_sort(&ix);
	/* etag equal and the bytes hash to it */
	CHECK(recindex_lookup(&ix, "metadata/a.json", ETAG_ABC) != NULL);
	/* the listing names another version: stale */
	CHECK(recindex_lookup(&ix, "metadata/a.json", "\"00000000000000000000000000000000\"") ==
	      NULL);
	/* same etag as the listing, other bytes: forged or corrupt */
	CHECK(recindex_lookup(&ix, "metadata/forged.json", ETAG_A1) == NULL);
	/* an ETag that is no MD5 can only be compared */
	CHECK(recindex_lookup(&ix, "metadata/sse.json", "\"not-an-md5-3\"") != NULL);
	CHECK(recindex_lookup(&ix, "metadata/sse.json", "\"not-an-md5-4\"") == NULL);
	/* not in the index, no etag */
	CHECK(recindex_lookup(&ix, "metadata/zzz.json", ETAG_ABC) == NULL);
	CHECK(recindex_lookup(&ix, "metadata/a.json", "") == NULL);
	CHECK(recindex_lookup(NULL, "metadata/a.json", ETAG_ABC) == NULL);
	recindex_free(&ix);
}

static void test_add_refuses(void)
{
	struct recindex ix = {0};
	struct err e = {0};
	char long_etag[S3_ETAG_MAX + 8];
	memset(long_etag, 'x', sizeof(long_etag) - 1);
	long_etag[sizeof(long_etag) - 1] = '\0';
	CHECK(recindex_add(&ix, "metadata/n.json", "\"e\"", "a\0b", 3, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK(recindex_add(&ix, "metadata/n.json", long_etag, "ab", 2, &e) == -1);
	CHECK(ix.n == 0);
	/* duplicates collapse to one */
	recindex_add(&ix, "metadata/d.json", "\"1\"", "one", 3, &e);
	recindex_add(&ix, "metadata/d.json", "\"2\"", "two", 3, &e);
	recindex_sort(&ix);
	CHECK(ix.n == 1);
	recindex_free(&ix);
}

static void test_decode_rejects(void)
{
	struct recindex ix = {0};
	struct err e = {0};
	size_t len, skipped = 0;
	char *gz;
	static const unsigned char junk[] = {0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef, 1, 2};

	CHECK(recindex_decode("not gzip at all", 15, &ix, NULL, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK(recindex_decode(junk, sizeof(junk), &ix, NULL, &e) == -1);
	CHECK(recindex_decode("", 0, &ix, NULL, &e) == -1);

	gz = gz_of("{\"version\":2,\"records\":[]}", &len);
	CHECK(recindex_decode(gz, len, &ix, NULL, &e) == -1);
	free(gz);
	gz = gz_of("[1,2,3]", &len);
	CHECK(recindex_decode(gz, len, &ix, NULL, &e) == -1);
	free(gz);
	gz = gz_of("{\"version\":1,\"records\":[", &len);
	CHECK(recindex_decode(gz, len, &ix, NULL, &e) == -1);
	/* truncated gzip */
	CHECK(recindex_decode(gz, len / 2, &ix, NULL, &e) == -1);
	free(gz);

	/* bad entries are skipped one by one, good ones kept */
	gz = gz_of("{\"version\":1,\"extra\":true,\"records\":["
	           "{\"key\":\"metadata/ok.json\",\"etag\":\"\\\"e\\\"\",\"json\":\"{}\"},"
	           "{\"key\":\"metadata/nul.json\",\"etag\":\"\\\"e\\\"\",\"json\":\"a\\u0000b\"},"
	           "{\"key\":5,\"etag\":\"\\\"e\\\"\",\"json\":\"{}\"},"
	           "{\"key\":\"metadata/nojson.json\",\"etag\":\"\\\"e\\\"\"},"
	           "{\"key\":\"metadata/obj.json\",\"etag\":\"\\\"e\\\"\",\"json\":{}},"
	           "7]}",
	           &len);
	CHECK(recindex_decode(gz, len, &ix, &skipped, &e) == 0);
	CHECK(ix.n == 1 && skipped == 5);
	CHECK(recindex_lookup(&ix, "metadata/ok.json", "\"e\"") != NULL);
	free(gz);
	recindex_free(&ix);
}

int main(void)
{
	test_round_trip();
	test_lookup();
	test_add_refuses();
	test_decode_rejects();
	return check_report("record_index");
}
