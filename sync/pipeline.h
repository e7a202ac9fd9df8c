/* The upload pipeline shared by `labctl images upload` and `sync`.
 *
 * One streaming pass with bounded memory, whatever the size:
 *
 *   caller writes bytes -> part buffer (a bounded pool) -> hash thread: the
 *   object's checksum and the SHA-256 of each block (the block map), in
 *   order, in one pass -> upload workers (each with its own S3 connection):
 *   PUT the part, in parallel -> finish: checksum verified, the multipart
 *   upload completed, the record PUT last (the commit point).
 *
 * An object smaller than one part goes up with a single PUT, after it is
 * hashed and verified.  Any failure, a checksum mismatch or pipeline_free()
 * before the object is complete aborts the multipart upload: no object, no
 * record, no pending upload, the previous image as it was.
 *
 * Once the object is complete it has replaced the previous bytes.  If the
 * record cannot be written then, the new (verified) bytes stay without a
 * record, and the previous record is removed unless it describes them too:
 * nothing unrecorded is served, and no record names bytes it does not
 * describe.  The record names the ETag our own PUT / CompleteMultipartUpload
 * answered; when another upload replaced the object meanwhile, this one
 * writes no record (or takes its own back) and fails. */
#ifndef IMGSTORE_SYNC_PIPELINE_H
#define IMGSTORE_SYNC_PIPELINE_H

#include "common/err.h"
#include "common/hash.h"
#include "store/record.h"
#include "store/s3/s3.h"

#include <stddef.h>
#include <stdint.h>

#define PIPELINE_PART_SIZE (8u * 1024u * 1024u)
#define PIPELINE_WORKERS   3

struct pipeline_opts {
	const struct s3_config *cfg;
	const char *destination; /* images/<destination>, metadata/<destination>.json */
	const char *name;        /* record name */
	const char *source_url;  /* for the record; NULL for a local file */
	const char *origin;      /* RECORD_ORIGIN_MANIFEST or RECORD_ORIGIN_UPLOAD */
	/* The algorithm `expected` is in.  The record's checksum is always the
	 * sha256 of the stored bytes; for another algorithm the stored bytes
	 * are hashed with it as well, checked, and kept as manifestChecksum. */
	enum hash_alg alg;
	const char *expected; /* "ALG:<hex>" the stored bytes must have, or NULL */
	uint64_t size_hint;   /* expected total size, 0 when unknown (for part sizing) */
	size_t part_size;     /* 0: PIPELINE_PART_SIZE (at least 5 MiB) */
	int workers;          /* parallel part uploads, 0: PIPELINE_WORKERS */
};

struct pipeline;

struct pipeline *pipeline_new(const struct pipeline_opts *o, struct err *e);
/* Space to write into: *buf gets at least 1 byte of room (*avail bytes).
 * Blocks while every buffer is in flight; fails when a worker failed. */
int pipeline_buffer(struct pipeline *p, void **buf, size_t *avail, struct err *e);
/* n bytes were written into the space from pipeline_buffer(). */
int pipeline_commit(struct pipeline *p, size_t n, struct err *e);
/* Copying convenience on top of the two above. */
int pipeline_write(struct pipeline *p, const void *data, size_t n, struct err *e);
/* Instead of pipeline_write: the whole regular file fd (nothing written
 * before).  Its parts go out straight from the file, each read by a worker
 * as it is sent, while this thread reads it in order for the checksum and
 * the block map: no part is held in memory, so parts can be few and large
 * (fewer requests for the server).  Fails when the file changes meanwhile
 * (size, modification time).  progress (may be NULL) gets the bytes done.
 * Then pipeline_finish(). */
int pipeline_send_file(struct pipeline *p, int fd, void (*progress)(void *, uint64_t), void *ud,
                       struct err *e);
/* Verify, complete and commit the record.  out (may be NULL) receives the
 * record as written; free it with record_free. */
int pipeline_finish(struct pipeline *p, struct record *out, struct err *e);
/* Bytes written so far. */
uint64_t pipeline_bytes(const struct pipeline *p);
/* Keep images/<destination> (the object cur, which prev describes; a sha256
 * record) as a previous version: server-side copy to versions/<hex>, then
 * its record (prev with destination and replacedAt now, the copy's ETag) at
 * metadata/versions/<hex>.json.  Nothing when that version is kept already.
 * prev is changed (destination, replacedAt). */
int pipeline_keep_version(struct s3 *s3, const char *destination, const struct s3_object *cur,
                          struct record *prev, struct err *e);
/* Abort (when not finished) and release everything. */
void pipeline_free(struct pipeline *p);

#endif
