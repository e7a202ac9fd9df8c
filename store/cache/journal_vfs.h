/* A SQLite VFS for the block cache: the system's default ("unix"), except
 * that a rollback journal that already exists is opened without O_CREAT.
 *
 * Why: in journal_mode=TRUNCATE, SQLite (3.40 here) closes the journal at the
 * end of every transaction and opens it again, with SQLITE_OPEN_CREATE, at
 * the start of the next.  The unix VFS takes every open with that flag for
 * the creation of a new file and syncs the directory at the journal's first
 * sync: one flush of the six in each of the cache writer's commits
 * (tests/bench/README.md).  The journal's directory entry was synced when the
 * file was made; an existing file needs no new one. */
#ifndef IMGSTORE_STORE_CACHE_JOURNAL_VFS_H
#define IMGSTORE_STORE_CACHE_JOURNAL_VFS_H

/* The VFS's name for sqlite3_open_v2(), registered on the first call; NULL
 * (use the default VFS) when it could not be. */
const char *journal_vfs_name(void);

#endif
