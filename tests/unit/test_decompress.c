/* sync/decompress: xz with one thread (liblzma's stream decoder) and with 2-4
 * (sync/xz_blocks.c), then gzip, zstd and none.  The xz inputs are made here
 * with liblzma's encoders: multi-block streams with both sizes in the block
 * headers (the threaded encoder), single blocks without sizes, hand-built
 * streams whose headers state one size, none or both, every check type,
 * concatenations with stream padding.  Every decode feeds the input in chunks
 * of 1 byte, 7 bytes, random sizes or whole, into an output callback that
 * hands out buffers of random sizes, and is compared byte for byte with the
 * original data or, for broken inputs, with liblzma's own stream decoder
 * (LZMA_CONCATENATED) on the same bytes: same verdict, same output.
 *
 * The output callback holds the decoder to its contract: calls never
 * overlap; none once feed or finish has returned -1 (or finish 0), once a
 * call failed, or inside decomp_free; no write past a buffer (under ASan:
 * nor into one after its commit).
 *
 *   TEST_DECOMPRESS_ONLY=truncated,index   only those parts (names as printed)
 *   TEST_DECOMPRESS_TRAP=1                 abort() at the first output call
 *                                          out of turn, for a backtrace */
#include "check.h"
#include "sync/decompress.h"

#include <lzma.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <zstd.h>

/* A CHECK that says, when it fails, which input and which decode. */
#define EXPECT(cond, ...)                                                                          \
	do {                                                                                       \
		int ok_ = !!(cond);                                                                \
		CHECK(ok_);                                                                        \
		if (!ok_) {                                                                        \
			fprintf(stderr, "  (%s) ", #cond);                                         \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
		}                                                                                  \
	} while (0)

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
	uint64_t s = (a + 1) * 0x9e3779b97f4a7c15ull ^ (b + 7) * 0xbf58476d1ce4e5b9ull;
	return s ? s : 1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- growable byte buffers ---- */

struct buf {
	unsigned char *p;
	size_t n, cap;
};

static void buf_reserve(struct buf *b, size_t more)
{
	size_t c = b->cap ? b->cap : 4096;
	if (b->p && b->n + more <= b->cap)
		return;
	while (c < b->n + more)
		c *= 2;
	b->p = realloc(b->p, c);
	if (!b->p)
		abort();
	b->cap = c;
}

static void buf_add(struct buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	if (n)
		memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void buf_zeros(struct buf *b, size_t n)
{
	buf_reserve(b, n);
	memset(b->p + b->n, 0, n);
	b->n += n;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

static int same(const void *a, size_t an, const void *b, size_t bn)
{
	return an == bn && (!an || !memcmp(a, b, an));
}

/* a[0..an) is a prefix of b[0..bn) */
static int prefix_of(const void *a, size_t an, const void *b, size_t bn)
{
	return an <= bn && (!an || !memcmp(a, b, an));
}

static size_t first_diff(const unsigned char *a, size_t an, const unsigned char *b, size_t bn)
{
	size_t i = 0;
	while (i < an && i < bn && a[i] == b[i])
		i++;
	return i;
}

/* ---- test data: random bytes, zero runs, text, short repeated patterns ---- */

static const char *const words[] = {
        "image", "block", "sector", "the", "qcow2", "partition", "kernel", "initrd",
        "boot",  "efi",   "of",     "and", "data",  "\n",        "0x1f",   "ext4",
};

static void gen(struct buf *b, size_t n, uint64_t seed)
{
	uint64_t s = mix(seed, 42);
	size_t end = b->n + n;
	buf_reserve(b, n);
	while (b->n < end) {
		size_t seg = 1 + xs(&s) % 120000, i;
		unsigned char pat[64];
		size_t plen;
		if (seg > end - b->n)
			seg = end - b->n;
		switch (xs(&s) % 4) {
		case 0:
			for (i = 0; i < seg; i++)
				b->p[b->n + i] = (unsigned char)(xs(&s) >> 24);
			b->n += seg;
			break;
		case 1: buf_zeros(b, seg); break;
		case 2:
			while (seg) {
				const char *w = words[xs(&s) % (sizeof(words) / sizeof(words[0]))];
				size_t wl = strlen(w) + 1;
				if (wl > seg)
					wl = seg;
				memcpy(b->p + b->n, w, wl - 1);
				b->p[b->n + wl - 1] = ' ';
				b->n += wl;
				seg -= wl;
			}
			break;
		default:
			plen = 1 + xs(&s) % sizeof(pat);
			for (i = 0; i < plen; i++)
				pat[i] = (unsigned char)xs(&s);
			for (i = 0; i < seg; i++)
				b->p[b->n + i] = pat[i % plen];
			b->n += seg;
			break;
		}
	}
}

/* ---- encoders ---- */

/* Run s over the input with action a until it stops saying LZMA_OK. */
static lzma_ret code_run(lzma_stream *s, const void *in, size_t n, lzma_action a, struct buf *out)
{
	lzma_ret r;
	s->next_in = in;
	s->avail_in = n;
	do {
		buf_reserve(out, 65536);
		s->next_out = out->p + out->n;
		s->avail_out = out->cap - out->n;
		r = lzma_code(s, a);
		out->n = out->cap - s->avail_out;
	} while (r == LZMA_OK);
	return r;
}

static void code_all(lzma_stream *s, const void *in, size_t n, struct buf *out)
{
	lzma_ret r = code_run(s, in, n, LZMA_FINISH, out);
	if (r != LZMA_STREAM_END) {
		fprintf(stderr, "encoder: %d\n", (int)r);
		abort();
	}
	lzma_end(s);
}

/* liblzma's threaded encoder: blocks of block_size with both sizes in their headers. */
static void enc_mt(struct buf *out, const void *in, size_t n, uint64_t block_size, uint32_t preset,
                   lzma_check check)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_mt mt;
	memset(&mt, 0, sizeof(mt));
	mt.threads = 2;
	mt.block_size = block_size;
	mt.preset = preset;
	mt.check = check;
	if (lzma_stream_encoder_mt(&s, &mt) != LZMA_OK)
		abort();
	code_all(&s, in, n, out);
}

/* One block, no sizes in its header (what plain `xz` writes). */
static void enc_easy(struct buf *out, const void *in, size_t n, uint32_t preset, lzma_check check)
{
	lzma_stream s = LZMA_STREAM_INIT;
	if (lzma_easy_encoder(&s, preset, check) != LZMA_OK)
		abort();
	code_all(&s, in, n, out);
}

/* A block every `every` bytes (LZMA_FULL_FLUSH), none with sizes in its header. */
static void enc_flushed(struct buf *out, const unsigned char *in, size_t n, size_t every,
                        lzma_check check)
{
	lzma_stream s = LZMA_STREAM_INIT;
	size_t pos = 0;
	if (lzma_easy_encoder(&s, 0, check) != LZMA_OK)
		abort();
	while (pos < n) {
		size_t c = n - pos < every ? n - pos : every;
		if (code_run(&s, in + pos, c, LZMA_FULL_FLUSH, out) != LZMA_STREAM_END)
			abort();
		pos += c;
	}
	code_all(&s, NULL, 0, out);
}

enum { SZ_BOTH, SZ_COMP, SZ_UNCOMP, SZ_NONE };
enum { F_LZMA2, F_DELTA, F_X86 };

struct part {
	size_t len;
	int sizes;           /* which sizes the block header states */
	uint32_t header_pad; /* extra header bytes (multiple of 4) */
	int filter;
};

/* A stream built block by block (lzma_block_buffer_encode), each block's
 * header rewritten to state the sizes the part asks for, and its index. */
static void enc_blocks(struct buf *out, const unsigned char *in, const struct part *parts,
                       size_t nparts, lzma_check check)
{
	lzma_stream_flags fl;
	lzma_index *idx = lzma_index_init(NULL);
	unsigned char hf[LZMA_STREAM_HEADER_SIZE];
	size_t off = 0;

	memset(&fl, 0, sizeof(fl));
	fl.check = check;
	if (!idx || lzma_stream_header_encode(&fl, hf) != LZMA_OK)
		abort();
	buf_add(out, hf, sizeof(hf));
	for (size_t i = 0; i < nparts; i++) {
		const struct part *p = &parts[i];
		lzma_options_lzma lz;
		lzma_options_delta delta;
		lzma_filter f[3], hfilters[LZMA_FILTERS_MAX + 1];
		lzma_block blk;
		size_t cap = lzma_block_buffer_bound(p->len), pos = 0;
		unsigned char *tmp = malloc(cap), hdr[LZMA_BLOCK_HEADER_SIZE_MAX];
		lzma_vli csize, usize;
		uint32_t old_hs;
		int k = 0;

		if (!tmp || lzma_lzma_preset(&lz, 0))
			abort();
		memset(&delta, 0, sizeof(delta));
		delta.type = LZMA_DELTA_TYPE_BYTE;
		delta.dist = 4;
		if (p->filter == F_DELTA) {
			f[k].id = LZMA_FILTER_DELTA;
			f[k++].options = &delta;
		} else if (p->filter == F_X86) {
			f[k].id = LZMA_FILTER_X86;
			f[k++].options = NULL;
		}
		f[k].id = LZMA_FILTER_LZMA2;
		f[k++].options = &lz;
		f[k].id = LZMA_VLI_UNKNOWN;
		memset(&blk, 0, sizeof(blk));
		blk.check = check;
		blk.filters = f;
		if (lzma_block_buffer_encode(&blk, NULL, in + off, p->len, tmp, &pos, cap) !=
		    LZMA_OK)
			abort();
		/* Read the header back (liblzma may have fallen back to plain LZMA2
		 * for incompressible data), then write it again with the sizes and
		 * the padding asked for. */
		old_hs = lzma_block_header_size_decode(tmp[0]);
		memset(&blk, 0, sizeof(blk));
		blk.header_size = old_hs;
		blk.check = check;
		blk.filters = hfilters;
		if (lzma_block_header_decode(&blk, NULL, tmp) != LZMA_OK)
			abort();
		csize = blk.compressed_size;
		usize = blk.uncompressed_size;
		if (csize + old_hs + lzma_check_size(check) > pos || usize != p->len)
			abort();
		if (p->sizes == SZ_NONE || p->sizes == SZ_UNCOMP)
			blk.compressed_size = LZMA_VLI_UNKNOWN;
		if (p->sizes == SZ_NONE || p->sizes == SZ_COMP)
			blk.uncompressed_size = LZMA_VLI_UNKNOWN;
		if (lzma_block_header_size(&blk) != LZMA_OK)
			abort();
		blk.header_size += p->header_pad;
		if (lzma_block_header_encode(&blk, hdr) != LZMA_OK)
			abort();
		buf_add(out, hdr, blk.header_size);
		buf_add(out, tmp + old_hs, pos - old_hs);
		if (lzma_index_append(idx, NULL, blk.header_size + csize + lzma_check_size(check),
		                      usize) != LZMA_OK)
			abort();
		lzma_filters_free(hfilters, NULL);
		free(tmp);
		off += p->len;
	}
	fl.backward_size = lzma_index_size(idx);
	buf_reserve(out, fl.backward_size + LZMA_STREAM_HEADER_SIZE);
	if (lzma_index_buffer_encode(idx, out->p, &out->n, out->cap) != LZMA_OK ||
	    lzma_stream_footer_encode(&fl, hf) != LZMA_OK)
		abort();
	buf_add(out, hf, sizeof(hf));
	lzma_index_end(idx, NULL);
}

/* ---- liblzma's stream decoder, the reference ---- */

static lzma_ret ref_decode(const void *in, size_t n, struct buf *out)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_ret r;
	if (lzma_stream_decoder(&s, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
		abort();
	r = code_run(&s, in, n, LZMA_FINISH, out);
	lzma_end(&s);
	return r;
}

/* ---- the output callback ---- */

enum { FAIL_NONE, FAIL_BUFFER, FAIL_COMMIT };

/* Under ASan, the scratch area is poisoned but for the buffer handed out:
 * a write past it, or into it after its commit, is reported where it
 * happens.  (Without ASan, the canary after it catches the first kind.) */
#if defined(__SANITIZE_ADDRESS__)
#define SINK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SINK_ASAN 1
#endif
#endif
#ifdef SINK_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   __asan_poison_memory_region((p), (n))
#define UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SCRATCH_MAX 200000 /* the largest buffer handed out (a multiple of 8) */
#define CANARY      8

/* Buffers of random sizes, each ending where the scratch area ends (then
 * the canary); the output collected in `got`. */
struct sink {
	struct buf got;
	unsigned char *scratch; /* SCRATCH_MAX + CANARY */
	unsigned char *cur;     /* the buffer handed out, until its commit */
	size_t avail;
	uint64_t rng;
	int fail_in;        /* FAIL_BUFFER, FAIL_COMMIT: that call fails once ... */
	size_t fail_at;     /* ... got.n reaches this */
	int failed;         /* it did */
	atomic_int closed;  /* feed or finish returned -1, or finish returned */
	atomic_int freeing; /* in decomp_free */
	int pause_ms;       /* between the end (closed) and decomp_free */
	atomic_int busy;
	int overlaps, late, in_free, bad_commits, overruns;
};

static void sink_init(struct sink *s, uint64_t seed)
{
	memset(s, 0, sizeof(*s));
	s->rng = mix(seed, 99);
	atomic_init(&s->busy, 0);
	atomic_init(&s->closed, 0);
	atomic_init(&s->freeing, 0);
	s->scratch = malloc(SCRATCH_MAX + CANARY);
	if (!s->scratch)
		abort();
	memset(s->scratch + SCRATCH_MAX, 0xa5, CANARY);
	POISON(s->scratch, SCRATCH_MAX);
}

static void sink_fini(struct sink *s)
{
	UNPOISON(s->scratch, SCRATCH_MAX);
	free(s->scratch);
	buf_free(&s->got);
}

static size_t out_size(uint64_t *r)
{
	switch (xs(r) % 16) {
	case 0: return 1;
	case 1:
	case 2: return 1 + xs(r) % 64;
	default: return 1 + xs(r) % SCRATCH_MAX;
	}
}

/* TEST_DECOMPRESS_TRAP=1: abort() at the first output call that overlaps
 * another or comes after the end, for a backtrace in gdb. */
static int trap = -1;

static void late_call(struct sink *s)
{
	if (s->freeing)
		s->in_free++;
	else
		s->late++;
	if (trap < 0)
		trap = getenv("TEST_DECOMPRESS_TRAP") != NULL;
	if (trap)
		abort();
}

/* Every output call: alone, and only while the decoder may make it. */
static void sink_enter(struct sink *s)
{
	if (atomic_exchange(&s->busy, 1))
		s->overlaps++;
	if (s->closed || s->failed)
		late_call(s);
}

static int sink_buffer(void *ud, void **buf, size_t *avail, struct err *e)
{
	struct sink *s = ud;
	int rc = 0;
	sink_enter(s);
	if (s->cur)
		POISON(s->cur, s->avail);
	s->cur = NULL;
	if (s->fail_in == FAIL_BUFFER && s->got.n >= s->fail_at) {
		s->failed = 1;
		rc = err_set(e, ERR_IO, "disk full");
	} else {
		s->avail = out_size(&s->rng);
		s->cur = s->scratch + SCRATCH_MAX - s->avail;
		UNPOISON(s->cur, s->avail);
		*buf = s->cur;
		*avail = s->avail;
	}
	atomic_store(&s->busy, 0);
	return rc;
}

static int sink_commit(void *ud, size_t n, struct err *e)
{
	struct sink *s = ud;
	int rc = 0;
	sink_enter(s);
	for (size_t i = 0; i < CANARY; i++)
		if (s->scratch[SCRATCH_MAX + i] != 0xa5)
			s->overruns++;
	memset(s->scratch + SCRATCH_MAX, 0xa5, CANARY);
	if (n > (s->cur ? s->avail : 0)) {
		s->bad_commits++;
	} else if (s->fail_in == FAIL_COMMIT && s->got.n + n > s->fail_at) {
		s->failed = 1;
		rc = err_set(e, ERR_IO, "disk full");
	} else if (n) {
		buf_add(&s->got, s->cur, n);
	}
	if (s->cur)
		POISON(s->cur, s->avail);
	s->cur = NULL;
	s->avail = 0;
	atomic_store(&s->busy, 0);
	return rc;
}

/* ---- one decode ---- */

enum { CH_ONE, CH_SEVEN, CH_RANDOM, CH_WHOLE, CH_N };
static const char *const ch_name[] = {"1-byte", "7-byte", "random", "whole"};

/* Inputs up to TINY_ALL go in 1- or 7-byte chunks all through; bigger ones
 * only for TINY_RUN bytes of every TINY_PERIOD (the rest in one chunk each),
 * to keep the number of calls (a few µs each, with threads) reasonable. */
#define TINY_ALL    (256u << 10)
#define TINY_PERIOD (64u << 10)
#define TINY_RUN    (3u << 10)

static size_t chunk_len(int ch, uint64_t *r, size_t pos, size_t n)
{
	size_t c;
	if ((ch == CH_ONE || ch == CH_SEVEN) && n > TINY_ALL && pos % TINY_PERIOD >= TINY_RUN)
		c = TINY_PERIOD - pos % TINY_PERIOD;
	else if (ch == CH_ONE)
		c = 1;
	else if (ch == CH_SEVEN)
		c = 7;
	else if (ch == CH_RANDOM)
		c = 1 + xs(r) % 65536;
	else
		c = n - pos;
	return c < n - pos ? c : n - pos;
}

struct result {
	int rc;
	int at;        /* 0 decomp_new, 1 feed, 2 finish */
	double free_s; /* how long decomp_free took */
	struct err e;
};

static struct result run_decomp(enum decomp_kind kind, const unsigned char *in, size_t n,
                                int threads, int ch, uint64_t seed, struct sink *s)
{
	struct decomp_out out = {sink_buffer, sink_commit, s};
	struct result res;
	struct decomp *d;
	uint64_t r = mix(seed, 1234);
	size_t pos = 0;
	double t;

	memset(&res, 0, sizeof(res));
	res.rc = -1;
	d = decomp_new(kind, threads, &out, &res.e);
	if (!d) {
		s->closed = s->freeing = 1;
		return res;
	}
	res.at = 1;
	while (pos < n) {
		size_t c = chunk_len(ch, &r, pos, n);
		if (decomp_feed(d, in + pos, c, &res.e))
			goto out;
		pos += c;
	}
	res.at = 2;
	res.rc = decomp_finish(d, &res.e);
out:
	s->closed = 1;
	if (s->pause_ms) {
		struct timespec ts = {0, s->pause_ms * 1000000L};
		nanosleep(&ts, NULL);
	}
	s->freeing = 1;
	t = now();
	decomp_free(d);
	res.free_s = now() - t;
	return res;
}

/* What every decode must respect, whatever its verdict. */
static void check_sink(const struct sink *s, const char *what)
{
	EXPECT(!s->overlaps, "%s: output calls overlapped %d times", what, s->overlaps);
	EXPECT(!s->late, "%s: %d output calls after feed or finish returned, or after one failed",
	       what, s->late);
	EXPECT(!s->in_free, "%s: %d output calls while decomp_free ran", what, s->in_free);
	EXPECT(!s->bad_commits, "%s: %d commits of more than the buffer", what, s->bad_commits);
	EXPECT(!s->overruns, "%s: %d bytes written past a buffer", what, s->overruns);
}

/* Decode and compare with the data (want_ok) or expect ERR_INTEGRITY with
 * an output that is a prefix of the data (truncated input). */
static int decode_expect(const char *name, const unsigned char *in, size_t n,
                         const struct buf *data, int want_ok, int threads, int ch, uint64_t seed,
                         int verbose)
{
	struct sink s;
	struct result res;
	char what[256];
	int ok;

	sink_init(&s, seed);
	res = run_decomp(DECOMP_XZ, in, n, threads, ch, seed, &s);
	snprintf(what, sizeof(what), "%s, %zu bytes, %d thread(s), %s chunks", name, n, threads,
	         ch_name[ch]);
	if (want_ok) {
		ok = res.rc == 0 && same(s.got.p, s.got.n, data->p, data->n);
		if (!ok || verbose) {
			EXPECT(res.rc == 0, "%s: failed at %s: %s", what,
			       res.at == 1   ? "feed"
			       : res.at == 2 ? "finish"
			                     : "new",
			       res.e.msg);
			EXPECT(same(s.got.p, s.got.n, data->p, data->n),
			       "%s: %zu bytes out, want %zu, first difference at %zu", what,
			       s.got.n, data->n, first_diff(s.got.p, s.got.n, data->p, data->n));
		}
	} else {
		ok = res.rc == -1 && res.at > 0 && res.e.code == ERR_INTEGRITY &&
		     prefix_of(s.got.p, s.got.n, data->p, data->n);
		if (!ok || verbose) {
			EXPECT(res.rc == -1 && res.at > 0, "%s: rc %d at %d, want a failure", what,
			       res.rc, res.at);
			EXPECT(res.rc == 0 || res.e.code == ERR_INTEGRITY, "%s: code %d (%s)", what,
			       (int)res.e.code, res.e.msg);
			EXPECT(prefix_of(s.got.p, s.got.n, data->p, data->n),
			       "%s: the %zu bytes out are not a prefix of the data (differ at %zu)",
			       what, s.got.n, first_diff(s.got.p, s.got.n, data->p, data->n));
		}
	}
	check_sink(&s, what);
	sink_fini(&s);
	return ok;
}

/* Decode and compare with liblzma's stream decoder on the same bytes: both
 * succeed with the same output, or both fail (ERR_INTEGRITY, having written a
 * prefix of what the reference wrote before it failed: nothing past the
 * error, nothing from a later block first).  The damaged inputs here use
 * LZMA2 alone: with the x86 filter, even liblzma alone writes other bytes
 * before a data error when its output buffers are smaller. */
static int decode_like_ref(const char *name, const unsigned char *in, size_t n, int threads, int ch,
                           uint64_t seed, lzma_ret *ref_ret)
{
	struct buf want = {0};
	lzma_ret r = ref_decode(in, n, &want);
	struct sink s;
	struct result res;
	char what[256];
	int ok;

	if (ref_ret)
		*ref_ret = r;
	sink_init(&s, seed);
	res = run_decomp(DECOMP_XZ, in, n, threads, ch, seed, &s);
	snprintf(what, sizeof(what), "%s, %d thread(s), %s chunks; reference: %d", name, threads,
	         ch_name[ch], (int)r);
	if (r == LZMA_STREAM_END) {
		ok = res.rc == 0 && same(s.got.p, s.got.n, want.p, want.n);
		EXPECT(res.rc == 0, "%s: failed (%s), the reference succeeds", what, res.e.msg);
		EXPECT(res.rc != 0 || same(s.got.p, s.got.n, want.p, want.n),
		       "%s: %zu bytes out, the reference %zu, first difference at %zu", what,
		       s.got.n, want.n, first_diff(s.got.p, s.got.n, want.p, want.n));
	} else {
		ok = res.rc == -1 && res.at > 0 && res.e.code == ERR_INTEGRITY &&
		     prefix_of(s.got.p, s.got.n, want.p, want.n);
		EXPECT(res.rc == -1, "%s: succeeds (%zu bytes out), the reference fails", what,
		       s.got.n);
		EXPECT(res.rc == 0 || (res.at > 0 && res.e.code == ERR_INTEGRITY),
		       "%s: code %d (%s)", what, (int)res.e.code, res.e.msg);
		EXPECT(res.rc == 0 || prefix_of(s.got.p, s.got.n, want.p, want.n),
		       "%s: wrote %zu bytes, not a prefix of the reference's %zu (differ at %zu)",
		       what, s.got.n, want.n, first_diff(s.got.p, s.got.n, want.p, want.n));
	}
	check_sink(&s, what);
	sink_fini(&s);
	buf_free(&want);
	return ok;
}

/* ---- the inputs ---- */

struct input {
	char name[96];
	struct buf data, xz;
};

#define MAX_INPUTS 40
static struct input inputs[MAX_INPUTS];
static size_t ninputs;

static struct input *add_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct input *add_input(const char *fmt, ...)
{
	struct input *in;
	va_list ap;
	if (ninputs == MAX_INPUTS)
		abort();
	in = &inputs[ninputs++];
	va_start(ap, fmt);
	vsnprintf(in->name, sizeof(in->name), fmt, ap);
	va_end(ap);
	return in;
}

static const lzma_check checks[] = {LZMA_CHECK_NONE, LZMA_CHECK_CRC32, LZMA_CHECK_CRC64,
                                    LZMA_CHECK_SHA256};
static const char *const check_names[] = {"none", "crc32", "crc64", "sha256"};

/* Indexes into inputs[] that later tests reuse. */
static size_t in_big, in_mt100k, in_easy, in_empty, in_mt_crc32, in_concat;

static void make_inputs(void)
{
	struct input *in;
	struct buf a = {0}, b = {0}, c = {0};

	in_big = ninputs;
	in = add_input("mt, 64 KiB blocks, preset 0, crc64, 3 MiB + 12345");
	gen(&in->data, (1u << 20) + 4321, 1);
	buf_zeros(&in->data, 300000); /* at least three blocks of zeros */
	gen(&in->data, (3u << 20) + 12345 - in->data.n, 2);
	enc_mt(&in->xz, in->data.p, in->data.n, 65536, 0, LZMA_CHECK_CRC64);

	in_mt100k = ninputs;
	in = add_input("mt, 100000-byte blocks, preset 1, crc32, 2 MiB + 777");
	gen(&in->data, (2u << 20) + 777, 3);
	enc_mt(&in->xz, in->data.p, in->data.n, 100000, 1, LZMA_CHECK_CRC32);

	in_easy = ninputs;
	in = add_input("one block without sizes, preset 0, crc64, 1 MiB + 3");
	gen(&in->data, (1u << 20) + 3, 4);
	enc_easy(&in->xz, in->data.p, in->data.n, 0, LZMA_CHECK_CRC64);

	in_empty = ninputs;
	in = add_input("empty, easy encoder");
	enc_easy(&in->xz, "", 0, 0, LZMA_CHECK_CRC64);
	in = add_input("empty, mt encoder");
	enc_mt(&in->xz, "", 0, 65536, 0, LZMA_CHECK_CRC32);
	in = add_input("1 byte, easy encoder");
	buf_add(&in->data, "x", 1);
	enc_easy(&in->xz, in->data.p, in->data.n, 0, LZMA_CHECK_CRC64);
	in = add_input("1 byte, mt encoder");
	buf_add(&in->data, "\0", 1);
	enc_mt(&in->xz, in->data.p, in->data.n, 65536, 1, LZMA_CHECK_SHA256);

	for (size_t i = 0; i < 4; i++) {
		if (checks[i] == LZMA_CHECK_CRC32)
			in_mt_crc32 = ninputs;
		in = add_input("mt, 64 KiB blocks, check %s, 300 KiB + 1", check_names[i]);
		gen(&in->data, (300u << 10) + 1, 10 + i);
		enc_mt(&in->xz, in->data.p, in->data.n, 65536, 0, checks[i]);
		in = add_input("one block without sizes, check %s, 100 KiB + 5", check_names[i]);
		gen(&in->data, (100u << 10) + 5, 20 + i);
		enc_easy(&in->xz, in->data.p, in->data.n, 1, checks[i]);
	}

	in = add_input("mt, zeros only, 256 KiB blocks, 1 MiB + 1");
	buf_zeros(&in->data, (1u << 20) + 1);
	enc_mt(&in->xz, in->data.p, in->data.n, 256u << 10, 0, LZMA_CHECK_CRC64);

	in = add_input("full flush every 50000 bytes: 9 blocks without sizes, crc32");
	gen(&in->data, 400000, 30);
	enc_flushed(&in->xz, in->data.p, in->data.n, 50000, LZMA_CHECK_CRC32);

	in = add_input("mt, 1000-byte blocks, 200 KiB");
	gen(&in->data, 200u << 10, 31);
	enc_mt(&in->xz, in->data.p, in->data.n, 1000, 0, LZMA_CHECK_CRC32);

	{
		static const struct part parts[] = {
		        {65536, SZ_BOTH, 0, F_LZMA2}, {70000, SZ_NONE, 0, F_LZMA2},
		        {12345, SZ_COMP, 0, F_LZMA2}, {40000, SZ_UNCOMP, 0, F_LZMA2},
		        {0, SZ_BOTH, 0, F_LZMA2},     {30000, SZ_BOTH, 64, F_LZMA2},
		        {50000, SZ_BOTH, 0, F_DELTA}, {50001, SZ_NONE, 8, F_X86},
		        {33333, SZ_BOTH, 0, F_X86},   {0, SZ_NONE, 0, F_LZMA2},
		        {65536, SZ_BOTH, 0, F_LZMA2}, {1, SZ_BOTH, 0, F_LZMA2},
		};
		size_t total = 0, np = sizeof(parts) / sizeof(parts[0]);
		for (size_t i = 0; i < np; i++)
			total += parts[i].len;
		for (size_t k = 0; k < 2; k++) {
			in = add_input("hand-built: headers with both sizes, one, none; empty "
			               "blocks; header padding; delta, x86; check %s",
			               k ? "none" : "crc32");
			gen(&in->data, total, 40 + k);
			enc_blocks(&in->xz, in->data.p, parts, np,
			           k ? LZMA_CHECK_NONE : LZMA_CHECK_CRC32);
		}
	}

	/* Concatenations, with stream padding between and after. */
	gen(&a, (300u << 10) + 7, 50);
	gen(&b, (100u << 10) + 1, 51);
	gen(&c, 250001, 52);
	in_concat = ninputs;
	in = add_input("concatenated: mt crc32, 4 zeros, one block sha256, 8 zeros, mt crc64, "
	               "4 zeros");
	enc_mt(&in->xz, a.p, a.n, 65536, 0, LZMA_CHECK_CRC32);
	buf_zeros(&in->xz, 4);
	enc_easy(&in->xz, b.p, b.n, 0, LZMA_CHECK_SHA256);
	buf_zeros(&in->xz, 8);
	enc_mt(&in->xz, c.p, c.n, 100000, 1, LZMA_CHECK_CRC64);
	buf_zeros(&in->xz, 4);
	buf_add(&in->data, a.p, a.n);
	buf_add(&in->data, b.p, b.n);
	buf_add(&in->data, c.p, c.n);

	in = add_input("concatenated: one block, empty stream, mt, no padding");
	enc_easy(&in->xz, b.p, b.n, 0, LZMA_CHECK_CRC64);
	enc_easy(&in->xz, "", 0, 0, LZMA_CHECK_CRC32);
	enc_mt(&in->xz, a.p, a.n, 65536, 0, LZMA_CHECK_NONE);
	buf_add(&in->data, b.p, b.n);
	buf_add(&in->data, a.p, a.n);

	in = add_input("concatenated: mt then 8 zeros");
	enc_mt(&in->xz, c.p, c.n, 65536, 0, LZMA_CHECK_CRC32);
	buf_zeros(&in->xz, 8);
	buf_add(&in->data, c.p, c.n);

	in = add_input("concatenated: empty, 4 zeros, empty, mt, 12 zeros");
	enc_mt(&in->xz, "", 0, 65536, 0, LZMA_CHECK_CRC32);
	buf_zeros(&in->xz, 4);
	enc_easy(&in->xz, "", 0, 0, LZMA_CHECK_NONE);
	enc_mt(&in->xz, c.p, c.n, 65536, 0, LZMA_CHECK_SHA256);
	buf_zeros(&in->xz, 12);
	buf_add(&in->data, c.p, c.n);

	buf_free(&a);
	buf_free(&b);
	buf_free(&c);
}

/* ---- tests ---- */

/* Every input, for threads 1..4, in every chunking; the test inputs are
 * checked against the reference first. */
static void test_roundtrip(void)
{
	for (size_t i = 0; i < ninputs; i++) {
		struct input *in = &inputs[i];
		struct buf ref = {0};
		lzma_ret r = ref_decode(in->xz.p, in->xz.n, &ref);
		EXPECT(r == LZMA_STREAM_END && same(ref.p, ref.n, in->data.p, in->data.n),
		       "test input %s: the reference gives %d", in->name, (int)r);
		buf_free(&ref);
		for (int threads = 1; threads <= 4; threads++)
			for (int ch = 0; ch < CH_N; ch++)
				decode_expect(in->name, in->xz.p, in->xz.n, &in->data, 1, threads,
				              ch, mix(i, (uint64_t)threads * 8 + (uint64_t)ch), 0);
	}
}

/* More compressed input than the decoder's input ring (12 MiB) holds, all of
 * it incompressible: the ring wraps, the download waits for room, and a
 * block longer than the ring streams through it while it decodes. */
static void test_ring(void)
{
	const size_t mib = 1024 * 1024, n = 28 * mib + 4097;
	const size_t block[] = {3 * mib, 14 * mib};
	struct buf data = {0};
	uint64_t r = mix(17, 3);
	buf_reserve(&data, n + 8);
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = xs(&r);
		memcpy(data.p + i, &v, 8);
	}
	data.n = n;
	for (size_t b = 0; b < sizeof(block) / sizeof(block[0]); b++) {
		struct buf xz = {0};
		char name[64];
		enc_mt(&xz, data.p, data.n, block[b], 0, b ? LZMA_CHECK_CRC32 : LZMA_CHECK_CRC64);
		EXPECT(xz.n > 24 * mib, "ring: only %zu bytes of xz", xz.n);
		snprintf(name, sizeof(name), "ring, %zu MiB blocks", block[b] / mib);
		for (int threads = 2; threads <= 3; threads++) {
			decode_expect(name, xz.p, xz.n, &data, 1, threads, CH_RANDOM,
			              mix(b, (uint64_t)threads), 0);
			decode_expect(name, xz.p, xz.n, &data, 1, threads, CH_WHOLE,
			              mix(b, (uint64_t)threads + 4), 0);
		}
		buf_free(&xz);
	}
	buf_free(&data);
}

/* ---- where things are in a stream (for the damaged inputs) ---- */

struct rec {
	lzma_vli unpadded, usize;
};

struct layout {
	size_t nrec;
	struct rec *rec;
	size_t *blk;       /* offset of each block */
	size_t check_size; /* of each block's check field */
	lzma_check check;
	size_t index_off, index_len, footer_off;
};

static void layout_free(struct layout *l)
{
	free(l->rec);
	free(l->blk);
}

/* The stream that ends at p + n (no padding after it). */
static void parse_stream(const unsigned char *p, size_t n, struct layout *l)
{
	lzma_stream_flags fl;
	size_t pos, off = LZMA_STREAM_HEADER_SIZE;
	lzma_vli count;

	memset(l, 0, sizeof(*l));
	if (n < 2 * LZMA_STREAM_HEADER_SIZE ||
	    lzma_stream_footer_decode(&fl, p + n - LZMA_STREAM_HEADER_SIZE) != LZMA_OK)
		abort();
	l->footer_off = n - LZMA_STREAM_HEADER_SIZE;
	l->index_len = (size_t)fl.backward_size;
	l->index_off = l->footer_off - l->index_len;
	l->check = fl.check;
	l->check_size = lzma_check_size(fl.check);
	pos = l->index_off + 1;
	if (p[l->index_off] != 0 ||
	    lzma_vli_decode(&count, NULL, p, &pos, l->footer_off) != LZMA_OK)
		abort();
	l->nrec = (size_t)count;
	l->rec = calloc(l->nrec + 1, sizeof(*l->rec));
	l->blk = calloc(l->nrec + 1, sizeof(*l->blk));
	if (!l->rec || !l->blk)
		abort();
	for (size_t i = 0; i < l->nrec; i++) {
		if (lzma_vli_decode(&l->rec[i].unpadded, NULL, p, &pos, l->footer_off) != LZMA_OK ||
		    lzma_vli_decode(&l->rec[i].usize, NULL, p, &pos, l->footer_off) != LZMA_OK)
			abort();
		l->blk[i] = off;
		off += (size_t)(l->rec[i].unpadded + 3) / 4 * 4;
	}
	if (off != l->index_off)
		abort();
}

/* Write the index of recs (and the stream footer) in place of the stream's. */
static void rewrite_index(struct buf *xz, const struct layout *l, const struct rec *recs,
                          size_t nrec)
{
	unsigned char v[LZMA_VLI_BYTES_MAX], foot[LZMA_STREAM_HEADER_SIZE];
	lzma_stream_flags fl;
	size_t vn, start;
	uint32_t crc;

	xz->n = l->index_off;
	start = xz->n;
	buf_add(xz, "", 1);
	vn = 0;
	lzma_vli_encode(nrec, NULL, v, &vn, sizeof(v));
	buf_add(xz, v, vn);
	for (size_t i = 0; i < nrec; i++) {
		vn = 0;
		lzma_vli_encode(recs[i].unpadded, NULL, v, &vn, sizeof(v));
		lzma_vli_encode(recs[i].usize, NULL, v, &vn, sizeof(v));
		buf_add(xz, v, vn);
	}
	while ((xz->n - start) % 4)
		buf_add(xz, "", 1);
	crc = lzma_crc32(xz->p + start, xz->n - start, 0);
	for (int i = 0; i < 4; i++)
		v[i] = (unsigned char)(crc >> (8 * i));
	buf_add(xz, v, 4);
	memset(&fl, 0, sizeof(fl));
	fl.check = l->check;
	fl.backward_size = xz->n - start;
	if (lzma_stream_footer_encode(&fl, foot) != LZMA_OK)
		abort();
	buf_add(xz, foot, sizeof(foot));
}

/* A small file of 3 full 4 KiB blocks and a short one. */
static void make_small(struct buf *data, struct buf *xz, lzma_check check, uint64_t seed)
{
	gen(data, 3 * 4096 + 1000, seed);
	enc_mt(xz, data->p, data->n, 4096, 0, check);
}

/* Every prefix of the small file, a sample of prefixes of a big one: all fail. */
static void test_truncated(void)
{
	struct buf data = {0}, xz = {0};
	const struct input *big = &inputs[in_mt100k];
	struct layout l;
	int bad;
	uint64_t r = 77;

	make_small(&data, &xz, LZMA_CHECK_CRC64, 60);
	for (int threads = 1; threads <= 3; threads++) {
		bad = 0;
		for (size_t n = 0; n < xz.n; n++) {
			int ch = n % 3 ? CH_WHOLE : CH_RANDOM;
			if (!decode_expect("small file, truncated", xz.p, n, &data, 0, threads, ch,
			                   mix(n, (uint64_t)threads), bad < 3))
				bad++;
		}
		EXPECT(!bad, "%d of the %zu prefixes of the small file (%zu bytes), %d thread(s)",
		       bad, xz.n, xz.n, threads);
	}

	/* The big one: at each block's start, inside its header, data and
	 * check, in the index and footer, and at random. */
	parse_stream(big->xz.p, big->xz.n, &l);
	for (int threads = 1; threads <= 3; threads++) {
		size_t cuts[64], nc = 0;
		bad = 0;
		for (size_t b = 0; b < l.nrec && nc < 24; b += 5) {
			size_t hs = (size_t)(big->xz.p[l.blk[b]] + 1) * 4;
			cuts[nc++] = l.blk[b];
			cuts[nc++] = l.blk[b] + hs - 1;
			cuts[nc++] = l.blk[b] + hs + 100;
			cuts[nc++] = l.blk[b] + (size_t)l.rec[b].unpadded - 1;
		}
		cuts[nc++] = 1;
		cuts[nc++] = LZMA_STREAM_HEADER_SIZE;
		cuts[nc++] = l.index_off;
		cuts[nc++] = l.index_off + 3;
		cuts[nc++] = l.footer_off;
		cuts[nc++] = big->xz.n - 1;
		while (nc < sizeof(cuts) / sizeof(cuts[0]) - 20)
			cuts[nc++] = xs(&r) % big->xz.n;
		for (size_t i = 0; i < nc; i++)
			if (!decode_expect("big file, truncated", big->xz.p, cuts[i], &big->data, 0,
			                   threads, (int)(i % CH_N), mix(i, 5), bad < 3))
				bad++;
		EXPECT(!bad, "%d of %zu prefixes of %s, %d thread(s)", bad, nc, big->name, threads);
	}
	layout_free(&l);

	/* A concatenation: cut near the end of each stream and in the padding
	 * (some cuts leave whole streams: compare with the reference). */
	{
		const struct input *cc = &inputs[in_concat];
		size_t ncut = 0;
		bad = 0;
		for (size_t end = 14; end <= cc->xz.n; end++) {
			if (memcmp(cc->xz.p + end - 2, "YZ", 2) ||
			    (end < cc->xz.n && cc->xz.p[end] != 0 && cc->xz.p[end] != 0xfd))
				continue;
			for (size_t n = end - 14; n <= end + 13 && n <= cc->xz.n; n++) {
				char what[64];
				snprintf(what, sizeof(what), "concatenation cut at %zu", n);
				for (int threads = 1; threads <= 3; threads++)
					if (!decode_like_ref(what, cc->xz.p, n, threads, CH_RANDOM,
					                     mix(n, (uint64_t)threads), NULL))
						bad++;
				ncut++;
			}
		}
		EXPECT(ncut >= 3 * 20, "only %zu cuts near stream ends", ncut);
		EXPECT(!bad, "%d cuts of the concatenation", bad);
	}
	buf_free(&data);
	buf_free(&xz);
}

/* A byte flipped at each position of interest; the verdict (and output) of
 * the reference decoder on the same bytes. */
static int flip_at(const char *name, const struct buf *xz, size_t pos, unsigned char x,
                   int *ok_count)
{
	struct buf m = {0};
	char what[160];
	int bad = 0;
	lzma_ret r = LZMA_OK;
	buf_add(&m, xz->p, xz->n);
	m.p[pos] ^= x;
	snprintf(what, sizeof(what), "%s, byte %zu ^ 0x%02x", name, pos, x);
	for (int threads = 1; threads <= 3; threads++)
		if (!decode_like_ref(what, m.p, m.n, threads, (int)((pos + (size_t)threads) % CH_N),
		                     mix(pos, (uint64_t)threads), &r))
			bad++;
	if (r == LZMA_STREAM_END)
		(*ok_count)++;
	buf_free(&m);
	return bad;
}

static const unsigned char flips[] = {0x01, 0x80, 0xff, 0x10, 0x04};

/* Positions in one stream at base: each field of the header, of each block
 * (header, data, padding, check), of the index and of the footer. */
static int flip_stream(const char *name, const struct buf *xz, size_t base, size_t len,
                       size_t data_step, int *ok_count, size_t *tried)
{
	struct layout l;
	int bad = 0;
	size_t k = 0;
	parse_stream(xz->p + base, len, &l);
	for (size_t pos = 0; pos < len; pos++) {
		int in_data = 0;
		for (size_t b = 0; b < l.nrec; b++) {
			size_t hs = (size_t)(xz->p[base + l.blk[b]] + 1) * 4;
			size_t end = l.blk[b] + (size_t)l.rec[b].unpadded - l.check_size;
			if (pos >= l.blk[b] + hs && pos < end)
				in_data = 1;
		}
		if (in_data && (pos * 2654435761u) % data_step)
			continue;
		bad += flip_at(name, xz, base + pos, flips[k++ % sizeof(flips)], ok_count);
		(*tried)++;
	}
	layout_free(&l);
	return bad;
}

static void test_flipped(void)
{
	struct buf data = {0}, xz = {0}, none = {0}, nonexz = {0}, sha = {0}, shaxz = {0};
	struct buf cat = {0};
	uint64_t r = 5;
	int bad, oks = 0;
	size_t tried = 0;

	make_small(&data, &xz, LZMA_CHECK_CRC64, 61);
	bad = flip_stream("small file (crc64)", &xz, 0, xz.n, 37, &oks, &tried);

	/* No check: a flip in stored (incompressible) data is not caught. */
	buf_zeros(&none, 5000);
	gen(&none, 3 * 4096 + 500 - 5000, 62);
	for (size_t i = 4000; i < 9000; i++) /* block 2: random, stored */
		none.p[i] = (unsigned char)(xs(&r) >> 32);
	enc_mt(&nonexz, none.p, none.n, 4096, 0, LZMA_CHECK_NONE);
	bad += flip_stream("small file (no check)", &nonexz, 0, nonexz.n, 53, &oks, &tried);

	gen(&sha, 20000, 63);
	enc_easy(&shaxz, sha.p, sha.n, 0, LZMA_CHECK_SHA256);
	bad += flip_stream("one block (sha256)", &shaxz, 0, shaxz.n, 211, &oks, &tried);

	/* Padding between and after streams. */
	buf_add(&cat, xz.p, xz.n);
	buf_zeros(&cat, 4);
	buf_add(&cat, shaxz.p, shaxz.n);
	buf_zeros(&cat, 8);
	for (size_t i = 0; i < 4; i++) {
		bad += flip_at("concatenation, padding", &cat, xz.n + i, flips[i], &oks);
		bad += flip_at("concatenation, padding", &cat, xz.n + 4 + shaxz.n + i, flips[i],
		               &oks);
		bad += flip_at("concatenation, padding", &cat, xz.n + 4 + shaxz.n + 4 + i, flips[i],
		               &oks);
		tried += 3;
	}
	bad += flip_stream("concatenation, second stream", &cat, xz.n + 4, shaxz.n, 997, &oks,
	                   &tried);
	EXPECT(!bad, "%d of %zu flipped bytes decode unlike the reference", bad, tried);
	/* The no-check file must have produced some undetected flips. */
	EXPECT(oks > 0, "no flip went unnoticed: %d", oks);
	printf("flipped bytes: %zu inputs, %d decode fine in the reference too\n", tried, oks);
	buf_free(&data);
	buf_free(&xz);
	buf_free(&none);
	buf_free(&nonexz);
	buf_free(&sha);
	buf_free(&shaxz);
	buf_free(&cat);
}

/* What may follow a stream: 4 or 8 zeros; not 1-3 or 5, and nothing else. */
static void test_trailing(void)
{
	static const struct {
		const char *what;
		const char *bytes;
		size_t n;
		int ok;
	} tails[] = {
	        {"4 zeros", "\0\0\0\0", 4, 1},
	        {"8 zeros", "\0\0\0\0\0\0\0\0", 8, 1},
	        {"1 zero", "\0", 1, 0},
	        {"2 zeros", "\0\0", 2, 0},
	        {"3 zeros", "\0\0\0", 3, 0},
	        {"5 zeros", "\0\0\0\0\0", 5, 0},
	        {"one byte 0x01", "\1", 1, 0},
	        {"text", "garbage\n", 8, 0},
	        {"4 zeros then 0x01", "\0\0\0\0\1", 5, 0},
	        {"4 zeros then 4 x 0xff", "\0\0\0\0\xff\xff\xff\xff", 8, 0},
	        {"a stream header's magic",
	         "\xfd"
	         "7zXZ",
	         6, 0},
	        {"a whole stream header",
	         "\xfd"
	         "7zXZ\0\0\0\xff\x12\xd9\x41",
	         12, 0},
	        {"magic then garbage",
	         "\xfd"
	         "7zXZ\0\0\0\0\0\0\0",
	         12, 0},
	};
	const struct input *srcs[] = {&inputs[in_easy], &inputs[in_mt_crc32], &inputs[in_empty]};
	for (size_t s = 0; s < sizeof(srcs) / sizeof(srcs[0]); s++) {
		for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
			struct buf m = {0};
			char what[160];
			lzma_ret r;
			buf_add(&m, srcs[s]->xz.p, srcs[s]->xz.n);
			buf_add(&m, tails[i].bytes, tails[i].n);
			snprintf(what, sizeof(what), "%s + %s", srcs[s]->name, tails[i].what);
			for (int threads = 1; threads <= 3; threads++) {
				decode_like_ref(what, m.p, m.n, threads,
				                threads == 2 ? CH_ONE : CH_RANDOM,
				                mix(i, (uint64_t)threads), &r);
				EXPECT((r == LZMA_STREAM_END) == tails[i].ok,
				       "%s: the reference gives %d", what, (int)r);
			}
			buf_free(&m);
		}
	}
	/* Nothing, padding only, padding before a stream. */
	{
		struct buf m = {0};
		lzma_ret r;
		for (int threads = 1; threads <= 3; threads++) {
			decode_like_ref("no input at all", (const unsigned char *)"", 0, threads,
			                CH_WHOLE, 1, &r);
			EXPECT(r != LZMA_STREAM_END, "empty input: reference %d", (int)r);
			decode_like_ref("4 zeros only", (const unsigned char *)"\0\0\0\0", 4,
			                threads, CH_ONE, 2, &r);
			EXPECT(r != LZMA_STREAM_END, "4 zeros: reference %d", (int)r);
		}
		buf_zeros(&m, 4);
		buf_add(&m, inputs[in_mt_crc32].xz.p, inputs[in_mt_crc32].xz.n);
		for (int threads = 1; threads <= 3; threads++)
			decode_like_ref("4 zeros before a stream", m.p, m.n, threads, CH_RANDOM, 3,
			                &r);
		buf_free(&m);
	}
}

/* An index that does not match the blocks (CRC32 fixed, footer rewritten). */
static void test_index(void)
{
	struct buf data = {0}, xz = {0};
	struct layout l;
	enum { SAME, LAST_PLUS, PLUS_MINUS, SWAP, UNPADDED, DROP, DUP, TOTAL_PLUS, NV };
	static const char *const names[] = {
	        "the same index, rewritten",
	        "last record's uncompressed size + 1",
	        "first record + 1, second - 1 (same total)",
	        "first and last records swapped",
	        "unpadded sizes + 4 and - 4 (same total)",
	        "last record dropped",
	        "first record twice",
	        "one record's uncompressed size + 4096 (the stream's total)",
	};

	make_small(&data, &xz, LZMA_CHECK_CRC32, 64);
	parse_stream(xz.p, xz.n, &l);
	EXPECT(l.nrec == 4, "small file: %zu blocks", l.nrec);
	for (int v = 0; v < NV && l.nrec == 4; v++) {
		struct rec recs[8];
		size_t nrec = l.nrec;
		struct buf m = {0};
		lzma_ret r = LZMA_OK;
		char what[160];
		memcpy(recs, l.rec, nrec * sizeof(*recs));
		switch (v) {
		case LAST_PLUS: recs[nrec - 1].usize++; break;
		case PLUS_MINUS:
			recs[0].usize++;
			recs[1].usize--;
			break;
		case SWAP:
			recs[0] = l.rec[nrec - 1];
			recs[nrec - 1] = l.rec[0];
			break;
		case UNPADDED:
			recs[0].unpadded += 4;
			recs[1].unpadded -= 4;
			break;
		case DROP: nrec--; break;
		case DUP:
			memmove(recs + 1, recs, nrec * sizeof(*recs));
			nrec++;
			break;
		case TOTAL_PLUS: recs[1].usize += 4096; break;
		default: break;
		}
		buf_add(&m, xz.p, xz.n);
		rewrite_index(&m, &l, recs, nrec);
		snprintf(what, sizeof(what), "index: %s", names[v]);
		for (int threads = 1; threads <= 3; threads++) {
			decode_like_ref(what, m.p, m.n, threads, (v + threads) % CH_N,
			                mix((uint64_t)v, (uint64_t)threads), &r);
			EXPECT((r == LZMA_STREAM_END) == (v == SAME), "%s: the reference gives %d",
			       what, (int)r);
		}
		/* The same in the first of two streams (its index is checked
		 * before the second stream's blocks are output). */
		buf_zeros(&m, 4);
		buf_add(&m, xz.p, xz.n);
		snprintf(what, sizeof(what), "index of the first of two streams: %s", names[v]);
		for (int threads = 1; threads <= 3; threads++)
			decode_like_ref(what, m.p, m.n, threads, CH_WHOLE, 9, NULL);
		buf_free(&m);
	}
	layout_free(&l);
	buf_free(&data);
	buf_free(&xz);
}

/* Check IDs liblzma does not implement (it skips their fields), and stream
 * flags that differ between header and footer. */
static void put_flags(unsigned char *field, unsigned check_id)
{
	field[0] = 0;
	field[1] = (unsigned char)check_id;
}

static void set_check_id(struct buf *xz, unsigned hdr_id, unsigned foot_id)
{
	unsigned char *h = xz->p, *f = xz->p + xz->n - LZMA_STREAM_HEADER_SIZE;
	uint32_t crc;
	put_flags(h + 6, hdr_id);
	crc = lzma_crc32(h + 6, 2, 0);
	for (int i = 0; i < 4; i++)
		h[8 + i] = (unsigned char)(crc >> (8 * i));
	put_flags(f + 8, foot_id);
	crc = lzma_crc32(f + 4, 6, 0);
	for (int i = 0; i < 4; i++)
		f[i] = (unsigned char)(crc >> (8 * i));
}

static void test_check_ids(void)
{
	static const struct {
		lzma_check from;
		unsigned hdr, foot;
		int ok;
	} cases[] = {
	        {LZMA_CHECK_CRC32, 1, 1, 1},       {LZMA_CHECK_CRC32, 2, 2, 1},
	        {LZMA_CHECK_CRC32, 3, 3, 1},       {LZMA_CHECK_CRC64, 5, 5, 1},
	        {LZMA_CHECK_CRC64, 6, 6, 1},       {LZMA_CHECK_SHA256, 11, 11, 1},
	        {LZMA_CHECK_SHA256, 12, 12, 1},    {LZMA_CHECK_CRC32, 1, 2, 0},
	        {LZMA_CHECK_CRC32, 2, 1, 0},       {LZMA_CHECK_CRC32, 2, 3, 0},
	        {LZMA_CHECK_CRC64, 4, 1, 0},       {LZMA_CHECK_CRC32, 17, 17, 0},
	        {LZMA_CHECK_CRC32, 0x21, 0x21, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct buf data = {0}, xz = {0};
		char what[160];
		lzma_ret r;
		make_small(&data, &xz, cases[i].from, 65 + i);
		set_check_id(&xz, cases[i].hdr, cases[i].foot);
		snprintf(what, sizeof(what), "check id %u in the header, %u in the footer (was %d)",
		         cases[i].hdr, cases[i].foot, (int)cases[i].from);
		for (int threads = 1; threads <= 3; threads++) {
			decode_like_ref(what, xz.p, xz.n, threads, CH_RANDOM, mix(i, 3), &r);
			EXPECT((r == LZMA_STREAM_END) == cases[i].ok, "%s: the reference gives %d",
			       what, (int)r);
		}
		/* and the same in the second stream of two */
		{
			struct buf m = {0};
			enc_easy(&m, "abc", 3, 0, LZMA_CHECK_CRC32);
			buf_add(&m, xz.p, xz.n);
			for (int threads = 1; threads <= 3; threads++)
				decode_like_ref(what, m.p, m.n, threads, CH_WHOLE, 4, NULL);
			buf_free(&m);
		}
		buf_free(&data);
		buf_free(&xz);
	}
}

/* The output callback fails ("disk full") after some output: feed or
 * finish returns that error; nothing is output after it; decomp_free
 * returns promptly (ASan reports what it leaks). */
static void test_output_fails(void)
{
	const struct input *big = &inputs[in_big];
	static const size_t at[] = {0, 200000, (1u << 20) + 1, (3u << 20) - 5};
	double worst = 0;
	for (int threads = 1; threads <= 3; threads++)
		for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
			for (int where = FAIL_BUFFER; where <= FAIL_COMMIT; where++)
				for (int ch = CH_RANDOM; ch <= CH_WHOLE; ch++) {
					struct sink s;
					struct result res;
					char what[160];
					uint64_t seed = mix(i * 4 + (size_t)where,
					                    (uint64_t)threads * 8 + (uint64_t)ch);
					snprintf(what, sizeof(what),
					         "output fails in %s at %zu, %d thread(s), %s "
					         "chunks",
					         where == FAIL_BUFFER ? "buffer" : "commit", at[i],
					         threads, ch_name[ch]);
					sink_init(&s, seed);
					s.fail_in = where;
					s.fail_at = at[i];
					s.pause_ms = 20; /* a worker that goes on shows */
					res = run_decomp(DECOMP_XZ, big->xz.p, big->xz.n, threads,
					                 ch, seed, &s);
					EXPECT(res.rc == -1 && res.at > 0 && s.failed,
					       "%s: rc %d, failed %d", what, res.rc, s.failed);
					EXPECT(res.e.code == ERR_IO, "%s: code %d", what,
					       (int)res.e.code);
					CHECK_STR(res.e.msg, "disk full");
					EXPECT(prefix_of(s.got.p, s.got.n, big->data.p,
					                 big->data.n),
					       "%s: the output is not the data's start", what);
					EXPECT(s.got.n <= at[i] + 200000, "%s: %zu bytes out", what,
					       s.got.n);
					EXPECT(res.free_s < 5, "%s: decomp_free took %.2f s", what,
					       res.free_s);
					if (res.free_s > worst)
						worst = res.free_s;
					check_sink(&s, what);
					sink_fini(&s);
				}
	printf("output fails: decomp_free took at most %.3f s\n", worst);
}

/* Stopped midway (an interrupted sync): decomp_free without finish. */
static void test_abandon(void)
{
	const struct input *big = &inputs[in_big];
	double worst = 0;
	for (int threads = 1; threads <= 4; threads++) {
		const size_t fed[] = {0, 100, 70000, big->xz.n / 2, big->xz.n - 1};
		for (size_t i = 0; i < sizeof(fed) / sizeof(fed[0]); i++) {
			struct sink s;
			struct decomp_out out = {sink_buffer, sink_commit, &s};
			struct decomp *d;
			struct err e;
			double t;
			sink_init(&s, i);
			d = decomp_new(DECOMP_XZ, threads, &out, &e);
			CHECK(d != NULL);
			if (!d)
				continue;
			EXPECT(!decomp_feed(d, big->xz.p, fed[i], &e), "abandon: feed: %s", e.msg);
			/* worker threads may still be writing what they decoded: the output
			 * is theirs until decomp_free returns, and not a call after */
			t = now();
			decomp_free(d);
			t = now() - t;
			s.closed = s.freeing = 1;
			{
				struct timespec ts = {0, 20 * 1000000L};
				nanosleep(&ts, NULL);
			}
			EXPECT(t < 5,
			       "abandon after %zu bytes, %d threads: decomp_free took %.2f s",
			       fed[i], threads, t);
			if (t > worst)
				worst = t;
			EXPECT(prefix_of(s.got.p, s.got.n, big->data.p, big->data.n),
			       "abandon: output not a prefix");
			check_sink(&s, "abandoned"); /* no output calls in decomp_free */
			sink_fini(&s);
		}
	}
	printf("abandoned: decomp_free took at most %.3f s\n", worst);
}

/* ---- gzip, zstd, none ---- */

static void gzip_member(struct buf *out, const void *in, size_t n)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		abort();
	buf_reserve(out, deflateBound(&z, n));
	z.next_in = (unsigned char *)in;
	z.avail_in = (uInt)n;
	z.next_out = out->p + out->n;
	z.avail_out = (uInt)(out->cap - out->n);
	if (deflate(&z, Z_FINISH) != Z_STREAM_END)
		abort();
	out->n = out->cap - z.avail_out;
	deflateEnd(&z);
}

static void zstd_frame(struct buf *out, const void *in, size_t n)
{
	size_t r;
	buf_reserve(out, ZSTD_compressBound(n));
	r = ZSTD_compress(out->p + out->n, out->cap - out->n, in, n, 1);
	if (ZSTD_isError(r))
		abort();
	out->n += r;
}

static void test_other_kinds(void)
{
	struct buf a = {0}, b = {0}, both = {0}, gz = {0}, zs = {0};
	static const enum decomp_kind kinds[] = {DECOMP_GZIP, DECOMP_ZSTD, DECOMP_NONE};
	static const char *const names[] = {"gzip", "zstd", "none"};

	gen(&a, 700001, 70);
	gen(&b, 65537, 71);
	buf_add(&both, a.p, a.n);
	buf_add(&both, b.p, b.n);
	gzip_member(&gz, a.p, a.n);
	gzip_member(&gz, b.p, b.n); /* two members, as `cat a.gz b.gz` */
	zstd_frame(&zs, a.p, a.n);
	zstd_frame(&zs, b.p, b.n);
	for (size_t k = 0; k < 3; k++) {
		const struct buf *in = k == 0 ? &gz : k == 1 ? &zs : &both;
		for (int ch = 0; ch < CH_N; ch++) {
			struct sink s;
			struct result res;
			sink_init(&s, (uint64_t)ch);
			res = run_decomp(kinds[k], in->p, in->n, 1, ch, (uint64_t)ch, &s);
			EXPECT(res.rc == 0 && same(s.got.p, s.got.n, both.p, both.n),
			       "%s, %s chunks: rc %d (%s), %zu bytes out, want %zu", names[k],
			       ch_name[ch], res.rc, res.e.msg, s.got.n, both.n);
			check_sink(&s, names[k]);
			sink_fini(&s);
		}
		if (kinds[k] == DECOMP_NONE)
			continue;
		/* truncated, trailing garbage, nothing at all */
		{
			size_t cuts[] = {0, 1, 10, in->n / 2, in->n - 1, in->n + 1};
			for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
				struct buf m = {0};
				struct sink s;
				struct result res;
				buf_add(&m, in->p, cuts[i] <= in->n ? cuts[i] : in->n);
				if (cuts[i] > in->n)
					buf_add(&m, "\1\2\3\4", 4);
				sink_init(&s, i);
				res = run_decomp(kinds[k], m.p, m.n, 1, CH_RANDOM, i, &s);
				EXPECT(res.rc == -1 && res.e.code == ERR_INTEGRITY,
				       "%s, %zu bytes of %zu: rc %d, code %d (%s)", names[k], m.n,
				       in->n, res.rc, (int)res.e.code, res.e.msg);
				check_sink(&s, names[k]);
				sink_fini(&s);
				buf_free(&m);
			}
		}
	}
	{
		struct sink s;
		struct result res;
		sink_init(&s, 0);
		res = run_decomp(DECOMP_NONE, NULL, 0, 1, CH_WHOLE, 0, &s);
		EXPECT(res.rc == 0 && s.got.n == 0, "none, empty: rc %d", res.rc);
		sink_fini(&s);
	}
	buf_free(&a);
	buf_free(&b);
	buf_free(&both);
	buf_free(&gz);
	buf_free(&zs);
}

static void timed(const char *name, void (*fn)(void))
{
	const char *only = getenv("TEST_DECOMPRESS_ONLY"); /* e.g. "index,trailing" */
	double t = now();
	int before = check_failures;
	if (only && !strstr(only, name))
		return;
	fn();
	printf("%-16s %6.2f s%s\n", name, now() - t, check_failures > before ? "  FAILED" : "");
	fflush(stdout);
}

int main(void)
{
	double t = now();
	make_inputs();
	printf("%-16s %6.2f s (%zu inputs)\n", "inputs", now() - t, ninputs);
	timed("roundtrip", test_roundtrip);
	timed("ring", test_ring);
	timed("truncated", test_truncated);
	timed("flipped", test_flipped);
	timed("trailing", test_trailing);
	timed("index", test_index);
	timed("check ids", test_check_ids);
	timed("output fails", test_output_fails);
	timed("abandon", test_abandon);
	timed("gzip zstd none", test_other_kinds);
	for (size_t i = 0; i < ninputs; i++) {
		buf_free(&inputs[i].data);
		buf_free(&inputs[i].xz);
	}
	return check_report("decompress");
}
