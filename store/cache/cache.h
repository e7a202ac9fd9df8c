/* The bounded SQLite block cache (DESIGN.md "Cache keys"): cache.db holds
 * the index, the LRU order and blocks of odd sizes; blocks of 1 MiB sit in
 * slots of blocks.dat next to it (cache.c, slots.h).
 *
 * Verified blocks are stored under their SHA-256 (content address), so
 * identical blocks across images and versions are stored once.  Blocks of
 * unverified objects use a key the caller derives from (etag, block index)
 * with cache_key_unverified().  Inserts go through a writer thread with
 * batched transactions: cache_put() never waits on the disk, and a slow or
 * full disk only means fewer blocks get cached.  All calls are thread-safe.
 *
 * The file is not trusted either (DESIGN.md "The bucket is input, not
 * trust"): reads with CACHE_CHECK hand out a block only when its bytes hash
 * to its key (a content address), and a block that does not is dropped.
 * Each row is hashed once per open cache: when it is first read whole, or
 * when this process wrote it from bytes its caller had checked; later reads
 * of the same row (same key, same row id) are served as they are.  A row that
 * is replaced or evicted is checked again. */
#ifndef IMGSTORE_STORE_CACHE_H
#define IMGSTORE_STORE_CACHE_H

#include "common/err.h"

#include <stddef.h>
#include <stdint.h>

#define CACHE_KEY_LEN 32

struct cache;

struct cache_opts {
	const char *dir; /* created 0700 when missing */
	/* bound on block bytes kept (LRU eviction above it); everything in dir
	 * stays within limit_bytes + 8 MiB */
	uint64_t limit_bytes;
};

int cache_open(const struct cache_opts *o, struct cache **out, struct err *e);
/* Flushes pending inserts, closes. */
void cache_close(struct cache *c);

/* 1 hit (exactly len bytes copied into buf), 0 miss, -1 error.  No check:
 * for keys that are not content addresses (cache_key_unverified). */
int cache_get(struct cache *c, const unsigned char key[CACHE_KEY_LEN], void *buf, size_t len,
              struct err *e);

/* cache_get_range() flags */
#define CACHE_CHECK 1 /* key is the SHA-256 of the block: serve only bytes that hash to it */
/* cache_get_range() with CACHE_CHECK: the block is cached, but this cache
 * has not checked its row yet; read the whole block (off 0, n len) first. */
#define CACHE_UNCHECKED 2

/* Bytes [off, off + n) of the block stored under key, which must be len
 * bytes long; same returns as cache_get().  With CACHE_CHECK, a row not
 * checked yet is hashed when it is read whole (a mismatch: the row is
 * dropped, counted in verify_failures, buf zeroed, and 0 returned), and a
 * piece of it returns CACHE_UNCHECKED without copying. */
int cache_get_range(struct cache *c, const unsigned char key[CACHE_KEY_LEN], size_t len, size_t off,
                    void *buf, size_t n, unsigned flags, struct err *e);
/* 1 when the key is cached (no data read). */
int cache_has(struct cache *c, const unsigned char key[CACHE_KEY_LEN]);
/* Queue an insert; the data is copied.  Never blocks on I/O: drops the block
 * when the queue is full.  Caller has verified the bytes. */
void cache_put(struct cache *c, const unsigned char key[CACHE_KEY_LEN], const void *data,
               size_t len);
/* The same without the copy: the cache reads data until it calls
 * release(arg) (once, from its writer thread or cache_close(), holding none
 * of its locks).
 * 1 taken; 0 dropped (release is not called, the buffer stays the caller's). */
int cache_put_ref(struct cache *c, const unsigned char key[CACHE_KEY_LEN], const void *data,
                  size_t len, void (*release)(void *), void *arg);
/* Bytes queued for the writer: background fetchers wait while it is large,
 * so that their blocks are not dropped (cache_put never waits). */
uint64_t cache_backlog(struct cache *c);
/* Wait until every queued insert is on disk (tests, unmount). */
void cache_flush(struct cache *c);

/* Small named blobs (the listing, checksum records) so that a remount while
 * the bucket is unreachable still shows the tree.  Written synchronously. */
int cache_meta_put(struct cache *c, const char *name, const void *data, size_t len, struct err *e);
/* 1 found (*data malloc'd, NUL-terminated), 0 missing, -1 error. */
int cache_meta_get(struct cache *c, const char *name, char **data, size_t *len, struct err *e);

/* Pins: keys that eviction never removes (the rows may still be missing;
 * they are kept once they are inserted).  Replaces the set that `owner`
 * (one per bucket sharing the directory) recorded before, persistently, in
 * one transaction.  When the block bytes reach the limit and only pinned rows
 * are left, new blocks are not cached (counted in dropped). */
int cache_pins_set(struct cache *c, const char *owner, const unsigned char (*keys)[CACHE_KEY_LEN],
                   size_t n, struct err *e);

void cache_key_unverified(const char *etag, uint64_t block_index, unsigned char key[CACHE_KEY_LEN]);

struct cache_stats {
	uint64_t hits, misses;
	uint64_t bytes; /* block bytes stored */
	uint64_t limit_bytes;
	uint64_t inserts, evictions, dropped; /* dropped: queue full or disk error */
	uint64_t verify_failures;             /* rows whose bytes did not hash to their key */
};
void cache_get_stats(struct cache *c, struct cache_stats *out);

#endif
