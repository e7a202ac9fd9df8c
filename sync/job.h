/* One image of `labctl images sync`, in one streaming pass:
 *
 *   HTTPS GET (resumed) -> source checksum -> decompress -> upload pipeline
 *   (checksum + block map, parallel parts) -> both checksums checked ->
 *   complete -> record.
 *
 * A mismatch of either checksum aborts the upload: nothing is left behind. */
#ifndef IMGSTORE_SYNC_JOB_H
#define IMGSTORE_SYNC_JOB_H

#include "common/err.h"
#include "store/record.h"
#include "store/s3/s3.h"
#include "sync/decompress.h"

#include <stdint.h>

/* Sync parts are bigger than upload's: fewer parts cost the server less, and
 * sync has a larger memory budget (about (workers + 2) x part size). */
#define JOB_PART_SIZE (16u * 1024u * 1024u)
/* With xz decoded on two threads, whose second dictionary, stage and input
 * ring take 32 MiB more (sync/xz_blocks.c).  Single syncs of sync.sh's 1 GiB
 * image with a 16 MiB ring (tests/bench/README.md, sync.sh section): 125 MiB
 * peak and 8.5-8.8 s with 12 MiB parts, against 145 MiB and 8.1-8.3 s with
 * 16 MiB (one thread, 16 MiB parts: 105-108 MiB, 10.0-10.9 s). */
#define JOB_XZ_PART_SIZE (12u * 1024u * 1024u)

struct image_job {
	const struct s3_config *cfg;
	const char *name;
	const char *destination;
	const char *url;
	const char *source_checksum; /* "sha256:<hex>" of the downloaded bytes */
	enum decomp_kind decompress;
	const char *expected;  /* of the stored (decompressed) bytes, or NULL */
	const char *ca_bundle; /* extra CA for the download */
	int xz_threads;        /* 1: liblzma's decoder; more: sync/xz_blocks.c */
	int part_workers;      /* parallel part uploads (0: default) */
	size_t part_size;      /* 0: JOB_PART_SIZE (JOB_XZ_PART_SIZE for xz_threads > 1) */
};

struct job_result {
	uint64_t source_bytes; /* downloaded */
	uint64_t stored_bytes; /* uploaded (after decompression) */
	int resumes;           /* download resumed after a dropped connection */
	double seconds;
	char checksum[RECORD_CHECKSUM_MAX];          /* of the stored bytes: sha256 */
	char manifest_checksum[RECORD_CHECKSUM_MAX]; /* the manifest's, when not sha256 */
};

/* The checksum the record must hold: validation.expected ?? source.checksum. */
const char *job_effective_checksum(const struct image_job *j);

int job_run(const struct image_job *j, struct job_result *res, struct err *e);

/* "sha256:ABC" and "sha256:abc" are the same checksum. */
int checksum_equal(const char *a, const char *b);

#endif
