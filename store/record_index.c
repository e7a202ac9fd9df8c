/* The record index (record_index.h): encoding, the trust check of an entry,
 * parallel record GETs, and the rebuild that labctl runs after it changed
 * the bucket. */
#include "store/record_index.h"

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
	/* readers hand records around as C strings, and recindex_bound_of counts
	 * on at most 2 bytes of JSON string a byte */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)json[i] < 0x20 && json[i] != '\t' && json[i] != '\n' &&
		    json[i] != '\r')
			return err_set(e, ERR_INVALID,
			               "%s: the record contains control character 0x%02x", key,
			               (unsigned char)json[i]);
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

/* ---- bounds ---- */

static int is_record_key(const char *key)
{
	size_t n = strlen(key), pl = strlen(META_PREFIX), sl = strlen(META_SUFFIX);
	return n > pl + sl && !strncmp(key, META_PREFIX, pl) && !strcmp(key + n - sl, META_SUFFIX);
}

void recindex_bound_of(const struct s3_object *listed, size_t n, struct recindex_bound *b)
{
	uint64_t text = 0;
	memset(b, 0, sizeof(*b));
	for (size_t i = 0; i < n; i++) {
		if (!is_record_key(listed[i].key) || listed[i].size > RECINDEX_MAX_RECORD)
			continue; /* never an entry anyone uses */
		b->records++;
		/* what recindex_encode writes for it: {"key":K,"etag":E,"json":J},
		 * a key escaped at most 6 bytes a byte (\u001f), the ETag 2, the
		 * record 2 (recindex_add lets no other control character in) */
		text += 6 * strlen(listed[i].key) + 2 * S3_ETAG_MAX + 2 * listed[i].size + 40;
	}
	/* room for entries a version behind, and for the envelope */
	b->json = text + text / 8 + (64u << 10);
	/* an entry has 7 ({, 3 names, 3 values); 16 leaves room for new fields */
	b->values = 16 * (uint64_t)b->records + 256;
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

/* The JSON parser pulls the text through this, a buffer at a time: the
 * inflated index is never held whole, and inflating stops at the bound. */
struct inflater {
	z_stream z;
	const struct recindex_bound *b;
	uint64_t values;
	int in_string, escaped, ended;
	struct err err; /* why the text stopped short */
};

/* Count what can become a parser node: every value but the first follows a
 * '[', ',' or ':' and every member name a '{' or ',' outside a string. */
static int count_values(struct inflater *f, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (f->in_string) {
			if (f->escaped)
				f->escaped = 0;
			else if (c == '\\')
				f->escaped = 1;
			else if (c == '"')
				f->in_string = 0;
		} else if (c == '"') {
			f->in_string = 1;
		} else if (c == '{' || c == '[' || c == ',' || c == ':') {
			f->values++;
		}
	}
	if (f->values > f->b->values)
		return err_set(&f->err, ERR_INVALID,
		               "the record index holds more than %llu JSON values, the most "
		               "that %zu listed records take",
		               (unsigned long long)f->b->values, f->b->records);
	return 0;
}

static size_t inflate_more(void *buf, size_t cap, void *ud)
{
	struct inflater *f = ud;
	size_t got = 0;
	while (!got && !f->ended) {
		int zr;
		f->z.next_out = buf;
		f->z.avail_out = (uInt)cap;
		zr = inflate(&f->z, Z_NO_FLUSH);
		got = cap - f->z.avail_out;
		if (zr == Z_STREAM_END) {
			f->ended = 1;
		} else if (zr == Z_BUF_ERROR || (zr == Z_OK && !got && !f->z.avail_in)) {
			err_set(&f->err, ERR_INVALID, "the record index is truncated");
			return (size_t)-1;
		} else if (zr != Z_OK) {
			err_set(&f->err, ERR_INVALID, "the record index is not gzip data (zlib %d)",
			        zr);
			return (size_t)-1;
		}
		if (f->z.total_out > f->b->json) {
			err_set(&f->err, ERR_INVALID,
			        "the record index inflates to more than %llu bytes, the most that "
			        "%zu listed records take",
			        (unsigned long long)f->b->json, f->b->records);
			return (size_t)-1;
		}
		if (count_values(f, buf, got))
			return (size_t)-1;
	}
	return got;
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

int recindex_decode(const void *gz, size_t len, const struct recindex_bound *b,
                    struct recindex *out, size_t *skipped, struct err *e)
{
	struct inflater f = {.b = b};
	json_error_t je;
	json_t *root = NULL, *recs;
	size_t bad = 0;
	int rc = -1, zinit = 0;
	memset(out, 0, sizeof(*out));
	if (len > UINT32_MAX)
		return err_set(e, ERR_INVALID, "the record index is too large");
	if (inflateInit2(&f.z, 15 + 16) != Z_OK)
		return err_set(e, ERR_IO, "gunzip: cannot initialise zlib");
	zinit = 1;
	f.z.next_in = (Bytef *)gz;
	f.z.avail_in = (uInt)len;
	root = json_load_callback(inflate_more, &f, JSON_ALLOW_NUL, &je);
	if (f.err.code) {
		*e = f.err;
		goto out;
	}
	if (!root) {
		err_set(e, ERR_INVALID, "the record index is not JSON: %s (line %d)", je.text,
		        je.line);
		goto out;
	}
	/* the text is gone; free the inflater's window before the entries grow */
	inflateEnd(&f.z);
	zinit = 0;
	recs = json_object_get(root, "records");
	if (!json_is_integer(json_object_get(root, "version")) ||
	    json_integer_value(json_object_get(root, "version")) != RECINDEX_VERSION ||
	    !json_is_array(recs)) {
		err_set(e, ERR_INVALID,
		        "the record index is not version %d with a \"records\" list",
		        RECINDEX_VERSION);
		goto out;
	}
	/* from the end, dropping each parsed entry once it is copied: the
	 * parsed and the copied index are never both whole in memory */
	for (size_t i = json_array_size(recs); i-- > 0;) {
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
		json_array_remove(recs, i);
	}
	recindex_sort(out);
	if (skipped)
		*skipped = bad;
	rc = 0;
out:
	if (rc)
		recindex_free(out);
	if (zinit)
		inflateEnd(&f.z);
	json_decref(root);
	return rc;
}

/* ---- lookup ---- */

/* "\"<32 hex>\"": what S3 servers send for an object written by one PUT
 * without SSE-KMS/SSE-C, the MD5 of its bytes (that it is one is checked). */
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

/* The entry for key, whatever it holds. */
static const struct recindex_entry *find(const struct recindex *ix, const char *key)
{
	struct recindex_entry k = {.key = (char *)key};
	return ix->n ? bsearch(&k, ix->v, ix->n, sizeof(k), cmp_entry) : NULL;
}

const struct recindex_entry *recindex_lookup(const struct recindex *ix, const char *key,
                                             const char *etag)
{
	const struct recindex_entry *en;
	if (!ix || !ix->n || !etag || !*etag)
		return NULL;
	en = find(ix, key);
	if (!en || strcmp(en->etag, etag))
		return NULL;
	/* The ETag names the record the listing saw, but anyone who can write
	 * the index can put other bytes under it: an entry is the record only
	 * when its bytes hash to that ETag.  Other ETags (multipart "...-N",
	 * SSE-C/KMS, a server's own) cannot be checked, so their records are
	 * fetched. */
	if (!etag_is_md5(etag) || !md5_matches(en->json, en->len, etag)) {
		log_debug("record index: the entry for %s does not hash to its ETag %s; ignored",
		          key, etag);
		return NULL;
	}
	return en;
}

/* ---- with the bucket ---- */

static int cmp_listed(const void *a, const void *b)
{
	return strcmp((*(const struct s3_object *const *)a)->key,
	              (*(const struct s3_object *const *)b)->key);
}

/* Drop the entries that are not of a listed record with the listed ETag and
 * size: no reader can use them. */
static int keep_listed(struct recindex *ix, const struct s3_object *listed, size_t n,
                       size_t *dropped, struct err *e)
{
	const struct s3_object **by_key = calloc(n + 1, sizeof(*by_key));
	size_t w = 0;
	if (!by_key)
		return err_set(e, ERR_IO, "out of memory");
	for (size_t i = 0; i < n; i++)
		by_key[i] = &listed[i];
	qsort(by_key, n, sizeof(*by_key), cmp_listed);
	for (size_t i = 0; i < ix->n; i++) {
		struct recindex_entry *en = &ix->v[i];
		struct s3_object k = {.key = en->key};
		const struct s3_object *kp = &k, **m;
		m = n ? bsearch(&kp, by_key, n, sizeof(*by_key), cmp_listed) : NULL;
		if (m && !strcmp((*m)->etag, en->etag) && (*m)->size == en->len) {
			ix->v[w++] = *en;
			continue;
		}
		free(en->key);
		free(en->json);
	}
	*dropped = ix->n - w;
	ix->n = w;
	free(by_key);
	return 0;
}

/* recindex_load; *gzlen: the object's size, *dropped: entries left out
 * (not listed as they are), when not NULL */
static int load(struct s3 *s, const struct s3_object *listed, size_t n, struct recindex *out,
                size_t *gzlen, size_t *dropped, struct err *e)
{
	struct recindex_bound b;
	char *gz = NULL;
	size_t gzmax, gzsize = 0, skipped = 0, stale = 0;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	recindex_bound_of(listed, n, &b);
	/* deflate adds 5 bytes a 64 KiB block to text it cannot shrink; 64 KiB
	 * more for the optional fields of the gzip header */
	gzmax = b.json + b.json / 1024 + (64u << 10);
	if (s3_get_all(s, RECINDEX_KEY, gzmax, &gz, &gzsize, NULL, e)) {
		if (e && e->code == ERR_INVALID)
			err_set(e, ERR_INVALID,
			        "%s has more than %zu bytes, the most that %zu listed records "
			        "take",
			        RECINDEX_KEY, gzmax, b.records);
		goto out;
	}
	if (recindex_decode(gz, gzsize, &b, out, &skipped, e)) {
		err_prefix(e, "%s", RECINDEX_KEY);
		goto out;
	}
	if (skipped)
		log_debug("%s: %zu malformed entr%s skipped", RECINDEX_KEY, skipped,
		          skipped == 1 ? "y" : "ies");
	if (keep_listed(out, listed, n, &stale, e))
		goto out;
	if (gzlen)
		*gzlen = gzsize;
	if (dropped)
		*dropped = stale;
	rc = 0;
out:
	if (rc)
		recindex_free(out);
	free(gz);
	return rc;
}

int recindex_load(struct s3 *s, const struct s3_object *listed, size_t n, struct recindex *out,
                  struct err *e)
{
	return load(s, listed, n, out, NULL, NULL, e);
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
		if (g->size > RECINDEX_MAX_RECORD) {
			snprintf(g->problem, sizeof(g->problem),
			         "%s has %llu bytes, more than the %u a checksum record may have; "
			         "not read",
			         g->key, (unsigned long long)g->size, RECINDEX_MAX_RECORD);
			log_warn("%s", g->problem);
			continue;
		}
		if (s3_get_all(s, g->key, (size_t)g->size, &g->json, &g->len, g->etag, &e) == 0)
			continue;
		g->json = NULL;
		if (e.code == ERR_NOTFOUND)
			continue;            /* deleted since the listing */
		if (e.code == ERR_INVALID) { /* grew: rewritten since the listing */
			snprintf(g->problem, sizeof(g->problem),
			         "%s has more than the %llu bytes listed (it changed since the "
			         "listing); not read",
			         g->key, (unsigned long long)g->size);
			log_warn("%s", g->problem);
			continue;
		}
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

int recindex_rebuild(const struct s3_config *cfg, struct s3 *s, int create,
                     struct recindex_result *res, struct err *e)
{
	struct s3_object *metas = NULL;
	struct recindex old = {0}, ix = {0};
	struct recindex_get *todo = NULL;
	size_t nmetas = 0, ntodo = 0, oldlen = 0, stale = 0, changed = 0;
	char *gz = NULL;
	size_t gzlen = 0;
	int have_old = 0, rc = -1;
	struct err le = {0};

	memset(res, 0, sizeof(*res));
	/* the listing first: it bounds what the current index may take */
	if (s3_list(s, META_PREFIX, NULL, &metas, &nmetas, NULL, NULL, e)) {
		err_prefix(e, "listing %s", META_PREFIX);
		goto out;
	}
	if (load(s, metas, nmetas, &old, &oldlen, &stale, &le) == 0) {
		have_old = 1;
	} else if (le.code == ERR_NOTFOUND) {
		if (!create) { /* keep a bucket without an index as it is */
			rc = 0;
			goto out;
		}
	} else {
		log_warn("rewriting the record index: the current one is unusable: %s", le.msg);
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
			todo[ntodo].size = metas[i].size;
			todo[ntodo++].key = metas[i].key;
		}
	}
	if (ntodo && recindex_get_many(cfg, s, todo, ntodo, e))
		goto out;
	for (size_t i = 0; i < ntodo; i++) {
		const struct recindex_entry *was = find(&old, todo[i].key);
		struct err ae = {0};
		if (!todo[i].json)
			continue;
		res->fetched++;
		/* fetched because it could not be checked (not an MD5 ETag), and
		 * the index already holds these bytes: no reason to write it */
		if (!was || strcmp(was->etag, todo[i].etag) || was->len != todo[i].len ||
		    memcmp(was->json, todo[i].json, was->len))
			changed++;
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
	 * distinct key of the old index, and none of it was left out) */
	if (have_old && !changed && !stale && ix.n == old.n) {
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
