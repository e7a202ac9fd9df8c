/* Parallel decoding of .xz files whose block headers state both sizes (what
 * xz -T and other threaded encoders write), in bounded memory: unlike
 * liblzma's threaded decoder, no thread holds a whole block's output.  The
 * decoder of the oldest block writes straight into the caller's buffers; the
 * others run ahead into a bounded stage each and wait there for their turn.
 * Blocks without sizes, and blocks whose decoder would need too much memory,
 * are decoded in order on the caller's thread.  Same container rules as
 * liblzma's stream decoder with LZMA_CONCATENATED: several streams, stream
 * padding, every block's check, the index and the footer are verified. */
#ifndef IMGSTORE_SYNC_XZ_BLOCKS_H
#define IMGSTORE_SYNC_XZ_BLOCKS_H

#include "common/err.h"
#include "sync/decompress.h"

#include <lzma.h>
#include <stddef.h>

struct xz_blocks;

/* The message for a liblzma return code ("corrupt xz data", ...). */
const char *xz_ret_text(int lzma_ret);
/* Run s over n bytes of input into out: with LZMA_RUN until the input is
 * used up, with LZMA_FINISH until the end; *ended = 1 at the end (of the
 * stream or block s decodes).  Corrupt data is ERR_INTEGRITY. */
int xz_code(lzma_stream *s, const struct decomp_out *out, const void *in, size_t n, lzma_action a,
            int *ended, struct err *e);

/* threads: decoder threads, at least 2.  Output goes to out, in order, from
 * whichever thread decodes the oldest block (calls never overlap). */
struct xz_blocks *xz_blocks_new(int threads, const struct decomp_out *out, struct err *e);
/* Compressed bytes, any amount; corrupt data is ERR_INTEGRITY. */
int xz_blocks_feed(struct xz_blocks *x, const void *in, size_t n, struct err *e);
/* End of input: waits for every block, fails when the file is truncated. */
int xz_blocks_finish(struct xz_blocks *x, struct err *e);
/* Stops and joins the threads (after an error too). */
void xz_blocks_free(struct xz_blocks *x);

#endif
