/* Unit tests for store/cache.c: hits are recorded in memory and written
 * with the next transaction, and eviction still goes by last use. */
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache.h"
#include "store/cache/cache_internal.h"
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BS 65536u /* block size */

static void put(struct cache *c, uint64_t i)
{
	static unsigned char p[BS];
	unsigned char key[32];
	block_make(i, p, BS, key);
	cache_put(c, key, p, BS);
}

/* Read block i as imgfs does (checked against its key, in two pieces: the
 * first read checks the row whole, the second is a 4 KiB piece).  1 hit,
 * 0 miss, -1 wrong bytes or error. */
static int get(struct cache *c, uint64_t i)
{
	static unsigned char want[BS], got[BS];
	unsigned char key[32];
	struct err e = {0};
	int rc;
	block_make(i, want, BS, key);
	rc = cache_get_range(c, key, BS, 4096, got, 4096, CACHE_CHECK, &e);
	if (rc == 1) {
		rc = memcmp(got, want + 4096, 4096) ? -1 : 1;
	} else if (rc == CACHE_UNCHECKED) {
		rc = cache_get_range(c, key, BS, 0, got, BS, CACHE_CHECK, &e);
		if (rc == 1 && memcmp(got, want, BS))
			rc = -1;
	}
	if (rc < 0)
		fprintf(stderr, "cache_get_range: %s\n", e.msg);
	return rc;
}

/* The atime the database holds for block i (another connection: what
 * another process or the next mount sees); -1 when there is no row. */
static long long db_atime(const char *dir, uint64_t i)
{
	static unsigned char p[BS];
	unsigned char key[32];
	char path[600];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	long long v = -1;
	block_make(i, p, BS, key);
	snprintf(path, sizeof(path), "%s/cache.db", dir);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT atime FROM idx WHERE key = ?1", -1, &st, NULL) ==
	            SQLITE_OK) {
		sqlite3_busy_timeout(db, 5000);
		sqlite3_bind_blob(st, 1, key, 32, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			v = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* Fill a cache of 8 blocks with blocks 0..7 (0 the oldest). */
static struct cache *filled(const char *dir)
{
	struct cache *c = open_cache(dir, 8 * BS);
	if (!c)
		return NULL;
	for (uint64_t i = 0; i < 8; i++)
		put(c, i);
	cache_flush(c);
	return c;
}

/* Hits commit nothing by themselves; the next insert batch takes them
 * along, and its evictions spare the blocks that were read. */
static void test_piggyback(void)
{
	const char *dir = scratch_dir("piggyback");
	struct cache *c = filled(dir);
	struct cache_stats st;
	uint64_t commits;
	long long before;

	CHECK(c != NULL);
	if (!c)
		return;
	cache_test_set_touch_interval(c, 3600);
	commits = cache_test_commits(c);
	before = db_atime(dir, 0);
	CHECK(before >= 0 && before < db_atime(dir, 1));
	/* many hits on two old blocks (the old code committed at 4096) */
	for (int k = 0; k < 3000; k++) {
		CHECK(get(c, 0) == 1);
		CHECK(get(c, 2) == 1);
	}
	usleep(100 * 1000); /* a writer that commits hits on its own would have */
	CHECK(cache_test_commits(c) == commits);
	CHECK(db_atime(dir, 0) == before);
	/* four new blocks: the four least recently used go, not 0 and 2 */
	for (uint64_t i = 8; i < 12; i++)
		put(c, i);
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.evictions == 4);
	CHECK(st.bytes == 8 * BS);
	CHECK(db_atime(dir, 0) > db_atime(dir, 7));
	const uint64_t gone[] = {1, 3, 4, 5}, kept[] = {0, 2, 6, 7, 8, 9, 10, 11};
	for (int k = 0; k < 4; k++)
		CHECK(db_atime(dir, gone[k]) == -1);
	for (int k = 0; k < 8; k++)
		CHECK(get(c, kept[k]) == 1);
	cache_close(c);
}

/* Hits recorded when the cache closes are written then: the next mount
 * evicts by them. */
static void test_close(void)
{
	const char *dir = scratch_dir("close");
	struct cache *c = filled(dir);
	CHECK(c != NULL);
	if (!c)
		return;
	cache_test_set_touch_interval(c, 3600);
	CHECK(get(c, 1) == 1);
	CHECK(get(c, 0) == 1);
	cache_close(c);
	CHECK(db_atime(dir, 0) > db_atime(dir, 1));
	CHECK(db_atime(dir, 1) > db_atime(dir, 7));
	c = open_cache(dir, 8 * BS);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 8; i < 11; i++)
		put(c, i);
	cache_flush(c);
	CHECK(get(c, 0) == 1);
	CHECK(get(c, 1) == 1);
	CHECK(get(c, 2) == 0);
	CHECK(get(c, 3) == 0);
	CHECK(get(c, 4) == 0);
	CHECK(get(c, 5) == 1);
	cache_close(c);
}

/* With no transaction to ride on, recorded hits are committed on their own
 * after the interval (injected: 0.05 s instead of 60). */
static void test_interval(void)
{
	const char *dir = scratch_dir("interval");
	struct cache *c = filled(dir);
	uint64_t commits;
	double until;
	long long before;
	CHECK(c != NULL);
	if (!c)
		return;
	cache_test_set_touch_interval(c, 0.05);
	commits = cache_test_commits(c);
	before = db_atime(dir, 3);
	CHECK(get(c, 3) == 1);
	until = time_mono() + 20; /* generous: the machine may be loaded */
	while (cache_test_commits(c) == commits && time_mono() < until)
		usleep(10 * 1000);
	CHECK(cache_test_commits(c) == commits + 1);
	CHECK(db_atime(dir, 3) > before);
	CHECK(db_atime(dir, 3) > db_atime(dir, 7));
	cache_close(c);
}

/* cache_flush() writes the recorded hits too. */
static void test_flush(void)
{
	const char *dir = scratch_dir("flush");
	struct cache *c = filled(dir);
	CHECK(c != NULL);
	if (!c)
		return;
	cache_test_set_touch_interval(c, 3600);
	CHECK(get(c, 4) == 1);
	cache_flush(c);
	CHECK(db_atime(dir, 4) > db_atime(dir, 7));
	cache_close(c);
}

int main(void)
{
	log_init("test_cache_touch", LOG_LVL_WARN);
	if (!scratch_make("cache-touch")) {
		perror("mkdtemp");
		return 1;
	}
	test_piggyback();
	test_close();
	test_interval();
	test_flush();
	scratch_remove();
	return check_report("cache_touch");
}
