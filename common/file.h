/* Whole-file reads and atomic replacement, shared by every module that reads
 * a small input (manifest, SOPS file, age identity) or rewrites a file in place
 * (updateFile, provenance, encrypted credentials). */
#ifndef IMGSTORE_COMMON_FILE_H
#define IMGSTORE_COMMON_FILE_H

#include "common/buf.h"
#include "common/err.h"

#include <stddef.h>
#include <sys/types.h>

/* Append the whole of `path` ("-" = standard input) to b.  More than `max`
 * bytes is ERR_INVALID.  Bytes go straight into b (no stack copies), so a
 * caller reading a secret only has to free b with buf_free_secure(). */
int file_read_all(const char *path, size_t max, struct buf *b, struct err *e);

/* Replace `path` with data: a temporary file in the same directory, fsync,
 * rename, fsync of the directory.  A reader sees the old or the new file,
 * never a mix.  When `path` exists its mode (and owner, where permitted) are
 * kept; a new file gets `mode`. */
int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode, struct err *e);

#endif
