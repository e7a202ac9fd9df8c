/* Block cache pins (imgfs --pin): pinned keys are never evicted, a cache full
 * of pins drops new blocks instead of growing, and a schema 1 database (before
 * pins) is upgraded in place with its blocks. */
#include "common/hash.h"
#include "common/log.h"
#include "store/cache/cache.h"
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024u * 1024u)

static void block(unsigned i, unsigned char *buf, size_t n, unsigned char key[CACHE_KEY_LEN])
{
	for (size_t k = 0; k < n; k++)
		buf[k] = (unsigned char)(i * 131 + k * 7 + (k >> 12));
	hash_sha256(buf, n, key);
}

static unsigned char *g_buf;

static void put(struct cache *c, unsigned i, unsigned char key[CACHE_KEY_LEN])
{
	block(i, g_buf, MIB, key);
	cache_put(c, key, g_buf, MIB);
	cache_flush(c);
}

static void test_pinned_never_evicted(void)
{
	const char *dir = scratch_dir("evict");
	unsigned char keys[12][CACHE_KEY_LEN];
	struct cache_stats st;
	struct err e = {0};
	struct cache *c;
	c = open_cache(dir, 6 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	/* 0 and 1 are pinned before they exist, 2 after; then a flood */
	for (unsigned i = 0; i < 3; i++)
		block(i, g_buf, MIB, keys[i]);
	CHECK(cache_pins_set(c, "a b", (const unsigned char(*)[CACHE_KEY_LEN])keys, 2, &e) == 0);
	for (unsigned i = 0; i < 3; i++)
		put(c, i, keys[i]);
	for (unsigned i = 3; i < 12; i++)
		put(c, i, keys[i]);
	CHECK(cache_has(c, keys[0]) == 1);
	CHECK(cache_has(c, keys[1]) == 1);
	CHECK(cache_has(c, keys[2]) == 0); /* the oldest unpinned */
	CHECK(cache_has(c, keys[11]) == 1);
	cache_get_stats(c, &st);
	CHECK(st.evictions > 0);
	CHECK(st.bytes <= 6 * MIB);

	/* another owner's pins do not replace these */
	CHECK(cache_pins_set(c, "c d", (const unsigned char(*)[CACHE_KEY_LEN])keys + 11, 1, &e) ==
	      0);
	for (unsigned i = 3; i < 9; i++)
		put(c, 100 + i, keys[i]);
	CHECK(cache_has(c, keys[0]) == 1 && cache_has(c, keys[1]) == 1);
	CHECK(cache_has(c, keys[11]) == 1);

	/* unpinned: evicted like anything else */
	CHECK(cache_pins_set(c, "a b", NULL, 0, &e) == 0);
	for (unsigned i = 200; i < 210; i++)
		put(c, i, keys[3]);
	CHECK(cache_has(c, keys[0]) == 0 && cache_has(c, keys[1]) == 0);
	CHECK(cache_has(c, keys[11]) == 1);
	cache_close(c);

	/* the pins are in the file: a reopened cache keeps them */
	c = open_cache(dir, 6 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (unsigned i = 300; i < 310; i++)
		put(c, i, keys[3]);
	CHECK(cache_has(c, keys[11]) == 1);
	cache_close(c);
}

static void test_full_of_pins_drops(void)
{
	const char *dir = scratch_dir("full");
	unsigned char keys[8][CACHE_KEY_LEN], other[CACHE_KEY_LEN];
	struct cache_stats st;
	struct err e = {0};
	struct cache *c;
	c = open_cache(dir, 4 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (unsigned i = 0; i < 8; i++)
		block(i, g_buf, MIB, keys[i]);
	CHECK(cache_pins_set(c, "a b", (const unsigned char(*)[CACHE_KEY_LEN])keys, 8, &e) == 0);
	for (unsigned i = 0; i < 8; i++)
		put(c, i, keys[i]);
	put(c, 50, other);
	cache_get_stats(c, &st);
	CHECK(st.bytes <= 4 * MIB);
	CHECK(st.dropped > 0);
	CHECK(cache_has(c, keys[0]) == 1); /* the first ones stay */
	CHECK(cache_has(c, other) == 0);
	cache_close(c);
}

static void test_schema_1_upgraded(void)
{
	const char *dir = scratch_dir("v1");
	char path[700];
	unsigned char key[CACHE_KEY_LEN];
	struct err e = {0};
	struct cache *c;
	sqlite3 *db = NULL;
	snprintf(path, sizeof(path), "%s/cache.db", dir);
	c = open_cache(dir, 16 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	put(c, 7, key);
	cache_close(c);
	/* what a schema 1 cache looks like: no pins table, user_version 1 */
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "DROP TABLE pins; PRAGMA user_version=1;", NULL, NULL, NULL) ==
	      SQLITE_OK);
	sqlite3_close(db);

	c = open_cache(dir, 16 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(cache_has(c, key) == 1); /* kept, not moved aside */
	CHECK(cache_pins_set(c, "a b", (const unsigned char(*)[CACHE_KEY_LEN])key, 1, &e) == 0);
	cache_close(c);
	CHECK(access(dir, F_OK) == 0);
	db = NULL;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	{
		sqlite3_stmt *st = NULL;
		CHECK(sqlite3_prepare_v2(db,
		                         "SELECT (SELECT count(*) FROM pins), user_version "
		                         "FROM pragma_user_version",
		                         -1, &st, NULL) == SQLITE_OK);
		CHECK(sqlite3_step(st) == SQLITE_ROW);
		CHECK(sqlite3_column_int(st, 0) == 1);
		CHECK(sqlite3_column_int(st, 1) == 3); /* the schema of today */
		sqlite3_finalize(st);
	}
	sqlite3_close(db);
}

int main(void)
{
	int rc;
	log_init("test_cache_pins", LOG_LVL_WARN);
	if (!scratch_make("cache-pins") || !(g_buf = malloc(MIB))) {
		perror("setup");
		return 1;
	}
	test_pinned_never_evicted();
	test_full_of_pins_drops();
	test_schema_1_upgraded();
	free(g_buf);
	rc = check_report("cache_pins");
	scratch_remove();
	return rc;
}
