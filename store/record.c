/* The checksum record: strict JSON parsing, stable serialization, and the
 * one-pass block map builder. */
#include "store/record.h"

#include "common/hex.h"
#include "common/timefmt.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RECORD_BLOCK_ALG "sha256"

static int is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static int block_size_ok(uint64_t bs)
{
	return is_pow2(bs) && bs >= RECORD_MIN_BLOCK_SIZE && bs <= RECORD_MAX_BLOCK_SIZE;
}

static uint64_t blocks_for(uint64_t size, uint32_t bs)
{
	return size / bs + (size % bs != 0);
}

static int bad_field(struct err *e, const char *field, const char *what)
{
	return err_set(e, ERR_INVALID, "checksum record: field \"%s\": %s", field, what);
}

/* ---- validation shared by parse and serialize ---- */

static int check_checksum_field(const char *field, const char *s, struct err *e)
{
	enum hash_alg alg;
	char hex[HASH_MAX_HEX];
	if (hash_checksum_parse(s, &alg, hex))
		return bad_field(
		        e, field,
		        "expected \"sha256:<64 hex digits>\" or \"sha512:<128 hex digits>\"");
	return 0;
}

static int check_checksum(const char *s, struct err *e)
{
	return check_checksum_field("checksum", s, e);
}

static int check_origin(const char *s, struct err *e)
{
	if (strcmp(s, RECORD_ORIGIN_MANIFEST) && strcmp(s, RECORD_ORIGIN_UPLOAD))
		return bad_field(e, "origin", "expected \"manifest\" or \"upload\"");
	return 0;
}

static int check_time(const char *field, const char *s, struct err *e)
{
	time_t t;
	if (strlen(s) >= sizeof(((struct record *)0)->uploaded_at) || time_parse_rfc3339(s, &t))
		return bad_field(e, field,
		                 "expected an RFC 3339 UTC time such as \"2024-12-20T10:00:00Z\"");
	return 0;
}

static int check_uploaded_at(const char *s, struct err *e)
{
	return check_time("uploadedAt", s, e);
}

static int check_etag(const char *s, struct err *e)
{
	if (!*s || strlen(s) >= S3_ETAG_MAX)
		return bad_field(e, "etag", "expected a non-empty ETag of at most 127 characters");
	return 0;
}

static int check_blocks(uint64_t size, uint64_t bs, size_t nblocks, struct err *e)
{
	if (!block_size_ok(bs))
		return err_set(e, ERR_INVALID,
		               "checksum record: field \"blocks.size\": expected a power of two "
		               "between %u and %u bytes",
		               RECORD_MIN_BLOCK_SIZE, RECORD_MAX_BLOCK_SIZE);
	if (nblocks != blocks_for(size, (uint32_t)bs))
		return err_set(
		        e, ERR_INVALID,
		        "checksum record: field \"blocks.hashes\": %zu hashes, but size %llu "
		        "in blocks of %llu needs %llu",
		        nblocks, (unsigned long long)size, (unsigned long long)bs,
		        (unsigned long long)blocks_for(size, (uint32_t)bs));
	return 0;
}

int record_validate(const struct record *r, struct err *e)
{
	if (!r->name || !*r->name)
		return bad_field(e, "name", "expected a non-empty string");
	if (check_checksum(r->checksum, e) || check_uploaded_at(r->uploaded_at, e) ||
	    check_etag(r->etag, e) || check_blocks(r->size, r->block_size, r->nblocks, e))
		return -1;
	if (r->size > (uint64_t)INT64_MAX)
		return bad_field(e, "size", "too large");
	if (r->source_url && !*r->source_url)
		return bad_field(e, "source.url", "expected a non-empty string");
	if (r->nblocks && !r->hashes)
		return bad_field(e, "blocks.hashes", "missing");
	if (r->destination && !*r->destination)
		return bad_field(e, "destination", "expected a non-empty string");
	if (r->replaced_at[0] && check_time("replacedAt", r->replaced_at, e))
		return -1;
	if (r->origin[0] && check_origin(r->origin, e))
		return -1;
	if (r->manifest_checksum[0] &&
	    check_checksum_field("manifestChecksum", r->manifest_checksum, e))
		return -1;
	return 0;
}

/* ---- parsing ---- */

static json_t *get_field(json_t *obj, const char *key, const char *field, json_type type,
                         const char *want, struct err *e)
{
	json_t *v = json_object_get(obj, key);
	if (!v) {
		err_set(e, ERR_INVALID, "checksum record: field \"%s\" is missing", field);
		return NULL;
	}
	if (json_typeof(v) != type) {
		bad_field(e, field, want);
		return NULL;
	}
	return v;
}

static const char *get_string(json_t *obj, const char *key, const char *field, struct err *e)
{
	json_t *v = get_field(obj, key, field, JSON_STRING, "expected a string", e);
	return v ? json_string_value(v) : NULL;
}

static int get_uint(json_t *obj, const char *key, const char *field, uint64_t *out, struct err *e)
{
	json_t *v = get_field(obj, key, field, JSON_INTEGER, "expected a non-negative integer", e);
	if (!v)
		return -1;
	if (json_integer_value(v) < 0)
		return bad_field(e, field, "expected a non-negative integer");
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int parse_source(json_t *root, struct record *r, struct err *e)
{
	json_t *src = json_object_get(root, "source"), *url;
	if (!src || json_is_null(src))
		return 0;
	if (!json_is_object(src))
		return bad_field(e, "source", "expected an object {\"url\": ...}");
	url = json_object_get(src, "url");
	if (!url || json_is_null(url))
		return 0;
	if (!json_is_string(url) || !*json_string_value(url))
		return bad_field(e, "source.url", "expected a non-empty string");
	r->source_url = strdup(json_string_value(url));
	if (!r->source_url)
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}

static int parse_blocks(json_t *root, struct record *r, struct err *e)
{
	json_t *blocks, *hashes;
	const char *alg;
	uint64_t bs = 0;
	size_t n;

	blocks = get_field(root, "blocks", "blocks", JSON_OBJECT, "expected an object", e);
	if (!blocks)
		return -1;
	if (get_uint(blocks, "size", "blocks.size", &bs, e))
		return -1;
	alg = get_string(blocks, "algorithm", "blocks.algorithm", e);
	if (!alg)
		return -1;
	if (strcmp(alg, RECORD_BLOCK_ALG))
		return bad_field(e, "blocks.algorithm", "expected \"sha256\"");
	hashes = get_field(blocks, "hashes", "blocks.hashes", JSON_ARRAY, "expected an array", e);
	if (!hashes)
		return -1;
	n = json_array_size(hashes);
	if (check_blocks(r->size, bs, n, e))
		return -1;
	r->block_size = (uint32_t)bs;
	if (n) {
		r->hashes = malloc(n * sizeof(*r->hashes));
		if (!r->hashes)
			return err_set(e, ERR_IO, "out of memory for %zu block hashes", n);
	}
	for (size_t i = 0; i < n; i++) {
		json_t *h = json_array_get(hashes, i);
		const char *s = json_string_value(h);
		if (!s || strlen(s) != 64 || hex_decode(s, 32, r->hashes[i]))
			return err_set(e, ERR_INVALID,
			               "checksum record: field \"blocks.hashes[%zu]\": expected 64 "
			               "hex digits",
			               i);
	}
	r->nblocks = n;
	return 0;
}

/* "destination" and "replacedAt": optional, present on a previous version's record */
static int parse_version_fields(json_t *root, struct record *r, struct err *e)
{
	json_t *v = json_object_get(root, "destination");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !*json_string_value(v))
			return bad_field(e, "destination", "expected a non-empty string");
		if (!(r->destination = strdup(json_string_value(v))))
			return err_set(e, ERR_IO, "out of memory");
	}
	v = json_object_get(root, "origin");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || check_origin(json_string_value(v), e))
			return json_is_string(v) ? -1 : bad_field(e, "origin", "expected a string");
		strcpy(r->origin, json_string_value(v));
	}
	v = json_object_get(root, "manifestChecksum");
	if (v && !json_is_null(v)) {
		enum hash_alg alg;
		char hex[HASH_MAX_HEX];
		if (!json_is_string(v) ||
		    check_checksum_field("manifestChecksum", json_string_value(v), e))
			return json_is_string(v)
			               ? -1
			               : bad_field(e, "manifestChecksum", "expected a string");
		hash_checksum_parse(json_string_value(v), &alg, hex);
		snprintf(r->manifest_checksum, sizeof(r->manifest_checksum), "%s:%s",
		         hash_alg_name(alg), hex);
	}
	v = json_object_get(root, "replacedAt");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || check_time("replacedAt", json_string_value(v), e))
			return json_is_string(v) ? -1
			                         : bad_field(e, "replacedAt", "expected a string");
		strcpy(r->replaced_at, json_string_value(v));
	}
	return 0;
}

int record_parse(const char *json, size_t len, struct record *out, struct err *e)
{
	json_error_t jerr;
	json_t *root = NULL;
	const char *s;
	enum hash_alg alg;
	char hex[HASH_MAX_HEX];
	int rc = -1;

	memset(out, 0, sizeof(*out));
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		err_set(e, ERR_INVALID, "checksum record: not valid JSON: line %d column %d: %s",
		        jerr.line, jerr.column, jerr.text);
		goto out;
	}
	if (!json_is_object(root)) {
		err_set(e, ERR_INVALID, "checksum record: expected a JSON object");
		goto out;
	}

	if (!(s = get_string(root, "name", "name", e)))
		goto out;
	if (!*s) {
		bad_field(e, "name", "expected a non-empty string");
		goto out;
	}
	if (!(out->name = strdup(s))) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}

	if (!(s = get_string(root, "checksum", "checksum", e)) || check_checksum(s, e))
		goto out;
	hash_checksum_parse(s, &alg, hex);
	snprintf(out->checksum, sizeof(out->checksum), "%s:%s", hash_alg_name(alg), hex);

	if (get_uint(root, "size", "size", &out->size, e))
		goto out;

	if (!(s = get_string(root, "uploadedAt", "uploadedAt", e)) || check_uploaded_at(s, e))
		goto out;
	strcpy(out->uploaded_at, s);

	if (parse_source(root, out, e))
		goto out;

	if (!(s = get_string(root, "etag", "etag", e)) || check_etag(s, e))
		goto out;
	strcpy(out->etag, s);

	if (parse_blocks(root, out, e))
		goto out;
	if (parse_version_fields(root, out, e))
		goto out;
	rc = 0;
out:
	json_decref(root);
	if (rc)
		record_free(out);
	return rc;
}

/* ---- serialization ---- */

/* json_object_set_new() that remembers a failure instead of returning it. */
static void put(json_t *obj, const char *key, json_t *v, int *failed)
{
	if (!v || json_object_set_new(obj, key, v))
		*failed = 1;
}

char *record_to_json(const struct record *r, struct err *e)
{
	json_t *root = NULL, *blocks = NULL, *hashes = NULL, *src;
	char *text = NULL;
	int failed = 0;

	if (record_validate(r, e)) {
		err_prefix(e, "not writing an invalid record");
		return NULL;
	}
	root = json_object();
	blocks = json_object();
	hashes = json_array();
	if (!root || !blocks || !hashes)
		goto out;
	/* Jansson keeps insertion order: this is the order of DESIGN.md. */
	put(root, "name", json_string(r->name), &failed);
	put(root, "checksum", json_string(r->checksum), &failed);
	if (r->manifest_checksum[0])
		put(root, "manifestChecksum", json_string(r->manifest_checksum), &failed);
	put(root, "size", json_integer((json_int_t)r->size), &failed);
	put(root, "uploadedAt", json_string(r->uploaded_at), &failed);
	if (r->source_url) {
		src = json_object();
		if (src)
			put(src, "url", json_string(r->source_url), &failed);
		put(root, "source", src, &failed);
	}
	if (r->origin[0])
		put(root, "origin", json_string(r->origin), &failed);
	put(root, "etag", json_string(r->etag), &failed);
	for (size_t i = 0; i < r->nblocks && !failed; i++) {
		char hex[65];
		hex_encode(r->hashes[i], 32, hex);
		if (json_array_append_new(hashes, json_stringn(hex, 64)))
			failed = 1;
	}
	put(blocks, "size", json_integer(r->block_size), &failed);
	put(blocks, "algorithm", json_string(RECORD_BLOCK_ALG), &failed);
	put(blocks, "hashes", hashes, &failed);
	hashes = NULL;
	put(root, "blocks", blocks, &failed);
	blocks = NULL;
	if (r->destination)
		put(root, "destination", json_string(r->destination), &failed);
	if (r->replaced_at[0])
		put(root, "replacedAt", json_string(r->replaced_at), &failed);
	if (!failed)
		text = json_dumps(root, JSON_INDENT(2));
out:
	if (!text)
		err_set(e, ERR_IO, "serializing checksum record of %s: out of memory", r->name);
	json_decref(hashes);
	json_decref(blocks);
	json_decref(root);
	return text;
}

void record_free(struct record *r)
{
	if (!r)
		return;
	free(r->name);
	free(r->source_url);
	free(r->hashes);
	free(r->destination);
	memset(r, 0, sizeof(*r));
}

const char *record_origin(const struct record *r)
{
	if (r->origin[0])
		return r->origin;
	if (r->source_url &&
	    (!strncmp(r->source_url, "https://", 8) || !strncmp(r->source_url, "http://", 7)))
		return RECORD_ORIGIN_MANIFEST;
	return RECORD_ORIGIN_UPLOAD;
}

int record_has_checksum(const struct record *r, const char *want)
{
	return want && (!strcasecmp(r->checksum, want) ||
	                (r->manifest_checksum[0] && !strcasecmp(r->manifest_checksum, want)));
}

static const char *etag_core(const char *s, size_t *len)
{
	size_t n = strlen(s);
	if (n >= 2 && s[0] == 'W' && s[1] == '/') {
		s += 2;
		n -= 2;
	}
	if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
		s++;
		n -= 2;
	}
	*len = n;
	return s;
}

int record_etag_equal(const char *x, const char *y)
{
	size_t la, lb;
	/* Servers differ in quoting; compare what is inside the quotes. */
	const char *a = etag_core(x ? x : "", &la), *b = etag_core(y ? y : "", &lb);
	return la == lb && !memcmp(a, b, la);
}

int record_matches_object(const struct record *r, uint64_t size, const char *etag, struct err *e)
{
	if (size != r->size)
		return err_set(e, ERR_INTEGRITY,
		               "%s: the object has %llu bytes but its checksum record says %llu",
		               r->name, (unsigned long long)size, (unsigned long long)r->size);
	if (!record_etag_equal(r->etag, etag))
		return err_set(e, ERR_PRECONDITION,
		               "%s: the object (ETag %s) is not the one its checksum record "
		               "describes (ETag %s); re-run labctl images sync",
		               r->name, etag ? etag : "(none)", r->etag);
	return 0;
}

uint32_t record_block_len(const struct record *r, size_t i)
{
	uint64_t off;
	if (i >= r->nblocks)
		return 0;
	off = (uint64_t)i * r->block_size;
	return r->size - off < r->block_size ? (uint32_t)(r->size - off) : r->block_size;
}

/* ---- zero blocks ---- */

#define ZERO_CACHE 8

static pthread_mutex_t zero_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uint32_t len;
	unsigned char hash[32];
} zero_cache[ZERO_CACHE];
static unsigned zero_next;

void record_zero_hash(uint32_t len, unsigned char out[32])
{
	static const unsigned char zeros[65536];
	EVP_MD_CTX *ctx;
	unsigned int n = 32;

	pthread_mutex_lock(&zero_lock);
	for (unsigned i = 0; i < ZERO_CACHE; i++) {
		if (zero_cache[i].len == len && len) {
			memcpy(out, zero_cache[i].hash, 32);
			pthread_mutex_unlock(&zero_lock);
			return;
		}
	}
	pthread_mutex_unlock(&zero_lock);

	ctx = EVP_MD_CTX_new();
	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		/* Out of memory: a hash no block has, so nothing looks zero. */
		memset(out, 0xff, 32);
		EVP_MD_CTX_free(ctx);
		return;
	}
	for (uint32_t left = len; left;) {
		uint32_t k = left < sizeof(zeros) ? left : (uint32_t)sizeof(zeros);
		EVP_DigestUpdate(ctx, zeros, k);
		left -= k;
	}
	EVP_DigestFinal_ex(ctx, out, &n);
	EVP_MD_CTX_free(ctx);

	pthread_mutex_lock(&zero_lock);
	zero_cache[zero_next].len = len;
	memcpy(zero_cache[zero_next].hash, out, 32);
	zero_next = (zero_next + 1) % ZERO_CACHE;
	pthread_mutex_unlock(&zero_lock);
}

int record_block_is_zero(const struct record *r, size_t i)
{
	unsigned char z[32];
	uint32_t len = record_block_len(r, i);
	if (!len)
		return 0;
	record_zero_hash(len, z);
	return !memcmp(z, r->hashes[i], 32);
}

/* ---- block map ---- */

struct blockmap {
	enum hash_alg alg;
	uint32_t block_size;
	EVP_MD *md_whole, *md_block; /* fetched once: no implicit fetch per block */
	EVP_MD_CTX *whole, *block;
	uint64_t size;
	uint32_t fill; /* bytes of the current block hashed so far */
	size_t nblocks, cap;
	unsigned char (*hashes)[32];
	int failed, finished;
};

struct blockmap *blockmap_new(enum hash_alg checksum_alg, uint32_t block_size)
{
	struct blockmap *b;
	if (!block_size_ok(block_size))
		return NULL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->alg = checksum_alg;
	b->block_size = block_size;
	b->md_whole = EVP_MD_fetch(NULL, checksum_alg == HASH_SHA512 ? "SHA512" : "SHA256", NULL);
	b->md_block = EVP_MD_fetch(NULL, "SHA256", NULL);
	b->whole = EVP_MD_CTX_new();
	b->block = EVP_MD_CTX_new();
	if (!b->md_whole || !b->md_block || !b->whole || !b->block ||
	    !EVP_DigestInit_ex2(b->whole, b->md_whole, NULL) ||
	    !EVP_DigestInit_ex2(b->block, b->md_block, NULL)) {
		blockmap_free(b);
		return NULL;
	}
	return b;
}

static int end_block(struct blockmap *b, struct err *e)
{
	unsigned int n = 32;
	if (b->nblocks == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 256;
		void *p = realloc(b->hashes, cap * sizeof(*b->hashes));
		if (!p)
			return err_set(e, ERR_IO, "block map: out of memory");
		b->hashes = p;
		b->cap = cap;
	}
	if (!EVP_DigestFinal_ex(b->block, b->hashes[b->nblocks], &n) ||
	    !EVP_DigestInit_ex2(b->block, NULL, NULL))
		return err_set(e, ERR_IO, "block map: SHA-256 failed");
	b->nblocks++;
	b->fill = 0;
	return 0;
}

int blockmap_update(struct blockmap *b, const void *data, size_t n, struct err *e)
{
	const unsigned char *p = data;
	if (b->failed || b->finished)
		return err_set(e, ERR_IO, "block map: used after %s",
		               b->failed ? "an error" : "blockmap_finish");
	if (n && !EVP_DigestUpdate(b->whole, p, n))
		goto fail;
	b->size += n;
	while (n) {
		size_t k = b->block_size - b->fill;
		if (k > n)
			k = n;
		if (!EVP_DigestUpdate(b->block, p, k))
			goto fail;
		b->fill += (uint32_t)k;
		p += k;
		n -= k;
		if (b->fill == b->block_size && end_block(b, e)) {
			b->failed = 1;
			return -1;
		}
	}
	return 0;
fail:
	b->failed = 1;
	return err_set(e, ERR_IO, "block map: hashing failed");
}

int blockmap_finish(struct blockmap *b, struct record *r, struct err *e)
{
	unsigned char d[HASH_MAX_LEN];
	char hex[HASH_MAX_HEX];
	unsigned int n = 0;

	if (b->failed || b->finished)
		return err_set(e, ERR_IO, "block map: finished twice or after an error");
	if (b->fill && end_block(b, e))
		goto fail;
	if (!EVP_DigestFinal_ex(b->whole, d, &n)) {
		err_set(e, ERR_IO, "block map: hashing failed");
		goto fail;
	}
	hex_encode(d, n, hex);
	snprintf(r->checksum, sizeof(r->checksum), "%s:%s", hash_alg_name(b->alg), hex);
	r->size = b->size;
	r->block_size = b->block_size;
	r->nblocks = b->nblocks;
	free(r->hashes);
	r->hashes = b->hashes;
	b->hashes = NULL;
	b->nblocks = b->cap = 0;
	b->finished = 1;
	return 0;
fail:
	b->failed = 1;
	return -1;
}

void blockmap_free(struct blockmap *b)
{
	if (!b)
		return;
	EVP_MD_CTX_free(b->whole);
	EVP_MD_CTX_free(b->block);
	EVP_MD_free(b->md_whole);
	EVP_MD_free(b->md_block);
	free(b->hashes);
	free(b);
}

/* ---- key names ---- */

static char *concat3(const char *a, const char *b, const char *c)
{
	size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
	char *s = malloc(la + lb + lc + 1);
	if (!s)
		return NULL;
	memcpy(s, a, la);
	memcpy(s + la, b, lb);
	memcpy(s + la + lb, c, lc + 1);
	return s;
}

char *record_image_key(const char *destination)
{
	return concat3("images/", destination, "");
}

char *record_meta_key(const char *destination)
{
	return concat3("metadata/", destination, ".json");
}

char *record_version_key(const char *hex)
{
	return concat3(RECORD_VERSIONS_PREFIX, hex, "");
}

char *record_version_meta_key(const char *hex)
{
	return concat3(RECORD_VERSION_META_PREFIX, hex, ".json");
}
