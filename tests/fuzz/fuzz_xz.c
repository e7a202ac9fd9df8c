/* libFuzzer target: sync/decompress's xz decoder (1 thread: liblzma's stream
 * decoder; 2-3: sync/xz_blocks.c) against liblzma's stream decoder with
 * LZMA_CONCATENATED, differentially.  The first byte picks the threads
 * (1..3, low 2 bits), the output buffers' sizes (bits 2-3: 64 KiB; 1 byte,
 * for outputs up to 256 KiB; random 1..300; random 1..70000) and how the
 * rest is fed (bits 4-5: whole, two halves, random chunks of 1..512, 1 byte
 * at a time); the rest is the xz input.  abort() when one decoder accepts
 * what the other rejects, when the outputs of a success differ, or when
 * decomp fails with another code than ERR_INTEGRITY.  What either wrote
 * before failing is not compared: even liblzma alone writes other bytes
 * before a data error in a block with the x86 filter when its output
 * buffers are smaller.
 *
 * Limits: output past 8 MiB makes the callback fail (no verdict then); an
 * input whose blocks need more than 64 MiB of decoder memory in the
 * reference (LZMA_MEMLIMIT_ERROR) is skipped. */
#include "common/err.h"
#include "sync/decompress.h"

#include <lzma.h>
#include <sanitizer/asan_interface.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OUT_CAP  (8u << 20)
#define MEMLIMIT (64u << 20)

static unsigned char *ref_out, *got_out;

/* The output callback: buffers carved from got_out, the rest of which stays
 * poisoned, so ASan reports a write past the buffer or after its commit. */
struct sink {
	size_t len, avail;
	int pattern;
	uint32_t rng;
	const unsigned char *want; /* the reference's output, or NULL */
	size_t want_len;
	int differs, capped;
	atomic_int busy;
};

static uint32_t next(uint32_t *r)
{
	*r ^= *r << 13;
	*r ^= *r >> 17;
	*r ^= *r << 5;
	return *r;
}

static int sink_buffer(void *ud, void **buf, size_t *avail, struct err *e)
{
	struct sink *s = ud;
	size_t n;
	if (atomic_fetch_add(&s->busy, 1)) /* output calls must never overlap */
		abort();
	if (s->avail) /* a buffer handed out again without its commit */
		ASAN_POISON_MEMORY_REGION(got_out + s->len, s->avail);
	switch (s->pattern) {
	case 0: n = 65536; break;
	case 1: n = 1; break;
	case 2: n = 1 + next(&s->rng) % 300; break;
	default: n = 1 + next(&s->rng) % 70000; break;
	}
	if (n > OUT_CAP - s->len)
		n = OUT_CAP - s->len;
	s->avail = n;
	atomic_fetch_sub(&s->busy, 1);
	if (!n) {
		s->capped = 1;
		return err_set(e, ERR_IO, "fuzz: output over %u bytes", OUT_CAP);
	}
	ASAN_UNPOISON_MEMORY_REGION(got_out + s->len, n);
	*buf = got_out + s->len;
	*avail = n;
	return 0;
}

static int sink_commit(void *ud, size_t n, struct err *e)
{
	struct sink *s = ud;
	(void)e;
	if (atomic_fetch_add(&s->busy, 1) || n > s->avail)
		abort();
	if (s->want && !s->differs &&
	    (s->len + n > s->want_len || memcmp(got_out + s->len, s->want + s->len, n)))
		s->differs = 1;
	ASAN_POISON_MEMORY_REGION(got_out + s->len, s->avail);
	s->len += n;
	s->avail = 0;
	atomic_fetch_sub(&s->busy, 1);
	return 0;
}

/* liblzma's stream decoder on the whole input: its return code, its output
 * in ref_out; *over when the output did not fit. */
static lzma_ret reference(const uint8_t *in, size_t n, size_t *len, int *over)
{
	lzma_stream s = LZMA_STREAM_INIT;
	lzma_ret r = lzma_stream_decoder(&s, MEMLIMIT, LZMA_CONCATENATED);
	if (r != LZMA_OK)
		abort();
	s.next_in = in;
	s.avail_in = n;
	s.next_out = ref_out;
	s.avail_out = OUT_CAP;
	do
		r = lzma_code(&s, LZMA_FINISH);
	while (r == LZMA_OK && s.avail_out);
	*len = OUT_CAP - s.avail_out;
	*over = r == LZMA_OK || !s.avail_out;
	lzma_end(&s);
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sink s;
	struct decomp_out out = {sink_buffer, sink_commit, &s};
	struct decomp *d;
	struct err e = {0};
	const uint8_t *in = data + 1;
	size_t n, pos = 0, ref_len;
	int threads, feeding, rc = -1, over;
	uint32_t rng;
	lzma_ret ref;

	if (!size)
		return 0;
	if (!ref_out) {
		ref_out = malloc(OUT_CAP);
		got_out = malloc(OUT_CAP);
		if (!ref_out || !got_out)
			abort();
		ASAN_POISON_MEMORY_REGION(got_out, OUT_CAP);
	}
	n = size - 1;
	threads = 1 + (data[0] & 3) % 3;
	feeding = (data[0] >> 4) & 3;
	rng = 0x9e3779b9u ^ data[0] ^ (uint32_t)size << 8;
	if (!rng)
		rng = 1;

	ref = reference(in, n, &ref_len, &over);
	if (ref == LZMA_MEMLIMIT_ERROR)
		return 0;

	memset(&s, 0, sizeof(s));
	atomic_init(&s.busy, 0);
	s.pattern = (data[0] >> 2) & 3;
	if (s.pattern == 1 && (over || ref_len > (256u << 10)))
		s.pattern = 2; /* 1-byte buffers for small outputs only: speed */
	s.rng = rng;
	if (!over) {
		s.want = ref_out;
		s.want_len = ref_len;
	}
	d = decomp_new(DECOMP_XZ, threads, &out, &e);
	if (!d)
		abort();
	while (pos < n) {
		size_t c = n - pos;
		if (feeding == 1 && pos < n / 2)
			c = n / 2 - pos;
		else if (feeding == 2)
			c = 1 + next(&rng) % 512;
		else if (feeding == 3)
			c = 1;
		if (c > n - pos)
			c = n - pos;
		if (decomp_feed(d, in + pos, c, &e))
			goto out;
		pos += c;
	}
	rc = decomp_finish(d, &e);
out:
	decomp_free(d);
	if (s.avail) /* failed between buffer and commit */
		ASAN_POISON_MEMORY_REGION(got_out + s.len, s.avail);

	if (over)
		return 0; /* no verdict past the cap */
	if (s.capped) {
		if (ref == LZMA_STREAM_END)
			abort(); /* more output than the reference's */
		return 0;
	}
	if (rc && e.code == ERR_IO && strstr(e.msg, "out of memory"))
		return 0;
	if (rc && e.code != ERR_INTEGRITY)
		abort();
	if ((rc == 0) != (ref == LZMA_STREAM_END))
		abort(); /* one accepts what the other rejects */
	if (rc == 0 && (s.differs || s.len != ref_len))
		abort(); /* both succeed, with different output */
	return 0;
}
