/* Test hooks of store/cache.c: not for production callers. */
#ifndef IMGSTORE_STORE_CACHE_INTERNAL_H
#define IMGSTORE_STORE_CACHE_INTERNAL_H

#include "store/cache/cache.h"

/* Simulate a full disk: cap the database at `pages` pages (SQLite's
 * max_page_count, applied by the writer before its next batch), so that
 * growing it fails with SQLITE_FULL.  0 lifts the cap. */
void cache_test_set_max_pages(struct cache *c, unsigned pages);
/* Seconds the writer waits after a full disk before it tries again
 * (default 30). */
void cache_test_set_full_backoff(struct cache *c, double seconds);
/* Seconds recorded hits wait for a transaction before the writer commits
 * them on their own (default TOUCH_INTERVAL_S, 60). */
void cache_test_set_touch_interval(struct cache *c, double seconds);
/* Transactions the writer has committed (batches of inserts, hits, deletes,
 * evictions; not the metadata writes). */
uint64_t cache_test_commits(struct cache *c);

/* File names inside the cache directory. */
#define CACHE_DB_NAME     "cache.db"
#define CACHE_BLOCKS_NAME "blocks.dat"       /* the slots (store/cache/slots.h) */
#define CACHE_CORRUPT_TAG "cache.db.corrupt" /* marker, and prefix of moved-aside files */

#endif
