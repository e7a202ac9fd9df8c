#include "sync/decompress.h"

#include "sync/xz_blocks.h"

#include <lzma.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

struct decomp {
	enum decomp_kind kind;
	struct decomp_out out;
	int ended; /* the stream (or the last gzip member / zstd frame) is complete */
	int started;
	lzma_stream xz;
	struct xz_blocks *xzb; /* xz with more than one thread */
	z_stream gz;
	ZSTD_DStream *zs;
	size_t zs_last; /* last ZSTD_decompressStream result: 0 at a frame boundary */
	int fed;        /* any input at all */
};

int decomp_parse(const char *name, enum decomp_kind *out)
{
	if (!name || !*name || !strcmp(name, "none"))
		*out = DECOMP_NONE;
	else if (!strcmp(name, "xz"))
		*out = DECOMP_XZ;
	else if (!strcmp(name, "gzip") || !strcmp(name, "gz"))
		*out = DECOMP_GZIP;
	else if (!strcmp(name, "zstd") || !strcmp(name, "zst"))
		*out = DECOMP_ZSTD;
	else
		return -1;
	return 0;
}

const char *decomp_name(enum decomp_kind k)
{
	switch (k) {
	case DECOMP_XZ: return "xz";
	case DECOMP_GZIP: return "gzip";
	case DECOMP_ZSTD: return "zstd";
	default: return "none";
	}
}

struct decomp *decomp_new(enum decomp_kind k, int threads, const struct decomp_out *out,
                          struct err *e)
{
	struct decomp *d = calloc(1, sizeof(*d));
	lzma_stream init = LZMA_STREAM_INIT;
	if (!d) {
		err_set(e, ERR_IO, "out of memory");
		return NULL;
	}
	d->kind = k;
	d->out = *out;
	d->xz = init;
	switch (k) {
	case DECOMP_XZ: {
		lzma_ret r;
		if (threads > 1) {
			d->xzb = xz_blocks_new(threads, out, e);
			if (!d->xzb)
				goto fail;
			break;
		}
		r = lzma_stream_decoder(&d->xz, UINT64_MAX, LZMA_CONCATENATED);
		if (r != LZMA_OK) {
			err_set(e, ERR_IO, "xz: %s", xz_ret_text(r));
			goto fail;
		}
		break;
	}
	case DECOMP_GZIP:
		if (inflateInit2(&d->gz, 15 + 16) != Z_OK) {
			err_set(e, ERR_IO, "gzip: cannot start the decoder");
			goto fail;
		}
		break;
	case DECOMP_ZSTD:
		d->zs = ZSTD_createDStream();
		if (!d->zs) {
			err_set(e, ERR_IO, "out of memory");
			goto fail;
		}
		break;
	default: break;
	}
	d->started = 1;
	return d;
fail:
	free(d);
	return NULL;
}

static int feed_none(struct decomp *d, const unsigned char *in, size_t n, struct err *e)
{
	while (n) {
		void *buf;
		size_t avail;
		if (d->out.buffer(d->out.ud, &buf, &avail, e))
			return -1;
		if (avail > n)
			avail = n;
		memcpy(buf, in, avail);
		if (d->out.commit(d->out.ud, avail, e))
			return -1;
		in += avail;
		n -= avail;
	}
	return 0;
}

static int run_xz(struct decomp *d, const void *in, size_t n, lzma_action action, struct err *e)
{
	return xz_code(&d->xz, &d->out, in, n, action, &d->ended, e);
}

static int run_gzip(struct decomp *d, const unsigned char *in, size_t n, struct err *e)
{
	d->gz.next_in = (unsigned char *)in;
	d->gz.avail_in = (uInt)n;
	for (;;) {
		void *buf;
		size_t avail;
		int r;
		if (d->gz.avail_in && d->ended) {
			/* another gzip member follows (concatenated .gz) */
			if (inflateReset(&d->gz) != Z_OK)
				return err_set(e, ERR_IO, "gzip: cannot restart the decoder");
			d->ended = 0;
		}
		if (d->out.buffer(d->out.ud, &buf, &avail, e))
			return -1;
		if (avail > UINT32_MAX)
			avail = UINT32_MAX;
		d->gz.next_out = buf;
		d->gz.avail_out = (uInt)avail;
		r = inflate(&d->gz, Z_NO_FLUSH);
		if (d->out.commit(d->out.ud, avail - d->gz.avail_out, e))
			return -1;
		if (r == Z_STREAM_END) {
			d->ended = 1;
			if (!d->gz.avail_in)
				return 0;
			continue;
		}
		if (r == Z_BUF_ERROR && !d->gz.avail_in)
			return 0;
		if (r != Z_OK)
			return err_set(e, ERR_INTEGRITY, "gzip: %s",
			               d->gz.msg ? d->gz.msg : "corrupt data");
		if (!d->gz.avail_in && d->gz.avail_out)
			return 0;
	}
}

static int run_zstd(struct decomp *d, const void *in, size_t n, struct err *e)
{
	ZSTD_inBuffer ib = {in, n, 0};
	for (;;) {
		void *buf;
		size_t avail, r;
		ZSTD_outBuffer ob;
		if (d->out.buffer(d->out.ud, &buf, &avail, e))
			return -1;
		ob.dst = buf;
		ob.size = avail;
		ob.pos = 0;
		r = ZSTD_decompressStream(d->zs, &ob, &ib);
		if (ZSTD_isError(r))
			return err_set(e, ERR_INTEGRITY, "zstd: %s", ZSTD_getErrorName(r));
		if (d->out.commit(d->out.ud, ob.pos, e))
			return -1;
		d->zs_last = r;
		/* r == 0: a frame ended and is flushed; calling again without input
		 * would start waiting for the next frame's header */
		if (ib.pos == ib.size && (ob.pos < ob.size || r == 0))
			return 0;
	}
}

int decomp_feed(struct decomp *d, const void *in, size_t n, struct err *e)
{
	if (!n)
		return 0;
	d->fed = 1;
	switch (d->kind) {
	case DECOMP_XZ:
		if (d->xzb)
			return xz_blocks_feed(d->xzb, in, n, e);
		return run_xz(d, in, n, LZMA_RUN, e);
	case DECOMP_GZIP: return run_gzip(d, in, n, e);
	case DECOMP_ZSTD: return run_zstd(d, in, n, e);
	default: return feed_none(d, in, n, e);
	}
}

int decomp_finish(struct decomp *d, struct err *e)
{
	switch (d->kind) {
	case DECOMP_XZ:
		if (d->xzb)
			return xz_blocks_finish(d->xzb, e);
		if (run_xz(d, NULL, 0, LZMA_FINISH, e))
			return -1;
		break;
	case DECOMP_GZIP:
		if (!d->ended)
			return err_set(e, ERR_INTEGRITY, "gzip: the stream is truncated");
		break;
	case DECOMP_ZSTD:
		if (d->zs_last != 0 || !d->fed)
			return err_set(e, ERR_INTEGRITY, "zstd: the stream is truncated");
		break;
	default: break;
	}
	return 0;
}

void decomp_free(struct decomp *d)
{
	if (!d)
		return;
	if (d->started) {
		if (d->kind == DECOMP_XZ && d->xzb)
			xz_blocks_free(d->xzb);
		else if (d->kind == DECOMP_XZ)
			lzma_end(&d->xz);
		else if (d->kind == DECOMP_GZIP)
			inflateEnd(&d->gz);
		else if (d->kind == DECOMP_ZSTD)
			ZSTD_freeDStream(d->zs);
	}
	free(d);
}
