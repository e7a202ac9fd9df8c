#include "store/cache/journal_vfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <unistd.h>

#define VFS_NAME "imgstore-cache"

static sqlite3_vfs g_vfs;
static const char *g_name;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int open_file(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *file, int flags,
                     int *out_flags)
{
	sqlite3_vfs *base = vfs->pAppData;
	if ((flags & SQLITE_OPEN_MAIN_JOURNAL) && (flags & SQLITE_OPEN_CREATE) && name &&
	    access(name, F_OK) == 0) {
		int rc = base->xOpen(base, name, file, flags & ~SQLITE_OPEN_CREATE, out_flags);
		/* gone meanwhile: a connection that rolled back a hot journal in
		 * journal_mode=DELETE removes it */
		if (rc != SQLITE_CANTOPEN)
			return rc;
	}
	return base->xOpen(base, name, file, flags, out_flags);
}

static void register_vfs(void)
{
	sqlite3_vfs *base = sqlite3_vfs_find(NULL);
	if (!base || base->iVersion < 1)
		return;
	g_vfs = *base;
	g_vfs.zName = VFS_NAME;
	g_vfs.pAppData = base;
	g_vfs.xOpen = open_file;
	g_vfs.pNext = NULL;
	if (sqlite3_vfs_register(&g_vfs, 0) == SQLITE_OK)
		g_name = VFS_NAME;
}

const char *journal_vfs_name(void)
{
	pthread_once(&g_once, register_vfs);
	return g_name;
}
