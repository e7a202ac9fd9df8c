#include "sync/pipeline.h"

#include "common/hex.h"
#include "common/log.h"
#include "common/sha256x2.h"
#include "common/timefmt.h"
#include "store/record_index.h"
#include "sync/interrupt.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB           (1024u * 1024u)
#define MIN_PART_SIZE (5u * MIB) /* S3: every part but the last */
#define MAX_PARTS     10000
#define TIER_PARTS    2000 /* the part size doubles every TIER_PARTS parts ... */
#define MAX_TIER      4    /* ... four times: 8 MiB base -> up to 496 GiB */
/* pipeline_send_file's largest default part.  Smaller parts start sooner: a
 * signed part goes out only once the hash thread has hashed it, and the
 * workers' reads stay nearer the hash thread's in the page cache.  A 1 GiB
 * upload on loopback took 2.95-2.99 s in parts of 128 MiB against 3.34-3.36
 * in three of 342 MiB (signed; unsigned 2.62-2.67 against 2.87-2.93), for the
 * same CPU.  It is also what one retry re-sends. */
#define FILE_PART_MAX (128u * MIB)

struct pbuf {
	unsigned char *data;
	size_t cap;
	size_t len;
	int part;         /* 1-based part number */
	uint64_t offset;  /* of its first byte in the object */
	char payload[65]; /* signed bodies: the part's SHA-256 (hex), by the hash thread */
	struct pbuf *next;
};

struct queue {
	struct pbuf *head, *tail;
};

struct pipeline {
	struct s3_config cfg;
	char *key;
	char *meta_key;
	char *destination;
	char *name;
	char *source_url;
	char *expected;
	char origin[16];
	enum hash_alg alg;
	size_t base_part;
	size_t part_opt; /* --part-size, or 0 */
	int nworkers;

	struct s3 *s3; /* the producer's connection: create, complete, abort, PUT */
	struct s3 **wconn;
	char *upload_id;
	struct sha256_state *whole; /* the object's SHA-256: the hash thread, in order */
	struct hash *mwhole;        /* ... and in alg, when that is not SHA-256 (or NULL) */
	/* Signed bodies only (NULL when they go out as UNSIGNED-PAYLOAD): the
	 * SHA-256 of the part being hashed, in the same pass as the two above,
	 * so that no worker hashes its part again before sending it. */
	struct sha256_state *part_sha;
	unsigned char (*hashes)[32]; /* block map: the hash thread, in order */
	size_t hashes_cap;
	uint64_t submitted; /* bytes handed to the hash thread */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pbuf **bufs; /* every buffer ever allocated, for freeing */
	int nbufs, max_bufs;
	struct pbuf *free_list;
	struct queue hashq, upq;
	struct s3_part *parts;
	int parts_cap;
	int next_part;
	int inflight; /* submitted, not yet uploaded */
	int stop;
	int failed;
	struct err ferr;

	pthread_t hasher;
	pthread_t *workers;
	int nthreads; /* started: hasher + workers */

	/* pipeline_send_file: parts read from the file by the workers */
	int file_fd;
	uint64_t file_size;
	size_t file_part;
	int file_nparts, file_next, file_exited;
	char (*file_payload)[65];         /* signed bodies: each part's SHA-256 (hex) ... */
	int file_hashed;                  /* ... ready for the parts up to this one */
	volatile sig_atomic_t abort_flag; /* stops the workers' requests */
	_Atomic uint64_t sent;            /* body bytes the workers sent */

	struct pbuf *cur; /* being filled by the producer */
	uint64_t bytes;
	double t_start, t_wait, t_hash; /* for the debug summary */
	int finished;
};

static void q_push(struct queue *q, struct pbuf *b)
{
	b->next = NULL;
	if (q->tail)
		q->tail->next = b;
	else
		q->head = b;
	q->tail = b;
}

static struct pbuf *q_pop(struct queue *q)
{
	struct pbuf *b = q->head;
	if (b) {
		q->head = b->next;
		if (!q->head)
			q->tail = NULL;
		b->next = NULL;
	}
	return b;
}

static size_t part_size_for(const struct pipeline *p, int part)
{
	int tier = (part - 1) / TIER_PARTS;
	if (tier > MAX_TIER)
		tier = MAX_TIER;
	return p->base_part << tier;
}

/* Record the first failure; wakes everybody up. Call without the lock. */
static void set_failed(struct pipeline *p, const struct err *e)
{
	pthread_mutex_lock(&p->mu);
	if (!p->failed) {
		p->failed = 1;
		p->ferr = *e;
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

static int get_failure(struct pipeline *p, struct err *e)
{
	int failed;
	pthread_mutex_lock(&p->mu);
	failed = p->failed;
	if (failed && e)
		*e = p->ferr;
	pthread_mutex_unlock(&p->mu);
	return failed ? -1 : 0;
}

static size_t nblocks(uint64_t len)
{
	return (size_t)((len + RECORD_DEFAULT_BLOCK_SIZE - 1) / RECORD_DEFAULT_BLOCK_SIZE);
}

static int all_zero(const unsigned char *d, size_t n)
{
	return n == 0 || (d[0] == 0 && !memcmp(d, d + 1, n - 1));
}

/* The next len bytes of the object, in order, starting on a block boundary:
 * into the object's checksum(s) and into part (a signed part's SHA-256, or
 * NULL), and the SHA-256 of each block into out (the block map).  Zero
 * blocks, common in disk images, take the precomputed zero hash. */
static void hash_part(struct pipeline *p, const unsigned char *data, size_t len,
                      struct sha256_state *part, unsigned char (*out)[32])
{
	for (size_t i = 0, off = 0; off < len; i++, off += RECORD_DEFAULT_BLOCK_SIZE) {
		size_t n = len - off < RECORD_DEFAULT_BLOCK_SIZE ? len - off
		                                                 : RECORD_DEFAULT_BLOCK_SIZE;
		const unsigned char *d = data + off;
		int zero = all_zero(d, n);
		if (zero)
			record_zero_hash((uint32_t)n, out[i]);
		/* all the digests in one pass, at about the cost of one */
		if (zero && part)
			sha256x2_update(p->whole, d, part, d, n);
		else if (zero)
			sha256_update(p->whole, d, n);
		else if (part)
			sha256x3_block(p->whole, part, d, n, out[i]);
		else
			sha256x2_block(p->whole, d, n, out[i]);
	}
	if (p->mwhole)
		hash_update(p->mwhole, data, len);
}

/* The signed part's SHA-256, in hex, once the hash thread fed it all. */
static void part_payload(struct pipeline *p, char out[65])
{
	unsigned char d[32];
	sha256_final(p->part_sha, d);
	hex_encode(d, sizeof(d), out);
}

static void *hash_main(void *arg)
{
	struct pipeline *p = arg;
	unsigned char(*bh)[32] = NULL; /* the block map of one part */
	size_t bh_cap = 0;
	for (;;) {
		struct pbuf *b;
		int failed;
		pthread_mutex_lock(&p->mu);
		while (!p->stop && !p->hashq.head)
			pthread_cond_wait(&p->cv, &p->mu);
		b = q_pop(&p->hashq);
		failed = p->failed;
		pthread_mutex_unlock(&p->mu);
		if (!b)
			break; /* stopping, queue drained */
		double t0 = time_mono();
		size_t nb = nblocks(b->len);
		if (!failed && nb > bh_cap) {
			free(bh);
			bh = malloc(nb * 32);
			bh_cap = bh ? nb : 0;
			if (!bh) {
				struct err e = {0};
				err_set(&e, ERR_IO, "out of memory");
				set_failed(p, &e);
				failed = 1;
			}
		}
		if (!failed)
			hash_part(p, b->data, b->len, p->part_sha, bh);
		if (!failed && p->part_sha)
			part_payload(p, b->payload);
		pthread_mutex_lock(&p->mu);
		/* into the map under the lock: submit() may grow it meanwhile */
		if (!failed)
			memcpy(p->hashes[b->offset / RECORD_DEFAULT_BLOCK_SIZE], bh, nb * 32);
		p->t_hash += time_mono() - t0;
		if (failed || p->failed) {
			b->next = p->free_list;
			p->free_list = b;
			p->inflight--;
		} else {
			q_push(&p->upq, b);
		}
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	free(bh);
	return NULL;
}

struct worker_arg {
	struct pipeline *p;
	struct s3 *s3;
};

static void *worker_main(void *arg)
{
	struct pipeline *p = ((struct worker_arg *)arg)->p;
	struct s3 *s3 = ((struct worker_arg *)arg)->s3;
	free(arg);
	for (;;) {
		struct pbuf *b;
		struct err e = {0};
		char etag[S3_ETAG_MAX] = "";
		int failed, rc = 0;
		pthread_mutex_lock(&p->mu);
		while (!p->stop && !p->upq.head)
			pthread_cond_wait(&p->cv, &p->mu);
		b = q_pop(&p->upq);
		failed = p->failed;
		pthread_mutex_unlock(&p->mu);
		if (!b)
			break;
		if (!failed) {
			log_debug("%s: uploading part %d (%zu bytes)", p->key, b->part, b->len);
			rc = s3_mpu_put_part(s3, p->key, p->upload_id, b->part, b->data, b->len,
			                     b->payload[0] ? b->payload : NULL, etag, &e);
			if (rc) {
				err_prefix(&e, "uploading part %d of %s", b->part, p->key);
				set_failed(p, &e);
			}
		}
		pthread_mutex_lock(&p->mu);
		if (!failed && !rc) {
			p->parts[b->part - 1].number = b->part;
			memcpy(p->parts[b->part - 1].etag, etag, S3_ETAG_MAX);
		}
		b->len = 0;
		b->next = p->free_list;
		p->free_list = b;
		p->inflight--;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	return NULL;
}

static void stop_threads(struct pipeline *p)
{
	if (!p->nthreads)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->hasher, NULL);
	for (int i = 0; i < p->nthreads - 1; i++)
		pthread_join(p->workers[i], NULL);
	p->nthreads = 0;
}

/* Abort the multipart upload, if one was started. */
static void abort_upload(struct pipeline *p)
{
	struct err e = {0};
	stop_threads(p);
	if (!p->upload_id)
		return;
	if (s3_mpu_abort(p->s3, p->key, p->upload_id, &e))
		log_warn("could not abort the multipart upload of %s (prune removes it after "
		         "24 h): %s",
		         p->key, e.msg);
	else
		log_debug("%s: multipart upload aborted", p->key);
	free(p->upload_id);
	p->upload_id = NULL;
}

struct pipeline *pipeline_new(const struct pipeline_opts *o, struct err *e)
{
	struct pipeline *p = calloc(1, sizeof(*p));
	if (!p) {
		err_set(e, ERR_IO, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->alg = o->alg;
	p->nworkers = o->workers > 0 ? o->workers : PIPELINE_WORKERS;
	p->max_bufs = p->nworkers + 2; /* one filling, one hashing, one per worker */
	p->part_opt = o->part_size;
	p->base_part = o->part_size ? o->part_size : PIPELINE_PART_SIZE;
	if (p->base_part < MIN_PART_SIZE)
		p->base_part = MIN_PART_SIZE;
	/* whole blocks per part: each worker hashes the blocks of its own part */
	p->base_part = (p->base_part + MIB - 1) / MIB * MIB;
	/* only for huge known sizes: grow the base so that the parts suffice */
	while (o->size_hint / ((uint64_t)TIER_PARTS * 31) > p->base_part)
		p->base_part += MIB;
	p->next_part = 1;
	p->t_start = time_mono();
	if (s3_config_copy(&p->cfg, o->cfg, e))
		goto fail;
	p->key = record_image_key(o->destination);
	p->meta_key = record_meta_key(o->destination);
	p->destination = strdup(o->destination);
	p->name = strdup(o->name ? o->name : o->destination);
	p->source_url = o->source_url ? strdup(o->source_url) : NULL;
	p->expected = o->expected ? strdup(o->expected) : NULL;
	snprintf(p->origin, sizeof(p->origin), "%s", o->origin ? o->origin : RECORD_ORIGIN_UPLOAD);
	p->whole = sha256_state_new();
	p->mwhole = o->alg != HASH_SHA256 ? hash_new(o->alg) : NULL;
	if (!p->key || !p->meta_key || !p->destination || !p->name ||
	    (o->source_url && !p->source_url) || (o->expected && !p->expected) || !p->whole ||
	    (o->alg != HASH_SHA256 && !p->mwhole)) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	if (p->expected) {
		enum hash_alg alg;
		char hex[HASH_MAX_HEX];
		if (hash_checksum_parse(p->expected, &alg, hex) || alg != p->alg) {
			err_set(e, ERR_INVALID, "expected checksum '%s' is not a %s checksum",
			        p->expected, hash_alg_name(p->alg));
			goto fail;
		}
	}
	p->s3 = s3_open(&p->cfg, e);
	if (!p->s3)
		goto fail;
	if (!s3_payload_unsigned(p->s3) && !(p->part_sha = sha256_state_new())) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	return p;
fail:
	pipeline_free(p);
	return NULL;
}

/* The multipart upload and one connection per worker; cancel stops the
 * workers' requests where they are (the producer's connection stays able to
 * abort the upload). */
static int open_multipart(struct pipeline *p, const volatile sig_atomic_t *cancel, struct err *e)
{
	if (s3_mpu_create(p->s3, p->key, "application/octet-stream", &p->upload_id, e))
		return err_prefix(e, "starting the upload of %s", p->key);
	log_debug("%s: multipart upload started (part bodies %s)", p->key,
	          s3_payload_unsigned(p->s3) ? "unsigned: UNSIGNED-PAYLOAD" : "signed");
	p->wconn = calloc(p->nworkers, sizeof(*p->wconn));
	p->workers = calloc(p->nworkers, sizeof(*p->workers));
	if (!p->wconn || !p->workers)
		return err_set(e, ERR_IO, "out of memory");
	for (int i = 0; i < p->nworkers; i++) {
		p->wconn[i] = s3_open(&p->cfg, e);
		if (!p->wconn[i])
			return -1;
		s3_set_cancel(p->wconn[i], cancel);
		s3_count_sent(p->wconn[i], &p->sent);
	}
	return 0;
}

static int start_multipart(struct pipeline *p, struct err *e)
{
	/* a signal stops the parts in flight */
	if (open_multipart(p, interrupt_flag(), e))
		return -1;
	if (pthread_create(&p->hasher, NULL, hash_main, p))
		return err_set(e, ERR_IO, "cannot start a thread");
	p->nthreads = 1;
	for (int i = 0; i < p->nworkers; i++) {
		struct worker_arg *a = malloc(sizeof(*a));
		if (!a)
			return err_set(e, ERR_IO, "out of memory");
		a->p = p;
		a->s3 = p->wconn[i];
		if (pthread_create(&p->workers[i], NULL, worker_main, a)) {
			free(a);
			return err_set(e, ERR_IO, "cannot start a thread");
		}
		p->nthreads++;
	}
	return 0;
}

/* Hand the current (full) buffer to the hash thread. */
static int submit(struct pipeline *p, struct err *e)
{
	struct pbuf *b = p->cur;
	if (!p->upload_id && start_multipart(p, e))
		return -1;
	pthread_mutex_lock(&p->mu);
	if (p->next_part > MAX_PARTS) {
		pthread_mutex_unlock(&p->mu);
		return err_set(e, ERR_IO, "%s: more than %d parts", p->key, MAX_PARTS);
	}
	if (p->next_part > p->parts_cap) {
		int cap = p->parts_cap ? 2 * p->parts_cap : 256;
		struct s3_part *np = realloc(p->parts, cap * sizeof(*np));
		if (!np) {
			pthread_mutex_unlock(&p->mu);
			return err_set(e, ERR_IO, "out of memory");
		}
		memset(np + p->parts_cap, 0, (cap - p->parts_cap) * sizeof(*np));
		p->parts = np;
		p->parts_cap = cap;
	}
	b->part = p->next_part++;
	b->offset = p->submitted;
	p->submitted += b->len;
	if (nblocks(p->submitted) > p->hashes_cap) {
		size_t cap = p->hashes_cap ? 2 * p->hashes_cap : 1024;
		unsigned char(*nh)[32];
		while (cap < nblocks(p->submitted))
			cap *= 2;
		nh = realloc(p->hashes, cap * 32);
		if (!nh) {
			p->submitted -= b->len;
			p->next_part--;
			pthread_mutex_unlock(&p->mu);
			return err_set(e, ERR_IO, "out of memory");
		}
		p->hashes = nh;
		p->hashes_cap = cap;
	}
	p->inflight++;
	q_push(&p->hashq, b);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	p->cur = NULL;
	return 0;
}

/* A free buffer big enough for the next part (waits while all are in flight). */
static int take_buffer(struct pipeline *p, struct err *e)
{
	size_t need = part_size_for(p, p->next_part);
	struct pbuf *b = NULL;
	int alloc = 0;
	double t0 = time_mono();
	pthread_mutex_lock(&p->mu);
	while (!p->failed && !p->free_list && p->nbufs >= p->max_bufs)
		pthread_cond_wait(&p->cv, &p->mu);
	p->t_wait += time_mono() - t0;
	if (p->failed) {
		*e = p->ferr;
		pthread_mutex_unlock(&p->mu);
		return -1;
	}
	if (p->free_list) {
		b = p->free_list;
		p->free_list = b->next;
	} else {
		alloc = 1;
		p->nbufs++;
	}
	pthread_mutex_unlock(&p->mu);
	if (alloc) {
		struct pbuf **nb = realloc(p->bufs, p->nbufs * sizeof(*nb));
		b = calloc(1, sizeof(*b));
		if (nb)
			p->bufs = nb;
		if (!nb || !b) {
			free(b);
			pthread_mutex_lock(&p->mu);
			p->nbufs--;
			pthread_mutex_unlock(&p->mu);
			return err_set(e, ERR_IO, "out of memory");
		}
		p->bufs[p->nbufs - 1] = b;
	}
	if (b->cap < need) {
		unsigned char *d = realloc(b->data, need);
		if (!d) {
			pthread_mutex_lock(&p->mu);
			b->next = p->free_list;
			p->free_list = b;
			pthread_mutex_unlock(&p->mu);
			return err_set(e, ERR_IO, "out of memory (part buffer of %zu bytes)", need);
		}
		b->data = d;
		b->cap = need;
	}
	b->len = 0;
	b->next = NULL;
	p->cur = b;
	return 0;
}

int pipeline_buffer(struct pipeline *p, void **buf, size_t *avail, struct err *e)
{
	size_t limit;
	if (p->cur && p->cur->len >= part_size_for(p, p->next_part) && submit(p, e))
		return -1;
	if (!p->cur && take_buffer(p, e))
		return -1;
	limit = part_size_for(p, p->next_part);
	*buf = p->cur->data + p->cur->len;
	*avail = limit - p->cur->len;
	return 0;
}

/* A signal stops the upload before the object is complete (pipeline_free
 * then aborts it); once it is complete, its record is written all the same. */
static int check_interrupt(struct err *e)
{
	int sig = interrupted();
	if (sig)
		return err_set(e, ERR_NET, "interrupted by %s",
		               sig == SIGINT ? "SIGINT" : "SIGTERM");
	return 0;
}

int pipeline_commit(struct pipeline *p, size_t n, struct err *e)
{
	p->cur->len += n;
	p->bytes += n;
	return get_failure(p, e) || check_interrupt(e) ? -1 : 0;
}

int pipeline_write(struct pipeline *p, const void *data, size_t n, struct err *e)
{
	const unsigned char *d = data;
	while (n) {
		void *buf;
		size_t avail;
		if (pipeline_buffer(p, &buf, &avail, e))
			return -1;
		if (avail > n)
			avail = n;
		memcpy(buf, d, avail);
		if (pipeline_commit(p, avail, e))
			return -1;
		d += avail;
		n -= avail;
	}
	return 0;
}

uint64_t pipeline_bytes(const struct pipeline *p)
{
	return p->bytes;
}

/* The parts of a file of size bytes.  Each part costs the server a request,
 * a segment and a line of the manifest: so without --part-size, as few as
 * keep every worker busy to the end (a multiple of the workers, each at most
 * FILE_PART_MAX, at least PIPELINE_PART_SIZE); with it, that size. */
static void plan_file_parts(struct pipeline *p)
{
	uint64_t size = p->file_size, part;
	if (p->part_opt) {
		part = p->base_part;
	} else {
		uint64_t n = (size + FILE_PART_MAX - 1) / FILE_PART_MAX;
		n = (n + p->nworkers - 1) / p->nworkers * p->nworkers;
		part = (size + n - 1) / n;
		if (part < PIPELINE_PART_SIZE)
			part = PIPELINE_PART_SIZE;
	}
	if (part < (size + MAX_PARTS - 1) / MAX_PARTS)
		part = (size + MAX_PARTS - 1) / MAX_PARTS;
	part = (part + MIB - 1) / MIB * MIB; /* whole blocks per part */
	p->file_part = (size_t)part;
	p->file_nparts = (int)((size + part - 1) / part);
}

static void *file_worker_main(void *arg)
{
	struct pipeline *p = ((struct worker_arg *)arg)->p;
	struct s3 *s3 = ((struct worker_arg *)arg)->s3;
	free(arg);
	for (;;) {
		struct err e = {0};
		char etag[S3_ETAG_MAX] = "";
		uint64_t off;
		size_t len;
		int part;
		pthread_mutex_lock(&p->mu);
		if (p->failed || p->file_next > p->file_nparts) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		part = p->file_next++;
		/* a signed body: its SHA-256 goes into the request's headers */
		while (p->file_payload && p->file_hashed < part && !p->failed)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->failed) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		pthread_mutex_unlock(&p->mu);
		off = (uint64_t)(part - 1) * p->file_part;
		len = p->file_size - off < p->file_part ? (size_t)(p->file_size - off)
		                                        : p->file_part;
		log_debug("%s: uploading part %d (%zu bytes from offset %llu)", p->key, part, len,
		          (unsigned long long)off);
		if (s3_mpu_put_part_file(s3, p->key, p->upload_id, part, p->file_fd, off, len,
		                         p->file_payload ? p->file_payload[part - 1] : NULL, etag,
		                         &e)) {
			err_prefix(&e, "uploading part %d of %s", part, p->key);
			set_failed(p, &e);
			p->abort_flag = 1; /* the other parts in flight stop too */
			break;
		}
		pthread_mutex_lock(&p->mu);
		p->parts[part - 1].number = part;
		memcpy(p->parts[part - 1].etag, etag, S3_ETAG_MAX);
		pthread_mutex_unlock(&p->mu);
	}
	pthread_mutex_lock(&p->mu);
	p->file_exited++;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* The first failure (a worker's, a read here, a signal) stops the other
 * workers: they take no further part, and their requests in flight end
 * (pipeline_send_file then waits for them). */
static void fail_file(struct pipeline *p, const struct err *e)
{
	set_failed(p, e);
	p->abort_flag = 1;
}

static int read_full(int fd, void *buf, size_t n, uint64_t off, struct err *e)
{
	unsigned char *d = buf;
	while (n) {
		ssize_t got = pread(fd, d, n, (off_t)off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return err_errno(e, "reading at offset %llu", (unsigned long long)off);
		if (got == 0)
			return err_set(e, ERR_IO, "the file got shorter while it was read");
		d += got;
		off += (uint64_t)got;
		n -= (size_t)got;
	}
	return 0;
}

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* This thread hashes the file in order (checksum and block map) while the
 * workers send its parts, each read from the file as it goes out. */
static int hash_file(struct pipeline *p, void (*progress)(void *, uint64_t), void *ud,
                     struct err *e)
{
	unsigned char *buf = malloc(RECORD_DEFAULT_BLOCK_SIZE);
	int rc = -1;
	if (!buf)
		return err_set(e, ERR_IO, "out of memory");
	for (uint64_t off = 0; off < p->file_size; off += RECORD_DEFAULT_BLOCK_SIZE) {
		size_t n = p->file_size - off < RECORD_DEFAULT_BLOCK_SIZE
		                   ? (size_t)(p->file_size - off)
		                   : RECORD_DEFAULT_BLOCK_SIZE;
		uint64_t sent = atomic_load_explicit(&p->sent, memory_order_relaxed);
		if (get_failure(p, e) || check_interrupt(e) ||
		    read_full(p->file_fd, buf, n, off, e))
			goto out;
		hash_part(p, buf, n, p->part_sha, &p->hashes[off / RECORD_DEFAULT_BLOCK_SIZE]);
		if (p->file_payload && ((off + n) % p->file_part == 0 || off + n == p->file_size)) {
			/* the part is complete: its worker may send it */
			pthread_mutex_lock(&p->mu);
			part_payload(p, p->file_payload[p->file_hashed]);
			p->file_hashed++;
			pthread_cond_broadcast(&p->cv);
			pthread_mutex_unlock(&p->mu);
		}
		if (progress)
			progress(ud, sent < off + n ? sent : off + n);
	}
	rc = 0;
out:
	free(buf);
	return rc;
}

/* Wait until the started workers have ended, a signal meanwhile stopping
 * them too, with progress from the bytes they sent. */
static void wait_file_workers(struct pipeline *p, int started, void (*progress)(void *, uint64_t),
                              void *ud)
{
	for (;;) {
		struct timespec ts;
		uint64_t sent;
		int done;
		time_deadline(CLOCK_REALTIME, 0.2, &ts);
		pthread_mutex_lock(&p->mu);
		if (p->file_exited < started)
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
		done = p->file_exited >= started;
		pthread_mutex_unlock(&p->mu);
		if (done)
			return;
		if (interrupted() && !p->abort_flag) {
			struct err ie = {0};
			check_interrupt(&ie);
			fail_file(p, &ie);
		}
		sent = atomic_load_explicit(&p->sent, memory_order_relaxed);
		if (progress)
			progress(ud, sent < p->file_size ? sent : p->file_size);
	}
}

int pipeline_send_file(struct pipeline *p, int fd, void (*progress)(void *, uint64_t), void *ud,
                       struct err *e)
{
	struct stat before, after;
	double t0 = time_mono();
	int started = 0, failed;

	if (p->bytes || p->upload_id || p->cur)
		return err_set(e, ERR_IO, "%s: pipeline_send_file after pipeline_write", p->key);
	if (fstat(fd, &before))
		return err_errno(e, "fstat");
	if (before.st_size <= 0) /* no parts to cut: pipeline_write() stores it */
		return err_set(e, ERR_INVALID, "%s: pipeline_send_file of an empty file", p->key);
	p->file_fd = fd;
	p->file_size = (uint64_t)before.st_size;
	plan_file_parts(p);
	p->parts = calloc(p->file_nparts, sizeof(*p->parts));
	p->hashes = malloc(nblocks(p->file_size) * 32 + 1); /* + 1: never malloc(0) */
	if (p->part_sha)
		p->file_payload = calloc(p->file_nparts, sizeof(*p->file_payload));
	if (!p->parts || !p->hashes || (p->part_sha && !p->file_payload))
		return err_set(e, ERR_IO, "out of memory");
	p->parts_cap = p->file_nparts;
	p->hashes_cap = nblocks(p->file_size);
	p->file_next = 1;
	log_debug("%s: %llu bytes in %d part(s) of %zu bytes, read from the file", p->key,
	          (unsigned long long)p->file_size, p->file_nparts, p->file_part);
	if (open_multipart(p, &p->abort_flag, e))
		return -1;
	for (; started < p->nworkers; started++) {
		struct worker_arg *a = malloc(sizeof(*a));
		if (a) {
			a->p = p;
			a->s3 = p->wconn[started];
		}
		if (!a || pthread_create(&p->workers[started], NULL, file_worker_main, a)) {
			free(a);
			err_set(e, ERR_IO, "cannot start a thread");
			fail_file(p, e);
			break;
		}
	}
	if (started == p->nworkers && hash_file(p, progress, ud, e))
		fail_file(p, e);
	p->t_hash = time_mono() - t0;
	wait_file_workers(p, started, progress, ud);
	for (int i = 0; i < started; i++)
		pthread_join(p->workers[i], NULL);
	failed = get_failure(p, e);
	if (fstat(fd, &after))
		return failed ? -1 : err_errno(e, "fstat");
	/* The workers and this thread each read the file once: the record
	 * describes what was sent only if nobody wrote to it meanwhile.  A
	 * change is also the likely cause of a failure (a signed part whose
	 * bytes no longer match the hash thread's SHA-256), so it is what the
	 * error says. */
	if (!same_file(&before, &after))
		return err_set(
		        e, ERR_IO,
		        "the file changed while it was uploaded (size or modification time); "
		        "nothing was stored: upload it again once it is complete");
	if (failed)
		return -1;
	p->bytes = p->submitted = p->file_size;
	p->next_part = p->file_nparts + 1;
	p->base_part = p->file_part;
	return 0;
}

static int verify(struct pipeline *p, const struct record *r, struct err *e)
{
	enum hash_alg alg;
	char hex[HASH_MAX_HEX];
	const char *sum = p->mwhole ? r->manifest_checksum : r->checksum;
	const char *got = strchr(sum, ':');
	if (!p->expected)
		return 0;
	if (hash_checksum_parse(p->expected, &alg, hex) || !got || strcmp(got + 1, hex))
		return err_set(e, ERR_INTEGRITY,
		               "checksum mismatch for %s: expected %s, got %s (nothing was "
		               "stored; check the manifest's checksum)",
		               p->key, p->expected, sum);
	return 0;
}

/* The checksum and block map of the whole object into r. */
static int make_record(struct pipeline *p, uint64_t size, struct record *r, struct err *e)
{
	unsigned char sum[32];
	char hex[HASH_MAX_HEX];
	if (size != p->bytes)
		return err_set(e, ERR_IO, "%s: %llu bytes hashed, %llu written", p->key,
		               (unsigned long long)size, (unsigned long long)p->bytes);
	sha256_final(p->whole, sum);
	hex_encode(sum, sizeof(sum), hex);
	snprintf(r->checksum, sizeof(r->checksum), "sha256:%s", hex);
	if (p->mwhole) {
		hash_final_hex(p->mwhole, hex);
		snprintf(r->manifest_checksum, sizeof(r->manifest_checksum), "%s:%s",
		         hash_alg_name(p->alg), hex);
	}
	snprintf(r->origin, sizeof(r->origin), "%s", p->origin);
	r->size = size;
	r->block_size = RECORD_DEFAULT_BLOCK_SIZE;
	r->nblocks = nblocks(size);
	free(r->hashes);
	r->hashes = p->hashes;
	p->hashes = NULL;
	p->hashes_cap = 0;
	/* the rest now: once the object is replaced, no failure of ours may
	 * keep its record from being written */
	r->name = strdup(p->name);
	if (p->source_url)
		r->source_url = strdup(p->source_url);
	time_format_rfc3339(time(NULL), r->uploaded_at);
	if (!r->name || (p->source_url && !r->source_url))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}

static int wait_parts(struct pipeline *p, struct err *e)
{
	pthread_mutex_lock(&p->mu);
	while (!p->failed && p->inflight > 0)
		pthread_cond_wait(&p->cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
	if (get_failure(p, e))
		return -1;
	stop_threads(p);
	return 0;
}

/* The record at meta_key is byte for byte `json`: 1 yes, 0 no (also when
 * there is none), -1 could not read it (ge says why). */
static int record_is(struct pipeline *p, const char *json, struct err *ge)
{
	char *data = NULL;
	size_t len = 0;
	int rc;
	if (s3_get_all(p->s3, p->meta_key, RECINDEX_MAX_RECORD, &data, &len, NULL, ge)) {
		if (ge->code != ERR_NOTFOUND)
			return -1;
		err_clear(ge);
		return 0;
	}
	rc = len == strlen(json) && !memcmp(data, json, len);
	free(data);
	return rc;
}

/* Our object is complete at p->key (ETag r->etag) but our record is not
 * there: the PUT failed (e says how) or json could not be made (NULL).  The
 * previous bytes are gone (CompleteMultipartUpload / PUT replaced them), so
 * the question is only what the bucket says about the new ones.  They stay:
 * they were verified, and deleting them would leave nothing at all.  What
 * must not stay is a record that does not describe them: the previous one
 * is removed unless it describes these very bytes (the same upload again).
 * Every step is checked against the object as it is now, so that another
 * upload's object and record are never touched.  -1 with e set, or 0 when
 * our record turns out to be there after all (only the answer was lost). */
static int unrecorded(struct pipeline *p, const struct record *r, const char *json, struct err *e)
{
	char why[ERR_MSG_MAX], *data = NULL;
	struct s3_object cur = {0};
	struct record prev = {0};
	struct err ge = {0};
	size_t len = 0;
	int rc = -1;

	snprintf(why, sizeof(why), "%s", e->msg);
	if (s3_head(p->s3, p->key, &cur, &ge) || !record_etag_equal(cur.etag, r->etag)) {
		err_set(e, ERR_PRECONDITION, "%s; %s: %s (left as it is)", why, p->key,
		        ge.code ? ge.msg : "replaced by another upload meanwhile");
		goto out;
	}
	if (s3_get_all(p->s3, p->meta_key, RECINDEX_MAX_RECORD, &data, &len, NULL, &ge)) {
		if (ge.code == ERR_NOTFOUND)
			err_set(e, ERR_IO,
			        "%s; %s holds the new bytes without a checksum record: it is not "
			        "served; upload or sync it again",
			        why, p->key);
		else
			err_set(e, ERR_IO,
			        "%s; %s holds the new bytes; the previous record could not be "
			        "checked (%s), and readers refuse it as long as its ETag is not "
			        "that of the new bytes; upload or sync it again",
			        why, p->key, ge.msg);
		goto out;
	}
	if (json && len == strlen(json) && !memcmp(data, json, len)) {
		log_warn("%s: %s; the record is there all the same", p->meta_key, why);
		err_clear(e);
		rc = 0;
		goto out;
	}
	if (!record_parse(data, len, &prev, &ge) &&
	    !record_matches_object(&prev, cur.size, cur.etag, &ge)) {
		err_set(e, ERR_IO,
		        "%s; the previous record still describes %s (the same bytes), which "
		        "stays as it was",
		        why, p->key);
		goto out;
	}
	err_clear(&ge);
	if (s3_delete(p->s3, p->meta_key, &ge))
		err_set(e, ERR_IO,
		        "%s; %s holds the new bytes, and the previous record could not be "
		        "removed (%s): readers refuse it, its ETag is not that of the new bytes; "
		        "upload or sync it again",
		        why, p->key, ge.msg);
	else
		err_set(e, ERR_IO,
		        "%s; %s holds the new bytes without a checksum record: it is not served; "
		        "upload or sync it again",
		        why, p->key);
out:
	record_free(&prev);
	free(data);
	free(cur.key);
	return rc;
}

/* Our record is written.  Another upload may have replaced the object since
 * it was checked (S3 has no conditional PUT here to prevent it: Swift's
 * s3api answers NotImplemented): then our record names an ETag the object
 * no longer has.  Readers refuse such a record, but it is taken back when it
 * is still ours, and the command fails, since its image is not there. */
static int recheck(struct pipeline *p, const struct record *r, const char *json, struct err *e)
{
	struct s3_object cur = {0};
	struct err ge = {0};
	int rc = 0, ours;
	if (s3_head(p->s3, p->key, &cur, &ge)) {
		log_warn("%s: checking it again after writing its record: %s", p->key, ge.msg);
		goto out;
	}
	if (record_etag_equal(cur.etag, r->etag))
		goto out;
	ours = record_is(p, json, &ge);
	if (ours == 1 && !s3_delete(p->s3, p->meta_key, &ge))
		err_set(e, ERR_PRECONDITION,
		        "%s was replaced by another upload while its record was written; this "
		        "upload's record was taken back (the object is the other upload's)",
		        p->key);
	else if (ours == 0)
		err_set(e, ERR_PRECONDITION,
		        "%s was replaced by another upload while its record was written; the "
		        "record there now is not this upload's",
		        p->key);
	else
		err_set(e, ERR_PRECONDITION,
		        "%s was replaced by another upload while its record was written, and "
		        "this upload's record could not be taken back (%s); readers refuse it "
		        "(its ETag is not the object's)",
		        p->key, ge.msg);
	rc = -1;
out:
	free(cur.key);
	return rc;
}

/* The size and ETag of key as a listing shows it: what imgfs and `list`
 * compare a record with.  Not HEAD: Swift's s3api answers HEAD of a
 * server-side copy of a multipart object with the source's "...-N" ETag but
 * lists the copy with the MD5 of its bytes, and a version record carrying the
 * HEAD's ETag would never be published. */
static int listed_object(struct s3 *s3, const char *key, struct s3_object *out, struct err *e)
{
	struct s3_object *objs = NULL;
	size_t n = 0;
	int rc = -1;
	if (s3_list(s3, key, NULL, &objs, &n, NULL, NULL, e))
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(objs[i].key, key)) {
			*out = objs[i];
			objs[i].key = NULL;
			rc = 0;
			break;
		}
	if (rc)
		err_set(e, ERR_NOTFOUND, "%s is not in the bucket's listing", key);
	s3_objects_free(objs, n);
	return rc;
}

/* The version at vkey/vmeta is there with a record that describes it. */
static int version_exists(struct s3 *s3, const char *vkey, const char *vmeta)
{
	struct s3_object obj = {0};
	struct record vr = {0};
	struct err ge = {0};
	char *data = NULL;
	size_t len = 0;
	int rc = 0;
	if (s3_get_all(s3, vmeta, RECINDEX_MAX_RECORD, &data, &len, NULL, &ge) ||
	    record_parse(data, len, &vr, &ge) || listed_object(s3, vkey, &obj, &ge) ||
	    record_matches_object(&vr, obj.size, obj.etag, &ge))
		goto out;
	rc = 1;
out:
	free(data);
	free(obj.key);
	record_free(&vr);
	return rc;
}

int pipeline_keep_version(struct s3 *s3, const char *destination, const struct s3_object *cur,
                          struct record *prev, struct err *e)
{
	struct s3_object after = {0}, listed = {0};
	enum hash_alg alg;
	char hex[HASH_MAX_HEX], *key = NULL, *vkey = NULL, *vmeta = NULL, *json = NULL;
	int rc = -1, multipart;

	if (hash_checksum_parse(prev->checksum, &alg, hex) || alg != HASH_SHA256)
		return err_set(e, ERR_INVALID, "%s: checksum %s is not a sha256 one", destination,
		               prev->checksum);
	key = record_image_key(destination);
	vkey = record_version_key(hex);
	vmeta = record_version_meta_key(hex);
	if (!key || !vkey || !vmeta) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (version_exists(s3, vkey, vmeta)) {
		log_debug("%s: this version is kept already at %s", key, vkey);
		rc = 0;
		goto out;
	}
	/* Swift's s3api refuses x-amz-copy-source-if-match on a multipart
	 * object's ETag ("...-N"): for those, the object is checked after the
	 * copy instead (readers verify every block of a version anyway). */
	multipart = strchr(cur->etag, '-') != NULL;
	if (s3_copy(s3, key, multipart ? NULL : cur->etag, cur->size, multipart, vkey, prev->etag,
	            e))
		goto out;
	if (multipart &&
	    (s3_head(s3, key, &after, e) || !record_etag_equal(after.etag, cur->etag))) {
		if (!e->code)
			err_set(e, ERR_PRECONDITION,
			        "%s was replaced by another upload while its version was kept",
			        key);
		goto out;
	}
	if (listed_object(s3, vkey, &listed, e)) {
		err_prefix(e, "reading back the version of %s", key);
		goto out;
	}
	if (listed.size != cur->size) {
		err_set(e, ERR_SERVER, "the copy %s has %llu bytes, not the %llu of %s", vkey,
		        (unsigned long long)listed.size, (unsigned long long)cur->size, key);
		goto out;
	}
	snprintf(prev->etag, sizeof(prev->etag), "%s", listed.etag);
	free(prev->destination);
	prev->destination = strdup(destination);
	time_format_rfc3339(time(NULL), prev->replaced_at);
	if (!prev->destination) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	json = record_to_json(prev, e);
	if (!json || s3_put(s3, vmeta, json, strlen(json), "application/json", NULL, e)) {
		err_prefix(e, "writing %s, the record of the version of %s", vmeta, key);
		goto out;
	}
	log_info("%s: version %s kept at %s", key, prev->checksum, vkey);
	rc = 0;
out:
	free(json);
	free(key);
	free(vkey);
	free(vmeta);
	free(after.key);
	free(listed.key);
	return rc;
}

/* Before the object is replaced by bytes with another checksum (nr's):
 * keep its previous bytes and record as a version (DESIGN.md, docs/design.md)
 * with a server-side copy, so that what an overlay or a running VM stands on
 * stays readable by its by-sha256 name.  Nothing to keep when there is no
 * image, no record that describes it, or the same bytes; a record that is
 * not sha256 has no by-sha256 name to keep (logged).  A failure to keep it
 * fails the upload: the image is not replaced. */
static int keep_previous(struct pipeline *p, const struct record *nr, struct err *e)
{
	struct s3_object cur = {0};
	struct record prev = {0};
	struct err ge = {0};
	enum hash_alg alg;
	char hex[HASH_MAX_HEX], *data = NULL;
	size_t len = 0;
	int rc = -1;

	if (s3_head(p->s3, p->key, &cur, &ge)) {
		if (ge.code != ERR_NOTFOUND) {
			*e = ge;
			err_prefix(e, "checking the previous %s before replacing it", p->key);
			goto out;
		}
		rc = 0; /* nothing there yet */
		goto out;
	}
	if (s3_get_all(p->s3, p->meta_key, RECINDEX_MAX_RECORD, &data, &len, NULL, &ge)) {
		if (ge.code != ERR_NOTFOUND) {
			*e = ge;
			err_prefix(e, "reading the previous record %s before replacing it",
			           p->meta_key);
			goto out;
		}
		log_info("%s: no previous version kept: it has no record", p->key);
		rc = 0;
		goto out;
	}
	if (record_parse(data, len, &prev, &ge) ||
	    record_matches_object(&prev, cur.size, cur.etag, &ge)) {
		log_info("%s: no previous version kept: its record does not describe it (%s)",
		         p->key, ge.msg);
		rc = 0;
		goto out;
	}
	/* a record of older labctl may name the same bytes by their sha512 */
	if (record_has_checksum(&prev, nr->checksum) ||
	    (nr->manifest_checksum[0] && record_has_checksum(&prev, nr->manifest_checksum))) {
		rc = 0; /* the same bytes again */
		goto out;
	}
	if (hash_checksum_parse(prev.checksum, &alg, hex) || alg != HASH_SHA256) {
		log_info("%s: no previous version kept: its record's checksum %s is not a sha256 "
		         "one, so it has no by-sha256 name",
		         p->key, prev.checksum);
		rc = 0;
		goto out;
	}
	if (pipeline_keep_version(p->s3, p->destination, &cur, &prev, e)) {
		err_prefix(e, "keeping the previous version of %s (it is not replaced)", p->key);
		goto out;
	}
	rc = 0;
out:
	free(data);
	free(cur.key);
	record_free(&prev);
	return rc;
}

int pipeline_finish(struct pipeline *p, struct record *out, struct err *e)
{
	struct record r = {0};
	struct s3_object obj = {0};
	char etag[S3_ETAG_MAX] = "";
	char *json = NULL;
	int rc = -1, nparts;

	if (get_failure(p, e) || check_interrupt(e))
		goto out;
	if (!p->upload_id) {
		/* smaller than one part: hash and verify, then a single PUT */
		const void *data = p->cur ? (const void *)p->cur->data : "";
		size_t len = p->cur ? p->cur->len : 0;
		if (len) {
			p->hashes = malloc(nblocks(len) * 32);
			if (!p->hashes) {
				err_set(e, ERR_IO, "out of memory");
				goto out;
			}
		}
		hash_part(p, data, len, NULL, p->hashes); /* s3_put signs it */
		if (make_record(p, len, &r, e) || verify(p, &r, e) || keep_previous(p, &r, e))
			goto out;
		if (s3_put(p->s3, p->key, data, len, "application/octet-stream", etag, e)) {
			err_prefix(e, "uploading %s", p->key);
			goto out;
		}
	} else {
		if (p->cur && p->cur->len && submit(p, e))
			goto out;
		if (wait_parts(p, e))
			goto out;
		if (make_record(p, p->submitted, &r, e) || verify(p, &r, e) ||
		    keep_previous(p, &r, e) || check_interrupt(e))
			goto out;
		nparts = p->next_part - 1;
		for (int i = 0; i < nparts; i++)
			if (p->parts[i].number != i + 1) {
				err_set(e, ERR_IO, "%s: part %d missing", p->key, i + 1);
				goto out;
			}
		if (s3_mpu_complete(p->s3, p->key, p->upload_id, p->parts, nparts, etag, e)) {
			err_prefix(e, "completing the upload of %s", p->key);
			goto out;
		}
		free(p->upload_id);
		p->upload_id = NULL;
	}
	/* What readers will see: size and ETag of the object as stored.  The
	 * ETag is the one our PUT / CompleteMultipartUpload answered: the HEAD's
	 * may be another upload's that replaced ours meanwhile, and a record
	 * with that ETag and our block map would look complete over bytes it
	 * does not describe.  That object and its record are the other
	 * upload's to write: nothing is touched. */
	if (s3_head(p->s3, p->key, &obj, e)) {
		err_prefix(e,
		           "checking %s after the upload (no record was written: it is not "
		           "served)",
		           p->key);
		goto out;
	}
	if (etag[0] && !record_etag_equal(etag, obj.etag)) {
		err_set(e, ERR_PRECONDITION,
		        "%s was replaced by another upload while this one finished (ETag %s, "
		        "ours %s); this upload writes no record",
		        p->key, obj.etag, etag);
		goto out;
	}
	if (obj.size != r.size) {
		err_set(e, ERR_INTEGRITY, "%s: the server stored %llu bytes, %llu were sent",
		        p->key, (unsigned long long)obj.size, (unsigned long long)r.size);
		goto out_delete;
	}
	if (!etag[0])
		memcpy(etag, obj.etag, S3_ETAG_MAX);
	if (!etag[0]) {
		err_set(e, ERR_SERVER, "%s: the server returned no ETag", p->key);
		goto out_delete;
	}
	memcpy(r.etag, etag, S3_ETAG_MAX);
	json = record_to_json(&r, e);
	if (!json) {
		unrecorded(p, &r, NULL, e);
		goto out;
	}
	if (s3_put(p->s3, p->meta_key, json, strlen(json), "application/json", NULL, e)) {
		err_prefix(e, "writing the record %s", p->meta_key);
		if (unrecorded(p, &r, json, e))
			goto out;
	}
	if (recheck(p, &r, json, e))
		goto out;
	p->finished = 1;
	rc = 0;
	log_debug("%s: %llu bytes in %d part(s) of %zu bytes, %.2f s; the writer waited %.2f s "
	          "for a free buffer, the object checksum took %.2f s",
	          p->key, (unsigned long long)r.size, p->next_part - 1, p->base_part,
	          time_mono() - p->t_start, p->t_wait, p->t_hash);
	if (out) {
		*out = r;
		memset(&r, 0, sizeof(r));
	}
	goto out;
out_delete : {
	/* the server did not store what was sent (or gave no ETag to name
	 * it by): that object is ours and can have no record; remove it */
	struct err de = {0};
	if (s3_delete(p->s3, p->key, &de))
		log_warn("could not delete %s after a failed upload: %s", p->key, de.msg);
}
out:
	if (rc)
		abort_upload(p);
	free(obj.key);
	free(json);
	record_free(&r);
	return rc;
}

void pipeline_free(struct pipeline *p)
{
	if (!p)
		return;
	if (!p->finished)
		abort_upload(p);
	stop_threads(p);
	if (p->wconn)
		for (int i = 0; i < p->nworkers; i++)
			s3_close(p->wconn[i]);
	free(p->wconn);
	free(p->workers);
	s3_close(p->s3);
	for (int i = 0; i < p->nbufs; i++) {
		free(p->bufs[i]->data);
		free(p->bufs[i]);
	}
	free(p->bufs);
	free(p->parts);
	free(p->upload_id);
	sha256_state_free(p->whole);
	sha256_state_free(p->part_sha);
	hash_free(p->mwhole);
	free(p->file_payload);
	free(p->hashes);
	free(p->key);
	free(p->meta_key);
	free(p->destination);
	free(p->name);
	free(p->source_url);
	free(p->expected);
	s3_config_free(&p->cfg);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
