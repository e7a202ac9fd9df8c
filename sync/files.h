/* Local files for sync: updateFile paths kept inside the repo, and their
 * checks.  (Whole-file reads and atomic rewrites: common/file.h.) */
#ifndef IMGSTORE_SYNC_FILES_H
#define IMGSTORE_SYNC_FILES_H

#include "common/err.h"

#include <stddef.h>

/* root + "/" + rel, refusing a result outside root (also through symlinks
 * of existing parent directories).  malloc'd. */
char *files_inside(const char *root, const char *rel, struct err *e);
/* The largest file updateFile rewrites. */
#define FILES_UPDATE_MAX (64u << 20)

struct manifest;
struct mf_problems;
/* validate --check-files: every updateFile.path of m exists (inside root)
 * and every pattern matches it at least once.  Each failure is added to
 * probs at the manifest line of its updateFile or pattern; -1 only when out
 * of memory. */
int files_check(const struct manifest *m, const char *root, struct mf_problems *probs,
                struct err *e);

#endif
