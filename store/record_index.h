/* The record index: one object, index/records.json.gz, that holds a copy of
 * every checksum record (metadata/<dest>.json) with the record's ETag, so a
 * reader of a large bucket makes one GET instead of one per record.
 *
 * It is only a cache.  A reader takes an entry only when its ETag equals the
 * ETag of the record key in a fresh metadata/ listing, that ETag is an MD5
 * and the entry's bytes hash to it; everything else is fetched as without an
 * index.  A missing, stale, corrupt or foreign index therefore only costs
 * time: it can never change a record or hide one.  Nor can it cost more
 * memory than the listing allows (struct recindex_bound).
 *
 * Format (README.md, "The bucket"): gzip of the compact JSON
 *   {"version":1,"records":[{"key":"metadata/<dest>.json","etag":"\"...\"",
 *                            "json":"<the record's exact bytes>"}, ...]}
 * Unknown fields are ignored; entries that are malformed are skipped one by
 * one. */
#ifndef IMGSTORE_STORE_RECORD_INDEX_H
#define IMGSTORE_STORE_RECORD_INDEX_H

#include "common/err.h"
#include "store/s3/s3.h"

#include <stddef.h>
#include <stdint.h>

#define RECINDEX_KEY     "index/records.json.gz"
#define RECINDEX_VERSION 1
/* Readers consult the index only when more records than this are to be
 * fetched: for a few, the index GET would cost more than it saves. */
#define RECINDEX_MIN_USE 8
/* Parallel record GETs (the server, not the client, is the bottleneck). */
#define RECINDEX_THREADS 16
/* The largest checksum record a reader accepts, here and when it fetches
 * one.  labctl writes 1 MiB blocks, each hash 67 bytes ("<64 hex>",); 80
 * bytes a hash (a record pretty-printed, one hash a line) for 2^20 blocks,
 * a 1 TiB image, plus 1 MiB for the other fields. */
#define RECINDEX_MAX_RECORD ((80u << 20) + (1u << 20))

/* What a reader accepts of an index, from the fresh metadata/ listing: only
 * entries of listed records can be used, so the index may not inflate to more
 * text than recindex_encode writes for them (with room for entries a version
 * behind), nor hold more JSON values (a parser spends up to ~230 bytes on a
 * 3-byte "{}," : the count bounds its memory). */
struct recindex_bound {
	size_t records;  /* listed records (metadata/<dest>.json) */
	uint64_t json;   /* bytes of JSON text */
	uint64_t values; /* JSON values and member names */
};
void recindex_bound_of(const struct s3_object *listed, size_t n, struct recindex_bound *b);

struct recindex_entry {
	char *key; /* "metadata/<dest>.json" */
	char etag[S3_ETAG_MAX];
	char *json; /* the record's bytes, NUL-terminated */
	size_t len;
};

struct recindex {
	struct recindex_entry *v; /* sorted by key, unique once sorted */
	size_t n, cap;
};

/* ---- pure: building, encoding, decoding, lookup ---- */

/* Append a copy; ERR_INVALID when the bytes cannot be an index entry: a
 * control character other than tab, CR, LF (the record is not JSON text,
 * and its entry could take more than twice its size), an over-long ETag. */
int recindex_add(struct recindex *ix, const char *key, const char *etag, const char *json,
                 size_t len, struct err *e);
/* Sort by key and drop duplicate keys (lookups need it). */
void recindex_sort(struct recindex *ix);
/* gzip of the JSON form, malloc'd. */
int recindex_encode(const struct recindex *ix, char **out, size_t *len, struct err *e);
/* Inflate and parse (sorted on return), streaming: inflating stops, with
 * ERR_INVALID, as soon as the text or its values exceed *b.  ERR_INVALID for
 * anything that is not an index of a version we know; bad entries inside a
 * good index are skipped (and counted in *skipped when not NULL). */
int recindex_decode(const void *gz, size_t len, const struct recindex_bound *b,
                    struct recindex *out, size_t *skipped, struct err *e);
/* The entry for key, when it holds exactly the record whose ETag (from a
 * fresh listing) is etag; else NULL. */
const struct recindex_entry *recindex_lookup(const struct recindex *ix, const char *key,
                                             const char *etag);
void recindex_free(struct recindex *ix);

/* ---- with the bucket ---- */

/* GET and decode the index within the bounds of listed, the fresh listing
 * of metadata/ (any order; other keys are ignored), and keep only the
 * entries of listed records with the listed ETag and size.  ERR_NOTFOUND
 * when there is none. */
int recindex_load(struct s3 *s, const struct s3_object *listed, size_t n, struct recindex *out,
                  struct err *e);

/* Many small GETs in parallel (up to RECINDEX_THREADS connections opened from
 * cfg; s serves one of them), each of at most its listed size and
 * RECINDEX_MAX_RECORD.  A key that is gone (404) leaves json NULL; one that
 * is larger leaves json NULL and says so in problem (and in a warning); any
 * other failure fails the call. */
struct recindex_get {
	const char *key;        /* in */
	uint64_t size;          /* in: its size in the listing */
	char *json;             /* out: malloc'd, NUL-terminated, or NULL when not read */
	size_t len;             /* out */
	char etag[S3_ETAG_MAX]; /* out: the ETag of the bytes read */
	char problem[200];      /* out: why an existing record was not read, or "" */
};
int recindex_get_many(const struct s3_config *cfg, struct s3 *s, struct recindex_get *v, size_t n,
                      struct err *e);
void recindex_gets_free(struct recindex_get *v, size_t n);

/* Rebuild the index from a fresh metadata/ listing: entries of the current
 * index that still match are kept, the other records fetched, and the index
 * written when it changed.  Without an index object in the bucket, one is
 * made only when create is set (an unreadable one is always replaced). */
struct recindex_result {
	size_t records; /* in the new index */
	size_t reused;  /* taken from the old one */
	size_t fetched; /* GET */
	size_t bytes;   /* size of the index object */
	int written;    /* 0: the index was already up to date */
};
int recindex_rebuild(const struct s3_config *cfg, struct s3 *s, int create,
                     struct recindex_result *res, struct err *e);

#endif
