/* The record index (record_index.h): encoding, the trust check of an entry,
 * parallel record GETs, and the rebuild that labctl runs after it changed
 * the bucket. */
#include "store/record_index.h"

#include "common/buf.h"
#include "common/hex.h"
#include "common/log.h"
#include "store/record.h"

#include <ctype.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define META_PREFIX "metadata/"
#define META_SUFFIX ".json"

/* ---- building ---- */

int recindex_add(struct recindex *ix, const char *key, const char *etag, const char *json,
                 size_t len, struct err *e)
{
	struct recindex_entry *en;
	/* readers hand records around as C strings */
	if (memchr(json, '\0', len))
		return err_set(e, ERR_INVALID, "%s: the record contains a NUL byte", key);
	if (strlen(etag) >= S3_ETAG_MAX)
		return err_set(e, ERR_INVALID, "%s: ETag too long", key);
	if (ix->n == ix->cap) {
		size_t cap = ix->cap ? ix->cap * 2 : 64;
		struct recindex_entry *nv = realloc(ix->v, cap * sizeof(*nv));
		if (!nv)
			return err_set(e, ERR_IO, "out of memory");
		ix->v = nv;
		ix->cap = cap;
	}
	en = &ix->v[ix->n];
	memset(en, 0, sizeof(*en));
	en->key = strdup(key);
	en->json = malloc(len + 1);
	if (!en->key || !en->json) {
		free(en->key);
		free(en->json);
		return err_set(e, ERR_IO, "out of memory");
	}
	memcpy(en->json, json, len);
	en->json[len] = '\0';
	en->len = len;
	strcpy(en->etag, etag);
	ix->n++;
	return 0;
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct recindex_entry *)a)->key,
	              ((const struct recindex_entry *)b)->key);
}

void recindex_sort(struct recindex *ix)
{
	size_t w = 0;
	if (!ix->n)
		return;
	qsort(ix->v, ix->n, sizeof(*ix->v), cmp_entry);
	/* a duplicate key can only come from a foreign writer: keep one (the
	 * lookup still checks it against the listing) */
	for (size_t i = 0; i < ix->n; i++) {
		if (w && !strcmp(ix->v[w - 1].key, ix->v[i].key)) {
			free(ix->v[i].key);
			free(ix->v[i].json);
			continue;
		}
		ix->v[w++] = ix->v[i];
	}
	ix->n = w;
}

void recindex_free(struct recindex *ix)
{
	if (!ix)
		return;
	for (size_t i = 0; i < ix->n; i++) {
		free(ix->v[i].key);
		free(ix->v[i].json);
	}
	free(ix->v);
	memset(ix, 0, sizeof(*ix));
}

/* ---- gzip ---- */

static int gzip_buf(const char *in, size_t n, char **out, size_t *outlen, struct err *e)
{
	z_stream z = {0};
	uLong cap;
	char *o = NULL;
	int zr;
	if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return err_set(e, ERR_IO, "gzip: cannot initialise zlib");
	cap = deflateBound(&z, n);
	if (!(o = malloc(cap))) {
		deflateEnd(&z);
		return err_set(e, ERR_IO, "out of memory");
	}
	z.next_in = (Bytef *)in;
	z.avail_in = (uInt)n;
	z.next_out = (Bytef *)o;
	z.avail_out = (uInt)cap;
	zr = deflate(&z, Z_FINISH);
	if (zr != Z_STREAM_END || n > UINT32_MAX) {
		deflateEnd(&z);
		free(o);
		return err_set(e, ERR_IO, "gzip: compression failed (%d)", zr);
	}
	*out = o;
	*outlen = z.total_out;
	deflateEnd(&z);
	return 0;
}

static int gunzip_buf(const void *in, size_t n, size_t max, struct buf *out, struct err *e)
{
	z_stream z = {0};
	int zr = Z_OK, rc = -1;
	if (n > UINT32_MAX)
		return err_set(e, ERR_INVALID, "the record index is too large");
	if (inflateInit2(&z, 15 + 16) != Z_OK)
		return err_set(e, ERR_IO, "gunzip: cannot initialise zlib");
	z.next_in = (Bytef *)in;
	z.avail_in = (uInt)n;
	while (zr != Z_STREAM_END) {
		if (buf_reserve(out, 1 << 20)) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		z.next_out = (Bytef *)out->data + out->len;
		z.avail_out = (uInt)(out->cap - out->len - 1); /* keep room for the NUL */
		zr = inflate(&z, Z_NO_FLUSH);
		out->len = z.total_out;
		if (zr != Z_OK && zr != Z_STREAM_END) {
			err_set(e, ERR_INVALID, "the record index is not gzip data (zlib %d)", zr);
			goto out;
		}
		if (out->len > max) {
			err_set(e, ERR_INVALID, "the record index inflates to more than %zu MiB",
			        max >> 20);
			goto out;
		}
		if (zr == Z_OK && !z.avail_in && z.avail_out) {
			err_set(e, ERR_INVALID, "the record index is truncated");
			goto out;
		}
	}
	out->data[out->len] = '\0';
	rc = 0;
out:
	inflateEnd(&z);
	return rc;
}

/* ---- encode / decode ---- */

int recindex_encode(const struct recindex *ix, char **out, size_t *len, struct err *e)
{
	json_t *root = json_object(), *recs = json_array();
	char *text = NULL;
	int rc = -1;
	*out = NULL;
	*len = 0;
	if (!root || !recs || json_object_set_new(root, "version", json_integer(RECINDEX_VERSION)))
		goto oom;
	for (size_t i = 0; i < ix->n; i++) {
		const struct recindex_entry *en = &ix->v[i];
		json_t *o = json_pack("{s:s,s:s,s:s%}", "key", en->key, "etag", en->etag, "json",
		                      en->json, en->len);
		/* json_pack refuses text that is not UTF-8: such a record is
		 * invalid anyway, and readers fetch it themselves */
		if (!o) {
			log_debug("record index: leaving out %s (not UTF-8)", en->key);
			continue;
		}
		if (json_array_append_new(recs, o))
			goto oom;
	}
	if (json_object_set(root, "records", recs))
		goto oom;
	if (!(text = json_dumps(root, JSON_COMPACT)))
		goto oom;
	rc = gzip_buf(text, strlen(text), out, len, e);
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	free(text);
	json_decref(recs);
	json_decref(root);
	return rc;
}

int recindex_decode(const void *gz, size_t len, struct recindex *out, size_t *skipped,
                    struct err *e)
{
	struct buf text = BUF_INIT;
	json_error_t je;
	json_t *root = NULL, *recs;
	size_t bad = 0;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	if (gunzip_buf(gz, len, RECINDEX_MAX_JSON, &text, e))
		goto out;
	root = json_loadb(text.data, text.len, JSON_ALLOW_NUL, &je);
	if (!root) {
		err_set(e, ERR_INVALID, "the record index is not JSON: %s (line %d)", je.text,
		        je.line);
		goto out;
	}
	recs = json_object_get(root, "records");
	if (!json_is_integer(json_object_get(root, "version")) ||
	    json_integer_value(json_object_get(root, "version")) != RECINDEX_VERSION ||
	    !json_is_array(recs)) {
		err_set(e, ERR_INVALID,
		        "the record index is not version %d with a \"records\" list",
		        RECINDEX_VERSION);
		goto out;
	}
	for (size_t i = 0; i < json_array_size(recs); i++) {
		json_t *o = json_array_get(recs, i), *js = json_object_get(o, "json");
		const char *key = json_string_value(json_object_get(o, "key"));
		const char *etag = json_string_value(json_object_get(o, "etag"));
		struct err ae = {0};
		if (!key || !etag || !json_is_string(js) ||
		    recindex_add(out, key, etag, json_string_value(js), json_string_length(js),
		                 &ae)) {
			if (ae.code == ERR_IO) {
				*e = ae;
				goto out;
			}
			bad++;
		}
	}
	recindex_sort(out);
	if (skipped)
		*skipped = bad;
	rc = 0;
out:
	if (rc)
		recindex_free(out);
	json_decref(root);
	buf_free(&text);
	return rc;
}

/* ---- lookup ---- */

/* "\"<32 hex>\"": what S3 servers send for an object written by one PUT
 * without SSE-KMS/SSE-C, the MD5 of its bytes. */
static int etag_is_md5(const char *etag)
{
	if (strlen(etag) != 34 || etag[0] != '"' || etag[33] != '"')
		return 0;
	for (int i = 1; i < 33; i++)
		if (!isxdigit((unsigned char)etag[i]))
			return 0;
	return 1;
}

static int md5_matches(const char *data, size_t len, const char *etag)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[33];
	if (!EVP_Digest(data, len, md, &mdlen, EVP_md5(), NULL) || mdlen != 16)
		return 0; /* no MD5 (FIPS): unverifiable, so unused */
	hex_encode(md, 16, hex);
	return !strncasecmp(hex, etag + 1, 32);
}

const struct recindex_entry *recindex_lookup(const struct recindex *ix, const char *key,
                                             const char *etag)
{
	struct recindex_entry k = {.key = (char *)key};
	const struct recindex_entry *en;
	if (!ix || !ix->n || !etag || !*etag)
		return NULL;
	en = bsearch(&k, ix->v, ix->n, sizeof(k), cmp_entry);
	if (!en || strcmp(en->etag, etag))
		return NULL;
	/* The ETag names the record the listing saw.  When it is the MD5 of
	 * the bytes, check them too: an index written by anyone else cannot
	 * then put other bytes under a current ETag. */
	if (etag_is_md5(etag) && !md5_matches(en->json, en->len, etag)) {
		log_debug("record index: the entry for %s does not hash to its ETag; ignored", key);
		return NULL;
	}
	return en;
}

/* ---- with the bucket ---- */

struct gz_sink {
	struct buf b;
	int too_big;
};

static int gz_sink(void *ud, const void *data, size_t n)
{
	struct gz_sink *g = ud;
	if (g->b.len + n > RECINDEX_MAX_GZ) {
		g->too_big = 1;
		return -1;
	}
	return buf_append(&g->b, data, n);
}

static int load(struct s3 *s, struct recindex *out, size_t *gzlen, struct err *e)
{
	struct gz_sink g = {BUF_INIT, 0};
	size_t skipped = 0;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	if (s3_get(s, RECINDEX_KEY, 0, UINT64_MAX, NULL, gz_sink, &g, e)) {
		if (g.too_big)
			err_set(e, ERR_INVALID, "%s is larger than %u MiB", RECINDEX_KEY,
			        RECINDEX_MAX_GZ >> 20);
		goto out;
	}
	if (recindex_decode(g.b.data, g.b.len, out, &skipped, e)) {
		err_prefix(e, "%s", RECINDEX_KEY);
		goto out;
	}
	if (skipped)
		log_debug("%s: %zu malformed entr%s skipped", RECINDEX_KEY, skipped,
		          skipped == 1 ? "y" : "ies");
	if (gzlen)
		*gzlen = g.b.len;
	rc = 0;
out:
	buf_free(&g.b);
	return rc;
}

int recindex_load(struct s3 *s, struct recindex *out, struct err *e)
{
	return load(s, out, NULL, e);
}

struct getjob {
	const struct s3_config *cfg;
	struct recindex_get *v;
	size_t n;
	atomic_size_t next;
	atomic_int failed;
	pthread_mutex_t mu;
	struct err err; /* the first failure */
};

static void getjob_fail(struct getjob *j, const struct err *e)
{
	pthread_mutex_lock(&j->mu);
	if (!atomic_load(&j->failed)) {
		j->err = *e;
		atomic_store(&j->failed, 1);
	}
	pthread_mutex_unlock(&j->mu);
}

static void getjob_run(struct getjob *j, struct s3 *s)
{
	for (;;) {
		size_t i = atomic_fetch_add(&j->next, 1);
		struct recindex_get *g;
		struct err e = {0};
		if (i >= j->n || atomic_load(&j->failed))
			return;
		g = &j->v[i];
		if (s3_get_all(s, g->key, &g->json, &g->len, g->etag, &e) == 0)
			continue;
		g->json = NULL;
		if (e.code == ERR_NOTFOUND)
			continue; /* deleted since the listing */
		err_prefix(&e, "reading %s", g->key);
		getjob_fail(j, &e);
		return;
	}
}

static void *getjob_thread(void *arg)
{
	struct getjob *j = arg;
	struct err e = {0};
	struct s3 *s = s3_open(j->cfg, &e);
	if (!s) {
		getjob_fail(j, &e);
		return NULL;
	}
	getjob_run(j, s);
	s3_close(s);
	return NULL;
}

int recindex_get_many(const struct s3_config *cfg, struct s3 *s, struct recindex_get *v, size_t n,
                      struct err *e)
{
	struct getjob j = {.cfg = cfg, .v = v, .n = n};
	pthread_t th[RECINDEX_THREADS];
	unsigned nth = 0, want = n > RECINDEX_THREADS ? RECINDEX_THREADS - 1 : (unsigned)n / 2;
	atomic_init(&j.next, 0);
	atomic_init(&j.failed, 0);
	pthread_mutex_init(&j.mu, NULL);
	for (unsigned i = 0; i < want; i++)
		if (!pthread_create(&th[nth], NULL, getjob_thread, &j))
			nth++;
	getjob_run(&j, s);
	for (unsigned i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&j.mu);
	if (atomic_load(&j.failed)) {
		*e = j.err;
		return -1;
	}
	return 0;
}

void recindex_gets_free(struct recindex_get *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i].json);
	free(v);
}

static int is_record_key(const char *key)
{
	size_t n = strlen(key), pl = strlen(META_PREFIX), sl = strlen(META_SUFFIX);
	return n > pl + sl && !strncmp(key, META_PREFIX, pl) && !strcmp(key + n - sl, META_SUFFIX);
}

int recindex_rebuild(const struct s3_config *cfg, struct s3 *s, int create,
                     struct recindex_result *res, struct err *e)
{
	struct s3_object *metas = NULL;
	struct recindex old = {0}, ix = {0};
	struct recindex_get *todo = NULL;
	size_t nmetas = 0, ntodo = 0, oldlen = 0;
	char *gz = NULL;
	size_t gzlen = 0;
	int have_old = 0, rc = -1;
	struct err le = {0};

	memset(res, 0, sizeof(*res));
	if (load(s, &old, &oldlen, &le) == 0) {
		have_old = 1;
	} else if (le.code == ERR_NOTFOUND) {
		if (!create) { /* keep a bucket without an index as it is */
			rc = 0;
			goto out;
		}
	} else {
		log_warn("rewriting the record index: the current one is unusable: %s", le.msg);
	}
	if (s3_list(s, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e)) {
		err_prefix(e, "listing %s", META_PREFIX);
		goto out;
	}
	todo = calloc(nmetas + 1, sizeof(*todo));
	if (!todo) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nmetas; i++) {
		const struct recindex_entry *en;
		if (!is_record_key(metas[i].key))
			continue;
		en = recindex_lookup(&old, metas[i].key, metas[i].etag);
		if (en) {
			if (recindex_add(&ix, en->key, en->etag, en->json, en->len, e))
				goto out;
			res->reused++;
		} else {
			todo[ntodo++].key = metas[i].key;
		}
	}
	if (ntodo && recindex_get_many(cfg, s, todo, ntodo, e))
		goto out;
	for (size_t i = 0; i < ntodo; i++) {
		struct err ae = {0};
		if (!todo[i].json)
			continue;
		res->fetched++;
		if (recindex_add(&ix, todo[i].key, todo[i].etag, todo[i].json, todo[i].len, &ae)) {
			if (ae.code == ERR_IO) {
				*e = ae;
				goto out;
			}
			log_debug("record index: leaving out %s", ae.msg);
		}
	}
	recindex_sort(&ix);
	res->records = ix.n;
	/* the same entries as before: nothing to write (every kept entry is a
	 * distinct key of the old index) */
	if (have_old && !res->fetched && ix.n == old.n) {
		res->bytes = oldlen;
		rc = 0;
		goto out;
	}
	/* an index of nothing helps nobody: never create one in an empty bucket */
	if (!have_old && !ix.n) {
		rc = 0;
		goto out;
	}
	if (recindex_encode(&ix, &gz, &gzlen, e))
		goto out;
	if (s3_put(s, RECINDEX_KEY, gz, gzlen, "application/gzip", NULL, e)) {
		err_prefix(e, "writing %s", RECINDEX_KEY);
		goto out;
	}
	res->bytes = gzlen;
	res->written = 1;
	rc = 0;
out:
	free(gz);
	recindex_gets_free(todo, ntodo);
	recindex_free(&old);
	recindex_free(&ix);
	s3_objects_free(metas, nmetas);
	return rc;
}
