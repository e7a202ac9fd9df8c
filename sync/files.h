/* Local files for sync: updateFile paths kept inside the repo, and
 * $GITHUB_OUTPUT.  (Whole-file reads and atomic rewrites: common/file.h.) */
#ifndef IMGSTORE_SYNC_FILES_H
#define IMGSTORE_SYNC_FILES_H

#include "common/err.h"

#include <stddef.h>

/* root + "/" + rel, refusing a result outside root (also through symlinks
 * of existing parent directories).  malloc'd. */
char *files_inside(const char *root, const char *rel, struct err *e);
/* Append "key=value\n" to $GITHUB_OUTPUT when it is set (0 when unset). */
int files_github_output(const char *key, const char *value, struct err *e);

#endif
