/* Streaming decompression of source images (xz, gzip, zstd) straight into
 * the caller's output buffers (the upload pipeline's part buffers). */
#ifndef IMGSTORE_SYNC_DECOMPRESS_H
#define IMGSTORE_SYNC_DECOMPRESS_H

#include "common/err.h"

#include <stddef.h>

enum decomp_kind { DECOMP_NONE = 0, DECOMP_XZ, DECOMP_GZIP, DECOMP_ZSTD };

/* Where the output goes: space to write into, then how much was written. */
struct decomp_out {
	int (*buffer)(void *ud, void **buf, size_t *avail, struct err *e);
	int (*commit)(void *ud, size_t n, struct err *e);
	void *ud;
};

struct decomp;

/* "xz", "gzip", "zstd" (NULL or "" or "none": DECOMP_NONE); -1 when unknown. */
int decomp_parse(const char *name, enum decomp_kind *out);
const char *decomp_name(enum decomp_kind k);

/* threads: for xz, decoder threads.  1 is liblzma's decoder; more is
 * sync/xz_blocks.c, which decodes the blocks of multi-block files (xz -T)
 * in parallel, the output calls then coming from its threads, in order and
 * never overlapping, and none after decomp_feed or decomp_finish failed. */
struct decomp *decomp_new(enum decomp_kind k, int threads, const struct decomp_out *out,
                          struct err *e);
/* Feed compressed bytes (any amount; output is pushed as it comes). */
int decomp_feed(struct decomp *d, const void *in, size_t n, struct err *e);
/* End of input: flush, and fail (ERR_INTEGRITY) when the stream is truncated. */
int decomp_finish(struct decomp *d, struct err *e);
void decomp_free(struct decomp *d);

#endif
