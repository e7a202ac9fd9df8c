/* Unit tests for the block cache's slot file (store/cache/slots.c and its
 * bookkeeping in cache.c): blocks of exactly 1 MiB live in blocks.dat,
 * written around the page cache; shorter ones stay rows of cache.db. */
#include "common/hash.h"
#include "store/cache/cache.h"
#include "store/cache/cache_internal.h"
#include "store/cache/slots.h"
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KIB 1024u
#define MIB (1024u * 1024u)

static unsigned char g_buf[MIB], g_got[MIB];

static void put(struct cache *c, uint64_t i, size_t n, unsigned char key[CACHE_KEY_LEN])
{
	block_make(i, g_buf, n, key);
	cache_put(c, key, g_buf, n);
}

/* 1 hit with exactly block i's bytes, 0 miss, -1 other bytes or error. */
static int check(struct cache *c, uint64_t i, size_t n)
{
	unsigned char key[CACHE_KEY_LEN];
	struct err e = {0};
	int rc;
	block_make(i, g_buf, n, key);
	rc = cache_get_range(c, key, n, 0, g_got, n, CACHE_CHECK, &e);
	if (rc == 1 && memcmp(g_got, g_buf, n))
		rc = -1;
	if (rc < 0)
		fprintf(stderr, "block %llu: rc %d %s\n", (unsigned long long)i, rc, e.msg);
	return rc;
}

/* One integer from a query on dir/cache.db; -1 on error. */
static long long db_int(const char *dir, const char *sql)
{
	char path[600];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	long long v = -1;
	snprintf(path, sizeof(path), "%s/" CACHE_DB_NAME, dir);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* Runs sql on dir/cache.db behind the cache's back; an SQLite code. */
static int db_exec(const char *dir, const char *sql)
{
	char path[600];
	sqlite3 *db = NULL;
	int rc;
	snprintf(path, sizeof(path), "%s/" CACHE_DB_NAME, dir);
	rc = sqlite3_open(path, &db);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(db, 5000);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	sqlite3_close(db);
	return rc;
}

/* 1 MiB blocks go to slots, others to rows; both read back exact, also
 * after a reopen, with an exact byte count. */
static void test_where_blocks_go(void)
{
	const char *dir = scratch_dir("where");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st;
	unsigned char key[CACHE_KEY_LEN];
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 8; i++)
		put(c, i, MIB, key);
	put(c, 8, 64 * KIB, key);
	put(c, 9, MIB - 5000, key);
	cache_flush(c);
	for (uint64_t i = 0; i < 8; i++)
		CHECK(check(c, i, MIB) == 1);
	CHECK(check(c, 8, 64 * KIB) == 1);
	CHECK(check(c, 9, MIB - 5000) == 1);
	cache_close(c);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) == 8 * MIB);
	CHECK(db_int(dir, "SELECT count(*) FROM idx WHERE slot IS NOT NULL") == 8);
	CHECK(db_int(dir, "SELECT count(*) FROM blocks") == 2);
	CHECK(db_int(dir, "SELECT nslots FROM state") == 8);
	CHECK(db_int(dir, "PRAGMA user_version") == 3);

	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 8; i++)
		CHECK(check(c, i, MIB) == 1);
	CHECK(check(c, 9, MIB - 5000) == 1);
	/* a piece of a slot: first the whole block (its check), then pieces */
	block_make(3, g_buf, MIB, key);
	{
		struct err e = {0};
		CHECK(cache_get_range(c, key, MIB, 4096, g_got, 8192, CACHE_CHECK, &e) == 1);
		CHECK(memcmp(g_got, g_buf + 4096, 8192) == 0);
	}
	/* a whole block into a page-aligned buffer, as imgfs reads */
	{
		struct err e = {0};
		unsigned char *al = aligned_alloc(4096, MIB);
		CHECK(al != NULL);
		if (al) {
			block_make(5, g_buf, MIB, key);
			memset(al, 0xee, MIB);
			CHECK(cache_get_range(c, key, MIB, 0, al, MIB, CACHE_CHECK, &e) == 1);
			CHECK(memcmp(al, g_buf, MIB) == 0);
			free(al);
		}
	}
	cache_get_stats(c, &st);
	CHECK(st.bytes == 8 * MIB + 64 * KIB + MIB - 5000);
	CHECK(st.verify_failures == 0);
	cache_close(c);
}

/* A byte altered in blocks.dat: a piece is not served before the whole
 * block is checked, and the whole block is dropped, not served. */
static void test_altered_slot(void)
{
	const char *dir = scratch_dir("altered");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st;
	struct err e = {0};
	unsigned char key[CACHE_KEY_LEN];
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 20; i < 24; i++)
		put(c, i, MIB, key);
	cache_close(c);
	block_make(22, g_buf, MIB, key);
	CHECK(alter_row(dir, key, 777777) == 0);

	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(cache_get_range(c, key, MIB, 777216, g_got, 4096, CACHE_CHECK, &e) ==
	      CACHE_UNCHECKED);
	CHECK(check(c, 22, MIB) == 0);
	for (size_t k = 0; k < MIB; k++)
		if (g_got[k]) {
			CHECK(!"the buffer of a dropped block is zeroed");
			break;
		}
	CHECK(check(c, 21, MIB) == 1);
	/* the same into a page-aligned buffer, as imgfs reads */
	{
		unsigned char k23[CACHE_KEY_LEN], *al = aligned_alloc(4096, MIB);
		block_make(23, g_buf, MIB, k23);
		CHECK(alter_row(dir, k23, 5) == 0);
		CHECK(al != NULL);
		if (al) {
			CHECK(cache_get_range(c, k23, MIB, 0, al, MIB, CACHE_CHECK, &e) == 0);
			free(al);
		}
	}
	cache_flush(c);
	CHECK(cache_has(c, key) == 0); /* dropped */
	cache_get_stats(c, &st);
	CHECK(st.verify_failures == 2);
	CHECK(st.bytes == 2 * MIB);
	/* the freed slot is reused, with the right bytes */
	put(c, 22, MIB, key);
	cache_flush(c);
	CHECK(check(c, 22, MIB) == 1);
	cache_close(c);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) <= 4 * MIB);
}

/* A reader inside a read transaction has looked up block A's slot; the
 * writer then evicts A and stores B.  Until the writer commits, A's slot
 * must still hold A: B goes to another slot. */
static void test_slot_not_reused_under_a_reader(void)
{
	const char *dir = scratch_dir("reader");
	const uint64_t limit = 8 * MIB;
	struct cache *c = open_cache(dir, limit);
	unsigned char key[CACHE_KEY_LEN], keya[CACHE_KEY_LEN];
	struct cache_stats st;
	char path[600];
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	long long slot = -1;
	uint64_t n = 0;
	int fd;
	CHECK(c != NULL);
	if (!c)
		return;
	/* fill it until it evicts: the oldest block is then at the LRU end */
	for (uint64_t i = 100; i < 140; i++) {
		put(c, i, MIB, key);
		cache_flush(c);
		cache_get_stats(c, &st);
		n = i;
		if (st.evictions)
			break;
	}
	CHECK(st.evictions > 0);
	/* the oldest block still cached */
	uint64_t a = 0;
	for (uint64_t i = 100; i <= n; i++)
		if (check(c, i, MIB) == 1) {
			a = i;
			break;
		}
	CHECK(a != 0);
	block_make(a, g_buf, MIB, keya); /* its key */
	/* other reads make a the least recently used one again */
	cache_test_set_touch_interval(c, 0.01);
	for (uint64_t i = a + 1; i <= n; i++)
		check(c, i, MIB);
	cache_flush(c);

	snprintf(path, sizeof(path), "%s/" CACHE_DB_NAME, dir);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, "SELECT slot FROM idx WHERE key = ?1", -1, &q, NULL) ==
	      SQLITE_OK);
	sqlite3_bind_blob(q, 1, keya, CACHE_KEY_LEN, SQLITE_STATIC);
	CHECK(sqlite3_step(q) == SQLITE_ROW);
	slot = sqlite3_column_int64(q, 0); /* the read transaction stays open */
	CHECK(slot >= 0);

	put(c, 500, MIB, key); /* evicts a, then waits for our lock to commit */
	usleep(300 * 1000);
	snprintf(path, sizeof(path), "%s/" CACHE_BLOCKS_NAME, dir);
	fd = open(path, O_RDONLY);
	CHECK(fd >= 0);
	CHECK(pread(fd, g_got, MIB, (off_t)slot * MIB) == (ssize_t)MIB);
	block_make(a, g_buf, MIB, keya);
	CHECK(memcmp(g_got, g_buf, MIB) == 0); /* still a's bytes */

	close(fd);
	sqlite3_finalize(q);
	CHECK(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	cache_flush(c);
	CHECK(cache_has(c, keya) == 0);
	CHECK(check(c, 500, MIB) == 1);
	cache_close(c);
}

/* Reopened with a quarter of the limit: the slot file gives the room back
 * (the blocks that stay move down into the slots evictions freed), and
 * every block that stays reads back exact. */
static void test_lower_limit_shrinks(void)
{
	const char *dir = scratch_dir("lower");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st;
	unsigned char key[CACHE_KEY_LEN];
	int present = 0;
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 48; i++) {
		put(c, 1000 + i, MIB, key);
		if (i % 4 == 3)
			cache_flush(c);
	}
	cache_close(c);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) == 48 * MIB);

	c = open_cache(dir, 16 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	cache_close(c); /* the writer finishes its transactions first */
	printf("  limit 64 -> 16 MiB: blocks.dat %.0f MiB, cache.db %.1f MiB, %lld slots free\n",
	       file_size(dir, CACHE_BLOCKS_NAME) / (double)MIB,
	       file_size(dir, CACHE_DB_NAME) / (double)MIB,
	       db_int(dir, "SELECT count(*) FROM slots_free"));
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) + file_size(dir, CACHE_DB_NAME) <=
	      16 * MIB + 8 * MIB);

	c = open_cache(dir, 16 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 48; i++) {
		int rc = check(c, 1000 + i, MIB);
		CHECK(rc >= 0);
		present += rc == 1;
	}
	cache_get_stats(c, &st);
	CHECK(st.bytes == (uint64_t)present * MIB);
	CHECK(present >= 8);
	/* the most recent ones stayed */
	CHECK(check(c, 1047, MIB) == 1);
	CHECK(st.verify_failures == 0);
	cache_close(c);
}

/* A full disk while the slot file would grow: blocks are dropped, reads go
 * on, and caching resumes when room comes back. */
static void test_slots_disk_full(void)
{
	const char *dir = scratch_dir("full");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st, st2;
	unsigned char key[CACHE_KEY_LEN];
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 4; i++)
		put(c, 300 + i, MIB, key);
	cache_flush(c);
	cache_test_set_full_backoff(c, 0.3);
	cache_test_set_max_pages(c, 1);
	for (uint64_t i = 0; i < 4; i++)
		put(c, 400 + i, MIB, key);
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.dropped > 0);
	CHECK(st.inserts == 4);
	for (uint64_t i = 0; i < 4; i++)
		CHECK(check(c, 300 + i, MIB) == 1);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) == 4 * MIB);
	cache_test_set_max_pages(c, 0);
	usleep(400 * 1000);
	put(c, 410, MIB, key);
	cache_flush(c);
	CHECK(check(c, 410, MIB) == 1);
	cache_get_stats(c, &st2);
	CHECK(st2.inserts == st.inserts + 1);
	cache_close(c);
}

/* kill -9 while a small cache stores, evicts and reuses slots: after each
 * reopen, every block still cached reads back exact and the byte count is
 * right. */
static void test_slots_crash(void)
{
	const char *dir = scratch_dir("crash");
	volatile uint64_t *progress =
	        mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned seed = (unsigned)time(NULL);
	uint64_t first = 0;
	CHECK(progress != MAP_FAILED);
	for (int round = 0; round < 4; round++) {
		int status, present = 0, wrong = 0;
		progress[0] = progress[1] = 0;
		pid_t pid = fork();
		if (pid == 0) {
			struct cache *cc = open_cache(dir, 12 * MIB);
			unsigned char key[CACHE_KEY_LEN];
			if (!cc)
				_exit(3);
			progress[1] = 1;
			for (uint64_t i = first;; i++) {
				progress[0] = i + 1;
				put(cc, i, MIB, key);
				if (i % 8 == 0)
					cache_flush(cc);
			}
		}
		for (int w = 0; w < 5000 && !progress[1]; w++)
			usleep(1000);
		usleep(50000 + rand_r(&seed) % 300000);
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		uint64_t reached = progress[0];
		struct cache *c = open_cache(dir, 12 * MIB);
		struct cache_stats st;
		CHECK(c != NULL);
		if (!c)
			break;
		for (uint64_t i = 0; i < reached; i++) {
			int rc = check(c, i, MIB);
			present += rc == 1;
			wrong += rc < 0;
		}
		cache_get_stats(c, &st);
		CHECK(wrong == 0);
		CHECK(st.verify_failures == 0);
		CHECK(st.bytes == (uint64_t)present * MIB);
		cache_close(c);
		printf("  slots, crash round %d: child reached block %llu, %d blocks intact\n",
		       round, (unsigned long long)reached, present);
		first = reached;
	}
	munmap((void *)progress, 4096);
}

/* A schema 2 cache (blocks only in rows) keeps its blocks; new 1 MiB
 * blocks go to slots. */
static void test_schema_2_upgraded(void)
{
	const char *dir = scratch_dir("v2");
	unsigned char key[CACHE_KEY_LEN];
	struct cache *c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	put(c, 600, 64 * KIB, key);
	put(c, 601, MIB - 1, key);
	cache_close(c);
	/* what schema 2 looked like */
	CHECK(db_exec(dir, "DROP INDEX idx_slot; DROP TABLE slots_free;"
	                   "ALTER TABLE idx DROP COLUMN slot; ALTER TABLE state DROP COLUMN nslots;"
	                   "PRAGMA user_version=2;") == SQLITE_OK);

	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(check(c, 600, 64 * KIB) == 1);
	CHECK(check(c, 601, MIB - 1) == 1);
	put(c, 602, MIB, key);
	cache_flush(c);
	CHECK(check(c, 602, MIB) == 1);
	cache_close(c);
	CHECK(db_int(dir, "PRAGMA user_version") == 3);
	CHECK(db_int(dir, "SELECT count(*) FROM idx WHERE slot IS NOT NULL") == 1);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) == MIB);
}

/* test_large_pages's blocks: their number and length */
static const struct {
	uint64_t i;
	size_t n;
} g_pages_blocks[] = {{700, MIB}, {701, 64 * KIB}, {702, MIB - 1}, {703, MIB - 2}, {704, MIB - 3}};

/* The first n blocks of g_pages_blocks read back exact: the count of those
 * that do. */
static size_t check_pages_blocks(struct cache *c, size_t n)
{
	size_t good = 0;
	for (size_t k = 0; k < n; k++)
		good += check(c, g_pages_blocks[k].i, g_pages_blocks[k].n) == 1;
	return good;
}

/* A cache made with 64 KiB pages (before the slot file) gets 4 KiB pages
 * at open when its database fits in the journal's room, and keeps its
 * pages when it does not; its blocks read back exact either way. */
static void test_large_pages(void)
{
	const char *dir = scratch_dir("pages");
	unsigned char key[CACHE_KEY_LEN];
	struct cache_stats st;
	uint64_t bytes;
	struct cache *c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(db_int(dir, "PRAGMA page_size") == 4096);
	for (size_t k = 0; k < 3; k++)
		put(c, g_pages_blocks[k].i, g_pages_blocks[k].n, key);
	cache_flush(c);
	cache_get_stats(c, &st);
	bytes = st.bytes;
	cache_close(c);
	CHECK(db_exec(dir, "PRAGMA page_size=65536; VACUUM;") == SQLITE_OK);
	CHECK(db_int(dir, "PRAGMA page_size") == 65536);

	c = open_cache(dir, 64 * MIB); /* a journal of 8 MiB: rewritten */
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(db_int(dir, "PRAGMA page_size") == 4096);
	CHECK(check_pages_blocks(c, 3) == 3);
	cache_get_stats(c, &st);
	CHECK(st.bytes == bytes);
	for (size_t k = 3; k < 5; k++)
		put(c, g_pages_blocks[k].i, g_pages_blocks[k].n, key);
	cache_close(c);
	CHECK(db_int(dir, "PRAGMA user_version") == 3);
	CHECK(db_int(dir, "PRAGMA application_id") == 0x696d6763);

	/* 4 MiB of blobs in 64 KiB pages, a journal of 1 MiB: kept */
	CHECK(db_exec(dir, "PRAGMA page_size=65536; VACUUM;") == SQLITE_OK);
	c = open_cache(dir, 8 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(db_int(dir, "PRAGMA page_size") == 65536);
	CHECK(check_pages_blocks(c, 5) == 5);
	put(c, 705, 100 * KIB, key);
	cache_flush(c);
	CHECK(check(c, 705, 100 * KIB) == 1);
	cache_close(c);
	CHECK(file_size(dir, CACHE_DB_NAME) + file_size(dir, CACHE_BLOCKS_NAME) <= 16 * MIB);
}

/* A damaged cache.db is moved aside with its slot file gone: a fresh
 * cache never reads the old slots. */
static void test_fresh_cache_drops_old_slots(void)
{
	const char *dir = scratch_dir("fresh");
	char path[600];
	unsigned char key[CACHE_KEY_LEN];
	struct cache *c = open_cache(dir, 64 * MIB);
	FILE *f;
	CHECK(c != NULL);
	if (!c)
		return;
	put(c, 700, MIB, key);
	cache_close(c);
	snprintf(path, sizeof(path), "%s/" CACHE_DB_NAME, dir);
	f = fopen(path, "r+");
	CHECK(f != NULL);
	if (f) {
		fputs("not a database at all", f);
		fclose(f);
	}
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(check(c, 700, MIB) == 0);
	put(c, 701, MIB, key);
	cache_flush(c);
	CHECK(check(c, 701, MIB) == 1);
	cache_close(c);
	CHECK(file_size(dir, CACHE_BLOCKS_NAME) == MIB);
}

/* cache.db altered so that two blocks name one slot, a free slot is in
 * use and nslots is short: the rows concerned go at open, and a new block
 * never overwrites a block that stays. */
static void test_tampered_bookkeeping(void)
{
	const char *dir = scratch_dir("tampered");
	unsigned char key[CACHE_KEY_LEN];
	struct cache_stats st;
	struct cache *c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 6; i++)
		put(c, 800 + i, MIB, key);
	cache_close(c);
	/* slot 0 named by two rows, slot 2 both free and in use, and nslots
	 * short of slots 3 to 5 */
	CHECK(db_exec(dir, "UPDATE idx SET slot = 0 WHERE slot = 1;"
	                   "INSERT INTO slots_free VALUES(2, 0);"
	                   "UPDATE state SET nslots = 3;") == SQLITE_OK);

	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 6; i++)
		put(c, 900 + i, MIB, key);
	cache_flush(c);
	/* blocks 800 and 801 (slot 0 twice) are gone; the rest read exact */
	CHECK(check(c, 800, MIB) == 0);
	CHECK(check(c, 801, MIB) == 0);
	for (uint64_t i = 2; i < 6; i++)
		CHECK(check(c, 800 + i, MIB) == 1);
	for (uint64_t i = 0; i < 6; i++)
		CHECK(check(c, 900 + i, MIB) == 1);
	cache_get_stats(c, &st);
	CHECK(st.bytes == 10 * MIB);
	CHECK(st.verify_failures == 0);
	cache_close(c);
	CHECK(db_int(dir, "SELECT count(*) FROM slots_free JOIN idx USING (slot)") == 0);
}

int main(void)
{
	if (!scratch_make("cache-slots"))
		return 1;
	test_where_blocks_go();
	test_altered_slot();
	test_slot_not_reused_under_a_reader();
	test_lower_limit_shrinks();
	test_slots_disk_full();
	test_slots_crash();
	test_schema_2_upgraded();
	test_large_pages();
	test_fresh_cache_drops_old_slots();
	test_tampered_bookkeeping();
	scratch_remove();
	return check_report("cache_slots");
}
