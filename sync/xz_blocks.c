/* Why not liblzma's threaded decoder: it gives every thread a buffer for its
 * whole block's output (24 MiB for xz -6 -T blocks) on top of its dictionary
 * and input, 95 MiB for two threads, and below its memlimit_threading it
 * falls back to one thread; sync keeps a job under 128 MiB.  Here only the
 * blocks behind the oldest one are staged, and only up to STAGE_MAX each:
 * the decoder of the oldest block writes straight into the upload's buffers.
 *
 * The container (stream header, block headers, index, footer, padding) is
 * parsed on the caller's thread with liblzma's own header, index and footer
 * decoders, in the order liblzma's stream decoder checks them. */
#include "sync/xz_blocks.h"

#include <lzma.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB (1024u * 1024u)
/* Output a block behind the oldest one may decode ahead of its turn.  Blocks
 * of xz -T are three dictionaries long (24 MiB at -6): half of one keeps two
 * threads busy, since the oldest block's thread has the other half left. */
#define STAGE_MAX (12u * MIB)
/* Compressed input of the blocks in flight, in one ring: to decode a block
 * ahead, the rest of the blocks before it must be read off the wire and kept.
 * The oldest block frees what it has consumed; a full ring makes the caller
 * wait, so a block of any size streams through.  A block behind the oldest
 * consumes at most the input of STAGE_MAX output, so a ring of half to one
 * compressed block lets both threads work: with 12 MiB as with 16, a 1 GiB
 * sync took 1.08-1.17 against 1.10-1.13 times `curl | xz -dc`, at 4 MiB
 * less peak RSS (tests/bench/sync.sh 1024 1, three rounds each, builds
 * alternating; tests/bench/README.md).  (Separate buffers of 1-18 MiB, malloc'ed and freed, left
 * glibc's heap 25 MiB larger.) */
#define RING_SIZE (12u * MIB)
#define RING_WAKE (256u * 1024u)
/* A block whose decoder needs more (a dictionary beyond 32 MiB: xz -8, -9)
 * is decoded on the caller's thread: two of those would not fit the job's
 * memory. */
#define PARALLEL_MEM_MAX (40u * MIB)

struct job {
	uint64_t seq; /* order among the jobs; x->front says whose output is due */
	lzma_block block;
	lzma_filter filters[LZMA_FILTERS_MAX + 1];
	uint64_t in_start; /* in the ring's stream: what follows the block header
	                    * (data, padding, check) */
	size_t in_len;
	size_t in_have; /* copied in so far (under x->mu) */
	size_t in_used; /* consumed by the decoder (under x->mu) */
	int refs;       /* the caller's thread while it fills in, the worker (under x->mu) */
	struct job *next;
};

struct stage {
	unsigned char *data;
	size_t len;
	struct stage *next;
};

enum parse_state {
	P_STREAM_HEADER,
	P_BLOCK_HEADER,
	P_BLOCK_INPUT, /* copying a job's input */
	P_INLINE,      /* decoding a block on this thread */
	P_INDEX,
	P_FOOTER,
	P_PADDING,
};

struct xz_blocks {
	struct decomp_out out;
	pthread_t *tids;
	int nthreads;

	/* the caller's thread only */
	enum parse_state st;
	unsigned char hbuf[1024]; /* a block header is at most 1024 bytes */
	size_t hlen, hneed;
	lzma_stream_flags flags;
	lzma_index_hash *ih;
	int first_stream;
	unsigned padding; /* zero bytes since the last footer */
	struct job *cur;  /* P_BLOCK_INPUT */
	lzma_stream inl;  /* P_INLINE */
	lzma_block inl_block;
	lzma_filter inl_filters[LZMA_FILTERS_MAX + 1];
	uint64_t next_seq;
	unsigned char *ring; /* RING_SIZE bytes, mapped at the first job */

	/* shared, under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* held by a worker through each output call: closing takes it */
	pthread_mutex_t out_mu;
	int out_closed;
	struct job *flight, *flight_tail; /* handed over, not done, in order */
	struct job *pending;              /* the first of them no worker took */
	uint64_t front;                   /* the job whose output is due */
	int inflight;
	uint64_t ring_in;     /* bytes ever copied into the ring */
	size_t ring_want;     /* the caller's thread waits for this much space */
	struct stage *stages; /* free stage buffers */
	int nstages;          /* made so far: at most nthreads - 1 */
	int stop;
	int failed;
	struct err ferr;
};

const char *xz_ret_text(int r)
{
	switch (r) {
	case LZMA_MEM_ERROR: return "out of memory";
	case LZMA_MEMLIMIT_ERROR: return "memory limit reached";
	case LZMA_FORMAT_ERROR: return "not an xz file";
	case LZMA_OPTIONS_ERROR: return "unsupported xz options";
	case LZMA_DATA_ERROR: return "corrupt xz data";
	case LZMA_BUF_ERROR: return "the xz stream is truncated";
	default: return "xz decoder error";
	}
}

static int lzma_fail(lzma_ret r, struct err *e)
{
	return err_set(e, r == LZMA_MEM_ERROR ? ERR_IO : ERR_INTEGRITY, "xz: %s", xz_ret_text(r));
}

/* The first failure wins; every waiter wakes up.  Under mu. */
static void fail_locked(struct xz_blocks *x, const struct err *e)
{
	if (!x->failed) {
		x->failed = 1;
		x->ferr = *e;
	}
	pthread_cond_broadcast(&x->cv);
}

static int failure(struct xz_blocks *x, struct err *e)
{
	int failed;
	pthread_mutex_lock(&x->mu);
	failed = x->failed;
	if (failed && e)
		*e = x->ferr;
	pthread_mutex_unlock(&x->mu);
	return failed ? -1 : 0;
}

/* A worker's turn at the output: 0 with out_mu held until its call is
 * over, 1 once the caller has closed the output. */
static int out_open(struct xz_blocks *x)
{
	pthread_mutex_lock(&x->out_mu);
	if (!x->out_closed)
		return 0;
	pthread_mutex_unlock(&x->out_mu);
	return 1;
}

/* After an error or in xz_blocks_free: no output call starts from now on,
 * and the one under way (if any) has ended. */
static void close_output(struct xz_blocks *x)
{
	pthread_mutex_lock(&x->out_mu);
	x->out_closed = 1;
	pthread_mutex_unlock(&x->out_mu);
}

/* Copy n staged bytes to the output: 0, -1 on error, 1 when closed. */
static int flush(struct xz_blocks *x, const unsigned char *d, size_t n, struct err *e)
{
	while (n) {
		void *buf;
		size_t avail;
		int rc = out_open(x);
		if (rc)
			return rc;
		rc = x->out.buffer(x->out.ud, &buf, &avail, e);
		if (!rc) {
			if (avail > n)
				avail = n;
			memcpy(buf, d, avail);
			rc = x->out.commit(x->out.ud, avail, e);
		}
		pthread_mutex_unlock(&x->out_mu);
		if (rc)
			return -1;
		d += avail;
		n -= avail;
	}
	return 0;
}

/* Under mu: off the in-flight list (its head, unless everything stops). */
static void unlink_job(struct xz_blocks *x, struct job *j)
{
	struct job **pp = &x->flight, *prev = NULL;
	while (*pp != j) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	*pp = j->next;
	if (x->flight_tail == j)
		x->flight_tail = prev;
}

/* Under mu: free bytes in the ring; the oldest job's input starts it. */
static size_t ring_space(const struct xz_blocks *x)
{
	uint64_t tail = x->flight ? x->flight->in_start + x->flight->in_used : x->ring_in;
	return RING_SIZE - (size_t)(x->ring_in - tail);
}

/* Under mu: wait until job j's output is due (or everything stops). */
static int wait_front(struct xz_blocks *x, const struct job *j)
{
	while (!x->stop && !x->failed && x->front != j->seq)
		pthread_cond_wait(&x->cv, &x->mu);
	return x->stop || x->failed ? -1 : 0;
}

static int decode_job(struct xz_blocks *x, lzma_stream *s, struct job *j, struct err *e)
{
	struct stage *st = NULL;
	size_t used = 0;
	int front = 0, nst = 0, rc = -1;
	lzma_ret r = lzma_block_decoder(s, &j->block);
	lzma_filters_free(j->filters, NULL);
	if (r != LZMA_OK)
		return lzma_fail(r, e);
	for (;;) {
		size_t have, avail, before_in, pos, chunk;
		unsigned char *out;
		void *buf = NULL;
		pthread_mutex_lock(&x->mu);
		if (j->in_used != used) {
			j->in_used = used; /* the ring's space, when j is the oldest */
			if (x->ring_want && j == x->flight && ring_space(x) >= x->ring_want)
				pthread_cond_broadcast(&x->cv);
		}
		for (;;) {
			if (x->stop || x->failed)
				goto stopped;
			if (!front && x->front == j->seq)
				front = 1;
			if (!front && st && st->len == STAGE_MAX) {
				if (wait_front(x, j))
					goto stopped;
				continue;
			}
			if (used < j->in_have || j->in_have == j->in_len)
				break;
			pthread_cond_wait(&x->cv, &x->mu);
		}
		have = j->in_have;
		if (!front && !st) {
			/* one per job behind the oldest: the oldest returns its own
			 * as soon as it has flushed it */
			while (!x->stages && x->nstages >= x->nthreads - 1 && !x->stop &&
			       !x->failed && x->front != j->seq)
				pthread_cond_wait(&x->cv, &x->mu);
			if (x->stop || x->failed)
				goto stopped;
			if (x->front == j->seq) {
				front = 1;
			} else if ((st = x->stages)) {
				x->stages = st->next;
			} else {
				x->nstages++;
				nst = 1;
			}
		}
		pthread_mutex_unlock(&x->mu);

		if (front && st) {
			int f = flush(x, st->data, st->len, e);
			if (f) {
				rc = f;
				goto out;
			}
			st->len = 0;
			pthread_mutex_lock(&x->mu);
			st->next = x->stages;
			x->stages = st;
			st = NULL;
			pthread_cond_broadcast(&x->cv);
			pthread_mutex_unlock(&x->mu);
		}
		if (front) {
			if (out_open(x)) {
				rc = 1;
				goto out;
			}
			if (x->out.buffer(x->out.ud, &buf, &avail, e)) {
				pthread_mutex_unlock(&x->out_mu);
				goto out;
			}
			out = buf;
		} else {
			if (nst) {
				nst = 0;
				st = calloc(1, sizeof(*st));
				if (st)
					st->data = malloc(STAGE_MAX);
				if (!st || !st->data) {
					free(st);
					st = NULL;
					pthread_mutex_lock(&x->mu);
					x->nstages--;
					pthread_mutex_unlock(&x->mu);
					err_set(e, ERR_IO, "out of memory (xz stage of %u bytes)",
					        STAGE_MAX);
					goto out;
				}
			}
			out = st->data + st->len;
			avail = STAGE_MAX - st->len;
		}
		pos = (size_t)((j->in_start + used) % RING_SIZE);
		chunk = have - used < RING_SIZE - pos ? have - used : RING_SIZE - pos;
		s->next_in = x->ring + pos;
		s->avail_in = chunk;
		s->next_out = out;
		s->avail_out = avail;
		before_in = s->avail_in;
		r = lzma_code(s, used + chunk == j->in_len ? LZMA_FINISH : LZMA_RUN);
		used += before_in - s->avail_in;
		if (front) {
			int c = x->out.commit(x->out.ud, avail - s->avail_out, e);
			pthread_mutex_unlock(&x->out_mu);
			if (c)
				goto out;
		} else {
			st->len += avail - s->avail_out;
		}
		if (r == LZMA_STREAM_END)
			break;
		if (r != LZMA_OK) {
			lzma_fail(r, e);
			goto out;
		}
	}
	if (st) {
		pthread_mutex_lock(&x->mu);
		if (wait_front(x, j))
			goto stopped;
		pthread_mutex_unlock(&x->mu);
		rc = flush(x, st->data, st->len, e);
		if (rc)
			goto out;
		st->len = 0;
	}
	rc = 0;
	goto out;
stopped:
	pthread_mutex_unlock(&x->mu);
	rc = 1; /* not this job's failure */
out:
	if (st) {
		st->len = 0;
		pthread_mutex_lock(&x->mu);
		st->next = x->stages;
		x->stages = st;
		pthread_cond_broadcast(&x->cv);
		pthread_mutex_unlock(&x->mu);
	}
	return rc;
}

/* A job is freed by the last of the two threads done with it: a worker can
 * fail while the caller's thread still copies input in. */
static void job_release(struct xz_blocks *x, struct job *j)
{
	int last;
	pthread_mutex_lock(&x->mu);
	last = --j->refs == 0;
	pthread_mutex_unlock(&x->mu);
	if (last)
		free(j);
}

static void *worker_main(void *arg)
{
	struct xz_blocks *x = arg;
	lzma_stream s = LZMA_STREAM_INIT; /* kept: its dictionary serves the next block */
	for (;;) {
		struct job *j;
		struct err e = {0};
		int rc, last;
		pthread_mutex_lock(&x->mu);
		while (!x->stop && !x->pending)
			pthread_cond_wait(&x->cv, &x->mu);
		if (x->stop) {
			pthread_mutex_unlock(&x->mu);
			break;
		}
		j = x->pending;
		x->pending = j->next;
		pthread_mutex_unlock(&x->mu);

		rc = decode_job(x, &s, j, &e);

		pthread_mutex_lock(&x->mu);
		if (rc < 0)
			fail_locked(x, &e);
		else if (rc == 0)
			x->front++;
		unlink_job(x, j);
		x->inflight--;
		last = --j->refs == 0; /* as job_release, under the same lock */
		pthread_cond_broadcast(&x->cv);
		pthread_mutex_unlock(&x->mu);
		if (last)
			free(j);
	}
	lzma_end(&s);
	return NULL;
}

struct xz_blocks *xz_blocks_new(int threads, const struct decomp_out *out, struct err *e)
{
	struct xz_blocks *x = calloc(1, sizeof(*x));
	lzma_stream init = LZMA_STREAM_INIT;
	sigset_t all, old;
	if (!x || !(x->tids = calloc((size_t)threads, sizeof(*x->tids)))) {
		free(x);
		err_set(e, ERR_IO, "out of memory");
		return NULL;
	}
	x->out = *out;
	x->inl = init;
	x->first_stream = 1;
	x->st = P_STREAM_HEADER;
	x->hneed = LZMA_STREAM_HEADER_SIZE;
	pthread_mutex_init(&x->mu, NULL);
	pthread_cond_init(&x->cv, NULL);
	pthread_mutex_init(&x->out_mu, NULL);
	x->ih = lzma_index_hash_init(NULL, NULL);
	if (!x->ih) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	/* signals stay with the caller's thread (labctl's interrupt handling) */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (; x->nthreads < threads; x->nthreads++) {
		if (pthread_create(&x->tids[x->nthreads], NULL, worker_main, x)) {
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			err_set(e, ERR_IO, "cannot start an xz decoder thread");
			goto fail;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return x;
fail:
	xz_blocks_free(x);
	return NULL;
}

/* Wait for a free worker and hand j over; its input follows in the ring. */
static int hand_over(struct xz_blocks *x, struct job *j, struct err *e)
{
	pthread_mutex_lock(&x->mu);
	while (!x->failed && x->inflight >= x->nthreads)
		pthread_cond_wait(&x->cv, &x->mu);
	if (x->failed) {
		*e = x->ferr;
		pthread_mutex_unlock(&x->mu);
		return -1;
	}
	j->seq = x->next_seq++;
	j->in_start = x->ring_in;
	x->inflight++;
	if (x->flight_tail)
		x->flight_tail->next = j;
	else
		x->flight = j;
	x->flight_tail = j;
	if (!x->pending)
		x->pending = j;
	pthread_cond_broadcast(&x->cv);
	pthread_mutex_unlock(&x->mu);
	return 0;
}

/* Wait until every job is done: the caller's thread then owns the output. */
static int drain(struct xz_blocks *x, struct err *e)
{
	pthread_mutex_lock(&x->mu);
	while (!x->failed && x->inflight)
		pthread_cond_wait(&x->cv, &x->mu);
	if (x->failed)
		*e = x->ferr;
	pthread_mutex_unlock(&x->mu);
	return x->failed ? -1 : 0;
}

/* A complete block header in hbuf: hand the block to a worker, or decode it
 * here when its sizes are not stated (the next header's place is unknown) or
 * its decoder needs too much memory. */
static int start_block(struct xz_blocks *x, struct err *e)
{
	lzma_block b = {0};
	lzma_filter filters[LZMA_FILTERS_MAX + 1];
	lzma_vli unpadded, total;
	uint64_t mem;
	struct job *j;
	lzma_ret r;
	b.version = 1;
	b.check = x->flags.check;
	b.header_size = (uint32_t)x->hneed;
	b.filters = filters;
	r = lzma_block_header_decode(&b, NULL, x->hbuf);
	if (r != LZMA_OK)
		return lzma_fail(r, e);
	mem = lzma_raw_decoder_memusage(filters);
	unpadded = lzma_block_unpadded_size(&b);
	total = lzma_block_total_size(&b);
	if (b.compressed_size == LZMA_VLI_UNKNOWN || b.uncompressed_size == LZMA_VLI_UNKNOWN ||
	    !unpadded || !total || mem == UINT64_MAX || mem > PARALLEL_MEM_MAX) {
		/* in order, here */
		if (drain(x, e)) {
			lzma_filters_free(filters, NULL);
			return -1;
		}
		x->inl_block = b;
		memcpy(x->inl_filters, filters, sizeof(filters));
		x->inl_block.filters = x->inl_filters;
		r = lzma_block_decoder(&x->inl, &x->inl_block);
		lzma_filters_free(x->inl_filters, NULL);
		if (r != LZMA_OK)
			return lzma_fail(r, e);
		x->st = P_INLINE;
		return 0;
	}
	/* the worker's decoder checks that the block has exactly these sizes */
	r = lzma_index_hash_append(x->ih, unpadded, b.uncompressed_size);
	if (r != LZMA_OK) {
		lzma_filters_free(filters, NULL);
		return lzma_fail(r, e);
	}
	if (!x->ring) {
		void *m = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		               -1, 0);
		if (m == MAP_FAILED) {
			lzma_filters_free(filters, NULL);
			return err_set(e, ERR_IO, "out of memory (xz input ring of %u bytes)",
			               RING_SIZE);
		}
		x->ring = m;
	}
	j = calloc(1, sizeof(*j));
	if (!j) {
		lzma_filters_free(filters, NULL);
		return err_set(e, ERR_IO, "out of memory");
	}
	j->refs = 2;
	j->block = b;
	memcpy(j->filters, filters, sizeof(filters));
	j->block.filters = j->filters;
	j->in_len = total - b.header_size;
	if (hand_over(x, j, e)) {
		lzma_filters_free(j->filters, NULL);
		free(j);
		return -1;
	}
	x->cur = j;
	x->st = P_BLOCK_INPUT;
	return 0;
}

int xz_code(lzma_stream *s, const struct decomp_out *out, const void *in, size_t n, lzma_action a,
            int *ended, struct err *e)
{
	s->next_in = in;
	s->avail_in = n;
	for (;;) {
		void *buf;
		size_t avail;
		lzma_ret r;
		if (out->buffer(out->ud, &buf, &avail, e))
			return -1;
		s->next_out = buf;
		s->avail_out = avail;
		r = lzma_code(s, a);
		if (out->commit(out->ud, avail - s->avail_out, e))
			return -1;
		if (r == LZMA_STREAM_END) {
			*ended = 1;
			return 0;
		}
		if (r != LZMA_OK)
			return lzma_fail(r, e);
		if (a == LZMA_RUN && !s->avail_in && s->avail_out)
			return 0;
	}
}

/* Decode the block of P_INLINE from what the caller gave; *used: consumed. */
static int run_inline(struct xz_blocks *x, const unsigned char *in, size_t n, lzma_action a,
                      size_t *used, struct err *e)
{
	int ended = 0;
	lzma_ret r;
	if (xz_code(&x->inl, &x->out, in, n, a, &ended, e))
		return -1;
	*used = n - x->inl.avail_in;
	if (!ended)
		return 0;
	r = lzma_index_hash_append(x->ih, lzma_block_unpadded_size(&x->inl_block),
	                           x->inl_block.uncompressed_size);
	if (r != LZMA_OK)
		return lzma_fail(r, e);
	x->st = P_BLOCK_HEADER;
	x->hlen = 0;
	return 0;
}

/* Copy into hbuf up to hneed bytes; 1 when complete. */
static int gather(struct xz_blocks *x, const unsigned char **in, size_t *n)
{
	size_t k = x->hneed - x->hlen;
	if (k > *n)
		k = *n;
	memcpy(x->hbuf + x->hlen, *in, k);
	x->hlen += k;
	*in += k;
	*n -= k;
	return x->hlen == x->hneed;
}

static int end_stream(struct xz_blocks *x, struct err *e)
{
	lzma_stream_flags footer;
	lzma_ret r = lzma_stream_footer_decode(&footer, x->hbuf);
	if (r == LZMA_FORMAT_ERROR)
		r = LZMA_DATA_ERROR;
	if (r == LZMA_OK && lzma_index_hash_size(x->ih) != footer.backward_size)
		r = LZMA_DATA_ERROR;
	if (r == LZMA_OK)
		r = lzma_stream_flags_compare(&x->flags, &footer);
	if (r != LZMA_OK)
		return lzma_fail(r, e);
	x->st = P_PADDING;
	x->padding = 0;
	return 0;
}

/* After any failure the caller gets the first one, and no output call
 * comes any more: it may free what the output writes into. */
static int stop_all(struct xz_blocks *x, struct err *e)
{
	close_output(x);
	pthread_mutex_lock(&x->mu);
	fail_locked(x, e);
	*e = x->ferr;
	pthread_mutex_unlock(&x->mu);
	return -1;
}

static int parse(struct xz_blocks *x, const unsigned char *in, size_t n, struct err *e)
{
	if (failure(x, e))
		return -1;
	while (n) {
		switch (x->st) {
		case P_STREAM_HEADER: {
			lzma_ret r;
			if (!gather(x, &in, &n))
				break;
			r = lzma_stream_header_decode(&x->flags, x->hbuf);
			if (r == LZMA_FORMAT_ERROR && !x->first_stream)
				r = LZMA_DATA_ERROR;
			if (r != LZMA_OK)
				return lzma_fail(r, e);
			x->first_stream = 0;
			if (!(x->ih = lzma_index_hash_init(x->ih, NULL)))
				return err_set(e, ERR_IO, "out of memory");
			x->st = P_BLOCK_HEADER;
			x->hlen = 0;
			break;
		}
		case P_BLOCK_HEADER:
			if (x->hlen == 0) {
				if (in[0] == 0x00) { /* the index indicator */
					x->st = P_INDEX;
					break;
				}
				x->hneed = lzma_block_header_size_decode(in[0]);
			}
			if (gather(x, &in, &n) && start_block(x, e))
				return -1;
			break;
		case P_BLOCK_INPUT: {
			struct job *j = x->cur;
			size_t k = j->in_len - j->in_have, pos = (size_t)(x->ring_in % RING_SIZE),
			       space = 0;
			if (k > n)
				k = n;
			pthread_mutex_lock(&x->mu);
			/* a full ring: wait for room for a good piece, not every byte */
			x->ring_want = k < RING_WAKE ? k : RING_WAKE;
			while (!x->failed && (space = ring_space(x)) < x->ring_want)
				pthread_cond_wait(&x->cv, &x->mu);
			x->ring_want = 0;
			pthread_mutex_unlock(&x->mu);
			if (failure(x, e))
				return -1;
			if (k > n)
				k = n;
			if (k > space)
				k = space;
			if (k > RING_SIZE - pos)
				k = RING_SIZE - pos;
			/* only this thread writes into free space */
			memcpy(x->ring + pos, in, k);
			in += k;
			n -= k;
			pthread_mutex_lock(&x->mu);
			x->ring_in += k;
			j->in_have += k;
			pthread_cond_broadcast(&x->cv);
			pthread_mutex_unlock(&x->mu);
			if (j->in_have == j->in_len) {
				job_release(x, j);
				x->cur = NULL;
				x->st = P_BLOCK_HEADER;
				x->hlen = 0;
			}
			break;
		}
		case P_INLINE: {
			size_t used;
			if (run_inline(x, in, n, LZMA_RUN, &used, e))
				return -1;
			in += used;
			n -= used;
			break;
		}
		case P_INDEX: {
			size_t pos = 0;
			lzma_ret r = lzma_index_hash_decode(x->ih, in, &pos, n);
			in += pos;
			n -= pos;
			if (r == LZMA_STREAM_END) {
				x->st = P_FOOTER;
				x->hlen = 0;
				x->hneed = LZMA_STREAM_HEADER_SIZE;
			} else if (r != LZMA_OK) {
				return lzma_fail(r, e);
			}
			break;
		}
		case P_FOOTER:
			if (gather(x, &in, &n) && end_stream(x, e))
				return -1;
			break;
		case P_PADDING:
			while (n && in[0] == 0x00) {
				x->padding++;
				in++;
				n--;
			}
			if (!n)
				break;
			if (x->padding % 4)
				return lzma_fail(LZMA_DATA_ERROR, e);
			x->st = P_STREAM_HEADER; /* the next stream */
			x->hlen = 0;
			x->hneed = LZMA_STREAM_HEADER_SIZE;
			break;
		}
	}
	return failure(x, e);
}

int xz_blocks_feed(struct xz_blocks *x, const void *in, size_t n, struct err *e)
{
	return parse(x, in, n, e) ? stop_all(x, e) : 0;
}

static int finish(struct xz_blocks *x, struct err *e)
{
	if (failure(x, e))
		return -1;
	if (x->st == P_INLINE) {
		size_t used;
		if (run_inline(x, NULL, 0, LZMA_FINISH, &used, e))
			return -1;
	}
	if (x->st != P_PADDING)
		return lzma_fail(LZMA_BUF_ERROR, e);
	if (x->padding % 4)
		return lzma_fail(LZMA_DATA_ERROR, e);
	return drain(x, e);
}

int xz_blocks_finish(struct xz_blocks *x, struct err *e)
{
	return finish(x, e) ? stop_all(x, e) : 0;
}

void xz_blocks_free(struct xz_blocks *x)
{
	if (!x)
		return;
	close_output(x);
	pthread_mutex_lock(&x->mu);
	x->stop = 1;
	pthread_cond_broadcast(&x->cv);
	pthread_mutex_unlock(&x->mu);
	for (int i = 0; i < x->nthreads; i++)
		pthread_join(x->tids[i], NULL);
	while (x->pending) { /* never taken: the queue's reference is the worker's */
		struct job *j = x->pending;
		x->pending = j->next;
		lzma_filters_free(j->filters, NULL);
		job_release(x, j);
	}
	if (x->cur)
		job_release(x, x->cur);
	while (x->stages) {
		struct stage *s = x->stages;
		x->stages = s->next;
		free(s->data);
		free(s);
	}
	if (x->ring)
		munmap(x->ring, RING_SIZE);
	lzma_end(&x->inl);
	lzma_index_hash_end(x->ih, NULL);
	pthread_mutex_destroy(&x->mu);
	pthread_mutex_destroy(&x->out_mu);
	pthread_cond_destroy(&x->cv);
	free(x->tids);
	free(x);
}
