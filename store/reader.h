/* The verified reader: byte ranges of one image version, served from the
 * block cache or fetched from the bucket and checked against the checksum
 * record before a single byte is handed out (DESIGN.md "imgfs read").
 *
 *   reader_read(off, len) -> blocks -> zero block?        memset, no GET, no row
 *                                   -> in-memory buffer?  copy
 *                                   -> SQLite cache?      copy
 *                                   -> missing runs of blocks: one ranged GET
 *                                      each (If-Match: etag), SHA-256 of every
 *                                      block vs the record, cache_put, copy
 *
 * Front-end agnostic: imgfs (FUSE) uses it today, an NBD server could later.
 *
 * - A block that does not match its record is an error (ERR_INTEGRITY, EIO
 *   to the user) and a log line naming the image and the block; it is never
 *   served and never cached.
 * - Concurrent readers of one block share one request: blocks being fetched
 *   sit in a small table with a condition variable each, and that table also
 *   keeps recently fetched blocks in memory (bounded), so the next read does
 *   not wait for the cache writer (cache inserts are slower than the network).
 * - Sequential reads on a stream grow a readahead window (2 MiB, doubling up
 *   to 16 MiB by default) served by a pool of fetch threads, each with its
 *   own S3 connection; random reads do not trigger readahead.
 * - An uncached read against an unreachable bucket fails after the retry
 *   budget (ERR_NET); cached blocks keep being served.
 * - Unverified images (no record: imgfs --allow-unverified) use 1 MiB blocks
 *   keyed by cache_key_unverified(etag, index), without a hash check.
 *
 * All functions are thread-safe. */
#ifndef IMGSTORE_STORE_READER_H
#define IMGSTORE_STORE_READER_H

#include "common/err.h"
#include "store/cache/cache.h"
#include "store/record.h"
#include "store/s3/s3.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct reader_opts {
	const struct s3_config *s3; /* copied; retry_budget_s bounds an uncached read */
	struct cache *cache;        /* not owned; NULL: no persistent cache */
	unsigned fetch_threads;     /* readahead GETs in parallel; 0: default (4) */
	uint64_t mem_bytes;       /* block buffers, a hard bound; 0: default (24 MiB), min 8 MiB */
	uint64_t readahead_min;   /* first readahead window; 0: default (2 MiB) */
	uint64_t readahead_max;   /* largest window; 0: default (16 MiB) */
	uint64_t readahead_chunk; /* bytes per readahead GET; 0: default (8 MiB) */
};

struct reader;
struct reader_image;
struct reader_stream;

int reader_new(const struct reader_opts *o, struct reader **out, struct err *e);
/* Stops the fetch threads (queued readahead is dropped).  Every image must
 * have been released before. */
void reader_free(struct reader *r);

/* One version of one object: `key` (e.g. "images/a.qcow2"), its size and ETag
 * (quotes included) from the listing.  With a record (which must describe
 * this object: record_matches_object), every block is verified; the reader
 * copies what it needs, so the record may be freed afterwards.  rec NULL:
 * unverified.  Reference counted: reader_image_ref/unref. */
int reader_image_open(struct reader *r, const char *key, uint64_t size, const char *etag,
                      const struct record *rec, struct reader_image **out, struct err *e);
struct reader_image *reader_image_ref(struct reader_image *img);
void reader_image_unref(struct reader_image *img);
uint64_t reader_image_size(const struct reader_image *img);
int reader_image_verified(const struct reader_image *img);
/* Bytes of the image that can be served without the network (cached or
 * all-zero blocks).  One cache lookup per block. */
uint64_t reader_image_cached_bytes(struct reader_image *img);
/* SEEK_DATA (hole = 0) / SEEK_HOLE (hole = 1) from off, at block
 * granularity: only all-zero blocks of verified images are holes.  -1 with
 * ENXIO semantics when off >= size (or no data after off). */
int reader_image_seek(const struct reader_image *img, uint64_t off, int hole, uint64_t *out);

/* Access pattern state of one reader of an image (one open file handle):
 * decides whether reads are sequential and how far to read ahead. */
struct reader_stream *reader_stream_new(void);
void reader_stream_free(struct reader_stream *s);

/* Read [off, off + len) into buf; *got is len, clipped at the end of the image
 * (0 at or past it).  st may be NULL (no readahead).  Errors: ERR_INTEGRITY
 * (a block does not match the record), ERR_PRECONDITION (the object changed
 * since it was listed), ERR_NET / ERR_SERVER / ERR_AUTH (not fetched within
 * the retry budget), ERR_IO.  No partial data is returned on error. */
int reader_read(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                void *buf, size_t *got, struct err *e);

/* Background reads (imgfs pins): like reader_read without a stream, but not
 * counted as demand.  reader_demand() is the number of reader_read calls in
 * flight and, in *last_end, time_mono() when the last one returned: a
 * background reader starts its next GET only when both say the demand is
 * quiet, so a reader never queues behind it (see docs/design.md, "Pins"). */
int reader_prefetch(struct reader_image *img, uint64_t off, size_t len, void *buf, struct err *e);
unsigned reader_demand(struct reader *r, double *last_end);
/* The block map: block count, block size, and block i's cache key and
 * length; 1 when the block is all zeros (served without a cache row). */
size_t reader_image_nblocks(const struct reader_image *img);
uint32_t reader_image_block_size(const struct reader_image *img);
int reader_image_block(const struct reader_image *img, size_t i, unsigned char key[CACHE_KEY_LEN],
                       uint32_t *len);
/* The same without copying what the reader holds in memory: v->iov lists
 * the pieces of the range in order, pointing into the reader's verified
 * block buffers (kept for the caller), a shared all-zero area, or buf
 * (len bytes: what the SQLite cache filled in).  With buf NULL the reader
 * takes such a buffer itself when a piece needs one, from its idle block
 * buffers when it has some (a read served from memory needs none; one
 * served from SQLite reuses memory that is resident already), and gives it
 * back in reader_iov_release().  v->len is the length read
 * (*got above).  The pieces stay valid until reader_iov_release(v), which
 * the caller must call after a 0 return (it is a no-op after -1); hold them
 * no longer than it takes to hand them over, they count against the
 * reader's memory budget. */
struct reader_iov {
	struct iovec *iov;
	int count;
	size_t len;
	/* private */
	struct reader *r;
	struct bent **held;
	size_t nheld;
	unsigned char *own; /* the reply buffer the reader took (buf NULL) */
	uint32_t own_alloc;
};
int reader_read_iov(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                    void *buf, struct reader_iov *v, struct err *e);
void reader_iov_release(struct reader_iov *v);

struct reader_stats {
	uint64_t cache_hits;      /* blocks served from memory or the cache without a GET */
	uint64_t cache_misses;    /* blocks fetched from the bucket (on demand or readahead) */
	uint64_t mem_hits;        /* of cache_hits: from the in-memory buffer */
	uint64_t zero_blocks;     /* all-zero blocks served without GET or cache */
	uint64_t bytes_fetched;   /* block bytes received from the bucket */
	uint64_t verify_failures; /* blocks that did not match their record */
	uint64_t fetch_errors;    /* GETs that failed (network, 412, short) */
	uint64_t readahead_blocks;
	uint64_t coalesced; /* reads that waited for a block another reader fetched */
	uint64_t gets;      /* ranged GETs issued */
	uint64_t requests;  /* HTTP requests, retries included */
	uint64_t retries;
	uint64_t mem_bytes, mem_limit_bytes; /* block buffers held; the budget */
	uint64_t mem_peak_bytes;             /* never above mem_limit_bytes */
	int bucket_down;                     /* the last GET could not reach the bucket */
};
void reader_get_stats(struct reader *r, struct reader_stats *out);

#endif
