/* What the block cache's unit tests share (test_cache, test_cache_touch,
 * test_cache_pins, test_reader): a scratch directory per test binary, caches
 * opened in it, one deterministic family of blocks, and a stored row damaged
 * behind the cache's back. */
#ifndef IMGSTORE_TESTS_CACHE_FIXTURE_H
#define IMGSTORE_TESTS_CACHE_FIXTURE_H

#include "store/cache/cache.h"

#include <stddef.h>
#include <stdint.h>

/* Creates /tmp/imgstore-test-NAME-XXXXXX, the directory scratch_dir() names
 * are in; its path, or NULL with errno set. */
const char *scratch_make(const char *name);
/* NAME inside the scratch directory, removed first if it exists (cache_open
 * creates it).  The path lives in one of 8 buffers used in turn. */
const char *scratch_dir(const char *name);
/* Removes the scratch directory and everything in it. */
void scratch_remove(void);
void rm_rf(const char *path);

/* A cache on dir holding at most limit bytes of blocks; NULL (said on
 * stderr) when it does not open. */
struct cache *open_cache(const char *dir, uint64_t limit);

/* The n bytes of block i (xorshift seeded from i). */
void block_fill(uint64_t i, unsigned char *p, size_t n);
/* The same, with its content address (SHA-256) in key. */
void block_make(uint64_t i, unsigned char *p, size_t n, unsigned char key[CACHE_KEY_LEN]);

/* The size of NAME in dir; 0 when it does not exist. */
uint64_t file_size(const char *dir, const char *name);

/* Flips byte `at` of the block stored under key in dir (a row of cache.db,
 * through SQLite, or its slot in blocks.dat), as a damaged disk or a local
 * user would.  0 done. */
int alter_row(const char *dir, const unsigned char key[CACHE_KEY_LEN], int at);

#endif
