#include "tests/unit/cache_fixture.h"

#include "common/hash.h"
#include "store/cache/cache_internal.h"
#include "store/cache/slots.h"

#include <fcntl.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[64];

const char *scratch_make(const char *name)
{
	snprintf(root, sizeof(root), "/tmp/imgstore-test-%s-XXXXXX", name);
	return mkdtemp(root);
}

const char *scratch_dir(const char *name)
{
	static char buf[8][512];
	static int n;
	char *p = buf[n++ % 8];
	if (!root[0])
		abort(); /* scratch_make() first: never a path under / */
	snprintf(p, sizeof(buf[0]), "%s/%s", root, name);
	rm_rf(p);
	return p;
}

void scratch_remove(void)
{
	rm_rf(root);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

void rm_rf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

struct cache *open_cache(const char *dir, uint64_t limit)
{
	struct cache_opts o = {.dir = dir, .limit_bytes = limit};
	struct cache *c = NULL;
	struct err e = {0};
	if (cache_open(&o, &c, &e)) {
		fprintf(stderr, "cache_open %s: %s\n", dir, e.msg);
		return NULL;
	}
	return c;
}

void block_fill(uint64_t i, unsigned char *p, size_t n)
{
	uint64_t x = i * 0x9e3779b97f4a7c15ull + 1;
	for (size_t k = 0; k < n; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[k] = (unsigned char)x;
	}
}

void block_make(uint64_t i, unsigned char *p, size_t n, unsigned char key[CACHE_KEY_LEN])
{
	block_fill(i, p, n);
	hash_sha256(p, n, key);
}

uint64_t file_size(const char *dir, const char *name)
{
	char p[600];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) ? 0 : (uint64_t)st.st_size;
}

int alter_row(const char *dir, const unsigned char key[CACHE_KEY_LEN], int at)
{
	char path[600];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	sqlite3_blob *blob = NULL;
	unsigned char b;
	int rc = -1, fd = -1;
	snprintf(path, sizeof(path), "%s/cache.db", dir);
	if (sqlite3_open(path, &db) != SQLITE_OK)
		goto out;
	/* the cache's writer may be committing (a drop it was handed) */
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_prepare_v2(db, "SELECT id, slot FROM idx WHERE key = ?1", -1, &st, NULL) !=
	    SQLITE_OK)
		goto out;
	sqlite3_bind_blob(st, 1, key, CACHE_KEY_LEN, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW)
		goto out;
	if (sqlite3_column_type(st, 1) != SQLITE_NULL) { /* a block in the slot file */
		off_t off = (off_t)sqlite3_column_int64(st, 1) * SLOT_SIZE + at;
		snprintf(path, sizeof(path), "%s/" CACHE_BLOCKS_NAME, dir);
		if ((fd = open(path, O_RDWR)) < 0 || pread(fd, &b, 1, off) != 1)
			goto out;
		b ^= 0x55;
		if (pwrite(fd, &b, 1, off) != 1)
			goto out;
		rc = 0;
		goto out;
	}
	if (sqlite3_blob_open(db, "main", "blocks", "data", sqlite3_column_int64(st, 0), 1,
	                      &blob) != SQLITE_OK ||
	    sqlite3_blob_read(blob, &b, 1, at) != SQLITE_OK)
		goto out;
	b ^= 0x55;
	if (sqlite3_blob_write(blob, &b, 1, at) != SQLITE_OK)
		goto out;
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	sqlite3_blob_close(blob);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return rc;
}
