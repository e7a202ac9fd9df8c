/* Local files for sync: paths inside the repo, reading a file whole,
 * atomic rewrites (updateFile) and $GITHUB_OUTPUT. */
#ifndef IMGSTORE_SYNC_FILES_H
#define IMGSTORE_SYNC_FILES_H

#include "common/err.h"

#include <stddef.h>

/* root + "/" + rel, refusing a result outside root (also through symlinks
 * of existing parent directories).  malloc'd. */
char *files_inside(const char *root, const char *rel, struct err *e);
/* Whole file into a malloc'd NUL-terminated buffer (at most max bytes). */
int files_read(const char *path, size_t max, char **data, size_t *len, struct err *e);
/* Replace the contents of path: temp file in the same directory, fsync,
 * rename; the file's mode (and owner, when allowed) is kept. */
int files_replace(const char *path, const void *data, size_t len, struct err *e);
/* Append "key=value\n" to $GITHUB_OUTPUT when it is set (0 when unset). */
int files_github_output(const char *key, const char *value, struct err *e);

#endif
