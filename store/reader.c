/* The verified reader (see reader.h).
 *
 * Blocks in memory live in one table keyed by their cache key (the block's
 * SHA-256 for verified images, cache_key_unverified() otherwise) and their
 * length, so readers of identical blocks in different images or versions
 * share them too.  The length is part of an entry's identity because the key
 * is only a claim until the bytes are checked: a record may give a 1 MiB
 * block the hash of a 1000-byte tail, and two objects of different sizes may
 * share an ETag; neither may make a read copy past an entry's buffer.  An
 * entry is LOADING (a GET will fill it; readers wait on its condition
 * variable), READY (verified bytes; kept in a FIFO for the next reads until
 * the memory budget needs the room) or FAILED (out of the table; waiters
 * that still hold it read the error).  Entries are reference counted: the
 * table does not hold a reference, readers and fetch jobs do, and an entry
 * leaves memory when it is out of the table and unreferenced.
 *
 * reader_read() works in four steps so that it never waits while it owns an
 * entry that nobody else will fetch: (1) classify every block of the range
 * (zero, memory, SQLite, or a new LOADING entry it owns), (2) queue
 * readahead, (3) fetch its own runs of consecutive blocks, one ranged GET
 * each, (4) wait for and copy the blocks that other readers are fetching.
 *
 * The memory budget is hard: block buffers (entries and the free pool) never
 * exceed it, whatever the number of readers and the block size.  A read that
 * finds no room for its next block finishes the blocks it has classified,
 * lets go of them, and only then waits for room, holding nothing: so readers
 * waiting for memory never wait for each other, only for GETs in flight and
 * for the cache writer, which both end. */
#include "store/reader.h"

#include "common/hash.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/sha256x2.h"
#include "common/slab.h"
#include "common/timefmt.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEF_FETCH_THREADS 4
#define MAX_FETCH_THREADS 64
/* Blocks in memory (read ahead, being read, waiting for the cache writer)
 * and their free pool.  Cold 1 GiB read from the local server, 2 cores
 * (IMGFS_MEM_MIB=N, the cold line of tests/bench/mount.sh), when the cache
 * wrote through a WAL: 24 MiB 145 MB/s (peak RSS 94 MiB), 32 MiB 153 (91),
 * 48 MiB 167 (103), 64 MiB 170 (120).  With the rollback journal the
 * writer keeps up and 24 MiB drops no block (tests/bench/cold.sh: peak RSS
 * 59-68 MiB through the cold read against 93 with 48 MiB), so the readahead
 * window stops at 16 MiB, leaving room for the blocks being read. */
#define DEF_MEM_BYTES     (24ull << 20)
#define MIN_MEM_BYTES     (2ull * RECORD_MAX_BLOCK_SIZE) /* two reads of the largest blocks */
#define DEF_RA_MIN        (2ull << 20)
#define DEF_RA_MAX        (16ull << 20)
#define DEF_RA_CHUNK      (8ull << 20)
#define UNVERIFIED_BS     RECORD_DEFAULT_BLOCK_SIZE
#define SLAB_EXTRA        8 /* replies out of the budget (reply_get): 4 at most were seen at once */
#define NBUCKETS          16384
#define IDLE_CONNS        16
#define CACHE_READ_SLOTS  6
#define SEQ_BEHIND        16 /* blocks: kernel readahead requests arrive out of order */
#define SEQ_AHEAD         2
#define STACK_SLOTS       8    /* blocks per read handled without malloc */
#define NET_LOG_EVERY_S   10.0 /* rate limit for "bucket unreachable" lines */
#define PROBE_EVERY_S     1.0
#define PENDING_MAX_AGE_S 5.0 /* readahead blocks nobody read: evictable after this */

enum bstate { B_LOADING, B_READY, B_FAILED };

struct bent {
	unsigned char key[CACHE_KEY_LEN];
	struct bent *hnext;       /* hash chain */
	struct bent *prev, *next; /* FIFO of READY entries in the table */
	enum bstate state;
	int in_table, on_fifo;
	int pending;    /* fetched by readahead, not read yet */
	double t_ready; /* when it became READY */
	int refs;       /* readers, fetchers and a pending cache insert */
	uint32_t len;
	unsigned char *data;
	struct reader *owner;
	enum err_code err_code; /* FAILED */
	char *err_msg;
	pthread_cond_t cv;
};

struct job {
	struct job *next;
	struct reader_image *img;
	size_t first, count;
	struct bent *ents[];
};

struct reader {
	struct s3_config cfg;
	struct cache *cache;
	unsigned nthreads;
	uint64_t mem_limit, ra_min, ra_max, ra_chunk;
	double wait_limit_s; /* safety net for waits on someone else's GET */

	/* all-zero blocks for reader_read_iov(): calloc'd, never written, so
	 * its pages stay the kernel's shared zero page (no RSS) */
	const unsigned char *zeros;

	pthread_mutex_t mu; /* table, FIFO, entry state and refs, jobs, buffer pool */
	struct bent *buckets[NBUCKETS];
	struct bent fifo;   /* sentinel: fifo.next is the oldest */
	uint64_t mem_bytes; /* buffers of entries */
	uint64_t mem_peak;  /* of mem_bytes + the pool */
	void *pool;         /* free buffers of pool_len bytes, linked through their first bytes */
	size_t npool;
	uint32_t pool_len;
	/* where buffers of pool_len bytes come from: the budget's worth, and
	 * SLAB_EXTRA for replies taken out of it (reply_get); malloc beyond */
	struct slab slab;
	pthread_cond_t mem_cv; /* memory may have become free */
	unsigned mem_waiters;

	pthread_cond_t job_cv;
	struct job *jhead, *jtail;
	int stop;
	pthread_t *threads;
	unsigned nstarted;

	pthread_mutex_t conn_mu;
	struct s3 *idle[IDLE_CONNS];
	unsigned nidle;

	/* Concurrent block reads from SQLite: each one holds a connection
	 * with its own page cache, and the disk is as fast at a queue depth
	 * of a few; more only costs memory. */
	pthread_mutex_t slot_mu;
	pthread_cond_t slot_cv;
	unsigned slots_free;

	/* Circuit breaker: after a GET could not reach the bucket (within its
	 * retry budget), demand fetches fail at once instead of each waiting out
	 * its own budget (the kernel retries a failed readahead page with a
	 * second read, a VM issues many), except one probe at a time, at most
	 * every PROBE_EVERY_S; the first GET that gets through closes it again.
	 * No readahead while it is open. */
	atomic_int net_down;
	int probing;      /* under mu */
	double probe_end; /* under mu */
	_Atomic double last_net_log;

	atomic_uint_fast64_t hits, misses, mem_hits, zero_blocks, bytes_fetched, verify_failures,
	        fetch_errors, readahead_blocks, coalesced, gets, requests, retries;
	atomic_uint demand;        /* reader_read calls in flight */
	_Atomic double demand_end; /* time_mono() when the last one returned */
};

struct reader_image {
	struct reader *r;
	atomic_int refs;
	char *key;
	char etag[S3_ETAG_MAX];
	uint64_t size;
	uint32_t bs;
	size_t nblocks;
	int verified;
	unsigned char (*hashes)[32]; /* verified only */
	unsigned char *zero;         /* verified only: 1 per all-zero block */
	atomic_int logged_changed;
};

struct reader_stream {
	pthread_mutex_t mu;
	const struct reader_image *img;
	int primed;
	unsigned seq;    /* sequential reads in a row */
	uint64_t next;   /* block after the end of the last read */
	uint64_t ra_end; /* readahead queued up to this block (exclusive) */
	uint64_t window; /* bytes */
};

/* ---- small helpers ---- */

static unsigned bucket_of(const unsigned char key[CACHE_KEY_LEN])
{
	unsigned v;
	memcpy(&v, key, sizeof(v));
	return v % NBUCKETS;
}

static void block_key(const struct reader_image *img, size_t i, unsigned char key[CACHE_KEY_LEN])
{
	if (img->verified)
		memcpy(key, img->hashes[i], CACHE_KEY_LEN);
	else
		cache_key_unverified(img->etag, i, key);
}

static uint32_t block_len(const struct reader_image *img, size_t i)
{
	uint64_t off = (uint64_t)i * img->bs;
	if (i >= img->nblocks)
		return 0;
	return img->size - off < img->bs ? (uint32_t)(img->size - off) : img->bs;
}

static int block_is_zero(const struct reader_image *img, size_t i)
{
	return img->verified && img->zero[i];
}

static void add_s3_delta(struct reader *r, const struct s3_stats *before, struct s3 *s)
{
	struct s3_stats after;
	s3_get_stats(s, &after);
	atomic_fetch_add(&r->requests, after.requests - before->requests);
	atomic_fetch_add(&r->retries, after.retries - before->retries);
}

static void cache_slot_get(struct reader *r)
{
	pthread_mutex_lock(&r->slot_mu);
	while (!r->slots_free)
		pthread_cond_wait(&r->slot_cv, &r->slot_mu);
	r->slots_free--;
	pthread_mutex_unlock(&r->slot_mu);
}

static void cache_slot_put(struct reader *r)
{
	pthread_mutex_lock(&r->slot_mu);
	r->slots_free++;
	pthread_cond_signal(&r->slot_cv);
	pthread_mutex_unlock(&r->slot_mu);
}

/* ---- connections (demand fetches; fetch threads keep their own) ---- */

static struct s3 *conn_get(struct reader *r, struct err *e)
{
	struct s3 *s = NULL;
	pthread_mutex_lock(&r->conn_mu);
	if (r->nidle)
		s = r->idle[--r->nidle];
	pthread_mutex_unlock(&r->conn_mu);
	if (!s && !(s = s3_open(&r->cfg, e)))
		err_prefix(e, "connecting to the bucket");
	return s;
}

static void conn_put(struct reader *r, struct s3 *s)
{
	pthread_mutex_lock(&r->conn_mu);
	if (r->nidle < IDLE_CONNS) {
		r->idle[r->nidle++] = s;
		s = NULL;
	}
	pthread_mutex_unlock(&r->conn_mu);
	if (s)
		s3_close(s);
}

/* ---- the block table (all under r->mu) ---- */

static struct bent *table_find(struct reader *r, const unsigned char key[CACHE_KEY_LEN],
                               uint32_t len)
{
	for (struct bent *b = r->buckets[bucket_of(key)]; b; b = b->hnext)
		if (b->len == len && !memcmp(b->key, key, CACHE_KEY_LEN))
			return b;
	return NULL;
}

static void table_insert(struct reader *r, struct bent *b)
{
	unsigned h = bucket_of(b->key);
	b->hnext = r->buckets[h];
	r->buckets[h] = b;
	b->in_table = 1;
}

static void fifo_remove(struct reader *r, struct bent *b)
{
	(void)r;
	if (!b->on_fifo)
		return;
	b->prev->next = b->next;
	b->next->prev = b->prev;
	b->prev = b->next = NULL;
	b->on_fifo = 0;
}

static void fifo_append(struct reader *r, struct bent *b)
{
	fifo_remove(r, b);
	b->prev = r->fifo.prev;
	b->next = &r->fifo;
	r->fifo.prev->next = b;
	r->fifo.prev = b;
	b->on_fifo = 1;
}

static void fifo_prepend(struct reader *r, struct bent *b)
{
	fifo_remove(r, b);
	b->next = r->fifo.next;
	b->prev = &r->fifo;
	r->fifo.next->prev = b;
	r->fifo.next = b;
	b->on_fifo = 1;
}

static void table_remove(struct reader *r, struct bent *b)
{
	struct bent **pp;
	if (!b->in_table)
		return;
	for (pp = &r->buckets[bucket_of(b->key)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == b) {
			*pp = b->hnext;
			break;
		}
	}
	b->hnext = NULL;
	b->in_table = 0;
	fifo_remove(r, b);
}

/* Bytes of block buffers allocated: in entries and in the free pool. */
static uint64_t mem_held(const struct reader *r)
{
	return r->mem_bytes + (uint64_t)r->npool * r->pool_len;
}

static void mem_freed_locked(struct reader *r)
{
	if (r->mem_waiters)
		pthread_cond_broadcast(&r->mem_cv);
}

/* A buffer of len bytes (the slab's when len is pool_len) and its release;
 * both with r->mu held. */
static unsigned char *buf_alloc_locked(struct reader *r, uint32_t len)
{
	unsigned char *p = len == r->pool_len ? slab_get(&r->slab) : NULL;
	return p ? p : malloc(len ? len : 1);
}

static void buf_free_locked(struct reader *r, void *p)
{
	if (!slab_put(&r->slab, p))
		free(p);
}

static void buf_release(struct reader *r, unsigned char *data, uint32_t len)
{
	/* the pool counts against the same budget as the blocks in use */
	if (len == r->pool_len && r->mem_bytes + (uint64_t)(r->npool + 1) * len <= r->mem_limit) {
		*(void **)data = r->pool;
		r->pool = data;
		r->npool++;
		return;
	}
	buf_free_locked(r, data);
}

static void ent_free_locked(struct reader *r, struct bent *b)
{
	r->mem_bytes -= b->len;
	buf_release(r, b->data, b->len);
	free(b->err_msg);
	pthread_cond_destroy(&b->cv);
	free(b);
	mem_freed_locked(r);
}

static void ent_put_locked(struct reader *r, struct bent *b)
{
	if (--b->refs)
		return;
	if (!b->in_table)
		ent_free_locked(r, b);
	else
		mem_freed_locked(r); /* evictable now */
}

static int mem_fits(const struct reader *r, uint32_t len)
{
	return (len == r->pool_len && r->npool) || mem_held(r) + len <= r->mem_limit;
}

/* Make room for a buffer of `len` bytes within the budget: free pooled
 * buffers, then drop the oldest READY entries that nobody holds.  Blocks read
 * ahead and not read yet are kept for readahead (it would throw away what the
 * reader needs next to fetch what it needs after that), unless stale; a
 * demand read takes them last.  1 when the buffer fits now. */
static int mem_room_locked(struct reader *r, uint32_t len, int demand)
{
	double now = 0;
	for (int pass = 0; pass < (demand ? 2 : 1); pass++) {
		struct bent *b = r->fifo.next;
		for (;;) {
			struct bent *next;
			int ok;
			while (!mem_fits(r, len) && r->pool) {
				void *p = r->pool;
				r->pool = *(void **)p;
				r->npool--;
				buf_free_locked(r, p);
			}
			if (mem_fits(r, len))
				return 1;
			if (b == &r->fifo)
				break;
			next = b->next;
			ok = b->refs == 0;
			if (ok && b->pending && pass == 0) {
				if (!now)
					now = time_mono();
				ok = now - b->t_ready > PENDING_MAX_AGE_S;
			}
			if (ok) {
				table_remove(r, b);
				ent_free_locked(r, b);
			}
			b = next;
		}
	}
	return 0;
}

/* Wait, holding no entries, until a buffer of len bytes fits (or dl). */
static int mem_wait(struct reader *r, const struct reader_image *img, uint32_t len,
                    const struct timespec *dl, struct err *e)
{
	int rc = 0;
	pthread_mutex_lock(&r->mu);
	r->mem_waiters++;
	while (!mem_room_locked(r, len, 1)) {
		if (pthread_cond_timedwait(&r->mem_cv, &r->mu, dl) == ETIMEDOUT &&
		    !mem_room_locked(r, len, 1)) {
			rc = err_set(e, ERR_IO,
			             "reading %s: timed out waiting for block memory (%llu of %llu "
			             "bytes held by other reads)",
			             img->key, (unsigned long long)mem_held(r),
			             (unsigned long long)r->mem_limit);
			break;
		}
	}
	r->mem_waiters--;
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* A new entry (refs 1, not in the table), with its buffer, which the caller
 * has made room for (mem_room_locked).  NULL: no memory. */
static struct bent *ent_new_locked(struct reader *r, const unsigned char key[CACHE_KEY_LEN],
                                   uint32_t len)
{
	struct bent *b = calloc(1, sizeof(*b));
	pthread_condattr_t ca;
	if (!b)
		return NULL;
	if (len == r->pool_len && r->pool) {
		b->data = r->pool;
		r->pool = *(void **)b->data;
		r->npool--;
	} else if (!(b->data = buf_alloc_locked(r, len))) {
		free(b);
		return NULL;
	}
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->cv, &ca);
	pthread_condattr_destroy(&ca);
	memcpy(b->key, key, CACHE_KEY_LEN);
	b->len = len;
	b->owner = r;
	b->refs = 1;
	b->state = B_LOADING;
	r->mem_bytes += len;
	if (mem_held(r) > r->mem_peak)
		r->mem_peak = mem_held(r);
	return b;
}

static void ent_publish(struct reader *r, struct bent *b)
{
	pthread_mutex_lock(&r->mu);
	b->state = B_READY;
	b->t_ready = time_mono();
	if (b->in_table)
		fifo_append(r, b);
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&r->mu);
}

static void ent_fail(struct reader *r, struct bent *b, enum err_code code, const char *msg)
{
	char *m = strdup(msg);
	pthread_mutex_lock(&r->mu);
	if (b->state == B_LOADING) {
		b->state = B_FAILED;
		b->err_code = code;
		b->err_msg = m;
		m = NULL;
		table_remove(r, b); /* the next reader tries again */
		pthread_cond_broadcast(&b->cv);
	}
	pthread_mutex_unlock(&r->mu);
	free(m);
}

/* ---- fetching ---- */

/* A ranged GET of several blocks verifies them two at a time: the first
 * block of a pair waits (held) until the second is in, and both are hashed
 * in one interleaved pass (common/sha256x2.h), which on SHA-NI costs little
 * more than one.  A held block is published at the latest when the GET
 * ends, whatever its outcome: its bytes are all there. */
struct sink_ctx {
	struct reader_image *img;
	struct bent **ents;
	size_t first, count;
	size_t cur; /* index into ents of the block being filled */
	uint32_t fill;
	uint64_t received;
	size_t held;                  /* 1 + index of a complete block not verified yet; 0 */
	struct sha256_state *ha, *hb; /* for pairs (NULL: one at a time) */
};

/* 0 when block idx, whose SHA-256 is got, matches its record; else it is
 * failed and logged. */
static int verify_block(struct reader_image *img, size_t idx, struct bent *b,
                        const unsigned char got[32])
{
	char ghex[65], whex[65], msg[512];
	uint64_t off = (uint64_t)idx * img->bs;

	if (!memcmp(got, img->hashes[idx], 32))
		return 0;
	hex_encode(got, 32, ghex);
	hex_encode(img->hashes[idx], 32, whex);
	atomic_fetch_add(&img->r->verify_failures, 1);
	log_error("verification failed: %s block %zu (bytes %llu-%llu) has sha256 %s, its "
	          "checksum record says %s; not served, not cached",
	          img->key, idx, (unsigned long long)off, (unsigned long long)(off + b->len - 1),
	          ghex, whex);
	snprintf(msg, sizeof(msg),
	         "%s: block %zu does not match its checksum record (the object in the bucket "
	         "is damaged or was replaced without a new record)",
	         img->key, idx);
	ent_fail(img->r, b, ERR_INTEGRITY, msg);
	return -1;
}

static void cache_written(void *arg)
{
	struct bent *b = arg;
	struct reader *r = b->owner;
	pthread_mutex_lock(&r->mu);
	ent_put_locked(r, b);
	pthread_mutex_unlock(&r->mu);
}

/* Block k of the GET, complete; got: its SHA-256 (NULL: unverified image). */
static void publish_fetched(struct sink_ctx *c, size_t k, const unsigned char *got)
{
	struct reader_image *img = c->img;
	struct reader *r = img->r;
	struct bent *b = c->ents[k];
	size_t idx = c->first + k;

	if (got && verify_block(img, idx, b, got))
		return;
	if (r->cache) {
		/* the cache writes the block from our buffer, which it holds a
		 * reference to: no copy, and the memory budget covers it */
		pthread_mutex_lock(&r->mu);
		b->refs++;
		pthread_mutex_unlock(&r->mu);
		if (!cache_put_ref(r->cache, b->key, b->data, b->len, cache_written, b))
			cache_written(b);
	}
	atomic_fetch_add(&r->bytes_fetched, b->len);
	atomic_fetch_add(&r->misses, 1);
	ent_publish(r, b);
}

static void publish_one(struct sink_ctx *c, size_t k)
{
	unsigned char got[32];
	if (!c->img->verified) {
		publish_fetched(c, k, NULL);
		return;
	}
	hash_sha256(c->ents[k]->data, c->ents[k]->len, got);
	publish_fetched(c, k, got);
}

/* Blocks a and b (a before b), hashed in one pass as far as both go; b may
 * be the image's short last block, and the rest of a is hashed alone. */
static void publish_pair(struct sink_ctx *c, size_t a, size_t b)
{
	const struct bent *ea = c->ents[a], *eb = c->ents[b];
	uint32_t n = ea->len < eb->len ? ea->len : eb->len;
	unsigned char ga[32], gb[32];

	sha256x2_update(c->ha, ea->data, c->hb, eb->data, n);
	sha256_update(c->ha, ea->data + n, ea->len - n);
	sha256_update(c->hb, eb->data + n, eb->len - n);
	sha256_final(c->ha, ga);
	sha256_final(c->hb, gb);
	publish_fetched(c, a, ga);
	publish_fetched(c, b, gb);
}

/* Block c->cur is complete: publish it now, hold it for a pair, or publish
 * it with the one held. */
static void block_done(struct sink_ctx *c)
{
	if (c->held) {
		publish_pair(c, c->held - 1, c->cur);
		c->held = 0;
	} else if (c->ha && c->cur + 1 < c->count) {
		c->held = c->cur + 1;
	} else {
		publish_one(c, c->cur);
	}
}

/* The GET is over: a block still held is published alone. */
static void sink_end(struct sink_ctx *c)
{
	if (c->held)
		publish_one(c, c->held - 1);
	c->held = 0;
	sha256_state_free(c->ha);
	sha256_state_free(c->hb);
	c->ha = c->hb = NULL;
}

static int sink(void *ud, const void *data, size_t n)
{
	struct sink_ctx *c = ud;
	const unsigned char *p = data;
	while (n) {
		struct bent *b;
		size_t k;
		if (c->cur >= c->count)
			return 1; /* more than asked for */
		b = c->ents[c->cur];
		k = b->len - c->fill;
		if (k > n)
			k = n;
		memcpy(b->data + c->fill, p, k);
		c->fill += (uint32_t)k;
		c->received += k;
		p += k;
		n -= k;
		if (c->fill == b->len) {
			block_done(c);
			c->cur++;
			c->fill = 0;
		}
	}
	return 0;
}

static void note_net_error(struct reader *r, const struct reader_image *img, const struct err *e)
{
	double now = time_mono(), last = atomic_load(&r->last_net_log);
	pthread_mutex_lock(&r->mu);
	r->probe_end = now; /* the next probe only after PROBE_EVERY_S */
	atomic_store(&r->net_down, 1);
	pthread_mutex_unlock(&r->mu);
	if (now - last >= NET_LOG_EVERY_S || last == 0) {
		atomic_store(&r->last_net_log, now);
		log_warn("reading %s: %s (uncached reads fail until the bucket answers)", img->key,
		         e->msg);
	}
}

/* May a demand fetch go out?  0 yes, 1 yes as the probe (breaker_leave
 * after it), -1 no: the bucket is known to be unreachable. */
static int breaker_enter(struct reader *r)
{
	int rc = 0;
	if (!atomic_load(&r->net_down))
		return 0;
	pthread_mutex_lock(&r->mu);
	if (!atomic_load(&r->net_down))
		rc = 0;
	else if (r->probing || time_mono() - r->probe_end < PROBE_EVERY_S)
		rc = -1;
	else
		rc = r->probing = 1;
	pthread_mutex_unlock(&r->mu);
	return rc;
}

static void breaker_leave(struct reader *r)
{
	pthread_mutex_lock(&r->mu);
	r->probing = 0;
	r->probe_end = time_mono();
	pthread_mutex_unlock(&r->mu);
}

/* One ranged GET for ents[0..count) = blocks first.. of img; every entry ends
 * READY or FAILED.  The caller keeps its references. */
static void fetch_run(struct reader_image *img, struct s3 *s, size_t first, size_t count,
                      struct bent **ents)
{
	struct reader *r = img->r;
	struct sink_ctx c = {img, ents, first, count, 0, 0, 0, 0, NULL, NULL};
	struct err e = {0};
	struct s3_stats before;
	uint64_t off = (uint64_t)first * img->bs, total = 0;
	double t0;
	int rc;

	for (size_t k = 0; k < count; k++)
		total += ents[k]->len;
	if (img->verified && count > 1 &&
	    (!(c.ha = sha256_state_new()) || !(c.hb = sha256_state_new()))) {
		sha256_state_free(c.ha); /* without memory for them: one at a time */
		c.ha = NULL;
	}
	s3_get_stats(s, &before);
	atomic_fetch_add(&r->gets, 1);
	t0 = time_mono();
	rc = s3_get(s, img->key, off, total, img->etag, sink, &c, &e);
	sink_end(&c);
	add_s3_delta(r, &before, s);
	log_debug("GET %s blocks %zu..%zu (%llu bytes): %.1f ms%s", img->key, first,
	          first + count - 1, (unsigned long long)total, (time_mono() - t0) * 1000,
	          rc ? " failed" : "");
	if (rc == 0 && c.cur == count) {
		/* the counterpart of note_net_error's warning, once per outage */
		if (atomic_exchange(&r->net_down, 0))
			log_info("reading %s: the bucket answers again", img->key);
		return;
	}
	atomic_fetch_add(&r->fetch_errors, 1);
	if (rc == 0) {
		err_set(&e, ERR_IO, "%s: the bucket sent %llu bytes of %llu at offset %llu",
		        img->key, (unsigned long long)c.received, (unsigned long long)total,
		        (unsigned long long)off);
	} else if (e.code == ERR_PRECONDITION) {
		if (!atomic_exchange(&img->logged_changed, 1))
			log_warn("%s changed in the bucket (it no longer has ETag %s): a file "
			         "opened "
			         "before reads its blocks from the previous version the bucket "
			         "keeps "
			         "(versions/), or gets EIO for blocks not cached when there is "
			         "none; "
			         "reopen it for the new bytes",
			         img->key, img->etag);
		err_prefix(&e, "reading %s", img->key);
	} else if (e.code == ERR_NET) {
		note_net_error(r, img, &e);
		err_prefix(&e, "reading %s", img->key);
	} else {
		log_warn("reading %s at offset %llu: %s", img->key, (unsigned long long)off, e.msg);
		err_prefix(&e, "reading %s", img->key);
	}
	for (size_t k = c.cur; k < count; k++)
		ent_fail(r, ents[k], e.code == ERR_OK ? ERR_IO : e.code, e.msg);
}

static void fail_all(struct reader *r, struct bent **ents, size_t n, const struct err *e)
{
	for (size_t k = 0; k < n; k++)
		ent_fail(r, ents[k], e->code == ERR_OK ? ERR_IO : e->code, e->msg);
}

/* ---- readahead ---- */

static void job_release(struct reader *r, struct job *j)
{
	pthread_mutex_lock(&r->mu);
	for (size_t k = 0; k < j->count; k++)
		ent_put_locked(r, j->ents[k]);
	pthread_mutex_unlock(&r->mu);
	reader_image_unref(j->img);
	free(j);
}

static void *fetch_thread(void *arg)
{
	struct reader *r = arg;
	struct s3 *s = NULL;

	pthread_setname_np(pthread_self(), "imgfs-fetch");
	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j;
		while (!r->stop && !r->jhead)
			pthread_cond_wait(&r->job_cv, &r->mu);
		if (r->stop)
			break;
		j = r->jhead;
		r->jhead = j->next;
		if (!r->jhead)
			r->jtail = NULL;
		pthread_mutex_unlock(&r->mu);

		if (atomic_load(&r->net_down)) { /* readahead is optional: not now */
			struct err e = {0};
			err_set(&e, ERR_NET, "reading %s: the bucket is unreachable", j->img->key);
			fail_all(r, j->ents, j->count, &e);
		} else {
			if (!s) {
				struct err e = {0};
				if (!(s = s3_open(&r->cfg, &e))) {
					err_prefix(&e, "connecting to the bucket");
					fail_all(r, j->ents, j->count, &e);
				}
			}
			if (s)
				fetch_run(j->img, s, j->first, j->count, j->ents);
		}
		job_release(r, j);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	if (s)
		s3_close(s);
	return NULL;
}

static void job_queue(struct reader *r, struct job *j)
{
	pthread_mutex_lock(&r->mu);
	j->next = NULL;
	if (r->jtail)
		r->jtail->next = j;
	else
		r->jhead = j;
	r->jtail = j;
	pthread_cond_signal(&r->job_cv);
	pthread_mutex_unlock(&r->mu);
}

static struct job *job_new(struct reader_image *img, size_t first, size_t cap)
{
	struct job *j = malloc(sizeof(*j) + cap * sizeof(j->ents[0]));
	if (!j)
		return NULL;
	j->next = NULL;
	j->img = reader_image_ref(img);
	j->first = first;
	j->count = 0;
	return j;
}

static void job_flush(struct reader *r, struct job **jp)
{
	struct job *j = *jp;
	*jp = NULL;
	if (!j)
		return;
	if (!j->count) {
		reader_image_unref(j->img);
		free(j);
		return;
	}
	atomic_fetch_add(&r->readahead_blocks, j->count);
	job_queue(r, j);
}

/* Queue GETs for the blocks of [start, end) that are neither in memory nor
 * in the cache, in runs of at most ra_chunk bytes.  Stops early when the
 * memory budget is spent; returns the first block not looked at. */
static size_t schedule(struct reader_image *img, size_t start, size_t end)
{
	struct reader *r = img->r;
	size_t chunk = r->ra_chunk / img->bs ? r->ra_chunk / img->bs : 1;
	struct job *j = NULL;

	for (size_t i = start; i < end; i++) {
		unsigned char key[CACHE_KEY_LEN];
		uint32_t len = block_len(img, i);
		struct bent *b;
		int present;

		if (block_is_zero(img, i)) {
			job_flush(r, &j);
			continue;
		}
		block_key(img, i, key);
		pthread_mutex_lock(&r->mu);
		present = table_find(r, key, len) != NULL;
		pthread_mutex_unlock(&r->mu);
		if (!present && r->cache && cache_has(r->cache, key))
			present = 1;
		if (present) {
			job_flush(r, &j);
			continue;
		}
		if (!j && !(j = job_new(img, i, chunk)))
			return i;
		pthread_mutex_lock(&r->mu);
		if (table_find(r, key, len)) {
			pthread_mutex_unlock(&r->mu);
			job_flush(r, &j);
			continue;
		}
		/* demand reads waiting for memory come first */
		if (r->mem_waiters || !mem_room_locked(r, len, 0) ||
		    !(b = ent_new_locked(r, key, len))) {
			pthread_mutex_unlock(&r->mu);
			job_flush(r, &j);
			return i;
		}
		b->pending = 1;
		table_insert(r, b);
		pthread_mutex_unlock(&r->mu);
		j->ents[j->count++] = b;
		if (j->count == chunk)
			job_flush(r, &j);
	}
	job_flush(r, &j);
	return end;
}

/* Update the stream with a read of blocks [first, last]; queue readahead
 * when the stream is sequential. */
static void readahead(struct reader_image *img, struct reader_stream *st, size_t first, size_t last)
{
	struct reader *r = img->r;
	uint64_t wblocks, start, target;
	int seq;

	pthread_mutex_lock(&st->mu);
	if (st->img != img) {
		st->img = img;
		st->primed = 0;
	}
	seq = st->primed && first + SEQ_BEHIND >= st->next && first <= st->next + SEQ_AHEAD;
	if (!seq) {
		st->primed = 1;
		st->seq = first == 0; /* reading from the start: likely all of it */
		st->next = last + 1;
		st->ra_end = 0;
		st->window = 0;
		pthread_mutex_unlock(&st->mu);
		return;
	}
	if (last + 1 > st->next)
		st->next = last + 1;
	if (++st->seq < 2) { /* two in a row before reading ahead */
		pthread_mutex_unlock(&st->mu);
		return;
	}
	if (!st->window)
		st->window = r->ra_min;
	wblocks = st->window / img->bs ? st->window / img->bs : 1;
	start = st->ra_end > st->next ? st->ra_end : st->next;
	target = st->next + wblocks;
	if (target > img->nblocks)
		target = img->nblocks;
	/* Top up only when half of the window has been consumed: fewer, larger
	 * GETs, and the window doubles at most once per half window read. */
	if (start >= target || (st->ra_end > st->next && target - start < (wblocks + 1) / 2) ||
	    atomic_load(&r->net_down)) {
		pthread_mutex_unlock(&st->mu);
		return;
	}
	if (st->window < r->ra_max)
		st->window = st->window * 2 > r->ra_max ? r->ra_max : st->window * 2;
	/* the stream's lock is held while scheduling: concurrent reads of one
	 * stream do not queue the same range twice */
	st->ra_end = schedule(img, start, target);
	pthread_mutex_unlock(&st->mu);
}

/* ---- public: reader ---- */

int reader_new(const struct reader_opts *o, struct reader **out, struct err *e)
{
	struct reader *r = calloc(1, sizeof(*r));
	pthread_condattr_t ca;
	*out = NULL;
	if (!r)
		return err_set(e, ERR_IO, "out of memory");
	if (s3_config_copy(&r->cfg, o->s3, e)) {
		free(r);
		return -1;
	}
	s3_config_defaults(&r->cfg);
	r->cache = o->cache;
	r->nthreads = o->fetch_threads ? o->fetch_threads : DEF_FETCH_THREADS;
	if (r->nthreads > MAX_FETCH_THREADS)
		r->nthreads = MAX_FETCH_THREADS;
	r->mem_limit = o->mem_bytes ? o->mem_bytes : DEF_MEM_BYTES;
	if (r->mem_limit < MIN_MEM_BYTES)
		r->mem_limit = MIN_MEM_BYTES;
	r->ra_min = o->readahead_min ? o->readahead_min : DEF_RA_MIN;
	r->ra_max = o->readahead_max ? o->readahead_max : DEF_RA_MAX;
	r->ra_chunk = o->readahead_chunk ? o->readahead_chunk : DEF_RA_CHUNK;
	if (r->ra_max < r->ra_min)
		r->ra_max = r->ra_min;
	r->pool_len = RECORD_DEFAULT_BLOCK_SIZE;
	if (!(r->zeros = calloc(1, RECORD_MAX_BLOCK_SIZE))) {
		s3_config_free(&r->cfg);
		free(r);
		return err_set(e, ERR_IO, "out of memory");
	}
	/* without the mapping, block buffers come from malloc as they did */
	(void)slab_init(&r->slab, r->pool_len, r->mem_limit / r->pool_len + SLAB_EXTRA);
	/* A waiter normally wakes when the GET it waits for ends (bounded by the
	 * retry budget); this only guards against a lost wakeup. */
	r->wait_limit_s = 2 * r->cfg.retry_budget_s + r->cfg.connect_timeout_s + 30;
	r->fifo.next = r->fifo.prev = &r->fifo;
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->conn_mu, NULL);
	pthread_mutex_init(&r->slot_mu, NULL);
	pthread_cond_init(&r->slot_cv, NULL);
	r->slots_free = CACHE_READ_SLOTS;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->job_cv, &ca);
	pthread_cond_init(&r->mem_cv, &ca);
	pthread_condattr_destroy(&ca);

	r->threads = calloc(r->nthreads, sizeof(*r->threads));
	if (!r->threads) {
		reader_free(r);
		return err_set(e, ERR_IO, "out of memory");
	}
	for (unsigned i = 0; i < r->nthreads; i++) {
		int rc = pthread_create(&r->threads[i], NULL, fetch_thread, r);
		if (rc) {
			errno = rc;
			err_errno(e, "starting the fetch threads");
			reader_free(r);
			return -1;
		}
		r->nstarted++;
	}
	*out = r;
	return 0;
}

void reader_free(struct reader *r)
{
	struct job *j;
	struct err e = {0};
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = 1;
	pthread_cond_broadcast(&r->job_cv);
	pthread_mutex_unlock(&r->mu);
	for (unsigned i = 0; i < r->nstarted; i++)
		pthread_join(r->threads[i], NULL);
	free(r->threads);
	if (r->cache)
		cache_flush(r->cache); /* it holds references to our blocks */

	err_set(&e, ERR_IO, "imgfs is shutting down");
	while ((j = r->jhead)) {
		r->jhead = j->next;
		fail_all(r, j->ents, j->count, &e);
		job_release(r, j);
	}
	pthread_mutex_lock(&r->mu);
	for (unsigned h = 0; h < NBUCKETS; h++) {
		while (r->buckets[h]) {
			struct bent *b = r->buckets[h];
			table_remove(r, b);
			if (!b->refs)
				ent_free_locked(r, b);
		}
	}
	while (r->pool) {
		void *p = r->pool;
		r->pool = *(void **)p;
		buf_free_locked(r, p);
	}
	pthread_mutex_unlock(&r->mu);
	for (unsigned i = 0; i < r->nidle; i++)
		s3_close(r->idle[i]);
	s3_config_free(&r->cfg);
	free((void *)r->zeros);
	pthread_cond_destroy(&r->job_cv);
	pthread_cond_destroy(&r->mem_cv);
	pthread_mutex_destroy(&r->conn_mu);
	pthread_mutex_destroy(&r->slot_mu);
	pthread_cond_destroy(&r->slot_cv);
	pthread_mutex_destroy(&r->mu);
	slab_destroy(&r->slab);
	free(r);
}

void reader_get_stats(struct reader *r, struct reader_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->cache_hits = atomic_load(&r->hits);
	out->cache_misses = atomic_load(&r->misses);
	out->mem_hits = atomic_load(&r->mem_hits);
	out->zero_blocks = atomic_load(&r->zero_blocks);
	out->bytes_fetched = atomic_load(&r->bytes_fetched);
	out->verify_failures = atomic_load(&r->verify_failures);
	out->fetch_errors = atomic_load(&r->fetch_errors);
	out->readahead_blocks = atomic_load(&r->readahead_blocks);
	out->coalesced = atomic_load(&r->coalesced);
	out->gets = atomic_load(&r->gets);
	out->requests = atomic_load(&r->requests);
	out->retries = atomic_load(&r->retries);
	pthread_mutex_lock(&r->mu);
	out->mem_bytes = mem_held(r);
	out->mem_peak_bytes = r->mem_peak;
	pthread_mutex_unlock(&r->mu);
	out->mem_limit_bytes = r->mem_limit;
	out->bucket_down = atomic_load(&r->net_down);
}

/* ---- public: images ---- */

int reader_image_open(struct reader *r, const char *key, uint64_t size, const char *etag,
                      const struct record *rec, struct reader_image **out, struct err *e)
{
	struct reader_image *img = calloc(1, sizeof(*img));
	*out = NULL;
	if (!img || !(img->key = strdup(key)))
		goto oom;
	if (strlen(etag ? etag : "") >= sizeof(img->etag)) {
		free(img->key);
		free(img);
		return err_set(e, ERR_INVALID, "%s: ETag too long", key);
	}
	snprintf(img->etag, sizeof(img->etag), "%s", etag ? etag : "");
	img->r = r;
	img->size = size;
	atomic_init(&img->refs, 1);
	if (rec) {
		unsigned char zfull[32], zlast[32];
		if (rec->size != size || !rec->block_size || (rec->nblocks && !rec->hashes)) {
			free(img->key);
			free(img);
			return err_set(e, ERR_INVALID,
			               "%s: the checksum record does not describe the object", key);
		}
		img->verified = 1;
		img->bs = rec->block_size;
		img->nblocks = rec->nblocks;
		img->hashes = malloc(img->nblocks ? img->nblocks * 32 : 1);
		img->zero = malloc(img->nblocks ? img->nblocks : 1);
		if (!img->hashes || !img->zero)
			goto oom;
		if (img->nblocks)
			memcpy(img->hashes, rec->hashes, img->nblocks * 32);
		record_zero_hash(img->bs, zfull);
		if (img->nblocks)
			record_zero_hash(block_len(img, img->nblocks - 1), zlast);
		for (size_t i = 0; i < img->nblocks; i++)
			img->zero[i] =
			        !memcmp(img->hashes[i], i + 1 == img->nblocks ? zlast : zfull, 32);
	} else {
		img->bs = UNVERIFIED_BS;
		img->nblocks = (size_t)((size + img->bs - 1) / img->bs);
	}
	*out = img;
	return 0;
oom:
	if (img) {
		free(img->key);
		free(img->hashes);
		free(img->zero);
		free(img);
	}
	return err_set(e, ERR_IO, "out of memory");
}

struct reader_image *reader_image_ref(struct reader_image *img)
{
	atomic_fetch_add(&img->refs, 1);
	return img;
}

void reader_image_unref(struct reader_image *img)
{
	if (!img || atomic_fetch_sub(&img->refs, 1) != 1)
		return;
	free(img->key);
	free(img->hashes);
	free(img->zero);
	free(img);
}

uint64_t reader_image_size(const struct reader_image *img)
{
	return img->size;
}

int reader_image_verified(const struct reader_image *img)
{
	return img->verified;
}

uint64_t reader_image_cached_bytes(struct reader_image *img)
{
	struct reader *r = img->r;
	uint64_t n = 0;
	for (size_t i = 0; i < img->nblocks; i++) {
		unsigned char key[CACHE_KEY_LEN];
		struct bent *b;
		int have;
		if (block_is_zero(img, i)) {
			n += block_len(img, i);
			continue;
		}
		block_key(img, i, key);
		pthread_mutex_lock(&r->mu);
		b = table_find(r, key, block_len(img, i));
		have = b && b->state == B_READY;
		pthread_mutex_unlock(&r->mu);
		if (have || (r->cache && cache_has(r->cache, key)))
			n += block_len(img, i);
	}
	return n;
}

int reader_image_seek(const struct reader_image *img, uint64_t off, int hole, uint64_t *out)
{
	if (off >= img->size)
		return -1;
	if (!img->verified) {
		*out = hole ? img->size : off;
		return 0;
	}
	for (size_t i = (size_t)(off / img->bs); i < img->nblocks; i++) {
		if (!img->zero[i] == !hole) {
			uint64_t start = (uint64_t)i * img->bs;
			*out = start > off ? start : off;
			return 0;
		}
	}
	if (hole) {
		*out = img->size; /* the virtual hole at the end */
		return 0;
	}
	return -1;
}

/* ---- public: streams ---- */

struct reader_stream *reader_stream_new(void)
{
	struct reader_stream *s = calloc(1, sizeof(*s));
	if (s)
		pthread_mutex_init(&s->mu, NULL);
	return s;
}

void reader_stream_free(struct reader_stream *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* ---- public: read ---- */

/* S_FILLED: an entry this read filled from the cache itself (ready, counted) */
enum slot_kind { S_DONE, S_WAIT, S_OWN, S_FILLED };

/* Where a read copies what it cannot point at (SQLite pieces, kept pieces
 * let go early): the caller's buffer, or with reader_read_iov(buf NULL) one
 * the reader takes on first use.  Most of a block: a block buffer from the
 * free pool or the memory budget (see reply_get), given back to the pool;
 * a warm read then touches no memory that a cold one did not.  Smaller:
 * malloc'd. */
struct reply {
	unsigned char *p;
	size_t len;
	uint32_t alloc; /* bytes allocated when the reader took it */
};

struct slot {
	enum slot_kind kind;
	struct bent *b;
	struct reply *out;
	size_t doff;         /* of the piece in out */
	uint32_t poff, plen; /* the piece of the block that the read wants */
	/* reader_read_iov(): the piece is served from src (b's buffer, which
	 * the slot keeps its reference to, or the zero area), not copied */
	const unsigned char *src;
};

/* The buffer of the oldest block in memory that nobody holds and that no
 * reader is about to read (readahead not read yet, unless stale: as in
 * mem_room_locked), taken out of the budget; NULL when there is none. */
static unsigned char *evict_idle_locked(struct reader *r)
{
	double now = 0;
	for (struct bent *b = r->fifo.next; b != &r->fifo; b = b->next) {
		unsigned char *p = b->data;
		if (b->refs || b->len != r->pool_len)
			continue;
		if (b->pending) {
			if (!now)
				now = time_mono();
			if (now - b->t_ready <= PENDING_MAX_AGE_S)
				continue;
		}
		table_remove(r, b);
		r->mem_bytes -= b->len;
		free(b->err_msg);
		pthread_cond_destroy(&b->cv);
		free(b);
		mem_freed_locked(r);
		return p;
	}
	return NULL;
}

static unsigned char *reply_get(struct reader *r, struct reply *rp)
{
	int big = rp->len > r->pool_len / 2 && rp->len <= r->pool_len;
	if (rp->p)
		return rp->p;
	rp->alloc = big ? r->pool_len : (uint32_t)rp->len;
	if (big) {
		/* Out of the budget from now on, like a caller's buffer (a read
		 * holding it may still wait for memory): a free one, else the
		 * oldest idle block's -- after a cold read they all sit there,
		 * resident, while a warm one reads SQLite.  A fresh one only
		 * when neither is there, even with room in the budget: else
		 * each warm read in flight added 1 MiB to the full budget. */
		pthread_mutex_lock(&r->mu);
		if (r->pool) {
			rp->p = r->pool;
			r->pool = *(void **)rp->p;
			r->npool--;
		} else if (!(rp->p = evict_idle_locked(r))) {
			rp->p = slab_get(&r->slab); /* malloc below, not under mu */
		}
		pthread_mutex_unlock(&r->mu);
	}
	if (!rp->p)
		rp->p = malloc(rp->alloc);
	return rp->p;
}

static void reply_put(struct reader *r, unsigned char *p, uint32_t alloc)
{
	if (!p)
		return;
	pthread_mutex_lock(&r->mu);
	buf_release(r, p, alloc);
	mem_freed_locked(r);
	pthread_mutex_unlock(&r->mu);
}

/* The destination of a slot's piece; NULL: no memory. */
static unsigned char *slot_dst(struct reader *r, struct slot *sl)
{
	unsigned char *p = reply_get(r, sl->out);
	return p ? p + sl->doff : NULL;
}

/* Step 1 for one block: serve it now (zero, SQLite straight into dst) or
 * leave an entry in the slot to wait for (S_WAIT) or to fetch (S_OWN).
 * 1: the block needs a buffer and the memory budget has no room now (the
 * slot is left alone). */
static int classify(struct reader_image *img, size_t i, struct slot *sl, int keep, struct err *e)
{
	struct reader *r = img->r;
	unsigned char key[CACHE_KEY_LEN];
	uint32_t len = block_len(img, i);
	int full = sl->plen == len, rc = 0;
	struct bent *b, *mine = NULL;
	unsigned char *dst;

	if (block_is_zero(img, i)) {
		if (keep)
			sl->src = r->zeros;
		else
			memset(slot_dst(r, sl), 0, sl->plen); /* the caller's buffer */
		atomic_fetch_add(&r->zero_blocks, 1);
		sl->kind = S_DONE;
		return 0;
	}
	block_key(img, i, key);
	pthread_mutex_lock(&r->mu);
	b = table_find(r, key, len);
	if (b) {
		b->refs++;
		if (b->state == B_LOADING)
			atomic_fetch_add(&r->coalesced, 1);
		else if (!full)
			fifo_append(r, b); /* partial reads: more may follow for this block */
		pthread_mutex_unlock(&r->mu);
		sl->kind = S_WAIT;
		sl->b = b;
		return 0;
	}
	pthread_mutex_unlock(&r->mu);

	/* From SQLite straight into the reply, whole block or piece: a piece
	 * costs only the pages it spans (a 4 KiB random read would otherwise
	 * copy the whole 1 MiB block out of the database).  The cache checks a
	 * verified block against its hash the first time it reads the row;
	 * pieces of a row it has not checked yet come back CACHE_UNCHECKED. */
	if (r->cache) {
		struct err ce = {0};
		if (!(dst = slot_dst(r, sl)))
			return err_set(e, ERR_IO, "out of memory");
		cache_slot_get(r);
		rc = cache_get_range(r->cache, key, len, sl->poff, dst, sl->plen,
		                     img->verified ? CACHE_CHECK : 0, &ce);
		cache_slot_put(r);
		if (rc < 0)
			log_debug("block cache: %s", ce.msg);
	}
	if (rc == 1) {
		atomic_fetch_add(&r->hits, 1);
		sl->kind = S_DONE;
		return 0;
	}
	/* a miss, or a piece of an unchecked row: the whole block goes to
	 * memory, where the next small read finds it, read from the cache
	 * (and checked) or fetched */
	pthread_mutex_lock(&r->mu);
	if ((b = table_find(r, key, len))) { /* someone else got there meanwhile */
		b->refs++;
		pthread_mutex_unlock(&r->mu);
		sl->kind = S_WAIT;
		sl->b = b;
		return 0;
	}
	if (!mem_room_locked(r, len, 1)) {
		pthread_mutex_unlock(&r->mu);
		return 1;
	}
	if (!(mine = ent_new_locked(r, key, len))) {
		pthread_mutex_unlock(&r->mu);
		return err_set(e, ERR_IO, "out of memory");
	}
	table_insert(r, mine);
	pthread_mutex_unlock(&r->mu);
	sl->b = mine;
	sl->kind = S_OWN;
	if (rc == CACHE_UNCHECKED) {
		struct err ce = {0};
		cache_slot_get(r);
		rc = cache_get_range(r->cache, key, len, 0, mine->data, len, CACHE_CHECK, &ce);
		cache_slot_put(r);
		if (rc < 0)
			log_debug("block cache: %s", ce.msg);
		if (rc == 1) {
			atomic_fetch_add(&r->hits, 1);
			ent_publish(r, mine);
			sl->kind = S_FILLED;
		} /* else altered (and dropped) or gone: fetch it */
	}
	return 0;
}

/* Step 4 for one block: wait until it is READY or FAILED; copy, or with
 * keep point sl->src at the piece (the slot keeps its reference). */
static int collect(struct reader_image *img, struct slot *sl, int keep, struct err *e)
{
	struct reader *r = img->r;
	struct bent *b = sl->b;
	struct timespec dl;
	int rc = 0, waited = 0;

	time_deadline(CLOCK_MONOTONIC, r->wait_limit_s, &dl);
	pthread_mutex_lock(&r->mu);
	while (b->state == B_LOADING) {
		waited = 1;
		if (pthread_cond_timedwait(&b->cv, &r->mu, &dl) == ETIMEDOUT &&
		    b->state == B_LOADING) {
			pthread_mutex_unlock(&r->mu);
			return err_set(e, ERR_NET, "reading %s: timed out waiting for a block",
			               img->key);
		}
	}
	pthread_mutex_unlock(&r->mu);
	if (b->state == B_FAILED) {
		rc = err_set(e, b->err_code, "%s", b->err_msg ? b->err_msg : "fetch failed");
	} else if (sl->poff > b->len || sl->plen > b->len - sl->poff) {
		/* the table's identity rules out a shorter entry; never trust that */
		log_error("reading %s: a %u-byte piece at %u of a %u-byte block; not served",
		          img->key, sl->plen, sl->poff, b->len);
		rc = err_set(e, ERR_IO, "reading %s: internal error (block length)", img->key);
	} else {
		if (keep)
			sl->src = b->data + sl->poff;
		else
			memcpy(slot_dst(r, sl), b->data + sl->poff, sl->plen); /* the caller's */
		pthread_mutex_lock(&r->mu);
		b->pending = 0;
		/* read whole: the page cache or the caller has it now, and
		 * sequential readers do not come back; first to go */
		if (sl->plen == b->len && b->in_table && b->on_fifo)
			fifo_prepend(r, b);
		pthread_mutex_unlock(&r->mu);
		if (sl->kind == S_WAIT && !waited) { /* S_FILLED was counted */
			atomic_fetch_add(&r->hits, 1);
			atomic_fetch_add(&r->mem_hits, 1);
		}
	}
	return rc;
}

/* Steps 3 and 4 for slots [k0, k1) (blocks first + k0...): fetch our own
 * runs, wait for the rest, copy; every entry of these slots is let go,
 * except, with keep and no error, those a piece points into (sl->src). */
static int finish(struct reader_image *img, size_t first, struct slot *slots, size_t k0, size_t k1,
                  int keep, struct err *e)
{
	struct reader *r = img->r;
	struct err fe = {0};
	int rc = 0;

	/* 3: our own runs, one GET each */
	for (size_t k = k0; k < k1;) {
		size_t k2 = k;
		struct bent *run[64];
		struct s3 *s = NULL;
		int probe;
		if (slots[k].kind != S_OWN) {
			k++;
			continue;
		}
		while (k2 < k1 && slots[k2].kind == S_OWN && k2 - k < 64)
			k2++;
		for (size_t q = k; q < k2; q++)
			run[q - k] = slots[q].b;
		probe = breaker_enter(r);
		if (probe < 0) {
			err_set(&fe, ERR_NET,
			        "reading %s: the bucket is unreachable (a retry is under way; "
			        "cached blocks are still served)",
			        img->key);
			fail_all(r, run, k2 - k, &fe);
		} else if (!(s = conn_get(r, &fe))) {
			fail_all(r, run, k2 - k, &fe);
		} else {
			fetch_run(img, s, first + k, k2 - k, run);
			conn_put(r, s);
		}
		if (probe > 0)
			breaker_leave(r);
		k = k2;
	}

	/* 4: wait and copy */
	for (size_t k = k0; k < k1; k++) {
		if (slots[k].kind == S_DONE)
			continue;
		if (collect(img, &slots[k], keep, rc ? NULL : e))
			rc = -1;
	}
	pthread_mutex_lock(&r->mu);
	for (size_t k = k0; k < k1; k++) {
		if (slots[k].b && (rc || !slots[k].src))
			ent_put_locked(r, slots[k].b);
		if (rc || !slots[k].src)
			slots[k].b = NULL;
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* Let the kept pieces of slots [k0, k1) and their entries go, with copy
 * copying them into place first: a read must hold nothing while it waits
 * for memory.  -1: no memory to copy them to (they are let go all the same). */
static int unkeep(struct reader *r, struct slot *slots, size_t k0, size_t k1, int copy)
{
	unsigned char *base = NULL;
	int rc = 0;
	for (size_t k = k0; copy && k < k1; k++) {
		if (slots[k].src) {
			if (!(base = reply_get(r, slots[k].out)))
				rc = -1;
			break;
		}
	}
	pthread_mutex_lock(&r->mu);
	for (size_t k = k0; k < k1; k++) {
		if (slots[k].src && base)
			memcpy(base + slots[k].doff, slots[k].src, slots[k].plen);
		slots[k].src = NULL;
		if (slots[k].b)
			ent_put_locked(r, slots[k].b);
		slots[k].b = NULL;
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* The pieces of a finished read in order, as an iovec: kept pieces where
 * they are, the rest (filled from SQLite) in the reply buffer, neighbours
 * merged; the slots' kept entries move to v. */
static int make_iov(struct slot *slots, size_t n, struct reader_iov *v, struct err *e)
{
	struct iovec *iov;
	size_t ni = 0, nh = 0, len = 0;
	/* one allocation: n iovecs, then n entry pointers */
	if (!(iov = malloc(n * (sizeof(*iov) + sizeof(struct bent *)))))
		return err_set(e, ERR_IO, "out of memory");
	v->held = (struct bent **)(iov + n);
	for (size_t k = 0; k < n; k++) {
		const unsigned char *p =
		        slots[k].src ? slots[k].src : slots[k].out->p + slots[k].doff;
		len += slots[k].plen;
		if (ni && (const unsigned char *)iov[ni - 1].iov_base + iov[ni - 1].iov_len == p) {
			iov[ni - 1].iov_len += slots[k].plen;
		} else {
			iov[ni].iov_base = (void *)p;
			iov[ni].iov_len = slots[k].plen;
			ni++;
		}
		if (slots[k].src && slots[k].b) {
			v->held[nh++] = slots[k].b;
			slots[k].b = NULL;
		}
		slots[k].src = NULL;
	}
	v->iov = iov;
	v->count = (int)ni;
	v->len = len;
	v->nheld = nh;
	return 0;
}

/* reader_read(), and with v reader_read_iov(). */
static int read_impl(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                     void *buf, size_t *got, struct reader_iov *v, struct err *e)
{
	struct reader *r = img->r;
	struct slot stack[STACK_SLOTS], *slots = stack;
	struct reply out = {buf, 0, 0};
	int keep = v != NULL;
	size_t first, last, n, done = 0, k = 0;
	int rc = 0, ra_done = !st;
	struct timespec dl;

	*got = 0;
	if (off >= img->size || !len)
		return 0;
	if (len > img->size - off)
		len = (size_t)(img->size - off);
	first = (size_t)(off / img->bs);
	last = (size_t)((off + len - 1) / img->bs);
	n = last - first + 1;
	out.len = len;
	if (n > STACK_SLOTS && !(slots = calloc(n, sizeof(*slots))))
		return err_set(e, ERR_IO, "out of memory");
	time_deadline(CLOCK_MONOTONIC, r->wait_limit_s, &dl);

	while (done < n) {
		int room = 1;
		/* 1: what is where, as far as the memory budget goes */
		for (; k < n; k++) {
			size_t i = first + k;
			uint64_t bo = (uint64_t)i * img->bs;
			uint64_t ps = off > bo ? off : bo;
			uint64_t pe = off + len < bo + block_len(img, i) ? off + len
			                                                 : bo + block_len(img, i);
			slots[k].kind = S_DONE;
			slots[k].b = NULL;
			slots[k].src = NULL;
			slots[k].out = &out;
			slots[k].doff = (size_t)(ps - off);
			slots[k].poff = (uint32_t)(ps - bo);
			slots[k].plen = (uint32_t)(pe - ps);
			rc = classify(img, i, &slots[k], keep, e);
			if (rc < 0)
				goto release;
			if (rc == 1) {
				rc = 0;
				room = 0;
				break;
			}
		}
		/* 2: readahead, before waiting on anything */
		if (!ra_done) {
			readahead(img, st, first, last);
			ra_done = 1;
		}
		/* 3 and 4 for what was classified */
		rc = finish(img, first, slots, done, k, keep, e);
		if (rc)
			unkeep(r, slots, 0, k, 0);
		else if (!room && unkeep(r, slots, 0, k, 1))
			rc = err_set(e, ERR_IO, "out of memory");
		done = k;
		if (rc)
			goto release;
		if (!room && (rc = mem_wait(r, img, block_len(img, first + k), &dl, e)))
			goto release;
	}
	*got = len;
	if (keep && !(rc = make_iov(slots, n, v, e))) {
		v->own = out.p;
		v->own_alloc = out.alloc;
		out.alloc = 0;
	}
release:
	if (rc)
		unkeep(r, slots, 0, done, 0); /* kept pieces of a read that failed */
	if (out.alloc)
		reply_put(r, out.p, out.alloc);
	/* after an error in step 1: entries classified and not finished; the
	 * ones this read was going to fetch must not leave their waiters hanging */
	pthread_mutex_lock(&r->mu);
	for (size_t q = done; q < k && q < n; q++) {
		if (!slots[q].b)
			continue;
		if (slots[q].kind == S_OWN && slots[q].b->state == B_LOADING) {
			pthread_mutex_unlock(&r->mu);
			ent_fail(r, slots[q].b, ERR_IO, "reading was abandoned");
			pthread_mutex_lock(&r->mu);
		}
		ent_put_locked(r, slots[q].b);
	}
	pthread_mutex_unlock(&r->mu);
	if (slots != stack)
		free(slots);
	return rc ? -1 : 0;
}

/* ---- demand and background reads ---- */

int reader_read(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                void *buf, size_t *got, struct err *e)
{
	struct reader *r = img->r;
	int rc;
	atomic_fetch_add(&r->demand, 1);
	rc = read_impl(img, st, off, len, buf, got, NULL, e);
	atomic_store(&r->demand_end, time_mono());
	atomic_fetch_sub(&r->demand, 1);
	return rc;
}

int reader_read_iov(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                    void *buf, struct reader_iov *v, struct err *e)
{
	struct reader *r = img->r;
	size_t got = 0;
	int rc;
	memset(v, 0, sizeof(*v));
	v->r = r;
	atomic_fetch_add(&r->demand, 1);
	rc = read_impl(img, st, off, len, buf, &got, v, e);
	atomic_store(&r->demand_end, time_mono());
	atomic_fetch_sub(&r->demand, 1);
	return rc;
}

void reader_iov_release(struct reader_iov *v)
{
	if (!v->r)
		return;
	pthread_mutex_lock(&v->r->mu);
	for (size_t i = 0; i < v->nheld; i++)
		ent_put_locked(v->r, v->held[i]);
	pthread_mutex_unlock(&v->r->mu);
	if (v->own_alloc)
		reply_put(v->r, v->own, v->own_alloc);
	free(v->iov);
	memset(v, 0, sizeof(*v));
}

int reader_prefetch(struct reader_image *img, uint64_t off, size_t len, void *buf, struct err *e)
{
	size_t got;
	return read_impl(img, NULL, off, len, buf, &got, NULL, e);
}

unsigned reader_demand(struct reader *r, double *last_end)
{
	if (last_end)
		*last_end = atomic_load(&r->demand_end);
	return atomic_load(&r->demand);
}

size_t reader_image_nblocks(const struct reader_image *img)
{
	return img->nblocks;
}

uint32_t reader_image_block_size(const struct reader_image *img)
{
	return img->bs;
}

int reader_image_block(const struct reader_image *img, size_t i, unsigned char key[CACHE_KEY_LEN],
                       uint32_t *len)
{
	block_key(img, i, key);
	*len = block_len(img, i);
	return block_is_zero(img, i);
}
