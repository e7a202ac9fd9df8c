/* The cache's VFS (store/cache/journal_vfs.c) opens an existing rollback
 * journal without SQLITE_OPEN_CREATE, so the unix VFS does not sync the
 * directory for it at every commit.  A counting VFS is made the default
 * before the cache opens, so the cache's VFS stands on it and every open
 * passes through it: of the journal opens of several commits, none may ask
 * to create a journal that exists. */
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024u * 1024u)

static sqlite3_vfs g_count, *g_base;
static int g_journal_opens, g_journal_creates; /* creates: of a file that exists */

static int count_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags,
                      int *out_flags)
{
	(void)vfs;
	if (flags & SQLITE_OPEN_MAIN_JOURNAL) {
		g_journal_opens++;
		g_journal_creates += (flags & SQLITE_OPEN_CREATE) && access(name, F_OK) == 0;
	}
	return g_base->xOpen(g_base, name, file, flags, out_flags);
}

int main(void)
{
	static unsigned char block[MIB];
	unsigned char key[CACHE_KEY_LEN];
	struct cache *c;

	g_base = sqlite3_vfs_find(NULL);
	g_count = *g_base;
	g_count.zName = "counting";
	g_count.xOpen = count_open;
	CHECK(sqlite3_vfs_register(&g_count, 1) == SQLITE_OK);
	if (!scratch_make("journal-vfs"))
		return 1;
	c = open_cache(scratch_dir("cache"), 64 * MIB);
	CHECK(c != NULL);
	if (c) {
		for (uint64_t i = 0; i < 5; i++) {
			block_make(i, block, MIB, key);
			cache_put(c, key, block, MIB);
			cache_flush(c);
		}
		cache_close(c);
	}
	printf("  journal opened %d times, %d of them to create it when it existed\n",
	       g_journal_opens, g_journal_creates);
	CHECK(g_journal_opens >= 5);
	CHECK(g_journal_creates == 0);
	scratch_remove();
	return check_report("journal_vfs");
}
