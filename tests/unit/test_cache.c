/* Unit tests for store/cache.c: the bounded SQLite block cache. */
#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache.h"
#include "store/cache/cache_internal.h"
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
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

/* Block `i` of a deterministic family: its length and bytes. */
static size_t block_len(uint64_t i, size_t base)
{
	/* mostly full blocks, some short tails */
	return i % 7 == 3 ? 1 + (size_t)(i * 2654435761u % base) : base;
}

static size_t put_block(struct cache *c, uint64_t i, size_t base, unsigned char key[32])
{
	size_t n = block_len(i, base);
	unsigned char *p = malloc(n);
	block_make(i, p, n, key);
	cache_put(c, key, p, n);
	free(p);
	return n;
}

/* 1 hit with the right bytes, 0 miss, -1 wrong bytes or error. */
static int check_block(struct cache *c, uint64_t i, size_t base)
{
	size_t n = block_len(i, base);
	unsigned char *want = malloc(n), *got = malloc(n), key[32], k2[32];
	struct err e = {0};
	int rc;
	block_make(i, want, n, key);
	rc = cache_get(c, key, got, n, &e);
	if (rc == 1) {
		hash_sha256(got, n, k2);
		if (memcmp(got, want, n) || memcmp(k2, key, 32))
			rc = -1;
	} else if (rc < 0) {
		fprintf(stderr, "cache_get: %s\n", e.msg);
	}
	free(want);
	free(got);
	return rc;
}

/* Everything in the directory (the contract: --cache-size + 8 MiB). */
static uint64_t dir_bytes(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	uint64_t n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n += file_size(dir, de->d_name);
	closedir(d);
	return n;
}

static int count_prefix(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)))
		n += !strncmp(de->d_name, prefix, strlen(prefix));
	closedir(d);
	return n;
}

static void test_round_trip(void)
{
	const char *dir = scratch_dir("basic");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st;
	struct stat sb;
	unsigned char key[32], other[32] = {1}, buf[256 * KIB];
	struct err e = {0};
	uint64_t total = 0;

	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 0777) == 0700);
	for (uint64_t i = 0; i < 10; i++)
		total += put_block(c, i, 256 * KIB, key);
	cache_flush(c);
	for (uint64_t i = 0; i < 10; i++)
		CHECK(check_block(c, i, 256 * KIB) == 1);
	CHECK(cache_get(c, other, buf, 100, &e) == 0);
	CHECK(cache_has(c, other) == 0);
	put_block(c, 0, 256 * KIB, key); /* a duplicate: stored once */
	cache_flush(c);
	CHECK(cache_has(c, key) == 1);
	cache_get_stats(c, &st);
	CHECK(st.hits == 10 && st.misses == 1);
	CHECK(st.inserts == 10 && st.evictions == 0 && st.dropped == 0);
	CHECK(st.bytes == total);
	CHECK(st.limit_bytes == 64 * MIB);

	/* Pieces: exact bytes at the start, across page boundaries, at the end;
	 * out of range is a miss. */
	{
		static unsigned char whole[256 * KIB];
		size_t n = block_len(4, 256 * KIB);
		const size_t offs[] = {0, 4096, 65536 - 7, 200000, n - 4096, n - 1};
		unsigned char k3[32];
		block_make(4, whole, n, k3);
		for (size_t j = 0; j < sizeof(offs) / sizeof(offs[0]); j++) {
			size_t len = offs[j] + 4096 <= n ? 4096 : n - offs[j];
			memset(buf, 0xee, len);
			CHECK(cache_get_range(c, k3, n, offs[j], buf, len, 0, &e) == 1);
			CHECK(!memcmp(buf, whole + offs[j], len));
		}
		CHECK(cache_get_range(c, k3, n, n - 10, buf, 11, 0, &e) == 0);
		CHECK(cache_get_range(c, k3, n, n + 1, buf, 1, 0, &e) == 0);
		/* another length under the key: a miss, and the row stays (the
		 * caller may be the one that is wrong: a forged record) */
		CHECK(cache_get_range(c, k3, n - 1, 0, buf, 10, 0, &e) == 0);
		cache_flush(c);
		CHECK(cache_has(c, k3) == 1);
		CHECK(check_block(c, 4, 256 * KIB) == 1);
	}

	/* A length mismatch is a miss and the row stays. */
	CHECK(cache_get(c, key, buf, 1000, &e) == 0);
	cache_flush(c);
	CHECK(cache_has(c, key) == 1);
	CHECK(check_block(c, 0, 256 * KIB) == 1);
	/* A row of another length under a key is replaced when bytes of the
	 * other length come (they were checked against the key: the row cannot
	 * have been right). */
	{
		unsigned char kx[32];
		size_t nx = block_len(11, 256 * KIB);
		block_make(11, buf, nx, kx);
		cache_put(c, kx, buf, 1000);
		cache_flush(c);
		CHECK(check_block(c, 11, 256 * KIB) == 0);
		put_block(c, 11, 256 * KIB, kx);
		cache_flush(c);
		CHECK(check_block(c, 11, 256 * KIB) == 1);
		total += nx;
	}
	cache_get_stats(c, &st);
	CHECK(st.bytes == total);
	/* too large for the limit / empty: dropped, not stored */
	cache_put(c, other, buf, 0);
	cache_flush(c);
	CHECK(cache_has(c, other) == 0);
	cache_close(c);

	/* Reopen: everything is still there, with the same byte count. */
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 12; i++)
		CHECK(check_block(c, i, 256 * KIB) == (i == 10 ? 0 : 1));
	cache_get_stats(c, &st);
	CHECK(st.bytes == total);
	CHECK(st.hits == 11 && st.misses == 1);
	cache_close(c);
	/* No WAL; the rollback journal is empty between transactions. */
	CHECK(file_size(dir, "cache.db-wal") == 0);
	CHECK(file_size(dir, "cache.db-journal") == 0);

	/* The database really is 4 KiB pages, a rollback journal truncated
	 * after each commit, incremental auto-vacuum. */
	char path[600];
	sqlite3 *db;
	sqlite3_stmt *stq;
	snprintf(path, sizeof(path), "%s/cache.db", dir);
	CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	const char *q[] = {"PRAGMA page_size", "PRAGMA journal_mode", "PRAGMA auto_vacuum"};
	const char *want[] = {"4096", "delete", "2"};
	for (int k = 0; k < 3; k++) {
		CHECK(sqlite3_prepare_v2(db, q[k], -1, &stq, NULL) == SQLITE_OK);
		CHECK(sqlite3_step(stq) == SQLITE_ROW);
		CHECK_STR((const char *)sqlite3_column_text(stq, 0), want[k]);
		sqlite3_finalize(stq);
	}
	sqlite3_close(db);
}

static void test_meta(void)
{
	const char *dir = scratch_dir("meta");
	struct cache *c = open_cache(dir, 8 * MIB);
	struct err e = {0};
	char *data;
	size_t len;
	static char big[3 * MIB];

	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(cache_meta_get(c, "listing", &data, &len, &e) == 0 && data == NULL);
	CHECK(cache_meta_put(c, "listing", "[1,2,3]", 7, &e) == 0);
	CHECK(cache_meta_get(c, "listing", &data, &len, &e) == 1 && len == 7);
	CHECK_STR(data, "[1,2,3]");
	free(data);
	CHECK(cache_meta_put(c, "listing", "[]", 2, &e) == 0); /* replace */
	CHECK(cache_meta_put(c, "empty", "", 0, &e) == 0);
	memset(big, 'x', sizeof(big));
	big[5] = '\0'; /* binary-safe */
	CHECK(cache_meta_put(c, "record/a.qcow2", big, sizeof(big), &e) == 0);
	cache_close(c);

	c = open_cache(dir, 8 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(cache_meta_get(c, "listing", &data, &len, &e) == 1 && len == 2);
	CHECK_STR(data, "[]");
	free(data);
	CHECK(cache_meta_get(c, "empty", &data, &len, &e) == 1 && len == 0 && data &&
	      data[0] == '\0');
	free(data);
	CHECK(cache_meta_get(c, "record/a.qcow2", &data, &len, &e) == 1 && len == sizeof(big) &&
	      memcmp(data, big, len) == 0 && data[len] == '\0');
	free(data);
	cache_close(c);
}

static void test_lru(void)
{
	const char *dir = scratch_dir("lru");
	const size_t bs = 64 * KIB;
	struct cache *c = open_cache(dir, 8 * bs); /* room for 8 blocks */
	struct cache_stats st;
	unsigned char key[32], buf[64 * KIB];
	struct err e = {0};

	CHECK(c != NULL);
	if (!c)
		return;
	/* full-size blocks only: i % 7 != 3 */
	const uint64_t a[8] = {0, 1, 2, 4, 5, 6, 7, 8}, b[4] = {9, 11, 12, 13};
	for (int i = 0; i < 8; i++)
		put_block(c, a[i], bs, key);
	cache_flush(c);
	/* read the two oldest: they become the most recent */
	CHECK(check_block(c, a[0], bs) == 1);
	CHECK(check_block(c, a[1], bs) == 1);
	for (int i = 0; i < 4; i++)
		put_block(c, b[i], bs, key);
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.bytes <= 8 * bs);
	CHECK(st.bytes == 8 * bs);
	CHECK(st.evictions == 4);
	CHECK(check_block(c, a[0], bs) == 1);
	CHECK(check_block(c, a[1], bs) == 1);
	for (int i = 2; i < 6; i++)
		CHECK(check_block(c, a[i], bs) == 0);
	for (int i = 6; i < 8; i++)
		CHECK(check_block(c, a[i], bs) == 1);
	for (int i = 0; i < 4; i++)
		CHECK(check_block(c, b[i], bs) == 1);
	/* a block larger than the whole limit is not cached */
	static unsigned char huge[9 * 64 * KIB];
	hash_sha256(huge, sizeof(huge), key);
	cache_put(c, key, huge, sizeof(huge));
	cache_flush(c);
	CHECK(cache_get(c, key, huge, sizeof(huge), &e) == 0);
	cache_get_stats(c, &st);
	CHECK(st.dropped == 1);
	(void)buf;
	cache_close(c);

	/* Reopen with a smaller limit: evicted down at once. */
	c = open_cache(dir, 3 * bs);
	CHECK(c != NULL);
	if (!c)
		return;
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.bytes <= 3 * bs);
	/* the most recently used survive */
	CHECK(check_block(c, b[3], bs) == 1);
	cache_close(c);
}

/* 64 MiB of distinct blocks (and `meta` bytes of listing) through a small
 * cache: everything in the directory stays within the limit + 8 MiB, also
 * while the writer works. */
static void test_file_bound(size_t bs, uint64_t limit, size_t meta)
{
	char name[64];
	snprintf(name, sizeof(name), "bound-%zu-%zu", bs, meta);
	const char *dir = scratch_dir(name);
	struct cache *c = open_cache(dir, limit);
	struct cache_stats st;
	struct err e = {0};
	unsigned char key[32];
	uint64_t maxsize = 0, n = 64 * MIB / bs, sz;

	CHECK(c != NULL);
	if (!c)
		return;
	if (meta) {
		char *m = malloc(meta);
		memset(m, 'm', meta);
		CHECK(cache_meta_put(c, "listing", m, meta, &e) == 0);
		free(m);
	}
	for (uint64_t i = 0; i < n; i++) {
		put_block(c, 1000000 + i, bs, key);
		if (i % 8 == 7) {
			if ((sz = dir_bytes(dir)) > maxsize)
				maxsize = sz;
			/* the writer drops what a full queue cannot hold;
			 * pace the producer so every block goes in */
			cache_flush(c);
		}
		if ((sz = dir_bytes(dir)) > maxsize)
			maxsize = sz;
	}
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.bytes <= limit);
	CHECK(st.dropped == 0);
	CHECK(st.inserts == n);
	CHECK(maxsize <= limit + 8 * MIB);
	if (meta) /* the listing takes its room from the blocks */
		CHECK(st.bytes <= limit - meta + MIB);
	printf("  file bound, %zu KiB blocks, limit %llu MiB, %zu KiB listing: %llu MiB inserted, "
	       "%llu evictions, %.1f MiB of blocks kept, directory at most %.1f MiB (db %.1f "
	       "MiB)\n",
	       bs / KIB, (unsigned long long)(limit / MIB), meta / KIB,
	       (unsigned long long)(n * bs / MIB), (unsigned long long)st.evictions,
	       st.bytes / (double)MIB, maxsize / (double)MIB,
	       file_size(dir, "cache.db") / (double)MIB);
	cache_close(c);
	CHECK(dir_bytes(dir) <= limit + 8 * MIB);
	/* Reopen with half the limit: incremental vacuum gives pages back. */
	c = open_cache(dir, limit / 2);
	CHECK(c != NULL);
	if (!c)
		return;
	cache_flush(c);
	cache_close(c);
	printf("  after reopening with limit %llu MiB: db %.1f MiB\n",
	       (unsigned long long)(limit / 2 / MIB), file_size(dir, "cache.db") / (double)MIB);
	CHECK(file_size(dir, "cache.db") <= limit / 2 + 2 * MIB);
}

/* Bytes this process has had written (its page-cache writes included);
 * 0 when the kernel does not say. */
static uint64_t written_bytes(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	char line[128];
	unsigned long long v = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "write_bytes: %llu", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Whole block i * 7 (i * 7 % 7 != 3) into c; every 4 blocks, a flush, the
 * directory's size noted in *maxsize. */
static size_t put_paced(struct cache *c, uint64_t i, unsigned char key[32], const char *dir,
                        uint64_t *maxsize)
{
	size_t n = put_block(c, i * 7, MIB, key);
	uint64_t sz;
	if (i % 4 == 3) {
		cache_flush(c);
		if ((sz = dir_bytes(dir)) > *maxsize)
			*maxsize = sz;
	}
	return n;
}

/* A full cache writes an inserted block about once: each batch takes pages
 * that an earlier transaction freed (evict_ahead), which SQLite does not
 * journal, instead of pages that its own evictions free, whose old content
 * it must journal first (then every block was written twice). */
static void test_full_cache_writes_once(void)
{
	const char *dir = scratch_dir("full");
	const uint64_t limit = 128 * MIB, more = 48;
	struct cache *c = open_cache(dir, limit);
	struct cache_stats st;
	unsigned char key[32];
	uint64_t i, g0, g1, w0, w1, growing = 0, inserted = 0, maxsize = 0;
	double full, grow;

	CHECK(c != NULL);
	if (!c)
		return;
	/* Fill it, then insert as much again: the same pattern of puts and
	 * flushes (a full queue drops) in both, so that the bytes written per
	 * byte inserted compare the two phases and nothing else (with small
	 * batches, each commit's index pages add about as much again). */
	for (i = 0; i < limit / MIB / 2; i++)
		put_paced(c, i, key, dir, &maxsize);
	g0 = written_bytes();
	for (uint64_t k = 0; k < more; k++, i++)
		growing += put_paced(c, i, key, dir, &maxsize);
	g1 = written_bytes();
	for (; i < limit / MIB + 8; i++)
		put_paced(c, i, key, dir, &maxsize);
	w0 = written_bytes();
	for (uint64_t k = 0; k < more; k++, i++)
		inserted += put_paced(c, i, key, dir, &maxsize);
	w1 = written_bytes();
	cache_get_stats(c, &st);
	CHECK(st.dropped == 0);
	CHECK(st.bytes <= limit);
	CHECK(st.bytes >= limit * 3 / 4); /* the room is still used */
	CHECK(st.evictions >= more);
	CHECK(maxsize <= limit + 8 * MIB);
	CHECK(check_block(c, (i - 1) * 7, MIB) == 1);
	CHECK(check_block(c, 0, MIB) == 0);
	grow = (double)(g1 - g0) / growing;
	full = (double)(w1 - w0) / inserted;
	printf("  full cache: bytes written per byte inserted %.2f while it grew, %.2f once full "
	       "(%llu MiB each); %.1f MiB of blocks kept, directory at most %.1f MiB\n",
	       grow, full, (unsigned long long)(inserted / MIB), st.bytes / (double)MIB,
	       maxsize / (double)MIB);
	if (g1 > g0)
		CHECK(full < grow + 0.5);
	else
		printf("  full cache: this file system counts no writes (tmpfs?): ratio not "
		       "checked\n");

	/* Pin every block it holds: evicting ahead must not take the block a
	 * transaction has just stored, the only row it could take. */
	unsigned char(*keys)[CACHE_KEY_LEN] = malloc(i * CACHE_KEY_LEN), *p = malloc(MIB);
	size_t npin = 0;
	struct err e = {0};
	CHECK(keys && p);
	if (!keys || !p) {
		free(keys);
		free(p);
		cache_close(c);
		return;
	}
	for (uint64_t k = 0; k < i; k++) {
		block_make(k * 7, p, MIB, keys[npin]);
		npin += cache_has(c, keys[npin]) == 1;
	}
	CHECK(cache_pins_set(c, "test", (const unsigned char(*)[CACHE_KEY_LEN])keys, npin, &e) ==
	      0);
	free(keys);
	free(p);
	for (int k = 0; k < 3; k++, i++) {
		put_block(c, i * 7, MIB, key);
		cache_flush(c);
		CHECK(check_block(c, i * 7, MIB) == 1);
	}
	cache_close(c);
	CHECK(dir_bytes(dir) <= limit + 8 * MIB);
}

static void test_corrupt(void)
{
	const char *dir = scratch_dir("corrupt");
	char path[600];
	struct cache *c;
	unsigned char key[32];
	FILE *f;

	/* garbage file */
	mkdir(dir, 0700);
	snprintf(path, sizeof(path), "%s/cache.db", dir);
	f = fopen(path, "w");
	for (int i = 0; i < 100000; i++)
		fputc("garbage!"[i % 8], f);
	fclose(f);
	c = open_cache(dir, 8 * MIB);
	CHECK(c != NULL);
	CHECK(count_prefix(dir, "cache.db.corrupt-") == 1);
	if (c) {
		put_block(c, 1, 4096, key);
		cache_flush(c);
		CHECK(check_block(c, 1, 4096) == 1);
		cache_close(c);
	}

	/* a valid SQLite database that is not ours */
	rm_rf(dir);
	mkdir(dir, 0700);
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);", 0, 0, 0) == 0);
	sqlite3_close(db);
	c = open_cache(dir, 8 * MIB);
	CHECK(c != NULL);
	CHECK(count_prefix(dir, "cache.db.corrupt-") == 1);
	cache_close(c);

	/* ours, but a page in the middle is destroyed: found on use, moved
	 * aside at the next open */
	rm_rf(dir);
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 40; i++)
		put_block(c, i, 64 * KIB, key);
	cache_flush(c);
	cache_close(c);
	int fd = open(path, O_WRONLY);
	static unsigned char junk[4096 * 4];
	memset(junk, 0xa5, sizeof(junk));
	/* pages 2..5 (of 4 KiB) hold the b-tree roots and the first rows */
	CHECK(pwrite(fd, junk, sizeof(junk), 4096) == (ssize_t)sizeof(junk));
	close(fd);
	c = open_cache(dir, 64 * MIB);
	if (c) {
		int bad = 0;
		for (uint64_t i = 0; i < 40; i++)
			bad += check_block(c, i, 64 * KIB) == -1;
		CHECK(bad == 0); /* never wrong bytes: a miss or an error */
		cache_close(c);
	}
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (c) {
		put_block(c, 77, 4096, key);
		cache_flush(c);
		CHECK(check_block(c, 77, 4096) == 1);
		cache_close(c);
	}
	CHECK(count_prefix(dir, "cache.db.corrupt-") >= 1);
}

/* CACHE_CHECK: a row altered on disk is never served; each row is hashed
 * once per open cache. */
static void test_check(void)
{
	const char *dir = scratch_dir("check");
	const size_t bs = 256 * KIB;
	const uint64_t B = 1404;
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st;
	unsigned char key[6][32], *want = malloc(bs), *buf = malloc(bs);
	struct err e = {0};

	CHECK(c != NULL);
	if (!c)
		return;
	/* blocks B..B+5 are full blocks (block_len) */
	for (uint64_t i = 0; i < 6; i++)
		put_block(c, B + i, bs, key[i]);
	cache_flush(c);
	/* written by this cache from checked bytes: pieces are served at once */
	block_fill(B, want, bs);
	CHECK(cache_get_range(c, key[0], bs, 4096, buf, 4096, CACHE_CHECK, &e) == 1);
	CHECK(!memcmp(buf, want + 4096, 4096));
	cache_close(c);

	/* altered while closed: block B+1 (read whole) and B+2 (pieces first) */
	CHECK(alter_row(dir, key[1], 5000) == 0);
	CHECK(alter_row(dir, key[2], 70000) == 0);
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	/* a fresh open has checked nothing: pieces ask for the whole block */
	CHECK(cache_get_range(c, key[0], bs, 4096, buf, 4096, CACHE_CHECK, &e) == CACHE_UNCHECKED);
	CHECK(cache_get_range(c, key[0], bs, 0, buf, bs, CACHE_CHECK, &e) == 1);
	CHECK(!memcmp(buf, want, bs));
	CHECK(cache_get_range(c, key[0], bs, 4096, buf, 4096, CACHE_CHECK, &e) == 1);
	CHECK(!memcmp(buf, want + 4096, 4096));
	/* the altered whole block: a miss, zeros in buf, counted, dropped */
	block_fill(B + 1, want, bs);
	memset(buf, 0xee, bs);
	CHECK(cache_get_range(c, key[1], bs, 0, buf, bs, CACHE_CHECK, &e) == 0);
	for (size_t k = 0; k < bs; k++)
		if (buf[k]) {
			CHECK(buf[k] == 0);
			break;
		}
	cache_get_stats(c, &st);
	CHECK(st.verify_failures == 1);
	/* the altered piece: asks for the whole block, which fails the same way */
	CHECK(cache_get_range(c, key[2], bs, 65536, buf, 8192, CACHE_CHECK, &e) == CACHE_UNCHECKED);
	CHECK(cache_get_range(c, key[2], bs, 0, buf, bs, CACHE_CHECK, &e) == 0);
	cache_flush(c);
	CHECK(cache_has(c, key[1]) == 0 && cache_has(c, key[2]) == 0);
	cache_get_stats(c, &st);
	CHECK(st.verify_failures == 2);
	/* without CACHE_CHECK (keys that are not content addresses) nothing is
	 * hashed: the caller's business */
	CHECK(cache_get_range(c, key[3], bs, 0, buf, 100, 0, &e) == 1);
	/* the right bytes come back: checked (written by us), served */
	put_block(c, B + 1, bs, key[1]);
	cache_flush(c);
	CHECK(cache_get_range(c, key[1], bs, 5000, buf, 10, CACHE_CHECK, &e) == 1);
	CHECK(!memcmp(buf, want + 5000, 10));
	cache_close(c);

	/* many rows: the set grows past its first size, and rows that go
	 * (eviction) leave it without breaking the others' probe chains */
	dir = scratch_dir("check-many");
	c = open_cache(dir, 2 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 3000; i++) {
		unsigned char k[32];
		put_block(c, 5000 + i, 1000, k);
		if (i % 64 == 63)
			cache_flush(c);
	}
	cache_flush(c);
	{
		int served = 0, wrong = 0;
		for (uint64_t i = 0; i < 3000; i++) {
			size_t n = block_len(5000 + i, 1000);
			unsigned char k[32], w[1000], g[1000];
			block_make(5000 + i, w, n, k);
			int rc = cache_get_range(c, k, n, n / 2, g, n - n / 2, CACHE_CHECK, &e);
			if (rc == 1) {
				served++;
				wrong += memcmp(g, w + n / 2, n - n / 2) != 0;
			} else {
				wrong += rc != 0; /* evicted, never unchecked: we wrote them all */
			}
		}
		CHECK(wrong == 0);
		CHECK(served > 1000);
	}
	cache_close(c);
	free(want);
	free(buf);
}

/* Concurrent readers and a writer. */
struct rd_arg {
	struct cache *c;
	int id;
	atomic_int *stop;
	int errors, hits, misses;
};

static void *reader(void *p)
{
	struct rd_arg *a = p;
	unsigned seed = (unsigned)a->id * 7919u + 1;
	while (!atomic_load(a->stop)) {
		uint64_t i = (uint64_t)(rand_r(&seed) % 400);
		int rc = check_block(a->c, i, 64 * KIB);
		if (rc < 0)
			a->errors++;
		else if (rc == 1)
			a->hits++;
		else
			a->misses++;
	}
	return NULL;
}

static void test_concurrent(void)
{
	const char *dir = scratch_dir("concurrent");
	struct cache *c = open_cache(dir, 16 * MIB); /* smaller than the set: evicts */
	pthread_t th[6];
	struct rd_arg args[6];
	atomic_int stop = 0;
	unsigned char key[32];
	struct cache_stats st;
	int errors = 0, hits = 0;

	CHECK(c != NULL);
	if (!c)
		return;
	for (int t = 0; t < 6; t++) {
		args[t] = (struct rd_arg){.c = c, .id = t, .stop = &stop};
		pthread_create(&th[t], NULL, reader, &args[t]);
	}
	double t0 = time_mono();
	for (int round = 0; round < 3; round++) {
		for (uint64_t i = 0; i < 400; i++) {
			put_block(c, i, 64 * KIB, key);
			if (i % 32 == 0)
				usleep(2000);
		}
		cache_flush(c);
	}
	atomic_store(&stop, 1);
	for (int t = 0; t < 6; t++) {
		pthread_join(th[t], NULL);
		errors += args[t].errors;
		hits += args[t].hits;
	}
	cache_get_stats(c, &st);
	printf("  concurrent: 6 readers, %d hits, %llu misses, %llu inserts, %llu evictions, "
	       "%llu dropped in %.1f s\n",
	       hits, (unsigned long long)st.misses, (unsigned long long)st.inserts,
	       (unsigned long long)st.evictions, (unsigned long long)st.dropped, time_mono() - t0);
	CHECK(errors == 0);
	CHECK(hits > 0);
	CHECK(st.bytes <= 16 * MIB);
	cache_close(c);
}

static void test_disk_full(void)
{
	const char *dir = scratch_dir("full");
	struct cache *c = open_cache(dir, 64 * MIB);
	struct cache_stats st, st2;
	unsigned char key[32];

	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 8; i++)
		put_block(c, 500 + i, 64 * KIB, key);
	cache_flush(c);
	cache_test_set_full_backoff(c, 0.3);
	cache_test_set_max_pages(c, 1); /* = the current size: no growth */
	for (uint64_t i = 0; i < 16; i++)
		put_block(c, 600 + i, 64 * KIB, key);
	cache_flush(c);
	cache_get_stats(c, &st);
	CHECK(st.dropped > 0);
	CHECK(st.inserts < 24);
	/* reads keep working */
	for (uint64_t i = 0; i < 8; i++)
		CHECK(check_block(c, 500 + i, 64 * KIB) == 1);
	/* while degraded, puts are dropped without trying */
	put_block(c, 700, 64 * KIB, key);
	cache_flush(c);
	cache_get_stats(c, &st2);
	CHECK(st2.dropped == st.dropped + 1);
	/* space comes back: after the back-off, caching resumes */
	cache_test_set_max_pages(c, 0);
	usleep(400 * 1000);
	put_block(c, 701, 64 * KIB, key);
	cache_flush(c);
	CHECK(check_block(c, 701, 64 * KIB) == 1);
	cache_get_stats(c, &st2);
	CHECK(st2.inserts == st.inserts + 1);
	cache_close(c);
}

static void test_key_unverified(void)
{
	unsigned char a[32], b[32], c2[32], d[32], z[32];
	cache_key_unverified("\"abc\"", 0, a);
	cache_key_unverified("\"abc\"", 0, b);
	cache_key_unverified("\"abc\"", 1, c2);
	cache_key_unverified("\"abd\"", 0, d);
	CHECK(memcmp(a, b, 32) == 0);
	CHECK(memcmp(a, c2, 32) != 0);
	CHECK(memcmp(a, d, 32) != 0);
	/* length-prefixed: no ambiguity between etag bytes and the index */
	cache_key_unverified("", 0, z);
	CHECK(memcmp(z, a, 32) != 0);
	/* not the SHA-256 of the etag itself */
	hash_sha256("\"abc\"", 5, b);
	CHECK(memcmp(a, b, 32) != 0);
}

/* ---- crash safety ---- */

/* The child inserts numbered blocks in a loop and publishes how far it got. */
static void crash_child(const char *dir, uint64_t first, volatile uint64_t *progress)
{
	struct cache *c = open_cache(dir, 24 * MIB);
	unsigned char key[32];
	if (!c)
		_exit(3);
	progress[1] = 1; /* opened */
	for (uint64_t i = first;; i++) {
		*progress = i + 1;
		put_block(c, i, 128 * KIB, key);
		/* mostly keep the writer busy (kills land inside transactions),
		 * sometimes checkpoint */
		if (i % 256 == 0)
			cache_flush(c);
		if (i % 50 == 0) {
			struct err e = {0};
			char name[32];
			snprintf(name, sizeof(name), "m%llu", (unsigned long long)(i % 10));
			cache_meta_put(c, name, name, strlen(name), &e);
		}
	}
}

static void verify_after_crash(const char *dir, uint64_t upto, int *present_out)
{
	struct cache *c = open_cache(dir, 24 * MIB);
	struct cache_stats st;
	uint64_t sum = 0;
	int present = 0, wrong = 0;
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < upto; i++) {
		int rc = check_block(c, i, 128 * KIB);
		if (rc == 1) {
			present++;
			sum += block_len(i, 128 * KIB);
		}
		wrong += rc < 0;
	}
	cache_get_stats(c, &st);
	CHECK(wrong == 0);
	/* the byte count survived the crash exactly */
	CHECK(st.bytes == sum);
	CHECK(st.bytes <= 24 * MIB);
	cache_close(c);
	*present_out = present;
}

static void test_crash(void)
{
	const char *dir = scratch_dir("crash");
	volatile uint64_t *progress =
	        mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t first = 0;
	unsigned seed = (unsigned)time(NULL);
	CHECK(progress != MAP_FAILED);
	for (int round = 0; round < 6; round++) {
		int status, present = 0;
		progress[0] = progress[1] = 0;
		pid_t pid = fork();
		if (pid == 0)
			crash_child(dir, first, progress);
		/* once it runs, kill it somewhere between 20 and 400 ms in */
		for (int w = 0; w < 5000 && !progress[1]; w++)
			usleep(1000);
		usleep(20000 + rand_r(&seed) % 380000);
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		uint64_t reached = progress[0];
		CHECK(reached > first);
		verify_after_crash(dir, reached, &present);
		printf("  crash round %d: child reached block %llu, %d blocks intact after "
		       "reopen\n",
		       round, (unsigned long long)reached, present);
		first = reached;
	}
	munmap((void *)progress, 4096);
}

/* A power cut in the middle of a commit leaves the database file with
 * pages of an unfinished transaction (and a torn last page, mode 1) and a
 * hot rollback journal.  Simulate it: commit set A, then set B, then start a
 * transaction that overwrites every block row with zeros, deletes the index
 * and appends a large row, with a page cache small enough that SQLite writes
 * those pages into cache.db before the commit; kill the process there.  On
 * the next open the journal is rolled back: A and B are intact and exact,
 * and the byte count matches. */
#define TORN_LIMIT (256 * MIB)

static void test_torn_commit(int mode)
{
	char name[32], db[600], journal[600];
	snprintf(name, sizeof(name), "torn-%d", mode);
	const char *dir = scratch_dir(name);
	int status, present = 0, wrong = 0;
	struct stat sb;
	pid_t pid;

	snprintf(db, sizeof(db), "%s/cache.db", dir);
	snprintf(journal, sizeof(journal), "%s/cache.db-journal", dir);
	pid = fork();
	if (pid == 0) {
		struct cache *c = open_cache(dir, TORN_LIMIT);
		unsigned char key[32];
		sqlite3 *raw = NULL;
		if (!c)
			_exit(3);
		for (uint64_t i = 0; i < 4; i++)
			put_block(c, i, 64 * KIB, key);
		cache_flush(c);
		for (uint64_t i = 100; i < 124; i++)
			put_block(c, i, 64 * KIB, key);
		cache_flush(c);
		if (sqlite3_open(db, &raw) != SQLITE_OK ||
		    sqlite3_exec(raw,
		                 "PRAGMA journal_mode=TRUNCATE; PRAGMA synchronous=FULL;"
		                 "PRAGMA cache_size=-256; BEGIN IMMEDIATE;"
		                 "UPDATE blocks SET data = zeroblob(length(data));"
		                 "DELETE FROM idx; UPDATE state SET bytes = 0;"
		                 "INSERT INTO blocks(data) VALUES(zeroblob(3000000));",
		                 NULL, NULL, NULL) != SQLITE_OK)
			_exit(5);
		raise(SIGKILL);
	}
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status));
	/* the unfinished transaction reached the file, and its journal is hot */
	CHECK(stat(journal, &sb) == 0 && sb.st_size > 65536);
	CHECK(stat(db, &sb) == 0 && sb.st_size > 3000000);
	if (mode == 1)
		CHECK(truncate(db, sb.st_size - 1000) == 0); /* a torn last page */
	struct cache *c = open_cache(dir, TORN_LIMIT);
	struct cache_stats st;
	uint64_t sum = 0;
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 124; i++) {
		int rc = check_block(c, i, 64 * KIB);
		if (rc == 1) {
			present++;
			sum += block_len(i, 64 * KIB);
		}
		wrong += rc < 0;
	}
	cache_get_stats(c, &st);
	CHECK(present == 28);
	CHECK(wrong == 0);
	CHECK(st.bytes == sum);
	printf("  power cut during a commit (%s): 28/28 committed blocks intact\n",
	       mode ? "torn last page" : "journal hot");
	cache_close(c);
}

/* A cache written in WAL mode (by an older imgfs) opens with its blocks,
 * and leaves WAL mode for the rollback journal: no -wal file afterwards. */
static void test_from_wal(void)
{
	const char *dir = scratch_dir("from-wal");
	char db[600];
	unsigned char key[32];
	sqlite3 *raw = NULL;
	sqlite3_stmt *st = NULL;
	struct cache *c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 4; i++)
		put_block(c, i, 64 * KIB, key);
	cache_close(c);
	snprintf(db, sizeof(db), "%s/cache.db", dir);
	/* what a WAL-mode imgfs killed before its checkpoint leaves: a row only
	 * in the WAL */
	pid_t pid = fork();
	if (pid == 0) {
		if (sqlite3_open(db, &raw) != SQLITE_OK ||
		    sqlite3_exec(raw,
		                 "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
		                 "INSERT INTO meta VALUES('x', 'in the wal');",
		                 NULL, NULL, NULL) != SQLITE_OK)
			_exit(3);
		raise(SIGKILL);
	}
	int status;
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status));
	CHECK(file_size(dir, "cache.db-wal") > 0);
	c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	for (uint64_t i = 0; i < 4; i++)
		CHECK(check_block(c, i, 64 * KIB) == 1);
	char *m = NULL;
	size_t n = 0;
	struct err e = {0};
	CHECK(cache_meta_get(c, "x", &m, &n, &e) == 1 && m && !strcmp(m, "in the wal"));
	free(m);
	cache_close(c);
	CHECK(file_size(dir, "cache.db-wal") == 0);
	CHECK(sqlite3_open(db, &raw) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
	CHECK(sqlite3_step(st) == SQLITE_ROW);
	CHECK_STR((const char *)sqlite3_column_text(st, 0), "delete");
	sqlite3_finalize(st);
	sqlite3_close(raw);
}

/* The journal is reopened without O_CREAT when it exists (journal_vfs.c);
 * one removed behind the cache's back between two commits (as a
 * connection in journal_mode=DELETE does after rolling back a hot journal)
 * is made again, and every block reads back exact. */
static void test_journal_reopened(void)
{
	const char *dir = scratch_dir("journal");
	unsigned char key[32];
	char path[600];
	struct cache *c = open_cache(dir, 64 * MIB);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(sqlite3_vfs_find("imgstore-cache") != NULL);
	for (uint64_t i = 0; i < 8; i++)
		put_block(c, i, 256 * KIB, key);
	cache_flush(c);
	snprintf(path, sizeof(path), "%s/cache.db-journal", dir);
	CHECK(access(path, F_OK) == 0);
	CHECK(unlink(path) == 0);
	for (uint64_t i = 8; i < 16; i++)
		put_block(c, i, 256 * KIB, key);
	cache_flush(c);
	CHECK(access(path, F_OK) == 0);
	for (uint64_t i = 16; i < 24; i++)
		put_block(c, i, 256 * KIB, key);
	cache_flush(c);
	for (uint64_t i = 0; i < 24; i++)
		CHECK(check_block(c, i, 256 * KIB) == 1);
	cache_close(c);
}

int main(void)
{
	log_init("test_cache", LOG_LVL_WARN);
	if (!scratch_make("cache")) {
		perror("mkdtemp");
		return 1;
	}
	test_key_unverified();
	test_round_trip();
	test_check();
	test_meta();
	test_lru();
	test_file_bound(1 * MIB, 8 * MIB, 0);
	test_file_bound(64 * KIB, 8 * MIB, 0);
	test_file_bound(1 * MIB, 8 * MIB, 3 * MIB);
	test_file_bound(1 * MIB, 48 * MIB, 0);
	test_full_cache_writes_once();
	test_corrupt();
	test_concurrent();
	test_disk_full();
	test_crash();
	test_torn_commit(0);
	test_torn_commit(1);
	test_from_wal();
	test_journal_reopened();
	scratch_remove();
	return check_report("cache");
}
