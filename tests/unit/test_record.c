/* Unit tests for store/record.c: the checksum record JSON and the block map. */
#include "common/err.h"
#include "common/hash.h"
#include "common/hex.h"
#include "store/record.h"
#include "tests/unit/check.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define H0    "0000000000000000000000000000000000000000000000000000000000000000"
#define H1    "1111111111111111111111111111111111111111111111111111111111111111"
#define H1_62 "11111111111111111111111111111111111111111111111111111111111111"
#define H1_63 H1_62 "1"
#define HA    "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdef0123"

/* The exact text record_to_json writes: DESIGN.md key order, 2-space indent. */
static const char *const golden = "{\n"
                                  "  \"name\": \"talos-1.9.1\",\n"
                                  "  \"checksum\": \"sha256:" HA "\",\n"
                                  "  \"size\": 2097153,\n"
                                  "  \"uploadedAt\": \"2024-12-20T10:00:00Z\",\n"
                                  "  \"source\": {\n"
                                  "    \"url\": \"https://example.com/talos.raw.xz\"\n"
                                  "  },\n"
                                  "  \"etag\": \"\\\"d41d8cd98f00b204e9800998ecf8427e-3\\\"\",\n"
                                  "  \"blocks\": {\n"
                                  "    \"size\": 1048576,\n"
                                  "    \"algorithm\": \"sha256\",\n"
                                  "    \"hashes\": [\n"
                                  "      \"" H0 "\",\n"
                                  "      \"" H1 "\",\n"
                                  "      \"" HA "\"\n"
                                  "    ]\n"
                                  "  }\n"
                                  "}";

static void test_round_trip(void)
{
	struct record r;
	struct err e = {0};
	char *text, *again;

	CHECK(record_parse(golden, strlen(golden), &r, &e) == 0);
	CHECK_STR(r.name, "talos-1.9.1");
	CHECK_STR(r.checksum, "sha256:" HA);
	CHECK(r.size == 2097153);
	CHECK_STR(r.uploaded_at, "2024-12-20T10:00:00Z");
	CHECK_STR(r.source_url, "https://example.com/talos.raw.xz");
	CHECK_STR(r.etag, "\"d41d8cd98f00b204e9800998ecf8427e-3\"");
	CHECK(r.block_size == 1048576);
	CHECK(r.nblocks == 3);
	CHECK(r.hashes && r.hashes[1][0] == 0x11 && r.hashes[2][31] == 0x23);
	CHECK(record_block_len(&r, 0) == 1048576);
	CHECK(record_block_len(&r, 2) == 1);
	CHECK(record_block_len(&r, 3) == 0);

	text = record_to_json(&r, &e);
	CHECK_STR(text, golden);
	/* and back again */
	struct record r2;
	CHECK(record_parse(text, strlen(text), &r2, &e) == 0);
	again = record_to_json(&r2, &e);
	CHECK_STR(again, golden);
	free(text);
	free(again);
	record_free(&r2);

	/* No source URL: "source" is left out, and parses back as NULL. */
	free(r.source_url);
	r.source_url = NULL;
	text = record_to_json(&r, &e);
	CHECK(text && !strstr(text, "source"));
	CHECK(text && record_parse(text, strlen(text), &r2, &e) == 0 && !r2.source_url);
	free(text);
	record_free(&r2);
	record_free(&r);
	CHECK(r.name == NULL && r.hashes == NULL);

	/* Upper-case hex is accepted and written back lower-case; unknown keys
	 * are ignored (a newer writer may add fields). */
	const char *upper = "{\"name\":\"n\",\"checksum\":\"SHA256:" H0 "\",\"size\":0,"
	                    "\"uploadedAt\":\"2024-01-01T00:00:00Z\",\"etag\":\"\\\"e\\\"\","
	                    "\"blocks\":{\"size\":65536,\"algorithm\":\"sha256\",\"hashes\":[]}}";
	CHECK(record_parse(upper, strlen(upper), &r, &e) == -1); /* alg name is lower-case */
	const char *upperhex =
	        "{\"name\":\"n\",\"checksum\":\"sha256:ABCDEFABCDEFABCDEFABCDEFABCDEF"
	        "ABCDEFABCDEFABCDEFABCDEFABCDEF0123\",\"size\":1,\"future\":[1],"
	        "\"uploadedAt\":\"2024-01-01T00:00:00Z\",\"etag\":\"\\\"e\\\"\","
	        "\"blocks\":{\"size\":65536,\"algorithm\":\"sha256\",\"hashes\":"
	        "[\"ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEF0123\"]}}";
	CHECK(record_parse(upperhex, strlen(upperhex), &r, &e) == 0);
	CHECK_STR(r.checksum, "sha256:" HA);
	CHECK(r.nblocks == 1 && r.hashes[0][0] == 0xab);
	record_free(&r);
}

/* Parse `root` (consumed) and expect ERR_INVALID with `want` in the message. */
static void expect_invalid(json_t *root, const char *want, int line)
{
	char *text = json_dumps(root, JSON_COMPACT);
	struct record r;
	struct err e = {0};
	int rc = record_parse(text, strlen(text), &r, &e);
	check_count++;
	if (rc != -1 || e.code != ERR_INVALID || !strstr(e.msg, want)) {
		check_failures++;
		fprintf(stderr, "%s:%d: rc %d code %d msg \"%s\", want \"%s\" for %s\n", __FILE__,
		        line, rc, e.code, e.msg, want, text);
	}
	if (rc == 0)
		record_free(&r);
	CHECK(r.name == NULL && r.hashes == NULL && r.source_url == NULL);
	free(text);
	json_decref(root);
}

static json_t *valid_root(void)
{
	json_error_t je;
	return json_loads(golden, 0, &je);
}

static json_t *blocks_of(json_t *root)
{
	return json_object_get(root, "blocks");
}

#define MUTATE(stmt, want)                                                                         \
	do {                                                                                       \
		json_t *root = valid_root();                                                       \
		stmt;                                                                              \
		expect_invalid(root, want, __LINE__);                                              \
	} while (0)

static void test_validation(void)
{
	struct record r;
	struct err e = {0};

	/* not JSON / not an object / duplicate keys */
	CHECK(record_parse("{", 1, &r, &e) == -1 && e.code == ERR_INVALID &&
	      strstr(e.msg, "not valid JSON"));
	CHECK(record_parse("[1]", 3, &r, &e) == -1 && strstr(e.msg, "expected a JSON object"));
	const char *dup = "{\"name\":\"a\",\"name\":\"b\"}";
	CHECK(record_parse(dup, strlen(dup), &r, &e) == -1 && e.code == ERR_INVALID);

	/* every field: missing, wrong type, bad value */
	static const char *const required[] = {"name",       "checksum", "size",
	                                       "uploadedAt", "etag",     "blocks"};
	for (size_t i = 0; i < sizeof(required) / sizeof(*required); i++) {
		char want[64];
		snprintf(want, sizeof(want), "\"%s\" is missing", required[i]);
		MUTATE(json_object_del(root, required[i]), want);
		snprintf(want, sizeof(want), "\"%s\": expected", required[i]);
		MUTATE(json_object_set_new(root, required[i], json_true()), want);
	}
	MUTATE(json_object_set_new(root, "name", json_string("")),
	       "\"name\": expected a non-empty");
	MUTATE(json_object_set_new(root, "checksum", json_string("sha256:abc")), "\"checksum\"");
	MUTATE(json_object_set_new(root, "checksum", json_string("md5:" H0)), "\"checksum\"");
	MUTATE(json_object_set_new(root, "checksum", json_string(H0)), "\"checksum\"");
	MUTATE(json_object_set_new(root, "checksum", json_string("sha512:" H0)), "\"checksum\"");
	MUTATE(json_object_set_new(root, "checksum", json_string("sha256:" H0 "0")), /* 65 digits */
	       "\"checksum\"");
	MUTATE(json_object_set_new(root, "checksum", json_string("sha256:zz" H1_62)), /* non-hex */
	       "\"checksum\"");
	MUTATE(json_object_set_new(root, "size", json_integer(-1)), "\"size\": expected a non-neg");
	MUTATE(json_object_set_new(root, "size", json_real(2097153.0)), "\"size\": expected");
	MUTATE(json_object_set_new(root, "size", json_string("2097153")), "\"size\": expected");
	MUTATE(json_object_set_new(root, "uploadedAt", json_string("yesterday")), "\"uploadedAt\"");
	MUTATE(json_object_set_new(root, "uploadedAt", json_string("2024-12-20 10:00:00")),
	       "\"uploadedAt\"");
	MUTATE(json_object_set_new(root, "source", json_string("https://x")), "\"source\"");
	MUTATE(json_object_set_new(json_object_get(root, "source"), "url", json_integer(1)),
	       "\"source.url\"");
	MUTATE(json_object_set_new(json_object_get(root, "source"), "url", json_string("")),
	       "\"source.url\"");
	MUTATE(json_object_set_new(root, "etag", json_string("")), "\"etag\"");
	{
		char big[S3_ETAG_MAX + 1];
		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		MUTATE(json_object_set_new(root, "etag", json_string(big)), "\"etag\"");
	}
	/* blocks */
	MUTATE(json_object_del(blocks_of(root), "size"), "\"blocks.size\" is missing");
	MUTATE(json_object_del(blocks_of(root), "algorithm"), "\"blocks.algorithm\" is missing");
	MUTATE(json_object_del(blocks_of(root), "hashes"), "\"blocks.hashes\" is missing");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_string("1M")),
	       "\"blocks.size\": expected");
	MUTATE(json_object_set_new(blocks_of(root), "algorithm", json_string("sha512")),
	       "\"blocks.algorithm\": expected \"sha256\"");
	MUTATE(json_object_set_new(blocks_of(root), "algorithm", json_integer(256)),
	       "\"blocks.algorithm\": expected a string");
	MUTATE(json_object_set_new(blocks_of(root), "hashes", json_string(H0)),
	       "\"blocks.hashes\": expected an array");
	/* block size: power of two in [4 KiB, 64 MiB] */
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(0)), "\"blocks.size\"");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(1000000)),
	       "\"blocks.size\": expected a power of two");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(2048)),
	       "\"blocks.size\": expected a power of two");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(128 << 20)),
	       "\"blocks.size\": expected a power of two");
	/* powers of two outside [64 KiB, 4 MiB]: nothing labctl writes, and a
	 * block is what a reader holds in memory for any read of it */
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(64 << 20)),
	       "\"blocks.size\": expected a power of two between 65536 and 4194304 bytes");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(8 << 20)),
	       "\"blocks.size\": expected a power of two");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(32768)),
	       "\"blocks.size\": expected a power of two");
	MUTATE(json_object_set_new(blocks_of(root), "size", json_integer(4096)),
	       "\"blocks.size\": expected a power of two");
	/* block count must be ceil(size / block size) */
	MUTATE(json_array_remove(json_object_get(blocks_of(root), "hashes"), 2),
	       "2 hashes, but size 2097153 in blocks of 1048576 needs 3");
	MUTATE(json_array_append_new(json_object_get(blocks_of(root), "hashes"), json_string(H0)),
	       "4 hashes");
	MUTATE(json_object_set_new(root, "size", json_integer(2097152)), "needs 2");
	MUTATE(json_object_set_new(root, "size", json_integer(0)), "needs 0");
	/* each hash: a string of 64 hex digits */
	MUTATE(json_array_set_new(json_object_get(blocks_of(root), "hashes"), 1, json_integer(1)),
	       "\"blocks.hashes[1]\": expected 64 hex digits");
	MUTATE(json_array_set_new(json_object_get(blocks_of(root), "hashes"), 2,
	                          json_string(H0 "00")),
	       "\"blocks.hashes[2]\"");
	MUTATE(json_array_set_new(json_object_get(blocks_of(root), "hashes"), 0,
	                          json_string("g" H1_63)),
	       "\"blocks.hashes[0]\"");

	/* the base document itself is valid */
	json_t *root = valid_root();
	char *text = json_dumps(root, 0);
	CHECK(record_parse(text, strlen(text), &r, &e) == 0);
	free(text);
	json_decref(root);

	/* record_to_json refuses an invalid record */
	free(r.name);
	r.name = NULL;
	CHECK(record_to_json(&r, &e) == NULL && e.code == ERR_INVALID && strstr(e.msg, "\"name\""));
	r.name = strdup("x");
	r.block_size = 3000;
	CHECK(record_to_json(&r, &e) == NULL && strstr(e.msg, "blocks.size"));
	r.block_size = 1 << 20;
	r.nblocks = 2;
	CHECK(record_to_json(&r, &e) == NULL && strstr(e.msg, "needs 3"));
	r.nblocks = 3;
	strcpy(r.checksum, "sha256:x");
	CHECK(record_to_json(&r, &e) == NULL && strstr(e.msg, "checksum"));
	record_free(&r);
}

static void test_matches(void)
{
	struct record r;
	struct err e = {0};
	CHECK(record_parse(golden, strlen(golden), &r, &e) == 0);
	CHECK(record_matches_object(&r, 2097153, "\"d41d8cd98f00b204e9800998ecf8427e-3\"", &e) ==
	      0);
	/* servers differ in quoting */
	CHECK(record_matches_object(&r, 2097153, "d41d8cd98f00b204e9800998ecf8427e-3", &e) == 0);
	CHECK(record_matches_object(&r, 2097152, "\"d41d8cd98f00b204e9800998ecf8427e-3\"", &e) ==
	              -1 &&
	      e.code == ERR_INTEGRITY);
	CHECK(record_matches_object(&r, 2097153, "\"d41d8cd98f00b204e9800998ecf8427e-4\"", &e) ==
	              -1 &&
	      e.code == ERR_PRECONDITION);
	CHECK(record_matches_object(&r, 2097153, NULL, &e) == -1);
	record_free(&r);

	char *k = record_image_key("alpine/base.qcow2");
	CHECK_STR(k, "images/alpine/base.qcow2");
	free(k);
	k = record_meta_key("alpine/base.qcow2");
	CHECK_STR(k, "metadata/alpine/base.qcow2.json");
	free(k);
}

static void fill_pattern(unsigned char *p, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (unsigned char)x;
	}
}

/* Feed `data` to a block map in chunks of the sizes in `chunks` (cycled). */
static int run_blockmap(enum hash_alg alg, uint32_t bs, const unsigned char *data, size_t n,
                        const size_t *chunks, size_t nchunks, struct record *r)
{
	struct err e = {0};
	struct blockmap *b = blockmap_new(alg, bs);
	size_t off = 0, ci = 0;
	int rc = -1;
	if (!b)
		return -1;
	while (off < n) {
		size_t k = chunks[ci++ % nchunks];
		if (k > n - off)
			k = n - off;
		if (blockmap_update(b, data + off, k, &e))
			goto out;
		off += k;
	}
	/* zero-length updates are harmless */
	if (blockmap_update(b, data, 0, &e))
		goto out;
	rc = blockmap_finish(b, r, &e);
	/* spent after finish */
	if (rc == 0 && blockmap_update(b, data, 1, &e) != -1)
		rc = -1;
out:
	blockmap_free(b);
	return rc;
}

/* The one-shot reference: hash each block and the whole thing separately. */
static void check_against_oneshot(enum hash_alg alg, uint32_t bs, const unsigned char *data,
                                  size_t n, const struct record *r)
{
	char hex[HASH_MAX_HEX], want[RECORD_CHECKSUM_MAX];
	struct hash *h = hash_new(alg);
	size_t nb = n / bs + (n % bs != 0);
	hash_update(h, data, n);
	hash_final_hex(h, hex);
	hash_free(h);
	snprintf(want, sizeof(want), "%s:%s", hash_alg_name(alg), hex);
	CHECK_STR(r->checksum, want);
	CHECK(r->size == n);
	CHECK(r->block_size == bs);
	CHECK(r->nblocks == nb);
	for (size_t i = 0; i < nb && i < r->nblocks; i++) {
		unsigned char d[32];
		size_t len = i + 1 < nb ? bs : n - i * bs;
		hash_sha256(data + i * bs, len, d);
		CHECK(memcmp(d, r->hashes[i], 32) == 0);
		CHECK(record_block_len(r, i) == len);
	}
}

static void test_blockmap(void)
{
	const uint32_t bs = RECORD_MIN_BLOCK_SIZE;
	/* sizes: empty, one byte, exactly one block, exact multiple, last short block */
	const size_t sizes[] = {0, 1, bs - 1, bs, 4 * bs, 4 * bs + 1, 7 * bs + 1234, 13 * bs - 1};
	const size_t c1[] = {1}, c7[] = {7, 65535, 1, 65537}, cb[] = {bs}, cb1[] = {bs + 1},
	             cbig[] = {1 << 20}, codd[] = {3, 50000, 65535, 2, 131073, 1, 65536, 333};
	const struct {
		const size_t *v;
		size_t n;
	} chunkings[] = {{c1, 1}, {c7, 4}, {cb, 1}, {cb1, 1}, {cbig, 1}, {codd, 8}};
	size_t max = 13 * bs;
	unsigned char *data = malloc(max);
	fill_pattern(data, max, 42);

	for (size_t si = 0; si < sizeof(sizes) / sizeof(*sizes); si++) {
		for (size_t ci = 0; ci < sizeof(chunkings) / sizeof(*chunkings); ci++) {
			for (int alg = HASH_SHA256; alg <= HASH_SHA512; alg++) {
				struct record r = {0};
				int rc = run_blockmap((enum hash_alg)alg, bs, data, sizes[si],
				                      chunkings[ci].v, chunkings[ci].n, &r);
				CHECK(rc == 0);
				if (rc == 0)
					check_against_oneshot((enum hash_alg)alg, bs, data,
					                      sizes[si], &r);
				record_free(&r);
			}
		}
	}

	/* Empty object: no blocks, checksum of the empty string, and it
	 * round-trips through JSON with an empty hash array. */
	{
		struct record r = {0};
		struct err e = {0};
		struct record back;
		CHECK(run_blockmap(HASH_SHA256, RECORD_DEFAULT_BLOCK_SIZE, data, 0, c1, 1, &r) ==
		      0);
		CHECK(r.nblocks == 0 && r.size == 0);
		CHECK_STR(r.checksum, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca4959"
		                      "91b7852b855");
		r.name = strdup("empty");
		strcpy(r.uploaded_at, "2024-01-01T00:00:00Z");
		strcpy(r.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
		char *text = record_to_json(&r, &e);
		CHECK(text && strstr(text, "\"hashes\": []"));
		CHECK(text && record_parse(text, strlen(text), &back, &e) == 0 &&
		      back.nblocks == 0 && back.size == 0);
		free(text);
		record_free(&back);
		record_free(&r);
	}

	/* A larger block size with a short tail. */
	{
		struct record r = {0};
		size_t n = (1 << 20) + 17;
		unsigned char *big = malloc(n);
		fill_pattern(big, n, 7);
		const size_t ch[] = {65537, 1, 999999};
		CHECK(run_blockmap(HASH_SHA512, 65536, big, n, ch, 3, &r) == 0);
		check_against_oneshot(HASH_SHA512, 65536, big, n, &r);
		CHECK(r.nblocks == 17 && record_block_len(&r, 16) == 17);
		record_free(&r);
		free(big);
	}

	/* Invalid block sizes. */
	CHECK(blockmap_new(HASH_SHA256, 0) == NULL);
	CHECK(blockmap_new(HASH_SHA256, 2048) == NULL);
	CHECK(blockmap_new(HASH_SHA256, 5000) == NULL);
	CHECK(blockmap_new(HASH_SHA256, 128u << 20) == NULL);
	CHECK(blockmap_new(HASH_SHA256, 4096) == NULL);
	CHECK(blockmap_new(HASH_SHA256, 8u << 20) == NULL);
	struct blockmap *b = blockmap_new(HASH_SHA256, RECORD_MAX_BLOCK_SIZE);
	CHECK(b != NULL);
	blockmap_free(b);
	CHECK((b = blockmap_new(HASH_SHA256, RECORD_MIN_BLOCK_SIZE)) != NULL);
	blockmap_free(b);
	blockmap_free(NULL);
	free(data);
}

static void test_zero_blocks(void)
{
	struct record r = {0};
	const uint32_t bs = RECORD_MIN_BLOCK_SIZE;
	size_t n = 3 * bs + 100;
	unsigned char *data = calloc(1, n), z[32], d[32];
	const size_t ch[] = {50000};
	data[bs + 5] = 1; /* block 1 is not zero */
	CHECK(run_blockmap(HASH_SHA256, bs, data, n, ch, 1, &r) == 0);
	CHECK(record_block_is_zero(&r, 0) == 1);
	CHECK(record_block_is_zero(&r, 1) == 0);
	CHECK(record_block_is_zero(&r, 2) == 1);
	CHECK(record_block_is_zero(&r, 3) == 1); /* the short tail */
	CHECK(record_block_is_zero(&r, 4) == 0); /* out of range */
	record_zero_hash(100, z);
	hash_sha256(data, 100, d);
	CHECK(memcmp(z, d, 32) == 0);
	record_zero_hash(100, z); /* cached path */
	CHECK(memcmp(z, d, 32) == 0);
	record_free(&r);
	free(data);
}

/* A previous version's record: "destination" and "replacedAt" round-trip
 * (after "blocks"), are optional, and are checked like the rest. */
static void test_version_fields(void)
{
	struct record r, r2;
	struct err e = {0};
	char *text, *bad;
	const char *tail = "\n}";

	CHECK(record_parse(golden, strlen(golden), &r, &e) == 0);
	CHECK(r.destination == NULL && r.replaced_at[0] == '\0');
	r.destination = strdup("talos/talos.raw");
	strcpy(r.replaced_at, "2025-01-02T03:04:05Z");
	text = record_to_json(&r, &e);
	CHECK(text && strstr(text, "\"destination\": \"talos/talos.raw\"") &&
	      strstr(text, "\"replacedAt\": \"2025-01-02T03:04:05Z\""));
	CHECK(text && strstr(text, "\"blocks\"") < strstr(text, "\"destination\""));
	CHECK(text && record_parse(text, strlen(text), &r2, &e) == 0);
	CHECK_STR(r2.destination, "talos/talos.raw");
	CHECK_STR(r2.replaced_at, "2025-01-02T03:04:05Z");
	record_free(&r2);
	free(text);
	strcpy(r.replaced_at, "yesterday");
	CHECK(record_to_json(&r, &e) == NULL && strstr(e.msg, "replacedAt"));
	record_free(&r);

	/* bad values in a parsed record */
	const char *cases[] = {",\"destination\": \"\"", ",\"destination\": 3",
	                       ",\"replacedAt\": \"2025-13-40T00:00:00Z\"", ",\"replacedAt\": 1"};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(golden) - strlen("\n}");
		bad = malloc(n + strlen(cases[i]) + strlen(tail) + 1);
		memcpy(bad, golden, n);
		strcpy(bad + n, cases[i]);
		strcat(bad, tail);
		e = (struct err){0};
		CHECK(record_parse(bad, strlen(bad), &r, &e) == -1 && e.code == ERR_INVALID);
		CHECK(strstr(e.msg, i < 2 ? "destination" : "replacedAt") != NULL);
		free(bad);
	}
}

/* origin and manifestChecksum: written when set, parsed strictly; records
 * without origin take it from source.url */
static void test_origin_fields(void)
{
	static const char *const SHA512 =
	        "sha512:"
	        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85"
	        "f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
	struct record r, r2;
	struct err e = {0};
	char *text, *bad;

	CHECK(record_parse(golden, strlen(golden), &r, &e) == 0);
	CHECK(r.origin[0] == '\0' && r.manifest_checksum[0] == '\0');
	/* the golden record has an https source: a sync of older labctl */
	CHECK_STR(record_origin(&r), "manifest");
	free(r.source_url);
	r.source_url = strdup("file:///tmp/x.raw");
	CHECK_STR(record_origin(&r), "upload");
	free(r.source_url);
	r.source_url = NULL;
	CHECK_STR(record_origin(&r), "upload");
	strcpy(r.origin, "manifest");
	CHECK_STR(record_origin(&r), "manifest");
	strcpy(r.manifest_checksum, SHA512);
	CHECK(record_has_checksum(&r, SHA512));
	CHECK(record_has_checksum(&r, r.checksum));
	CHECK(!record_has_checksum(&r, "sha256:00"));
	text = record_to_json(&r, &e);
	CHECK(text && strstr(text, "\"origin\": \"manifest\"") &&
	      strstr(text, "\"manifestChecksum\": \"sha512:cf83e1"));
	CHECK(text && record_parse(text, strlen(text), &r2, &e) == 0);
	CHECK_STR(r2.origin, "manifest");
	CHECK_STR(r2.manifest_checksum, SHA512);
	record_free(&r2);
	free(text);
	strcpy(r.origin, "elsewhere");
	CHECK(record_to_json(&r, &e) == NULL && strstr(e.msg, "origin"));
	record_free(&r);

	const char *cases[] = {",\"origin\": \"other\"", ",\"origin\": 1",
	                       ",\"manifestChecksum\": \"md5:00\"", ",\"manifestChecksum\": 1"};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(golden) - strlen("\n}");
		bad = malloc(n + strlen(cases[i]) + 3);
		memcpy(bad, golden, n);
		strcpy(bad + n, cases[i]);
		strcat(bad, "\n}");
		e = (struct err){0};
		CHECK(record_parse(bad, strlen(bad), &r, &e) == -1 && e.code == ERR_INVALID);
		CHECK(strstr(e.msg, i < 2 ? "origin" : "manifestChecksum") != NULL);
		free(bad);
	}
}

int main(void)
{
	test_round_trip();
	test_origin_fields();
	test_version_fields();
	test_validation();
	test_matches();
	test_blockmap();
	test_zero_blocks();
	return check_report("record");
}
