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

/* roomy bounds, for the tests that are not about them */
static const struct recindex_bound ROOMY = {.records = 100, .json = 1 << 20, .values = 1 << 16};

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
	CHECK(recindex_decode(gz, gzlen, &ROOMY, &back, &skipped, &e) == 0);
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
	CHECK(recindex_decode(gz, gzlen, &ROOMY, &back, NULL, &e) == 0 && back.n == 0);
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
	recindex_add(&ix, "metadata/mpu.json", "\"900150983cd24fb0d6963f7d28e17f72-1\"", "abc", 3,
	             &e);
	recindex_sort(&ix);
	/* etag equal and the bytes hash to it */
	CHECK(recindex_lookup(&ix, "metadata/a.json", ETAG_ABC) != NULL);
	/* the listing names another version: stale */
	CHECK(recindex_lookup(&ix, "metadata/a.json", "\"00000000000000000000000000000000\"") ==
	      NULL);
	/* same etag as the listing, other bytes: forged or corrupt */
	CHECK(recindex_lookup(&ix, "metadata/forged.json", ETAG_A1) == NULL);
	/* an ETag that is no MD5 (multipart, SSE) cannot be checked: the entry
	 * is never taken, even under the listed ETag */
	CHECK(recindex_lookup(&ix, "metadata/sse.json", "\"not-an-md5-3\"") == NULL);
	CHECK(recindex_lookup(&ix, "metadata/sse.json", "\"not-an-md5-4\"") == NULL);
	CHECK(recindex_lookup(&ix, "metadata/mpu.json", "\"900150983cd24fb0d6963f7d28e17f72-1\"") ==
	      NULL);
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

	CHECK(recindex_decode("not gzip at all", 15, &ROOMY, &ix, NULL, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK(recindex_decode(junk, sizeof(junk), &ROOMY, &ix, NULL, &e) == -1);
	CHECK(recindex_decode("", 0, &ROOMY, &ix, NULL, &e) == -1);

	gz = gz_of("{\"version\":2,\"records\":[]}", &len);
	CHECK(recindex_decode(gz, len, &ROOMY, &ix, NULL, &e) == -1);
	free(gz);
	gz = gz_of("[1,2,3]", &len);
	CHECK(recindex_decode(gz, len, &ROOMY, &ix, NULL, &e) == -1);
	free(gz);
	gz = gz_of("{\"version\":1,\"records\":[", &len);
	CHECK(recindex_decode(gz, len, &ROOMY, &ix, NULL, &e) == -1);
	/* truncated gzip */
	CHECK(recindex_decode(gz, len / 2, &ROOMY, &ix, NULL, &e) == -1);
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
	CHECK(recindex_decode(gz, len, &ROOMY, &ix, &skipped, &e) == 0);
	CHECK(ix.n == 1 && skipped == 5);
	CHECK(ix.n == 1 && !strcmp(ix.v[0].key, "metadata/ok.json"));
	free(gz);
	recindex_free(&ix);
}

/* gzip of head, then reps times unit, then tail, made a MiB at a time */
static char *gz_repeat(const char *head, const char *unit, size_t reps, const char *tail,
                       size_t *len)
{
	z_stream z = {0};
	size_t ul = strlen(unit), per = (1u << 20) / ul, cap = 1u << 20, used = 0;
	char *chunk = malloc(per * ul), *o = malloc(cap);
	deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
	for (size_t i = 0; i < per; i++)
		memcpy(chunk + i * ul, unit, ul);
	for (int part = 0; part < 3; part++) {
		size_t left = part == 1 ? reps : 1;
		while (left) {
			size_t n = part == 1 ? (left < per ? left : per) : 1;
			const char *in = part == 0 ? head : part == 1 ? chunk : tail;
			z.next_in = (Bytef *)in;
			z.avail_in = (uInt)(part == 1 ? n * ul : strlen(in));
			left -= n;
			do {
				if (cap - used < 65536)
					o = realloc(o, cap *= 2);
				z.next_out = (Bytef *)o + used;
				z.avail_out = (uInt)(cap - used);
				deflate(&z, part == 2 ? Z_FINISH : Z_NO_FLUSH);
				used = z.total_out;
			} while (z.avail_in || (part == 2 && z.avail_out == 0));
		}
	}
	deflateEnd(&z);
	free(chunk);
	*len = used;
	return o;
}

static void test_bounds(void)
{
	struct s3_object listed[] = {
	        {.key = "metadata/a.raw.json", .size = 1000, .etag = "\"1\""},
	        {.key = "metadata/b.raw.json", .size = 3, .etag = "\"2\""},
	        {.key = "images/a.raw", .size = 1u << 30}, /* not a record */
	        {.key = "metadata/huge.json", .size = (uint64_t)RECINDEX_MAX_RECORD + 1},
	};
	struct recindex_bound b;
	struct recindex ix = {0};
	struct err e = {0};
	size_t len;
	char *gz;

	recindex_bound_of(listed, 4, &b);
	CHECK(b.records == 2);
	CHECK(b.values == 16 * 2 + 256);
	CHECK(b.json > 2 * 1003 && b.json < 2 * 1003 + 4096 + (64u << 10));

	/* 256 MiB of blanks in 260 KB: inflating stops at the bound */
	gz = gz_repeat("{\"version\":1,\"records\":[", " ", 256u << 20, "]}", &len);
	CHECK(len < (300u << 10));
	CHECK(recindex_decode(gz, len, &b, &ix, NULL, &e) == -1);
	CHECK(e.code == ERR_INVALID && strstr(e.msg, "inflates to more than"));
	CHECK(ix.n == 0);
	free(gz);
	/* within the bytes, too many values for a parser: each "{}," is ~230
	 * bytes of parsed nodes */
	gz = gz_repeat("{\"version\":1,\"records\":[", "{},", 20000, "{}]}", &len);
	CHECK(recindex_decode(gz, len, &b, &ix, NULL, &e) == -1);
	CHECK(e.code == ERR_INVALID && strstr(e.msg, "more than 288 JSON values"));
	free(gz);
	/* structure inside strings is not counted */
	gz = gz_repeat("{\"version\":1,\"records\":[{\"key\":\"", "{[,:\\\"", 100, "\"}]}", &len);
	CHECK(recindex_decode(gz, len, &b, &ix, NULL, &e) == 0);
	recindex_free(&ix);
	free(gz);
}

/* What recindex_encode writes for the listed records always fits their
 * bound: the worst a record can be for it (all quotes) and a key of control
 * characters. */
static void test_bound_fits_encoder(void)
{
	static char rec[4000], key[300];
	struct recindex ix = {0}, back = {0};
	struct s3_object listed[2];
	struct recindex_bound b;
	struct err e = {0};
	char etag[S3_ETAG_MAX], *gz = NULL;
	size_t gzlen = 0;
	memset(rec, '"', sizeof(rec) - 1);
	memcpy(key, "metadata/", 9);
	memset(key + 9, 0x1f, sizeof(key) - 15);
	memcpy(key + sizeof(key) - 6, ".json", 6);
	memset(etag, '"', sizeof(etag) - 1);
	etag[sizeof(etag) - 1] = '\0';
	CHECK(recindex_add(&ix, key, etag, rec, strlen(rec), &e) == 0);
	CHECK(recindex_add(&ix, "metadata/b.json", etag, "\t\r\n", 3, &e) == 0);
	recindex_sort(&ix);
	CHECK(recindex_encode(&ix, &gz, &gzlen, &e) == 0);
	listed[0] = (struct s3_object){.key = key, .size = strlen(rec)};
	listed[1] = (struct s3_object){.key = "metadata/b.json", .size = 3};
	recindex_bound_of(listed, 2, &b);
	/* without the slack: 2 bytes of entry a record byte, 6 a key byte... */
	b.json = 6 * strlen(key) + 2 * S3_ETAG_MAX + 2 * strlen(rec) + 40 +
	         6 * strlen("metadata/b.json") + 2 * S3_ETAG_MAX + 2 * 3 + 40 +
	         sizeof("{\"version\":1,\"records\":[]}");
	CHECK(recindex_decode(gz, gzlen, &b, &back, NULL, &e) == 0);
	CHECK(back.n == 2);
	free(gz);
	recindex_free(&back);
	recindex_free(&ix);
	/* other control characters would escape to 6 bytes: not an entry */
	CHECK(recindex_add(&ix, "metadata/c.json", "\"e\"", "a\x01", 2, &e) == -1);
	CHECK(e.code == ERR_INVALID);
}

int main(void)
{
	test_round_trip();
	test_lookup();
	test_add_refuses();
	test_decode_rejects();
	test_bounds();
	test_bound_fits_encoder();
	return check_report("record_index");
}
