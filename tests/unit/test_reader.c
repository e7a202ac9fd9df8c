/* Unit tests for store/reader.c.  Mostly without a server: blocks come from
 * the cache (put there by the test) or are all-zero; the "bucket" is a
 * closed port, so every GET fails with a network error, which exercises the
 * bounded failure and the circuit breaker.  Crafted inputs that no real S3
 * server can hold (two objects with one ETag and different sizes) are served
 * by a tiny HTTP server in this file.  The real S3 paths (GET, verification
 * failures, If-Match, readahead) are covered by tests/integration. */
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache.h"
#include "store/reader.h"
#include "store/record.h"
#include "store/s3/s3.h"
#include "tests/unit/cache_fixture.h"
#include "tests/unit/check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define BS    65536u
#define NBLK  5
#define SIZE  (4u * BS + 1000u) /* a short last block */
#define ETAG  "\"0123456789abcdef0123456789abcdef\""
#define ETAG2 "\"fedcba9876543210fedcba9876543210\""

static unsigned char data[SIZE];

static void make_data(void)
{
	for (size_t i = 0; i < SIZE; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	memset(data + 2 * BS, 0, BS); /* block 2: all zeros */
}

/* The record of the size bytes at d, in blocks of bs, for object ETAG */
static void record_of(const unsigned char *d, size_t size, uint32_t bs, const char *name,
                      struct record *rec)
{
	struct blockmap *bm = blockmap_new(HASH_SHA256, bs);
	struct err e = {0};
	memset(rec, 0, sizeof(*rec));
	CHECK(bm && blockmap_update(bm, d, size, &e) == 0 && blockmap_finish(bm, rec, &e) == 0);
	blockmap_free(bm);
	rec->name = strdup(name);
	snprintf(rec->etag, sizeof(rec->etag), "%s", ETAG);
	snprintf(rec->uploaded_at, sizeof(rec->uploaded_at), "2024-12-20T10:00:00Z");
}

static void make_record(struct record *r)
{
	record_of(data, SIZE, BS, "test", r);
	CHECK(r->nblocks == NBLK);
}

static int read_all(struct reader_image *img, struct reader_stream *st, uint64_t off, size_t len,
                    unsigned char *out, size_t *got, enum err_code *code)
{
	struct err e = {0};
	int rc = reader_read(img, st, off, len, out, got, &e);
	if (code)
		*code = e.code;
	return rc;
}

struct thr {
	struct reader_image *img;
	unsigned seed;
	int bad;
};

static void *reader_thread(void *arg)
{
	struct thr *t = arg;
	struct reader_stream *st = reader_stream_new();
	unsigned char *buf = malloc(3 * BS);
	for (int k = 0; k < 300; k++) {
		uint64_t off = rand_r(&t->seed) % (SIZE + 100);
		size_t len = 1 + rand_r(&t->seed) % (3 * BS);
		size_t got = 0, want = off >= SIZE ? 0 : (SIZE - off < len ? SIZE - off : len);
		if (read_all(t->img, k % 2 ? st : NULL, off, len, buf, &got, NULL) || got != want ||
		    (got && memcmp(buf, data + off, got)))
			t->bad++;
	}
	free(buf);
	reader_stream_free(st);
	return NULL;
}

/* ---- a tiny HTTP server: GET with Range for a few fixed objects ---- */

struct fake_obj {
	const char *path; /* "/bucket/images/a.raw" */
	const unsigned char *data;
	size_t size;
	size_t cut; /* when set: no byte from this offset on is sent (the body ends early) */
};

struct fake_srv {
	int lfd, port;
	pthread_t th;
	struct fake_obj obj[4];
	size_t nobj;
	atomic_int gets;
};

static void fake_answer(struct fake_srv *f, int fd)
{
	char req[8192], path[512], hdr[512];
	size_t got = 0;
	unsigned long long a = 0, b = 0;
	const struct fake_obj *o = NULL;
	char *range;

	req[0] = '\0';
	while (got < sizeof(req) - 1 && !strstr(req, "\r\n\r\n")) {
		ssize_t n = read(fd, req + got, sizeof(req) - 1 - got);
		if (n <= 0)
			return;
		got += (size_t)n;
		req[got] = '\0';
	}
	if (sscanf(req, "GET %511s ", path) != 1)
		return;
	for (size_t i = 0; i < f->nobj; i++)
		if (!strcmp(path, f->obj[i].path))
			o = &f->obj[i];
	if (!o) {
		static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
		                         "Connection: close\r\n\r\n";
		(void)!write(fd, nf, sizeof(nf) - 1);
		return;
	}
	atomic_fetch_add(&f->gets, 1);
	range = strcasestr(req, "\r\nrange: bytes=");
	if (!range || sscanf(range + 15, "%llu-%llu", &a, &b) != 2 || b >= o->size)
		b = o->size - 1;
	snprintf(hdr, sizeof(hdr),
	         "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %llu-%llu/%zu\r\n"
	         "Content-Length: %llu\r\nETag: " ETAG "\r\nConnection: close\r\n\r\n",
	         a, b, o->size, b - a + 1);
	(void)!write(fd, hdr, strlen(hdr));
	if (o->cut && b >= o->cut)
		b = o->cut > a ? o->cut - 1 : a - 1;
	for (size_t off = a; off <= b;) {
		ssize_t n = write(fd, o->data + off, b + 1 - off);
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

/* One connection at a time, each closed after its answer. */
static void *fake_main(void *arg)
{
	struct fake_srv *f = arg;
	int fd;
	while ((fd = accept(f->lfd, NULL, NULL)) >= 0) {
		fake_answer(f, fd);
		close(fd);
	}
	return NULL;
}

static int fake_start(struct fake_srv *f)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(f->lfd, 64) ||
	    getsockname(f->lfd, (struct sockaddr *)&sa, &sl))
		return -1;
	f->port = ntohs(sa.sin_port);
	return pthread_create(&f->th, NULL, fake_main, f) ? -1 : 0;
}

static void fake_stop(struct fake_srv *f)
{
	shutdown(f->lfd, SHUT_RDWR);
	pthread_join(f->th, NULL);
	close(f->lfd);
}

static double fake_retry_budget_s = 5;

static int open_fake_reader(struct fake_srv *f, const char *dir, uint64_t mem, struct cache **cache,
                            struct reader **r)
{
	struct s3_config cfg = {0};
	struct reader_opts ro = {0};
	struct err e = {0};
	char ep[64];
	int rc;
	snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", f->port);
	cfg.endpoint = strdup(ep);
	cfg.bucket = strdup("bucket");
	cfg.access_key = strdup("AK");
	cfg.secret_key = strdup("SK");
	cfg.retry_budget_s = fake_retry_budget_s;
	s3_config_defaults(&cfg);
	*cache = open_cache(dir, 64u << 20);
	rc = *cache ? 0 : -1;
	ro.s3 = &cfg;
	ro.cache = *cache;
	ro.fetch_threads = 2;
	ro.mem_bytes = mem;
	if (!rc && (rc = reader_new(&ro, r, &e)))
		fprintf(stderr, "open_fake_reader: %s\n", e.msg);
	s3_config_free(&cfg);
	return rc;
}

/* Keys name a block only together with its length: a record that gives
 * block 0 the hash of the short tail, and two unverified objects with one
 * ETag and different sizes, must never make a read copy out of a shorter
 * block's buffer (that was a heap over-read: ASan in collect(), or heap
 * bytes handed to the reader). */
static void test_one_key_two_lengths(void)
{
	static unsigned char a[3u << 19], b[3u << 20]; /* 1.5 and 3 MiB */
	const size_t fsize = 2 * BS + 1000;
	unsigned char *forged = malloc(fsize), *buf = malloc(3u << 20);
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct reader *r = NULL;
	struct reader_image *img = NULL, *ua = NULL, *ub = NULL;
	struct record rec;
	struct err e = {0};
	const char *dir;
	size_t got = 0;
	enum err_code code;

	for (size_t i = 0; i < fsize; i++)
		forged[i] = (unsigned char)(i * 7 + 3 + (i >> 16));
	for (size_t i = 0; i < sizeof(a); i++)
		a[i] = (unsigned char)(i * 13 + 1);
	for (size_t i = 0; i < sizeof(b); i++)
		b[i] = (unsigned char)(i * 17 + 5);
	f.obj[0] = (struct fake_obj){"/bucket/images/forged.raw", forged, fsize, 0};
	/* unverified images use 1 MiB blocks: a's block 1 is half of b's */
	f.obj[1] = (struct fake_obj){"/bucket/images/a.raw", a, sizeof(a), 0};
	f.obj[2] = (struct fake_obj){"/bucket/images/b.raw", b, sizeof(b), 0};
	f.nobj = 3;
	CHECK(fake_start(&f) == 0);
	dir = scratch_dir("forged");
	CHECK(open_fake_reader(&f, dir, 0, &cache, &r) == 0);

	record_of(forged, fsize, BS, "forged", &rec);
	memcpy(rec.hashes[0], rec.hashes[2], 32); /* block 0 claims the tail's hash */
	CHECK(reader_image_open(r, "images/forged.raw", fsize, ETAG, &rec, &img, &e) == 0);

	/* the tail: fetched, verified, in memory */
	CHECK(read_all(img, NULL, 2 * BS, 1000, buf, &got, NULL) == 0 && got == 1000);
	CHECK(!memcmp(buf, forged + 2 * BS, 1000));
	/* block 0, a piece and whole: it does not match its (forged) hash */
	CHECK(read_all(img, NULL, 0, 4096, buf, &got, &code) == -1 && code == ERR_INTEGRITY);
	CHECK(read_all(img, NULL, 0, BS, buf, &got, &code) == -1 && code == ERR_INTEGRITY);
	CHECK(read_all(img, NULL, BS, BS, buf, &got, NULL) == 0 && got == BS);
	CHECK(!memcmp(buf, forged + BS, BS));
	CHECK(read_all(img, NULL, 2 * BS + 10, 990, buf, &got, NULL) == 0 && got == 990);
	CHECK(!memcmp(buf, forged + 2 * BS + 10, 990));

	/* unverified, one ETag, two sizes */
	CHECK(reader_image_open(r, "images/a.raw", sizeof(a), ETAG, NULL, &ua, &e) == 0);
	CHECK(reader_image_open(r, "images/b.raw", sizeof(b), ETAG, NULL, &ub, &e) == 0);
	CHECK(read_all(ua, NULL, 1u << 20, 4096, buf, &got, NULL) == 0 && got == 4096);
	CHECK(!memcmp(buf, a + (1u << 20), 4096));
	CHECK(read_all(ub, NULL, 1u << 20, 1u << 20, buf, &got, NULL) == 0 && got == 1u << 20);
	CHECK(!memcmp(buf, b + (1u << 20), 1u << 20));
	CHECK(read_all(ua, NULL, 0, sizeof(a), buf, &got, NULL) == 0 && got == sizeof(a));
	CHECK(!memcmp(buf, a, sizeof(a)));

	reader_image_unref(img);
	reader_image_unref(ua);
	reader_image_unref(ub);
	reader_free(r);
	cache_close(cache);
	fake_stop(&f);
	record_free(&rec);
	free(forged);
	free(buf);
}

/* One GET of several blocks verifies them two at a time (the first of a
 * pair waits for the second).  Each block still stands alone: a bad one
 * fails by itself, whichever of its pair it is (and paired with the short
 * tail), its partner is served and kept; a GET that ends early still
 * publishes the block it was holding for a pair. */
static void test_pairs_verified_apart(void)
{
	const size_t nb = 8, size = 7 * BS + 1000; /* block 7: the short tail */
	const size_t bad[] = {1, 4, 7};
	unsigned char *d = malloc(size), *d2 = malloc(size), *buf = malloc(size);
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct reader *r = NULL;
	struct reader_image *img = NULL, *cut = NULL;
	struct reader_stats rs;
	struct record rec, rec2;
	struct err e = {0};
	const char *dir;
	size_t got = 0;
	enum err_code code;
	int gets;

	for (size_t i = 0; i < size; i++) {
		d[i] = (unsigned char)(i * 11 + 7 + (i >> 16));
		d2[i] = (unsigned char)(d[i] ^ 0x5a); /* other blocks, other cache keys */
	}
	f.obj[0] = (struct fake_obj){"/bucket/images/p.raw", d, size, 0};
	/* the body stops inside block 1: block 0 is complete, held for a pair */
	f.obj[1] = (struct fake_obj){"/bucket/images/cut.raw", d2, size, BS + 100};
	f.nobj = 2;
	CHECK(fake_start(&f) == 0);
	dir = scratch_dir("pairs");
	fake_retry_budget_s = 1;
	CHECK(open_fake_reader(&f, dir, 0, &cache, &r) == 0);
	fake_retry_budget_s = 5;

	record_of(d, size, BS, "p", &rec);
	CHECK(rec.nblocks == nb);
	for (size_t k = 0; k < sizeof(bad) / sizeof(*bad); k++)
		rec.hashes[bad[k]][5] ^= 0x40;
	CHECK(reader_image_open(r, "images/p.raw", size, ETAG, &rec, &img, &e) == 0);
	record_of(d2, size, BS, "cut", &rec2);
	CHECK(reader_image_open(r, "images/cut.raw", size, ETAG, &rec2, &cut, &e) == 0);

	/* pairs: bad second, both good, bad first, good and the bad short tail;
	 * a read of two blocks is one GET */
	for (size_t i = 0; i < nb; i += 2) {
		int want = i == 2 ? 0 : -1;
		gets = atomic_load(&f.gets);
		CHECK(read_all(img, NULL, i * BS, i == 6 ? size - 6 * BS : 2 * BS, buf, &got,
		               &code) == want);
		CHECK(want == 0 ? !memcmp(buf, d + i * BS, 2 * BS) : code == ERR_INTEGRITY);
		CHECK(atomic_load(&f.gets) == gets + 1);
	}
	reader_get_stats(r, &rs);
	CHECK(rs.verify_failures == 3);
	/* the good ones were verified and kept: no GET for them */
	gets = atomic_load(&f.gets);
	for (size_t i = 0; i < nb; i++) {
		uint64_t off = (uint64_t)i * BS;
		size_t len = i == nb - 1 ? size - off : BS;
		int is_bad = i == 1 || i == 4 || i == 7;
		if (is_bad) {
			CHECK(read_all(img, NULL, off, len, buf, &got, &code) == -1 &&
			      code == ERR_INTEGRITY);
			continue;
		}
		CHECK(read_all(img, NULL, off, len, buf, &got, NULL) == 0 && got == len);
		CHECK(!memcmp(buf, d + off, len));
	}
	CHECK(atomic_load(&f.gets) == gets + 3); /* one GET again for each bad block */

	/* the GET of blocks 0.. ends inside block 1: the read fails, block 0 is
	 * served from memory afterwards, verified */
	CHECK(read_all(cut, NULL, 0, 4 * BS, buf, &got, &code) == -1 && code != ERR_INTEGRITY);
	gets = atomic_load(&f.gets);
	CHECK(read_all(cut, NULL, 0, BS, buf, &got, NULL) == 0 && got == BS);
	CHECK(!memcmp(buf, d2, BS));
	CHECK(atomic_load(&f.gets) == gets);
	reader_get_stats(r, &rs);
	CHECK(rs.verify_failures == 6); /* the three, and each once more */

	reader_image_unref(img);
	reader_image_unref(cut);
	reader_free(r);
	cache_close(cache);
	fake_stop(&f);
	record_free(&rec);
	record_free(&rec2);
	free(d);
	free(d2);
	free(buf);
}

/* The memory budget is hard: 24 readers of distinct 1 MiB blocks with an
 * 8 MiB budget never hold more than 8 MiB of block buffers, and all get
 * their bytes (they wait for room instead). */
#define MB_BLOCKS 24
struct mb_arg {
	struct reader_image *img;
	const unsigned char *data;
	size_t i;
	int bad;
};

static void *mb_reader(void *p)
{
	struct mb_arg *a = p;
	unsigned char buf[4096];
	size_t got = 0;
	uint64_t off = (uint64_t)a->i * (1u << 20) + 8192;
	a->bad = read_all(a->img, NULL, off, sizeof(buf), buf, &got, NULL) || got != sizeof(buf) ||
	         memcmp(buf, a->data + off, sizeof(buf));
	return NULL;
}

static void test_memory_budget(void)
{
	const size_t bs = 1u << 20, size = MB_BLOCKS * bs;
	unsigned char *d = malloc(size);
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct reader *r = NULL;
	struct reader_image *img = NULL;
	struct reader_stats rs;
	struct record rec;
	struct err e = {0};
	pthread_t th[MB_BLOCKS];
	struct mb_arg a[MB_BLOCKS];
	const char *dir;
	int bad = 0;

	for (size_t i = 0; i < size; i++)
		d[i] = (unsigned char)(i * 31 + (i >> 20));
	f.obj[0] = (struct fake_obj){"/bucket/images/m.raw", d, size, 0};
	f.nobj = 1;
	CHECK(fake_start(&f) == 0);
	dir = scratch_dir("membudget");
	CHECK(open_fake_reader(&f, dir, 8u << 20, &cache, &r) == 0);
	record_of(d, size, (uint32_t)bs, "m", &rec);
	CHECK(reader_image_open(r, "images/m.raw", size, ETAG, &rec, &img, &e) == 0);
	for (size_t i = 0; i < MB_BLOCKS; i++) {
		a[i] = (struct mb_arg){img, d, i, 0};
		pthread_create(&th[i], NULL, mb_reader, &a[i]);
	}
	for (size_t i = 0; i < MB_BLOCKS; i++) {
		pthread_join(th[i], NULL);
		bad += a[i].bad;
	}
	CHECK(bad == 0);
	reader_get_stats(r, &rs);
	CHECK(rs.mem_limit_bytes == 8u << 20);
	CHECK(rs.mem_peak_bytes <= rs.mem_limit_bytes);
	CHECK(rs.cache_misses == MB_BLOCKS);
	reader_image_unref(img);
	reader_free(r);
	cache_close(cache);
	fake_stop(&f);
	record_free(&rec);
	free(d);
}

/* A block altered in cache.db is never served: it is fetched again (and
 * counted), or the read fails when the bucket is unreachable. */
static void test_altered_cache(void)
{
	const size_t size = 3 * BS;
	unsigned char *d = malloc(size), *buf = malloc(size);
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct cache_stats cs;
	struct reader *r = NULL;
	struct reader_image *img = NULL;
	struct record rec;
	struct err e = {0};
	const char *dir;
	size_t got = 0;
	enum err_code code;

	for (size_t i = 0; i < size; i++)
		d[i] = (unsigned char)(i * 11 + 7 + (i >> 16));
	record_of(d, size, BS, "c", &rec);
	dir = scratch_dir("altered");
	cache = open_cache(dir, 64u << 20);
	CHECK(cache != NULL);
	for (size_t i = 0; i < 3; i++)
		cache_put(cache, rec.hashes[i], d + i * BS, BS);
	cache_close(cache);
	CHECK(alter_row(dir, rec.hashes[1], 100) == 0);
	CHECK(alter_row(dir, rec.hashes[2], 40000) == 0);

	f.obj[0] = (struct fake_obj){"/bucket/images/c.raw", d, size, 0};
	f.nobj = 1;
	CHECK(fake_start(&f) == 0);
	CHECK(open_fake_reader(&f, dir, 0, &cache, &r) == 0);
	CHECK(reader_image_open(r, "images/c.raw", size, ETAG, &rec, &img, &e) == 0);
	/* a piece of altered block 1: fetched again; whole block 0: cached */
	CHECK(read_all(img, NULL, BS + 64, 100, buf, &got, NULL) == 0 && got == 100);
	CHECK(!memcmp(buf, d + BS + 64, 100));
	CHECK(read_all(img, NULL, 0, BS, buf, &got, NULL) == 0 && got == BS);
	CHECK(!memcmp(buf, d, BS));
	CHECK(atomic_load(&f.gets) == 1);
	cache_get_stats(cache, &cs);
	CHECK(cs.verify_failures == 1);
	reader_image_unref(img);
	reader_free(r);
	cache_close(cache);

	/* a sequential read (a stream, 4 KiB at a time) after a remount: each
	 * altered block is fetched once, the others come from the cache */
	CHECK(alter_row(dir, rec.hashes[0], 7) == 0);
	CHECK(alter_row(dir, rec.hashes[1], 65535) == 0);
	CHECK(open_fake_reader(&f, dir, 0, &cache, &r) == 0);
	CHECK(reader_image_open(r, "images/c.raw", size, ETAG, &rec, &img, &e) == 0);
	{
		struct reader_stream *st = reader_stream_new();
		int bad = 0;
		for (size_t off = 0; off < size; off += 4096)
			bad += read_all(img, st, off, 4096, buf + off, &got, NULL) || got != 4096;
		CHECK(bad == 0 && !memcmp(buf, d, size));
		reader_stream_free(st);
	}
	CHECK(atomic_load(&f.gets) == 4); /* 1 + blocks 0, 1 and 2 (altered from the start) */
	cache_get_stats(cache, &cs);
	CHECK(cs.verify_failures == 3);
	reader_image_unref(img);
	reader_free(r);
	cache_close(cache);

	/* the bucket is gone: altered block 2 fails, whole or piece */
	CHECK(alter_row(dir, rec.hashes[2], 40000) == 0);
	fake_stop(&f);
	CHECK(open_fake_reader(&f, dir, 0, &cache, &r) == 0);
	CHECK(reader_image_open(r, "images/c.raw", size, ETAG, &rec, &img, &e) == 0);
	memset(buf, 0, size);
	CHECK(read_all(img, NULL, 2 * BS, BS, buf, &got, &code) == -1 && got == 0);
	CHECK(code == ERR_NET);
	CHECK(read_all(img, NULL, 2 * BS + 39000, 2000, buf, &got, &code) == -1 && got == 0);
	CHECK(read_all(img, NULL, 0, BS, buf, &got, NULL) == 0 && !memcmp(buf, d, BS));
	cache_get_stats(cache, &cs);
	CHECK(cs.verify_failures == 1);
	reader_image_unref(img);
	reader_free(r);
	cache_close(cache);
	record_free(&rec);
	free(d);
	free(buf);
}

/* reader_read_iov(): the pieces it points at (block buffers, the zero
 * area, the caller's buffer for what SQLite filled) are the image's bytes,
 * stay valid until released while other readers run, and a read that fails
 * verification holds nothing.  Threads share 16 MiB of block memory. */
struct iov_arg {
	struct reader_image *img, *bad;
	const unsigned char *data;
	size_t size;
	unsigned seed;
	int wrong;
};

static void *iov_reader(void *p)
{
	struct iov_arg *a = p;
	struct reader_stream *st = reader_stream_new();
	unsigned char *buf = malloc(3 * BS), *out = malloc(3 * BS);
	for (int k = 0; k < 200; k++) {
		struct reader_iov v;
		struct err e = {0};
		uint64_t off = rand_r(&a->seed) % (a->size + 100);
		size_t len = 1 + rand_r(&a->seed) % (3 * BS), pos = 0;
		size_t want = off >= a->size ? 0 : (a->size - off < len ? a->size - off : len);
		if (k % 3 == 0) /* sequential from 0 for a while: readahead */
			off = (uint64_t)(k / 3) * BS % a->size;
		if (k % 3 == 0)
			want = a->size - off < len ? a->size - off : len;
		if (reader_read_iov(a->img, k % 2 ? st : NULL, off, len, buf, &v, &e)) {
			a->wrong++;
			continue;
		}
		usleep(rand_r(&a->seed) % 200); /* hold the pieces a while */
		for (int i = 0; i < v.count; i++) {
			if (pos + v.iov[i].iov_len > 3 * BS)
				break;
			memcpy(out + pos, v.iov[i].iov_base, v.iov[i].iov_len);
			pos += v.iov[i].iov_len;
		}
		if (v.len != want || pos != want || (want && memcmp(out, a->data + off, want)))
			a->wrong++;
		reader_iov_release(&v);
		/* a block that fails verification: an error, nothing held */
		if (k % 50 == 7) {
			if (!reader_read_iov(a->bad, NULL, BS + 10, 100, buf, &v, &e) ||
			    e.code != ERR_INTEGRITY || v.nheld != 0)
				a->wrong++;
			reader_iov_release(&v);
		}
	}
	free(buf);
	free(out);
	reader_stream_free(st);
	return NULL;
}

static void test_read_iov(void)
{
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct reader *r = NULL;
	struct reader_image *img = NULL, *bad = NULL;
	struct reader_stats rs;
	struct iov_arg args[6];
	pthread_t th[6];
	struct record rec, rec_bad;
	struct err e = {0};
	const char *dir;

	f.obj[0] = (struct fake_obj){"/bucket/images/iov.raw", data, SIZE, 0};
	f.obj[1] = (struct fake_obj){"/bucket/images/bad.raw", data, SIZE, 0};
	f.nobj = 2;
	CHECK(fake_start(&f) == 0);
	dir = scratch_dir("iov");
	CHECK(open_fake_reader(&f, dir, 16u << 20, &cache, &r) == 0);
	make_record(&rec);
	make_record(&rec_bad);
	rec_bad.hashes[1][0] ^= 1; /* block 1 does not match this record */
	CHECK(reader_image_open(r, "images/iov.raw", SIZE, ETAG, &rec, &img, &e) == 0);
	CHECK(reader_image_open(r, "images/bad.raw", SIZE, ETAG, &rec_bad, &bad, &e) == 0);
	for (int i = 0; i < 6; i++) {
		args[i] = (struct iov_arg){img, bad, data, SIZE, 77u + (unsigned)i, 0};
		CHECK(pthread_create(&th[i], NULL, iov_reader, &args[i]) == 0);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		CHECK(args[i].wrong == 0);
	}
	reader_get_stats(r, &rs);
	CHECK(rs.mem_peak_bytes <= rs.mem_limit_bytes);
	CHECK(rs.verify_failures > 0);
	reader_image_unref(img);
	reader_image_unref(bad);
	reader_free(r);
	cache_close(cache);
	fake_stop(&f);
	record_free(&rec);
	record_free(&rec_bad);
}

/* reader_read_iov() with buf NULL: the reader lends a buffer for what
 * SQLite fills in, from its idle 1 MiB block buffers (evicting blocks that
 * nobody holds) or the heap, and takes it back on release.  Blocks of
 * 1 MiB, 8 MiB of block memory (the least), all blocks cached on disk: threads reading
 * whole and partial blocks get the image's bytes and the budget holds. */
#define LBS   (1u << 20)
#define LSIZE (16u * LBS + 4096u)

struct lent_arg {
	struct reader_image *img;
	const unsigned char *data;
	unsigned seed;
	int wrong;
};

static void *lent_reader(void *p)
{
	struct lent_arg *a = p;
	unsigned char *out = malloc(LBS);
	for (int k = 0; k < 60 && out; k++) {
		struct reader_iov v;
		struct err e = {0};
		uint64_t off = (uint64_t)(rand_r(&a->seed) % 17) * LBS;
		size_t len = LBS, pos = 0, want;
		if (k % 3 == 1) { /* unaligned, across two blocks */
			off += rand_r(&a->seed) % LBS;
			len = 1 + rand_r(&a->seed) % LBS;
		}
		if (off >= LSIZE)
			off = LSIZE - 100;
		want = LSIZE - off < len ? LSIZE - off : len;
		if (reader_read_iov(a->img, NULL, off, len, NULL, &v, &e)) {
			a->wrong++;
			continue;
		}
		usleep(rand_r(&a->seed) % 300); /* hold the pieces a while */
		for (int i = 0; i < v.count && pos + v.iov[i].iov_len <= LBS; i++) {
			memcpy(out + pos, v.iov[i].iov_base, v.iov[i].iov_len);
			pos += v.iov[i].iov_len;
		}
		if (v.len != want || pos != want || memcmp(out, a->data + off, want))
			a->wrong++;
		reader_iov_release(&v);
	}
	free(out);
	return NULL;
}

static void test_read_iov_lent(void)
{
	struct fake_srv f = {0};
	struct cache *cache = NULL;
	struct reader *r = NULL;
	struct reader_image *img = NULL;
	struct reader_stats rs;
	struct lent_arg args[5];
	pthread_t th[5];
	struct record rec;
	struct err e = {0};
	unsigned char *big = malloc(LSIZE);
	const char *dir;
	size_t got;

	CHECK(big != NULL);
	for (size_t i = 0, x = 88172645463325252u; i < LSIZE; i++) { /* xorshift: no repeats */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		big[i] = (unsigned char)(x >> 32);
	}
	record_of(big, LSIZE, LBS, "lent", &rec);
	f.obj[0] = (struct fake_obj){"/bucket/images/lent.raw", big, LSIZE, 0};
	f.nobj = 1;
	CHECK(fake_start(&f) == 0);
	dir = scratch_dir("lent");
	CHECK(open_fake_reader(&f, dir, 8u << 20, &cache, &r) == 0);
	CHECK(reader_image_open(r, "images/lent.raw", LSIZE, ETAG, &rec, &img, &e) == 0);
	/* cold: every block fetched once and cached on disk */
	for (uint64_t off = 0; off < LSIZE; off += LBS) {
		unsigned char *one = malloc(LBS);
		CHECK(one && reader_read(img, NULL, off, LBS, one, &got, &e) == 0);
		CHECK(!memcmp(one, big + off, got));
		free(one);
	}
	cache_flush(cache);
	/* Three reads of blocks that only SQLite has, held at once, get
	 * their buffers from the idle blocks in memory, not on top of them
	 * (each warm read in flight added 1 MiB to a full budget). */
	{
		struct reader_iov held[3];
		uint64_t from_sqlite[16];
		size_t n = 0;
		for (uint64_t off = 0; off < 16u * LBS; off += LBS) {
			CHECK(reader_read_iov(img, NULL, off, LBS, NULL, &held[0], &e) == 0);
			if (held[0].nheld == 0)
				from_sqlite[n++] = off;
			reader_iov_release(&held[0]);
		}
		CHECK(n >= 3);
		for (size_t i = 0; i < 3 && i < n; i++) {
			CHECK(reader_read_iov(img, NULL, from_sqlite[i], LBS, NULL, &held[i], &e) ==
			      0);
			CHECK(held[i].len == LBS && held[i].count == 1);
			CHECK(!memcmp(held[i].iov[0].iov_base, big + from_sqlite[i], LBS));
		}
		reader_get_stats(r, &rs);
		CHECK(rs.mem_bytes + 3u * LBS <= rs.mem_limit_bytes);
		for (size_t i = 0; i < 3 && i < n; i++)
			reader_iov_release(&held[i]);
		reader_get_stats(r, &rs);
		CHECK(rs.mem_bytes <= rs.mem_limit_bytes);
	}
	for (int i = 0; i < 5; i++) {
		args[i] = (struct lent_arg){img, big, 31u + (unsigned)i, 0};
		CHECK(pthread_create(&th[i], NULL, lent_reader, &args[i]) == 0);
	}
	for (int i = 0; i < 5; i++) {
		pthread_join(th[i], NULL);
		CHECK(args[i].wrong == 0);
	}
	reader_get_stats(r, &rs);
	CHECK(rs.mem_peak_bytes <= rs.mem_limit_bytes);
	CHECK(rs.mem_bytes <= rs.mem_limit_bytes);
	CHECK(rs.bytes_fetched == LSIZE); /* the rest came from memory or SQLite */
	CHECK(rs.cache_hits > rs.mem_hits);
	reader_image_unref(img);
	reader_free(r);
	cache_close(cache);
	fake_stop(&f);
	record_free(&rec);
	free(big);
}

int main(void)
{
	struct s3_config cfg = {0};
	const char *root;
	struct cache *cache = NULL;
	struct reader_opts ro = {0};
	struct reader *r = NULL;
	struct reader_image *img = NULL, *unv = NULL, *empty = NULL;
	struct reader_stats rs;
	struct record rec, rec0 = {0};
	struct err e = {0};
	unsigned char buf[3 * BS];
	size_t got = 0;
	enum err_code code;
	uint64_t pos = 0;
	double t0;

	log_init("test_reader", LOG_LVL_ERROR);
	if (!(root = scratch_make("reader"))) {
		perror("mkdtemp");
		return 1;
	}
	make_data();
	make_record(&rec);
	CHECK(s3_global_init(&e) == 0);
	cfg.endpoint = strdup("http://127.0.0.1:9"); /* discard port: refused */
	cfg.bucket = strdup("bucket");
	cfg.access_key = strdup("AK");
	cfg.secret_key = strdup("SK");
	cfg.retry_budget_s = 2;
	cfg.max_attempts = 2;
	cfg.connect_timeout_s = 1;
	s3_config_defaults(&cfg);

	cache = open_cache(root, 64u << 20);
	CHECK(cache != NULL);
	ro.s3 = &cfg;
	ro.cache = cache;
	ro.fetch_threads = 2;
	CHECK(reader_new(&ro, &r, &e) == 0);
	CHECK(reader_image_open(r, "images/t.raw", SIZE, ETAG, &rec, &img, &e) == 0);
	CHECK(reader_image_verified(img));
	CHECK(reader_image_size(img) == SIZE);

	/* a zero block: no GET, no cache */
	CHECK(read_all(img, NULL, 2 * BS + 5, 100, buf, &got, NULL) == 0 && got == 100);
	CHECK(!memcmp(buf, data + 2 * BS + 5, 100));
	CHECK(reader_image_cached_bytes(img) == BS);

	/* SEEK_DATA / SEEK_HOLE at block granularity */
	CHECK(reader_image_seek(img, 0, 0, &pos) == 0 && pos == 0);
	CHECK(reader_image_seek(img, 10, 1, &pos) == 0 && pos == 2 * BS);
	CHECK(reader_image_seek(img, 2 * BS + 7, 1, &pos) == 0 && pos == 2 * BS + 7);
	CHECK(reader_image_seek(img, 2 * BS + 7, 0, &pos) == 0 && pos == 3 * BS);
	CHECK(reader_image_seek(img, 3 * BS, 1, &pos) == 0 && pos == SIZE);
	CHECK(reader_image_seek(img, SIZE, 0, &pos) == -1);

	/* not cached, bucket unreachable: a network error within the budget,
	 * then the breaker answers at once */
	t0 = time_mono();
	CHECK(read_all(img, NULL, 0, 10, buf, &got, &code) == -1 && got == 0);
	CHECK(code == ERR_NET);
	CHECK(time_mono() - t0 < 10);
	reader_get_stats(r, &rs);
	CHECK(rs.bucket_down == 1 && rs.fetch_errors >= 1 && rs.bytes_fetched == 0);
	t0 = time_mono();
	CHECK(read_all(img, NULL, BS, 10, buf, &got, &code) == -1 && code == ERR_NET);
	CHECK(time_mono() - t0 < 0.5);

	/* cached blocks are served (also while the bucket is down) */
	for (size_t i = 0; i < NBLK; i++)
		cache_put(cache, rec.hashes[i], data + i * BS, record_block_len(&rec, i));
	cache_flush(cache);
	for (uint64_t off = 0; off < SIZE; off += 3 * BS) {
		size_t want = SIZE - off < 3 * BS ? SIZE - off : 3 * BS;
		CHECK(read_all(img, NULL, off, 3 * BS, buf, &got, NULL) == 0 && got == want);
		CHECK(!memcmp(buf, data + off, want));
	}
	/* unaligned, across block boundaries, past the end */
	CHECK(read_all(img, NULL, BS - 3, 7, buf, &got, NULL) == 0 && got == 7);
	CHECK(!memcmp(buf, data + BS - 3, 7));
	CHECK(read_all(img, NULL, SIZE - 10, 100, buf, &got, NULL) == 0 && got == 10);
	CHECK(!memcmp(buf, data + SIZE - 10, 10));
	CHECK(read_all(img, NULL, SIZE, 100, buf, &got, NULL) == 0 && got == 0);
	CHECK(read_all(img, NULL, SIZE + 5000, 100, buf, &got, NULL) == 0 && got == 0);
	CHECK(reader_image_cached_bytes(img) == SIZE);
	reader_get_stats(r, &rs);
	CHECK(rs.cache_hits > 0 && rs.bytes_fetched == 0 && rs.verify_failures == 0);

	/* many threads, random ranges, with and without a stream */
	{
		pthread_t th[8];
		struct thr t[8];
		int bad = 0;
		for (int i = 0; i < 8; i++) {
			t[i] = (struct thr){img, (unsigned)i + 1, 0};
			pthread_create(&th[i], NULL, reader_thread, &t[i]);
		}
		for (int i = 0; i < 8; i++) {
			pthread_join(th[i], NULL);
			bad += t[i].bad;
		}
		CHECK(bad == 0);
	}
	/* a sequential stream over cached blocks: nothing to fetch */
	{
		struct reader_stream *st = reader_stream_new();
		for (uint64_t off = 0; off < SIZE; off += 4096) {
			size_t want = SIZE - off < 4096 ? SIZE - off : 4096;
			CHECK(read_all(img, st, off, 4096, buf, &got, NULL) == 0 && got == want);
			CHECK(!memcmp(buf, data + off, want));
		}
		reader_stream_free(st);
	}

	/* unverified: keys from (etag, index), no zero-block shortcut */
	CHECK(reader_image_open(r, "images/u.raw", SIZE, ETAG2, NULL, &unv, &e) == 0);
	CHECK(!reader_image_verified(unv));
	CHECK(reader_image_cached_bytes(unv) == 0);
	CHECK(read_all(unv, NULL, 2 * BS, 10, buf, &got, &code) == -1);
	for (uint64_t i = 0; i * RECORD_DEFAULT_BLOCK_SIZE < SIZE; i++) {
		unsigned char key[CACHE_KEY_LEN];
		cache_key_unverified(ETAG2, i, key);
		cache_put(cache, key, data, SIZE); /* one short block holds it all */
	}
	cache_flush(cache);
	CHECK(read_all(unv, NULL, 100, 2 * BS, buf, &got, NULL) == 0 && got == 2 * BS);
	CHECK(!memcmp(buf, data + 100, 2 * BS));
	CHECK(reader_image_seek(unv, 5, 1, &pos) == 0 && pos == SIZE);
	CHECK(reader_image_cached_bytes(unv) == SIZE);

	/* an empty image */
	rec0.name = strdup("empty");
	rec0.block_size = BS;
	snprintf(rec0.etag, sizeof(rec0.etag), "%s", ETAG);
	CHECK(reader_image_open(r, "images/e.raw", 0, ETAG, &rec0, &empty, &e) == 0);
	CHECK(read_all(empty, NULL, 0, 10, buf, &got, NULL) == 0 && got == 0);
	CHECK(reader_image_cached_bytes(empty) == 0);

	/* a record that does not describe the object is refused */
	{
		struct reader_image *x = NULL;
		CHECK(reader_image_open(r, "images/t.raw", SIZE + 1, ETAG, &rec, &x, &e) == -1);
		CHECK(x == NULL);
	}

	test_one_key_two_lengths();
	test_pairs_verified_apart();
	test_memory_budget();
	test_altered_cache();
	test_read_iov();
	test_read_iov_lent();

	reader_image_unref(reader_image_ref(img));
	reader_image_unref(img);
	reader_image_unref(unv);
	reader_image_unref(empty);
	reader_free(r);
	cache_close(cache);
	record_free(&rec);
	record_free(&rec0);
	s3_config_free(&cfg);
	s3_global_cleanup();
	scratch_remove();
	return check_report("reader");
}
