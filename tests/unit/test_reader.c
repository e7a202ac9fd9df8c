/* Unit tests for store/reader.c without a server: blocks come from the
 * cache (put there by the test) or are all-zero; the "bucket" is a closed
 * port, so every GET fails with a network error, which exercises the
 * bounded failure and the circuit breaker.  The real S3 paths (GET,
 * verification failures, If-Match, readahead) are covered by
 * tests/integration/test_imgfs.py. */
#include "common/log.h"
#include "common/timefmt.h"
#include "store/cache/cache.h"
#include "store/reader.h"
#include "store/record.h"
#include "store/s3/s3.h"
#include "tests/unit/check.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS    65536u
#define NBLK  5
#define SIZE  (4u * BS + 1000u) /* a short last block */
#define ETAG  "\"0123456789abcdef0123456789abcdef\""
#define ETAG2 "\"fedcba9876543210fedcba9876543210\""

static char tmproot[] = "/tmp/imgstore-test-reader-XXXXXX";
static unsigned char data[SIZE];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static void make_data(void)
{
	for (size_t i = 0; i < SIZE; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	memset(data + 2 * BS, 0, BS); /* block 2: all zeros */
}

static void make_record(struct record *r)
{
	struct blockmap *b = blockmap_new(HASH_SHA256, BS);
	struct err e = {0};
	memset(r, 0, sizeof(*r));
	CHECK(b != NULL);
	CHECK(blockmap_update(b, data, SIZE, &e) == 0);
	CHECK(blockmap_finish(b, r, &e) == 0);
	blockmap_free(b);
	r->name = strdup("test");
	snprintf(r->etag, sizeof(r->etag), "%s", ETAG);
	snprintf(r->uploaded_at, sizeof(r->uploaded_at), "2024-12-20T10:00:00Z");
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

int main(void)
{
	struct s3_config cfg = {0};
	struct cache_opts co = {0};
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
	if (!mkdtemp(tmproot)) {
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

	co.dir = tmproot;
	co.limit_bytes = 64u << 20;
	CHECK(cache_open(&co, &cache, &e) == 0);
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
	nftw(tmproot, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return check_report("reader");
}
