/* The checksum record (metadata/<destination>.json, DESIGN.md) and the block
 * map that is computed while an image streams through. */
#ifndef IMGSTORE_STORE_RECORD_H
#define IMGSTORE_STORE_RECORD_H

#include "common/err.h"
#include "common/hash.h"
#include "store/s3/s3.h"

#include <stddef.h>
#include <stdint.h>

/* Block sizes are powers of two in [MIN, MAX].  labctl writes 1 MiB; the
 * range leaves room for other writers of the format, but a record must not
 * steer the reader: a read holds a whole block in memory and hashes it, so
 * 64 MiB blocks made every 4 KiB read cost 64 MiB of memory and a 64 MiB
 * hash (2 GiB with 32 FUSE threads).  4 MiB stays far below the reader's
 * memory budget; 64 KiB keeps the record's hash list near 0.1% of the image
 * (4 KiB blocks: 1.6%, and a cache row per 4 KiB). */
#define RECORD_DEFAULT_BLOCK_SIZE (1024u * 1024u)
#define RECORD_MIN_BLOCK_SIZE     (64u * 1024u)
#define RECORD_MAX_BLOCK_SIZE     (4u * 1024u * 1024u)
#define RECORD_CHECKSUM_MAX       (7 + HASH_MAX_HEX) /* "sha512:" + hex + NUL */

struct record {
	char *name;
	char checksum[RECORD_CHECKSUM_MAX]; /* "sha256:<hex>" of the stored bytes */
	uint64_t size;
	char uploaded_at[32];   /* RFC 3339 UTC */
	char *source_url;       /* NULL when unknown (e.g. a local upload) */
	char etag[S3_ETAG_MAX]; /* of images/<destination> when written, quotes included */
	uint32_t block_size;
	size_t nblocks;
	unsigned char (*hashes)[32]; /* SHA-256 of each block; the last may be short */
	/* a previous version's record (metadata/versions/<hex>.json) only: the
	 * image it was, and when it was replaced; NULL / "" otherwise */
	char *destination;
	char replaced_at[32];
	/* "manifest" (labctl images sync) or "upload" (labctl images upload); ""
	 * in records written before the field existed: see record_origin() */
	char origin[16];
	/* The checksum the manifest (or upload --checksum) asked for when it is
	 * not a sha256 one ("sha512:<hex>", verified); "" otherwise */
	char manifest_checksum[RECORD_CHECKSUM_MAX];
};

#define RECORD_ORIGIN_MANIFEST "manifest"
#define RECORD_ORIGIN_UPLOAD   "upload"

/* Where the image came from: r->origin, or for a record without one the
 * rule for records of older labctl: a source.url with http:// or https://
 * came from a manifest (only sync writes source), anything else (no source:
 * what upload wrote) from an upload. */
const char *record_origin(const struct record *r);
/* The record holds checksum `want` (either case), as its checksum or as its
 * manifestChecksum: what sync compares to decide that an image is current. */
int record_has_checksum(const struct record *r, const char *want);

/* Parse and validate the JSON (types, hex lengths, nblocks == ceil(size/bs)). */
int record_parse(const char *json, size_t len, struct record *out, struct err *e);
/* Serialize to a malloc'd JSON text; NULL and e set on failure. */
char *record_to_json(const struct record *r, struct err *e);
void record_free(struct record *r);
/* The same ETag, whatever the quoting (W/ and the quotes are ignored). */
int record_etag_equal(const char *a, const char *b);
/* Does the record describe this object? (size and etag match) */
int record_matches_object(const struct record *r, uint64_t size, const char *etag, struct err *e);
/* Length of block i (the last one may be short); 0 when i >= nblocks. */
uint32_t record_block_len(const struct record *r, size_t i);
/* The checks of record_parse() on a record built in memory (record_to_json
 * runs them too, so an invalid record is never written). */
int record_validate(const struct record *r, struct err *e);
/* SHA-256 of `len` zero bytes (computed once per length, thread-safe). */
void record_zero_hash(uint32_t len, unsigned char out[32]);
/* 1 when block i is all zeros according to its hash (sparse regions of raw
 * and qcow2 images): the reader can serve it without fetching or caching. */
int record_block_is_zero(const struct record *r, size_t i);

/* Streaming: feeds the whole-object checksum (alg) and the per-block SHA-256
 * map (block_size) in one pass. */
struct blockmap;
struct blockmap *blockmap_new(enum hash_alg checksum_alg, uint32_t block_size);
int blockmap_update(struct blockmap *b, const void *data, size_t n, struct err *e);
/* blockmap_new: NULL when out of memory or block_size is not a power of two
 * in [RECORD_MIN_BLOCK_SIZE, RECORD_MAX_BLOCK_SIZE].
 * blockmap_finish: fill r->checksum, r->size, r->block_size, r->nblocks,
 * r->hashes (the old r->hashes is freed; other fields are left alone).  The
 * blockmap is spent afterwards: only blockmap_free() remains. */
int blockmap_finish(struct blockmap *b, struct record *r, struct err *e);
void blockmap_free(struct blockmap *b);

/* The key names of an image: "images/<dest>" and "metadata/<dest>.json" (malloc'd). */
char *record_image_key(const char *destination);
char *record_meta_key(const char *destination);
/* A previous version's: "versions/<sha256-hex>" and
 * "metadata/versions/<sha256-hex>.json" (malloc'd). */
#define RECORD_VERSIONS_PREFIX     "versions/"
#define RECORD_VERSION_META_PREFIX "metadata/versions/"
char *record_version_key(const char *hex);
char *record_version_meta_key(const char *hex);

#endif
