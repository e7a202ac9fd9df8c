/* S3 client on libcurl (see s3.h): path-style URLs, SigV4 (sigv4.c), XML
 * bodies (s3_xml.c), bounded retries with exponential backoff and full
 * jitter.
 *
 * Every request goes through perform(): it builds the URL and the signed
 * headers afresh for each attempt (the date changes, a resumed GET changes
 * its Range), runs it on the connection's one easy handle (curl_easy_reset
 * keeps the live connection, so requests reuse it), classifies the outcome
 * and decides whether to retry.
 *
 * Secrets: the secret key only enters sigv4_signing_key(); the derived key
 * is cached per day in `struct s3` and wiped on close; the Authorization
 * header is wiped from the header list before it is freed.  CURLOPT_VERBOSE
 * is never set, and no error text contains a header. */
#include "store/s3/s3.h"

#include "common/buf.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/timefmt.h"
#include "store/s3/s3_xml.h"
#include "store/s3/sigv4.h"

#include <curl/curl.h>
#include <errno.h>
#include <libxml/parser.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define RECV_BUFFER (512 * 1024) /* CURLOPT_BUFFERSIZE: the most 7.88 allows */
#define SEND_BUFFER (256 * 1024) /* CURLOPT_UPLOAD_BUFFERSIZE: 64K..1M made no difference */
#define ERRBODY_MAX (64 * 1024)  /* error bodies: the rest is not read */
/* A 2xx XML answer (ListObjectsV2, ListMultipartUploads, DeleteObjects...)
 * holds at most 1000 entries, each a key of at most 1024 bytes (6 KiB
 * XML-escaped) and less than 1 KiB of other fields: under 8 MiB. */
#define XMLBODY_MAX    (16 * 1024 * 1024)
#define BACKOFF_BASE_S 0.25
#define BACKOFF_CAP_S  8.0
#define DELETE_BATCH   1000
#define WHAT_MAX       600
#define SERVER_WORK_S  300L
#define SKEW_MAX_S     900 /* S3 refuses requests signed further off than 15 min */

/* ---------------------------------------------------------------- global */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init_once(void)
{
	global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	xmlInitParser();
}

int s3_global_init(struct err *e)
{
	pthread_once(&global_once, global_init_once);
	if (global_rc != CURLE_OK)
		return err_set(e, ERR_IO, "cannot initialize libcurl: %s",
		               curl_easy_strerror(global_rc));
	return 0;
}

void s3_global_cleanup(void)
{
	/* libxml2's parser state stays: other modules may still use libxml2 */
	if (global_rc == CURLE_OK)
		curl_global_cleanup();
}

/* ---------------------------------------------------------------- config */

/* The one heap copy of a secret key that configs share (s3.h). */
struct s3_secret {
	atomic_size_t refs;
	size_t len;
	char text[];
};

static void free_secret(char **s)
{
	if (*s) {
		OPENSSL_cleanse(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

static void secret_unref(struct s3_secret *k)
{
	if (!k || atomic_fetch_sub(&k->refs, 1) != 1)
		return;
	OPENSSL_cleanse(k->text, k->len);
	free(k);
}

int s3_config_share_secret(struct s3_config *cfg, struct err *e)
{
	struct s3_secret *k;
	size_t len;
	if (cfg->shared || !cfg->secret_key)
		return 0;
	len = strlen(cfg->secret_key);
	if (!(k = malloc(sizeof(*k) + len + 1)))
		return err_set(e, ERR_IO, "out of memory");
	atomic_init(&k->refs, 1);
	k->len = len;
	memcpy(k->text, cfg->secret_key, len + 1);
	free_secret(&cfg->secret_key);
	cfg->shared = k;
	cfg->secret_key = k->text;
	return 0;
}

void s3_config_defaults(struct s3_config *cfg)
{
	if (!cfg->region || !*cfg->region) {
		char *r = strdup("us-east-1");
		if (r) {
			free(cfg->region);
			cfg->region = r;
		}
	}
	if (cfg->retry_budget_s <= 0)
		cfg->retry_budget_s = 30;
	if (cfg->max_attempts <= 0)
		cfg->max_attempts = 5;
	if (cfg->connect_timeout_s <= 0)
		cfg->connect_timeout_s = 10;
	if (cfg->low_speed_timeout_s <= 0)
		cfg->low_speed_timeout_s = 30;
}

static int dup_field(char **dst, const char *src)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -1;
}

int s3_config_copy(struct s3_config *dst, const struct s3_config *src, struct err *e)
{
	memset(dst, 0, sizeof(*dst));
	dst->retry_budget_s = src->retry_budget_s;
	dst->max_attempts = src->max_attempts;
	dst->connect_timeout_s = src->connect_timeout_s;
	dst->low_speed_timeout_s = src->low_speed_timeout_s;
	if (src->shared) {
		atomic_fetch_add(&src->shared->refs, 1);
		dst->shared = src->shared;
		dst->secret_key = src->secret_key;
	} else if (dup_field(&dst->secret_key, src->secret_key)) {
		goto oom;
	}
	if (dup_field(&dst->endpoint, src->endpoint) || dup_field(&dst->bucket, src->bucket) ||
	    dup_field(&dst->access_key, src->access_key) || dup_field(&dst->region, src->region) ||
	    dup_field(&dst->ca_bundle, src->ca_bundle) ||
	    dup_field(&dst->session_token, src->session_token))
		goto oom;
	return 0;
oom:
	s3_config_free(dst);
	return err_set(e, ERR_IO, "out of memory");
}

void s3_config_free(struct s3_config *cfg)
{
	if (!cfg)
		return;
	free_secret(&cfg->endpoint);
	free_secret(&cfg->bucket);
	free_secret(&cfg->access_key);
	if (cfg->shared) {
		secret_unref(cfg->shared);
		cfg->shared = NULL;
		cfg->secret_key = NULL;
	} else {
		free_secret(&cfg->secret_key);
	}
	free_secret(&cfg->region);
	free_secret(&cfg->ca_bundle);
	free_secret(&cfg->session_token);
}

/* ------------------------------------------------------------ connection */

struct resp {
	long status;
	char reason[64];
	char etag[S3_ETAG_MAX];
	uint64_t content_length;
	int have_length;
	char last_modified[64];
	uint64_t range_start; /* Content-Range: bytes START-END/TOTAL */
	int have_range;
	double retry_after; /* Retry-After in seconds (503 SlowDown, 429), 0: none */
	char region[64];    /* x-amz-bucket-region: where the bucket really is */
	time_t date;        /* Date: the server's clock, 0: none */
};

/* State of a streaming GET across attempts. */
struct get_state {
	uint64_t off, len; /* as asked; len UINT64_MAX: to the end */
	uint64_t delivered;
	uint64_t attempt_start; /* object offset this attempt asked for */
	uint64_t skip;          /* bytes still to drop (a 200 to a ranged GET) */
	uint64_t max;           /* the most bytes the object may have (s3_get_all: off 0) */
	int first_write;
	int sink_failed, bad_range, too_big;
	int past_range; /* the range was complete and more came: stopped there */
	s3_sink_fn sink;
	void *ud;
	char etag[S3_ETAG_MAX]; /* of the first response: If-Match when resuming */
};

struct req {
	const char *method; /* GET HEAD PUT POST DELETE */
	const char *key;    /* NULL: the bucket itself */
	const struct sigv4_param *params;
	size_t nparams;
	struct sigv4_header extra[4]; /* Range, If-Match, Content-Type, Content-MD5 */
	size_t nextra;
	const void *body; /* PUT/POST */
	size_t body_len;
	int body_fd;          /* with body_from_fd: the body is body_len bytes of this */
	uint64_t body_offset; /* file from this offset, read as it is sent */
	int body_from_fd;
	char payload_sha[65];
	struct get_state *get; /* streaming GET, or NULL */
	struct buf *out;       /* 2xx body (XML) collected here, or NULL to drop */
	const char *what;      /* "GET images/x" for messages */
	int server_work;       /* the server works before it answers (DeleteObjects,
	                          CompleteMultipartUpload): silence is no stall */
	int attempts;          /* out: how many were made */
};

struct s3 {
	struct s3_config cfg;
	CURL *curl;
	char *origin;    /* "http://host:port" (no credentials, no path) */
	char *authority; /* "host:port": the Host header that is signed */
	char *base_path; /* path part of the endpoint, "" or "/prefix" */
	char *ca_file;   /* CA bundle in use, or NULL for the system default */
	struct s3_stats stats;
	char errbuf[CURL_ERROR_SIZE];
	uint64_t rng;
	/* signing key of the day */
	char key_date[9];
	unsigned char signing_key[32];
	int unsigned_payload; /* object bodies go out as UNSIGNED-PAYLOAD */
	/* per attempt */
	struct resp resp;
	struct buf errbody;
	int errbody_cut; /* the error body was longer than ERRBODY_MAX: not read on */
	struct req *cur;
	size_t upload_pos;
	const volatile sig_atomic_t *cancel; /* s3_set_cancel */
	_Atomic uint64_t *sent;              /* s3_count_sent */
	int body_errno;                      /* reading a file body failed */
};

void s3_set_cancel(struct s3 *s, const volatile sig_atomic_t *flag)
{
	s->cancel = flag;
}

void s3_count_sent(struct s3 *s, _Atomic uint64_t *counter)
{
	s->sent = counter;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
	const struct s3 *s = ud;
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	return *s->cancel != 0; /* non-zero: curl stops the transfer */
}

static const char *readable_env(const char *name)
{
	const char *v = getenv(name);
	return v && *v && access(v, R_OK) == 0 ? v : NULL;
}

/* IMGSTORE_RETRY_BUDGET, IMGSTORE_MAX_ATTEMPTS, IMGSTORE_LOW_SPEED_TIMEOUT
 * override the config (tests; see s3.h) */
static void env_overrides(struct s3_config *cfg)
{
	const char *v = getenv("IMGSTORE_RETRY_BUDGET");
	char *end;
	if (v && *v) {
		double d = strtod(v, &end);
		if (!*end && d > 0 && d < 1e6)
			cfg->retry_budget_s = d;
	}
	v = getenv("IMGSTORE_LOW_SPEED_TIMEOUT");
	if (v && *v) {
		double d = strtod(v, &end);
		if (!*end && d >= 1 && d < 1e6)
			cfg->low_speed_timeout_s = d;
	}
	v = getenv("IMGSTORE_MAX_ATTEMPTS");
	if (v && *v) {
		long n = strtol(v, &end, 10);
		if (!*end && n > 0 && n < 1000)
			cfg->max_attempts = (int)n;
	}
}

/* Object bodies (PUT, UploadPart) are signed with their SHA-256 over plain
 * HTTP only.  Over TLS the channel protects them and, as the AWS SDKs do,
 * they go out as UNSIGNED-PAYLOAD: that saves a SHA-256 pass here and
 * another one on the server, which hashes every signed body to check it.
 * The block map in the checksum record still covers every byte end to end.
 * IMGSTORE_PAYLOAD_SIGNING=signed|unsigned overrides (tests, benchmarks). */
static int payload_unsigned(const char *endpoint)
{
	const char *v = getenv("IMGSTORE_PAYLOAD_SIGNING");
	if (v && !strcmp(v, "signed"))
		return 0;
	if (v && !strcmp(v, "unsigned"))
		return 1;
	return !strncasecmp(endpoint, "https://", 8);
}

static void body_payload_hash(const struct s3 *s, const void *data, size_t n, char out[65])
{
	if (s->unsigned_payload)
		snprintf(out, 65, "%s", SIGV4_UNSIGNED_PAYLOAD);
	else
		hash_sha256_hex(data, n, out);
}

int s3_payload_unsigned(const struct s3 *s)
{
	return s->unsigned_payload;
}

static int parse_endpoint(struct s3 *s, struct err *e)
{
	const char *ep = s->cfg.endpoint, *rest, *slash;
	size_t schemelen, alen, plen;
	if (!strncasecmp(ep, "https://", 8))
		schemelen = 8;
	else if (!strncasecmp(ep, "http://", 7))
		schemelen = 7;
	else
		return err_set(
		        e, ERR_USAGE,
		        "endpoint '%s' must start with https:// or http:// (check E2_ENDPOINT)",
		        ep);
	rest = ep + schemelen;
	slash = strchr(rest, '/');
	alen = slash ? (size_t)(slash - rest) : strlen(rest);
	if (!alen || memchr(rest, '@', alen) || memchr(rest, '?', alen) || memchr(rest, '#', alen))
		return err_set(e, ERR_USAGE,
		               "endpoint must be scheme://host[:port][/path] without credentials "
		               "(check E2_ENDPOINT)");
	plen = slash ? strlen(slash) : 0;
	while (plen && slash[plen - 1] == '/')
		plen--;
	if (slash && (strchr(slash, '?') || strchr(slash, '#')))
		return err_set(e, ERR_USAGE, "endpoint must not have a query (check E2_ENDPOINT)");
	s->origin = strndup(ep, schemelen + alen);
	s->authority = strndup(rest, alen);
	s->base_path = strndup(slash ? slash : "", plen);
	if (!s->origin || !s->authority || !s->base_path)
		return err_set(e, ERR_IO, "out of memory");
	for (char *p = s->origin; *p && p < s->origin + schemelen; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return 0;
}

struct s3 *s3_open(const struct s3_config *cfg, struct err *e)
{
	struct s3 *s;
	if (s3_global_init(e))
		return NULL;
	if (!cfg->endpoint || !*cfg->endpoint || !cfg->bucket || !*cfg->bucket ||
	    !cfg->access_key || !*cfg->access_key || !cfg->secret_key || !*cfg->secret_key) {
		err_set(e, ERR_USAGE,
		        "bucket settings incomplete (need endpoint, bucket, access key, secret "
		        "key)");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		err_set(e, ERR_IO, "out of memory");
		return NULL;
	}
	if (s3_config_copy(&s->cfg, cfg, e))
		goto fail;
	s3_config_defaults(&s->cfg);
	env_overrides(&s->cfg);
	if (!s->cfg.region) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	if (parse_endpoint(s, e))
		goto fail;
	s->unsigned_payload = payload_unsigned(s->cfg.endpoint);
	if (s->cfg.ca_bundle && *s->cfg.ca_bundle) {
		if (access(s->cfg.ca_bundle, R_OK)) {
			err_errno(e, "CA bundle %s", s->cfg.ca_bundle);
			if (e)
				e->code = ERR_USAGE;
			goto fail;
		}
		s->ca_file = strdup(s->cfg.ca_bundle);
	} else {
		const char *env = readable_env("AWS_CA_BUNDLE");
		if (!env)
			env = readable_env("CURL_CA_BUNDLE");
		if (!env)
			env = readable_env("SSL_CERT_FILE");
		s->ca_file = env ? strdup(env) : NULL;
		if (env && !s->ca_file) {
			err_set(e, ERR_IO, "out of memory");
			goto fail;
		}
	}
	s->curl = curl_easy_init();
	if (!s->curl) {
		err_set(e, ERR_IO, "cannot create a curl handle");
		goto fail;
	}
	if (getrandom(&s->rng, sizeof(s->rng), GRND_NONBLOCK) != (ssize_t)sizeof(s->rng))
		s->rng = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s ^ ((uint64_t)getpid() << 32);
	s->rng |= 1;
	return s;
fail:
	s3_close(s);
	return NULL;
}

void s3_close(struct s3 *s)
{
	if (!s)
		return;
	if (s->curl)
		curl_easy_cleanup(s->curl);
	s3_config_free(&s->cfg);
	free(s->origin);
	free(s->authority);
	free(s->base_path);
	free(s->ca_file);
	buf_free(&s->errbody);
	OPENSSL_cleanse(s->signing_key, sizeof(s->signing_key));
	free(s);
}

void s3_get_stats(const struct s3 *s, struct s3_stats *out)
{
	*out = s->stats;
}

/* ---------------------------------------------------------- callbacks */

static void copy_trimmed(char *dst, size_t cap, const char *v, size_t n)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, v, n);
	dst[n] = '\0';
}

static int header_is(const char *line, size_t n, const char *name, const char **val, size_t *vlen)
{
	size_t l = strlen(name);
	if (n <= l || line[l] != ':' || strncasecmp(line, name, l))
		return 0;
	*val = line + l + 1;
	*vlen = n - l - 1;
	return 1;
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
	struct s3 *s = ud;
	struct resp *r = &s->resp;
	size_t n = size * nitems, vlen;
	const char *v;
	char tmp[64];
	if (n > 5 && !strncmp(line, "HTTP/", 5)) {
		/* a new response (after a 100 Continue, say): start over */
		const char *sp = memchr(line, ' ', n);
		memset(r, 0, sizeof(*r));
		if (sp) {
			r->status = strtol(sp + 1, NULL, 10);
			const char *sp2 = memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line));
			if (sp2)
				copy_trimmed(r->reason, sizeof(r->reason), sp2 + 1,
				             n - (size_t)(sp2 + 1 - line));
		}
		buf_reset(&s->errbody);
		s->errbody_cut = 0;
	} else if (header_is(line, n, "etag", &v, &vlen)) {
		copy_trimmed(r->etag, sizeof(r->etag), v, vlen);
	} else if (header_is(line, n, "content-length", &v, &vlen)) {
		copy_trimmed(tmp, sizeof(tmp), v, vlen);
		r->content_length = strtoull(tmp, NULL, 10);
		r->have_length = 1;
	} else if (header_is(line, n, "last-modified", &v, &vlen)) {
		copy_trimmed(r->last_modified, sizeof(r->last_modified), v, vlen);
	} else if (header_is(line, n, "retry-after", &v, &vlen)) {
		char *end;
		copy_trimmed(tmp, sizeof(tmp), v, vlen);
		r->retry_after = strtod(tmp, &end); /* delta-seconds, or an HTTP date */
		if (end == tmp || *end) {
			time_t t = curl_getdate(tmp, NULL);
			r->retry_after = t > 0 ? difftime(t, time(NULL)) : 0;
		}
		if (!(r->retry_after > 0))
			r->retry_after = 0;
	} else if (header_is(line, n, "x-amz-bucket-region", &v, &vlen)) {
		copy_trimmed(r->region, sizeof(r->region), v, vlen);
	} else if (header_is(line, n, "date", &v, &vlen)) {
		copy_trimmed(tmp, sizeof(tmp), v, vlen);
		r->date = curl_getdate(tmp, NULL);
		if (r->date < 0)
			r->date = 0;
	} else if (header_is(line, n, "content-range", &v, &vlen)) {
		copy_trimmed(tmp, sizeof(tmp), v, vlen);
		if (!strncasecmp(tmp, "bytes ", 6)) {
			char *end;
			r->range_start = strtoull(tmp + 6, &end, 10);
			r->have_range = end != tmp + 6 && *end == '-';
		}
	}
	return n;
}

static int ok_status(long st)
{
	return st >= 200 && st < 300;
}

static size_t deliver(struct s3 *s, struct get_state *g, const char *data, size_t n)
{
	size_t total = n;
	if (g->first_write) {
		g->first_write = 0;
		if (!g->etag[0])
			memcpy(g->etag, s->resp.etag, S3_ETAG_MAX);
		if (s->resp.status == 206) {
			if (!s->resp.have_range || s->resp.range_start != g->attempt_start) {
				g->bad_range = 1;
				return 0;
			}
		} else {
			/* whole object although a range was asked: drop what comes before */
			g->skip = g->attempt_start;
		}
		/* the size the server announces: refuse before reading any of it */
		if (g->max != UINT64_MAX && s->resp.have_length) {
			uint64_t start = s->resp.status == 206 ? g->attempt_start : 0;
			if (s->resp.content_length > g->max ||
			    start > g->max - s->resp.content_length) {
				g->too_big = 1;
				return 0;
			}
		}
	}
	if (g->skip) {
		size_t d = g->skip < n ? (size_t)g->skip : n;
		g->skip -= d;
		data += d;
		n -= d;
	}
	if (g->len != UINT64_MAX && n > g->len - g->delivered) {
		/* more than asked (a server that ignores Range sends the whole
		 * object): take the range and stop reading */
		n = (size_t)(g->len - g->delivered);
		g->past_range = 1;
	}
	if (n > g->max - g->delivered) { /* no or a wrong Content-Length */
		g->too_big = 1;
		return 0;
	}
	if (n) {
		if (g->sink(g->ud, data, n)) {
			g->sink_failed = 1;
			return 0;
		}
		g->delivered += n;
	}
	return g->past_range ? 0 : total;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct s3 *s = ud;
	struct req *r = s->cur;
	size_t n = size * nmemb;
	s->stats.bytes_in += n;
	if (!ok_status(s->resp.status)) {
		/* Code and Message come first; an error answer longer than this
		 * is not read to its end (the connection is dropped) */
		size_t room = ERRBODY_MAX - s->errbody.len;
		buf_append(&s->errbody, data, n < room ? n : room);
		if (n >= room) {
			s->errbody_cut = 1;
			return 0;
		}
		return n;
	}
	if (r->get)
		return deliver(s, r->get, data, n);
	if (r->out) {
		if (r->out->len + n > XMLBODY_MAX || buf_append(r->out, data, n))
			return 0;
	}
	return n;
}

static size_t on_read(char *dst, size_t size, size_t nitems, void *ud)
{
	struct s3 *s = ud;
	size_t n = size * nitems, left = s->cur->body_len - s->upload_pos;
	if (n > left)
		n = left;
	if (s->cur->body_from_fd) {
		/* straight from the page cache into curl's buffer: a file body
		 * is never held in memory whole */
		ssize_t got;
		do
			got = pread(s->cur->body_fd, dst, n,
			            (off_t)(s->cur->body_offset + s->upload_pos));
		while (got < 0 && errno == EINTR);
		if (got <= 0 && n) {
			s->body_errno = got < 0 ? errno : EIO; /* 0: the file got shorter */
			return CURL_READFUNC_ABORT;
		}
		n = (size_t)got;
	} else {
		memcpy(dst, (const char *)s->cur->body + s->upload_pos, n);
	}
	s->upload_pos += n;
	s->stats.bytes_out += n;
	if (s->sent)
		atomic_fetch_add_explicit(s->sent, n, memory_order_relaxed);
	return n;
}

static int on_seek(void *ud, curl_off_t off, int origin)
{
	struct s3 *s = ud;
	if (origin != SEEK_SET || off < 0 || (uint64_t)off > s->cur->body_len)
		return CURL_SEEKFUNC_CANTSEEK;
	if (s->sent)
		atomic_fetch_sub_explicit(s->sent, s->upload_pos - (size_t)off,
		                          memory_order_relaxed);
	s->upload_pos = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

/* -------------------------------------------------------------- signing */

static int canonical_uri(struct s3 *s, const char *key, struct buf *out)
{
	if (buf_appends(out, s->base_path) || buf_append(out, "/", 1) ||
	    sigv4_uri_encode(out, s->cfg.bucket, strlen(s->cfg.bucket), 0))
		return -1;
	if (key && (buf_append(out, "/", 1) || sigv4_uri_encode(out, key, strlen(key), 1)))
		return -1;
	return 0;
}

static void wipe_auth(struct curl_slist *l)
{
	for (; l; l = l->next)
		if (!strncasecmp(l->data, "Authorization:", 14))
			OPENSSL_cleanse(l->data, strlen(l->data));
}

static int add_header(struct curl_slist **l, const char *name, const char *value)
{
	struct buf b = BUF_INIT;
	struct curl_slist *n;
	if (buf_appendf(&b, "%s: %s", name, value)) {
		buf_free(&b);
		return -1;
	}
	n = curl_slist_append(*l, b.data);
	buf_free_secure(&b);
	if (!n)
		return -1;
	*l = n;
	return 0;
}

/* URL and signed header list for one attempt. */
static int build_request(struct s3 *s, struct req *r, struct buf *url, struct curl_slist **hdrs)
{
	struct buf uri = BUF_INIT, cq = BUF_INIT, uq = BUF_INIT, creq = BUF_INIT, sts = BUF_INIT,
	           sh = BUF_INIT, auth = BUF_INIT;
	struct sigv4_header h[4 + 4];
	char amz_date[17], sig[65];
	size_t nh = 0, i;
	int rc = -1;
	sigv4_amz_date((long long)time(NULL), amz_date);
	if (canonical_uri(s, r->key, &uri) || sigv4_query(r->params, r->nparams, &cq, &uq))
		goto out;
	if (buf_appends(url, s->origin) || buf_append(url, uri.data, uri.len) ||
	    (uq.len && (buf_append(url, "?", 1) || buf_append(url, uq.data, uq.len))))
		goto out;
	h[nh++] = (struct sigv4_header){"host", s->authority};
	h[nh++] = (struct sigv4_header){"x-amz-content-sha256", r->payload_sha};
	h[nh++] = (struct sigv4_header){"x-amz-date", amz_date};
	for (i = 0; i < r->nextra; i++)
		h[nh++] = r->extra[i];
	if (s->cfg.session_token && *s->cfg.session_token) /* signed, as STS requires */
		h[nh++] = (struct sigv4_header){"x-amz-security-token", s->cfg.session_token};
	if (sigv4_canonical_request(r->method, uri.data, cq.data, h, nh, r->payload_sha, &creq,
	                            &sh) ||
	    sigv4_string_to_sign(amz_date, s->cfg.region, "s3", creq.data, creq.len, &sts))
		goto out;
	if (strncmp(s->key_date, amz_date, 8)) {
		if (sigv4_signing_key(s->cfg.secret_key, amz_date, s->cfg.region, "s3",
		                      s->signing_key))
			goto out;
		memcpy(s->key_date, amz_date, 8);
		s->key_date[8] = '\0';
	}
	if (sigv4_signature(s->signing_key, sts.data, sts.len, sig) ||
	    sigv4_authorization(s->cfg.access_key, amz_date, s->cfg.region, "s3", sh.data, sig,
	                        &auth))
		goto out;
	for (i = 0; i < nh; i++)
		if (add_header(hdrs, !strcmp(h[i].name, "host") ? "Host" : h[i].name, h[i].value))
			goto out;
	if (add_header(hdrs, "Authorization", auth.data))
		goto out;
	/* no "Expect: 100-continue" round trip; no form content type on POST */
	*hdrs = curl_slist_append(*hdrs, "Expect:");
	if (!*hdrs)
		goto out;
	rc = 0;
out:
	buf_free(&uri);
	buf_free(&cq);
	buf_free(&uq);
	buf_free(&creq);
	buf_free(&sts);
	buf_free(&sh);
	buf_free_secure(&auth);
	OPENSSL_cleanse(sig, sizeof(sig));
	return rc;
}

/* ------------------------------------------------------------ perform */

static double rnd01(struct s3 *s)
{
	/* xorshift64*: jitter only, no need for more */
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return (double)((s->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void sleep_s(double d)
{
	struct timespec ts;
	if (d <= 0)
		return;
	ts.tv_sec = (time_t)d;
	ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

enum outcome { OUT_OK, OUT_RETRY, OUT_FAIL };

static int retryable_curl(CURLcode c)
{
	switch (c) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_OUT_OF_MEMORY:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_ABORTED_BY_CALLBACK:
	case CURLE_FILESIZE_EXCEEDED:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_FAILED_INIT:
	case CURLE_SEND_FAIL_REWIND: return 0;
	default: return 1;
	}
}

static int retryable_status(long st, const char *code)
{
	return st >= 500 || st == 429 || st == 408 ||
	       (st == 400 && (!strcmp(code, "RequestTimeout") || !strcmp(code, "SlowDown")));
}

static enum err_code status_code(long st)
{
	if (st == 404)
		return ERR_NOTFOUND;
	if (st == 401 || st == 403)
		return ERR_AUTH;
	if (st == 412)
		return ERR_PRECONDITION;
	if (st >= 500 || st == 429 || st == 408)
		return ERR_NET; /* transient, and still failing after the retries */
	return ERR_SERVER;
}

/* The server's clock against ours, in a hint: S3 refuses a request signed
 * more than SKEW_MAX_S off (RequestTimeTooSkewed; a bare 403 to a HEAD). */
static void clock_hint(const struct s3 *s, char *out, size_t cap)
{
	double d = s->resp.date ? difftime(s->resp.date, time(NULL)) : 0, a = d < 0 ? -d : d;
	if (a < 60)
		snprintf(out, cap, "; check the system clock");
	else
		snprintf(out, cap, "; check the system clock (the server's is %.0f %s %s)",
		         a >= 120 ? a / 60 : a, a >= 120 ? "min" : "s", d > 0 ? "ahead" : "behind");
}

/* What to do about an error answer, into out (may be ""). */
static void hint(struct s3 *s, long st, const char *code, char *out, size_t cap)
{
	char region[64] = "", endpoint[128] = "";
	const char *h = "";
	/* a bucket in another region (301 PermanentRedirect, 400
	 * AuthorizationHeaderMalformed): the server names it in a header or the body */
	snprintf(region, sizeof(region), "%s", s->resp.region);
	if (s->errbody.len) {
		if (!region[0])
			(void)s3_xml_error_field(s->errbody.data, s->errbody.len, "Region", region,
			                         sizeof(region));
		(void)s3_xml_error_field(s->errbody.data, s->errbody.len, "Endpoint", endpoint,
		                         sizeof(endpoint));
	}
	if (region[0] && strcmp(region, s->cfg.region)) {
		snprintf(out, cap,
		         "; the bucket is in region %s: set E2_REGION=%s and E2_ENDPOINT to that "
		         "region's endpoint%s%s%s",
		         region, region, endpoint[0] ? " (the server names " : "", endpoint,
		         endpoint[0] ? ")" : "");
		return;
	}
	if (!strcmp(code, "RequestTimeTooSkewed") ||
	    (st == 403 && !code[0] && s->resp.date &&
	     (difftime(s->resp.date, time(NULL)) > SKEW_MAX_S ||
	      difftime(s->resp.date, time(NULL)) < -SKEW_MAX_S))) {
		clock_hint(s, out, cap);
		return;
	}
	if (!strcmp(code, "SignatureDoesNotMatch") || !strcmp(code, "InvalidAccessKeyId") ||
	    !strcmp(code, "InvalidSecurity") || st == 401)
		h = "; check E2_ACCESS_KEY/E2_SECRET_KEY";
	else if (!strcmp(code, "AuthorizationHeaderMalformed") ||
	         !strcmp(code, "PermanentRedirect") || st == 301 || st == 307)
		h = "; check E2_ENDPOINT/E2_REGION";
	else if (!strcmp(code, "AccessDenied"))
		h = "; check that the access key may use this bucket";
	else if (st == 403) /* HEAD: no body to tell which */
		h = "; check E2_ACCESS_KEY/E2_SECRET_KEY and that the key may use this bucket";
	else if (!strcmp(code, "NoSuchBucket"))
		h = "; check E2_BUCKET";
	else if (st == 412)
		h = " (precondition failed: the object changed)";
	snprintf(out, cap, "%s", h);
}

/* retry_after > 0: the server asked for a wait beyond the retry budget. */
static void set_http_error(struct s3 *s, struct req *r, double elapsed, int retried,
                           double retry_after, struct err *e)
{
	char code[96] = "", msg[400] = "", tail[160] = "", hnt[400];
	long st = s->resp.status;
	if (s->errbody.len)
		(void)s3_xml_error(s->errbody.data, s->errbody.len, code, sizeof(code), msg,
		                   sizeof(msg));
	hint(s, st, code, hnt, sizeof(hnt));
	if (retry_after > 0)
		snprintf(tail, sizeof(tail),
		         " (the server asked to retry after %.0f s, beyond the retry budget; %d "
		         "attempt%s in %.1f s)",
		         retry_after, r->attempts, r->attempts == 1 ? "" : "s", elapsed);
	else if (retried)
		snprintf(tail, sizeof(tail), " (after %d attempts in %.1f s)", r->attempts,
		         elapsed);
	if (code[0])
		err_set(e, status_code(st), "%s: HTTP %ld %s: %s%s%s", r->what, st, code,
		        msg[0] ? msg : "(no message)", hnt, tail);
	else
		err_set(e, status_code(st), "%s: HTTP %ld%s%s%s%s", r->what, st,
		        s->resp.reason[0] ? " " : "", s->resp.reason, hnt, tail);
	if (e)
		e->http_status = (int)st;
}

static void set_net_error(struct s3 *s, struct req *r, CURLcode c, double elapsed, struct err *e)
{
	char detail[CURL_ERROR_SIZE + 64];
	long oserr = 0;
	curl_easy_getinfo(s->curl, CURLINFO_OS_ERRNO, &oserr);
	if ((c == CURLE_COULDNT_CONNECT || c == CURLE_RECV_ERROR || c == CURLE_SEND_ERROR) && oserr)
		snprintf(detail, sizeof(detail), "%s", strerror((int)oserr));
	else if (s->errbuf[0])
		snprintf(detail, sizeof(detail), "%s", s->errbuf);
	else
		snprintf(detail, sizeof(detail), "%s", curl_easy_strerror(c));
	curl_off_t connected = 0;
	curl_easy_getinfo(s->curl, CURLINFO_CONNECT_TIME_T, &connected);
	if (c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
	    (c == CURLE_OPERATION_TIMEDOUT && s->resp.status == 0 && connected == 0))
		err_set(e, ERR_NET,
		        "%s: cannot reach %s (%s) after %d attempt%s in %.1f s; is E2_ENDPOINT "
		        "right and the server up?",
		        r->what, s->cfg.endpoint, detail, r->attempts, r->attempts == 1 ? "" : "s",
		        elapsed);
	else if (c == CURLE_PEER_FAILED_VERIFICATION || c == CURLE_SSL_CACERT_BADFILE)
		err_set(e, ERR_NET,
		        "%s: TLS certificate of %s not trusted (%s); pass --ca-bundle FILE with "
		        "the CA that signed it",
		        r->what, s->cfg.endpoint, detail);
	else
		err_set(e, ERR_NET, "%s: transfer with %s failed (%s) after %d attempt%s in %.1f s",
		        r->what, s->cfg.endpoint, detail, r->attempts, r->attempts == 1 ? "" : "s",
		        elapsed);
}

static void setup_handle(struct s3 *s, struct req *r, const char *url, struct curl_slist *hdrs,
                         double connect_s)
{
	CURL *c = s->curl;
	long connect_ms = (long)(connect_s * 1000);
	long low_speed_s = (long)(s->cfg.low_speed_timeout_s < 1 ? 1 : s->cfg.low_speed_timeout_s);
	/* Swift takes ~40 s for a DeleteObjects of 1000 keys on a busy host, and
	 * sends nothing meanwhile */
	if (r->server_work && low_speed_s < SERVER_WORK_S)
		low_speed_s = SERVER_WORK_S;
	curl_easy_reset(c); /* keeps the live connection */
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L); /* keys are not paths: keep "..", "//" */
	curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "imgstore-s3/0.1");
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, s->errbuf);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms < 1 ? 1L : connect_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, low_speed_s);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (s->ca_file) /* Debian's libcurl keeps its CA path /etc/ssl/certs as well */
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
	if (s->cancel) {
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
	}
	if (!strcmp(r->method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(r->method, "PUT")) {
		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, (long)SEND_BUFFER);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(c, CURLOPT_READDATA, s);
		curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(c, CURLOPT_SEEKDATA, s);
		curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
	} else if (!strcmp(r->method, "POST")) {
		/* small XML bodies, sent from our buffer (not copied by curl) */
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body ? r->body : "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
	} else if (!strcmp(r->method, "DELETE")) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
	} else {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		/* big reads for throughput; only GETs pay the memory (parallel
		 * uploaders keep one handle each) */
		if (r->get)
			curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)RECV_BUFFER);
	}
}

/* The Range and If-Match headers of a (resumed) GET attempt. */
static void get_headers(struct req *r, const char *if_match, char *range, size_t cap)
{
	struct get_state *g = r->get;
	uint64_t start = g->off + g->delivered;
	r->nextra = 0;
	g->attempt_start = start;
	g->first_write = 1;
	g->skip = 0;
	g->bad_range = 0;
	g->past_range = 0;
	if (g->len != UINT64_MAX) {
		snprintf(range, cap, "bytes=%llu-%llu", (unsigned long long)start,
		         (unsigned long long)(g->off + g->len - 1));
		r->extra[r->nextra++] = (struct sigv4_header){"range", range};
	} else if (start) {
		snprintf(range, cap, "bytes=%llu-", (unsigned long long)start);
		r->extra[r->nextra++] = (struct sigv4_header){"range", range};
	}
	if (if_match && *if_match)
		r->extra[r->nextra++] = (struct sigv4_header){"if-match", if_match};
	else if (g->delivered && g->etag[0]) /* never stitch two versions together */
		r->extra[r->nextra++] = (struct sigv4_header){"if-match", g->etag};
}

/* Run r with retries.  0 on a 2xx; else -1 with e set (e->http_status for
 * an HTTP answer). */
static int perform(struct s3 *s, struct req *r, const char *if_match, struct err *e)
{
	double t0 = time_mono(), deadline = t0 + s->cfg.retry_budget_s, now;
	int attempt = 0, rc = -1;
	char range[64];
	r->attempts = 0;
	s->cur = r;
	s->upload_pos = 0;
	for (;;) {
		struct buf url = BUF_INIT;
		struct curl_slist *hdrs = NULL;
		CURLcode c;
		uint64_t before = r->get ? r->get->delivered : 0;
		enum outcome o;
		char code[96] = "";
		double wait;
		if (s->cancel && *s->cancel) {
			err_set(e, ERR_NET, "%s: interrupted", r->what);
			break;
		}
		attempt++;
		r->attempts++;
		if (r->get)
			get_headers(r, if_match, range, sizeof(range));
		if (r->out)
			buf_reset(r->out);
		if (build_request(s, r, &url, &hdrs)) {
			wipe_auth(hdrs);
			curl_slist_free_all(hdrs);
			buf_free(&url);
			err_set(e, ERR_IO, "%s: out of memory", r->what);
			break;
		}
		now = time_mono();
		wait = deadline - now;
		setup_handle(s, r, url.data, hdrs,
		             s->cfg.connect_timeout_s < wait ? s->cfg.connect_timeout_s
		             : wait > 1                      ? wait
		                                             : 1);
		memset(&s->resp, 0, sizeof(s->resp));
		buf_reset(&s->errbody);
		s->errbody_cut = 0;
		s->errbuf[0] = '\0';
		if (s->sent && s->upload_pos) /* sent again: not progress */
			atomic_fetch_sub_explicit(s->sent, s->upload_pos, memory_order_relaxed);
		s->upload_pos = 0;
		s->stats.requests++;
		c = curl_easy_perform(s->curl);
		wipe_auth(hdrs);
		curl_slist_free_all(hdrs);
		buf_free(&url);
		now = time_mono();
		/* stopped on purpose: the range is complete, or an error answer is
		 * longer than the part of it that is read */
		if (c == CURLE_WRITE_ERROR && ((r->get && r->get->past_range) || s->errbody_cut))
			c = CURLE_OK;

		if (c == CURLE_ABORTED_BY_CALLBACK && s->cancel && *s->cancel) {
			err_set(e, ERR_NET, "%s: interrupted", r->what);
			break;
		}
		if (c == CURLE_ABORTED_BY_CALLBACK && s->body_errno) {
			/* a local file: another attempt would read the same */
			err_set(e, ERR_IO, "%s: reading the body from the file: %s", r->what,
			        s->body_errno == EIO ? "input/output error, or the file got shorter"
			                             : strerror(s->body_errno));
			s->body_errno = 0;
			break;
		}
		if (r->get && r->get->too_big) {
			err_set(e, ERR_INVALID,
			        "%s: the object has more than %llu bytes, the most expected; not "
			        "read",
			        r->what, (unsigned long long)r->get->max);
			break;
		}
		if (r->get && r->get->sink_failed) {
			if (!e || e->code == ERR_OK)
				err_set(e, ERR_IO, "%s: the receiver stopped the transfer",
				        r->what);
			break;
		}
		if (r->get && r->get->bad_range) {
			err_set(e, ERR_SERVER, "%s: the server answered another range than asked",
			        r->what);
			break;
		}
		if (c == CURLE_OK && ok_status(s->resp.status)) {
			rc = 0;
			break;
		}
		if (c != CURLE_OK) {
			o = retryable_curl(c) ? OUT_RETRY : OUT_FAIL;
			if (c == CURLE_WRITE_ERROR && r->out) {
				err_set(e, ERR_SERVER, "%s: response too large", r->what);
				break;
			}
		} else {
			if (s->errbody.len)
				(void)s3_xml_error(s->errbody.data, s->errbody.len, code,
				                   sizeof(code), NULL, 0);
			o = retryable_status(s->resp.status, code) ? OUT_RETRY : OUT_FAIL;
		}
		/* a GET that got further resets the clock: the budget is for being stuck */
		if (r->get && r->get->delivered > before) {
			attempt = 1;
			deadline = now + s->cfg.retry_budget_s;
		}
		wait = BACKOFF_BASE_S * (double)(1u << (attempt - 1 < 10 ? attempt - 1 : 10));
		wait = rnd01(s) * (wait < BACKOFF_CAP_S ? wait : BACKOFF_CAP_S);
		/* the server said when (503 SlowDown, 429): not sooner, and not at all
		 * when that is past the budget */
		if (c == CURLE_OK && o == OUT_RETRY && s->resp.retry_after > wait)
			wait = s->resp.retry_after;
		if (o == OUT_FAIL || attempt >= s->cfg.max_attempts || now + wait > deadline) {
			/* out of budget before the time the server asked for: say so */
			double asked = o == OUT_RETRY && attempt < s->cfg.max_attempts
			                       ? s->resp.retry_after
			                       : 0;
			if (c != CURLE_OK)
				set_net_error(s, r, c, now - t0, e);
			else
				set_http_error(s, r, now - t0, o == OUT_RETRY && r->attempts > 1,
				               asked, e);
			break;
		}
		if (c != CURLE_OK)
			log_debug("%s: %s; retrying in %.2f s", r->what,
			          s->errbuf[0] ? s->errbuf : curl_easy_strerror(c), wait);
		else
			log_debug("%s: HTTP %ld %s; retrying in %.2f s", r->what, s->resp.status,
			          code, wait);
		s->stats.retries++;
		sleep_s(wait);
	}
	s->cur = NULL;
	return rc;
}

static void what(char *out, const char *method, const char *key)
{
	snprintf(out, WHAT_MAX, "%s %s", method, key);
}

static void copy_etag(char dst[S3_ETAG_MAX], const char *src)
{
	if (dst)
		snprintf(dst, S3_ETAG_MAX, "%s", src);
}

/* ------------------------------------------------------------- objects */

int s3_head(struct s3 *s, const char *key, struct s3_object *out, struct err *e)
{
	struct req r = {.method = "HEAD", .key = key};
	char w[WHAT_MAX];
	what(w, "HEAD", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	memset(out, 0, sizeof(*out));
	if (perform(s, &r, NULL, e))
		return -1;
	out->key = NULL; /* the caller knows it */
	out->size = s->resp.content_length;
	copy_etag(out->etag, s->resp.etag);
	if (s->resp.last_modified[0]) {
		time_t t = curl_getdate(s->resp.last_modified, NULL);
		out->mtime = t < 0 ? 0 : t;
	}
	return 0;
}

int s3_get(struct s3 *s, const char *key, uint64_t off, uint64_t len, const char *if_match,
           s3_sink_fn sink, void *ud, struct err *e)
{
	struct get_state g = {.off = off, .len = len, .max = UINT64_MAX, .sink = sink, .ud = ud};
	struct req r = {.method = "GET", .key = key, .get = &g};
	char w[WHAT_MAX];
	if (len == 0)
		return 0;
	if (len != UINT64_MAX && off + len < off)
		g.len = UINT64_MAX; /* past the largest offset: to the end */
	snprintf(w, sizeof(w), "GET %s", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	if (e)
		err_clear(e);
	if (perform(s, &r, if_match, e)) {
		if (e && e->http_status == 416) { /* the range starts at or past the end */
			err_clear(e);
			return 0;
		}
		if (e && e->code == ERR_PRECONDITION && !(if_match && *if_match))
			err_set(e, ERR_PRECONDITION, "GET %s: the object changed while it was read",
			        key);
		return -1;
	}
	return 0;
}

struct range_sink {
	char *buf;
	size_t cap, got;
};

static int range_sink(void *ud, const void *data, size_t n)
{
	struct range_sink *rs = ud;
	if (n > rs->cap - rs->got)
		n = rs->cap - rs->got;
	memcpy(rs->buf + rs->got, data, n);
	rs->got += n;
	return 0;
}

int s3_get_range(struct s3 *s, const char *key, uint64_t off, size_t len, const char *if_match,
                 void *buf, size_t *got, struct err *e)
{
	struct range_sink rs = {buf, len, 0};
	int rc = s3_get(s, key, off, len, if_match, range_sink, &rs, e);
	*got = rs.got;
	return rc;
}

static int buf_sink(void *ud, const void *data, size_t n)
{
	return buf_append(ud, data, n);
}

int s3_get_all(struct s3 *s, const char *key, size_t max, char **data, size_t *len,
               char etag[S3_ETAG_MAX], struct err *e)
{
	struct buf b = BUF_INIT;
	struct get_state g = {.off = 0, .len = UINT64_MAX, .max = max, .sink = buf_sink, .ud = &b};
	struct req r = {.method = "GET", .key = key, .get = &g};
	char w[WHAT_MAX];
	*data = NULL;
	*len = 0;
	snprintf(w, sizeof(w), "GET %s", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	if (e)
		err_clear(e);
	if (perform(s, &r, NULL, e)) {
		buf_free(&b);
		if (g.sink_failed) /* buf_sink fails only for want of memory */
			err_set(e, ERR_IO, "GET %s: out of memory", key);
		return -1;
	}
	if (buf_append(&b, "", 0)) {
		buf_free(&b);
		return err_set(e, ERR_IO, "GET %s: out of memory", key);
	}
	*len = b.len;
	*data = buf_steal(&b);
	copy_etag(etag, g.etag[0] ? g.etag : s->resp.etag);
	return 0;
}

int s3_put(struct s3 *s, const char *key, const void *data, size_t n, const char *content_type,
           char etag_out[S3_ETAG_MAX], struct err *e)
{
	struct req r = {.method = "PUT", .key = key, .body = data, .body_len = n};
	char w[WHAT_MAX];
	what(w, "PUT", key);
	r.what = w;
	body_payload_hash(s, data, n, r.payload_sha);
	if (content_type && *content_type)
		r.extra[r.nextra++] = (struct sigv4_header){"content-type", content_type};
	if (perform(s, &r, NULL, e))
		return -1;
	copy_etag(etag_out, s->resp.etag);
	return 0;
}

static int s3_error_code_is(struct s3 *s, const char *want)
{
	char code[96] = "";
	if (s->errbody.len)
		(void)s3_xml_error(s->errbody.data, s->errbody.len, code, sizeof(code), NULL, 0);
	return !strcmp(code, want);
}

int s3_delete(struct s3 *s, const char *key, struct err *e)
{
	struct req r = {.method = "DELETE", .key = key};
	char w[WHAT_MAX];
	what(w, "DELETE", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	if (perform(s, &r, NULL, e)) {
		/* deleting what is not there is done (S3 itself answers 204) */
		if (e && e->http_status == 404 && s3_error_code_is(s, "NoSuchKey")) {
			err_clear(e);
			return 0;
		}
		return -1;
	}
	return 0;
}

static int content_md5(const void *data, size_t n, char out[32])
{
	unsigned char md[16];
	unsigned int len = 0;
	if (!EVP_Digest(data, n, md, &len, EVP_md5(), NULL) || len != 16)
		return -1;
	EVP_EncodeBlock((unsigned char *)out, md, 16); /* 24 chars + NUL */
	return 0;
}

int s3_delete_many(struct s3 *s, char *const *keys, size_t n, struct err *e)
{
	static const struct sigv4_param params[] = {{"delete", NULL}};
	struct buf body = BUF_INIT, resp = BUF_INIT;
	size_t done = 0, failed = 0;
	struct s3_xml_delete_result first = {0}, res;
	char md5[32], w[WHAT_MAX];
	int rc = -1;
	while (done < n) {
		size_t batch = n - done < DELETE_BATCH ? n - done : DELETE_BATCH;
		struct req r = {.method = "POST", .params = params, .nparams = 1, .out = &resp};
		buf_reset(&body);
		if (s3_xml_build_delete(&body, keys + done, batch) ||
		    content_md5(body.data, body.len, md5)) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		snprintf(w, sizeof(w), "DeleteObjects (%zu keys from %s) in bucket %s", batch,
		         keys[done], s->cfg.bucket);
		r.what = w;
		r.body = body.data;
		r.body_len = body.len;
		hash_sha256_hex(body.data, body.len, r.payload_sha);
		r.server_work = 1;
		r.extra[r.nextra++] = (struct sigv4_header){"content-md5", md5};
		r.extra[r.nextra++] = (struct sigv4_header){"content-type", "application/xml"};
		if (perform(s, &r, NULL, e))
			goto out;
		if (s3_xml_parse_delete(resp.data, resp.len, &res, e)) {
			err_prefix(e, "%s", w);
			goto out;
		}
		if (res.nerrors && !failed)
			first = res;
		failed += res.nerrors;
		done += batch;
	}
	if (failed) {
		err_set(e, ERR_SERVER,
		        "DeleteObjects: %zu of %zu keys not deleted; first: %s: %s: %s", failed, n,
		        first.key, first.code, first.msg);
		goto out;
	}
	rc = 0;
out:
	buf_free(&body);
	buf_free(&resp);
	return rc;
}

/* ----------------------------------------------------------- multipart */

int s3_mpu_create(struct s3 *s, const char *key, const char *content_type, char **upload_id,
                  struct err *e)
{
	static const struct sigv4_param params[] = {{"uploads", NULL}};
	struct buf resp = BUF_INIT;
	struct req r = {.method = "POST", .key = key, .params = params, .nparams = 1, .out = &resp};
	char w[WHAT_MAX];
	int rc = -1;
	*upload_id = NULL;
	snprintf(w, sizeof(w), "CreateMultipartUpload %s", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	r.extra[r.nextra++] = (struct sigv4_header){
	        "content-type",
	        content_type && *content_type ? content_type : "application/octet-stream"};
	if (perform(s, &r, NULL, e))
		goto out;
	if (s3_xml_parse_initiate(resp.data, resp.len, upload_id, e)) {
		err_prefix(e, "%s", w);
		goto out;
	}
	rc = 0;
out:
	buf_free(&resp);
	return rc;
}

/* UploadPart of the body r describes (from memory or from a file), signed
 * with payload_sha (its SHA-256 in hex) when the caller has it.  A file's
 * bytes are hashed by the caller, in its own pass over them (the upload's
 * hash thread): reading them once more here would double the read. */
static int upload_part(struct s3 *s, const char *key, const char *upload_id, int number,
                       struct req *r, const char *payload_sha, char etag_out[S3_ETAG_MAX],
                       struct err *e)
{
	char num[16], w[WHAT_MAX];
	struct sigv4_param params[] = {{"partNumber", num}, {"uploadId", upload_id}};
	snprintf(num, sizeof(num), "%d", number);
	snprintf(w, sizeof(w), "UploadPart %d of %s", number, key);
	r->method = "PUT";
	r->key = key;
	r->params = params;
	r->nparams = 2;
	r->what = w;
	if (s->unsigned_payload)
		snprintf(r->payload_sha, sizeof(r->payload_sha), "%s", SIGV4_UNSIGNED_PAYLOAD);
	else if (payload_sha && strlen(payload_sha) == 64)
		memcpy(r->payload_sha, payload_sha, 65);
	else if (!r->body_from_fd)
		hash_sha256_hex(r->body, r->body_len, r->payload_sha);
	else
		return err_set(e, ERR_INVALID, "%s: a signed part from a file needs its SHA-256",
		               w);
	if (perform(s, r, NULL, e))
		return -1;
	if (!s->resp.etag[0])
		return err_set(e, ERR_SERVER, "%s: the server sent no ETag", w);
	copy_etag(etag_out, s->resp.etag);
	return 0;
}

int s3_mpu_put_part(struct s3 *s, const char *key, const char *upload_id, int number,
                    const void *data, size_t n, const char *payload_sha, char etag_out[S3_ETAG_MAX],
                    struct err *e)
{
	struct req r = {.body = data, .body_len = n};
	return upload_part(s, key, upload_id, number, &r, payload_sha, etag_out, e);
}

int s3_mpu_put_part_file(struct s3 *s, const char *key, const char *upload_id, int number, int fd,
                         uint64_t offset, size_t n, const char *payload_sha,
                         char etag_out[S3_ETAG_MAX], struct err *e)
{
	struct req r = {.body_len = n, .body_fd = fd, .body_offset = offset, .body_from_fd = 1};
	return upload_part(s, key, upload_id, number, &r, payload_sha, etag_out, e);
}

int s3_mpu_complete(struct s3 *s, const char *key, const char *upload_id,
                    const struct s3_part *parts, size_t nparts, char etag_out[S3_ETAG_MAX],
                    struct err *e)
{
	struct sigv4_param params[] = {{"uploadId", upload_id}};
	struct buf body = BUF_INIT, resp = BUF_INIT;
	struct req r = {.method = "POST",
	                .key = key,
	                .params = params,
	                .nparams = 1,
	                .out = &resp,
	                .server_work = 1};
	char w[WHAT_MAX], etag[S3_ETAG_MAX] = "", code[96] = "", msg[400] = "";
	int is_error = 0, rc = -1;
	struct s3_object obj;
	snprintf(w, sizeof(w), "CompleteMultipartUpload %s (%zu parts)", key, nparts);
	r.what = w;
	if (s3_xml_build_complete(&body, parts, nparts)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	r.body = body.data;
	r.body_len = body.len;
	hash_sha256_hex(body.data, body.len, r.payload_sha);
	r.extra[r.nextra++] = (struct sigv4_header){"content-type", "application/xml"};
	if (perform(s, &r, NULL, e)) {
		/* a retry after a lost answer finds the upload already completed */
		if (!(e && e->http_status == 404 && r.attempts > 1 &&
		      s3_error_code_is(s, "NoSuchUpload")))
			goto out;
		err_clear(e);
	} else if (s3_xml_parse_complete(resp.data, resp.len, etag, &is_error, code, sizeof(code),
	                                 msg, sizeof(msg), e)) {
		if (is_error)
			err_set(e, ERR_SERVER, "%s: %s: %s", w, code, msg);
		else
			err_prefix(e, "%s", w);
		goto out;
	}
	/* The answer's ETag is this upload's own: a HEAD may already see another
	 * upload that replaced it, and a caller that checks for such a race
	 * needs ours.  Only when the answer has none (radosgw 16.2 sends
	 * <ETag></ETag>; a retry after a lost answer gets no body) is it read
	 * back with HEAD. */
	if (etag_out && etag[0] && !is_error) {
		copy_etag(etag_out, etag);
	} else if (etag_out) {
		if (s3_head(s, key, &obj, e)) {
			err_prefix(e, "%s: reading the ETag back", w);
			goto out;
		}
		if (!obj.etag[0]) {
			err_set(e, ERR_SERVER, "%s: the server sent no ETag", w);
			goto out;
		}
		copy_etag(etag_out, obj.etag);
	}
	rc = 0;
out:
	buf_free(&body);
	buf_free(&resp);
	return rc;
}

int s3_mpu_abort(struct s3 *s, const char *key, const char *upload_id, struct err *e)
{
	struct sigv4_param params[] = {{"uploadId", upload_id}};
	struct req r = {.method = "DELETE", .key = key, .params = params, .nparams = 1};
	char w[WHAT_MAX];
	snprintf(w, sizeof(w), "AbortMultipartUpload %s", key);
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	if (perform(s, &r, NULL, e)) {
		if (e && e->http_status == 404 && r.attempts > 1 &&
		    s3_error_code_is(s, "NoSuchUpload")) {
			err_clear(e); /* an earlier attempt did it */
			return 0;
		}
		return -1;
	}
	return 0;
}

int s3_mpu_list(struct s3 *s, const char *prefix, struct s3_upload **out, size_t *n, struct err *e)
{
	struct s3_xml_uploads acc = {0};
	struct buf resp = BUF_INIT;
	char *key_marker = NULL, *id_marker = NULL, w[WHAT_MAX];
	int rc = -1;
	*out = NULL;
	*n = 0;
	snprintf(w, sizeof(w), "ListMultipartUploads in bucket %s", s->cfg.bucket);
	for (;;) {
		struct sigv4_param params[4];
		struct req r = {.method = "GET", .params = params, .out = &resp, .what = w};
		params[r.nparams++] = (struct sigv4_param){"uploads", NULL};
		if (prefix && *prefix)
			params[r.nparams++] = (struct sigv4_param){"prefix", prefix};
		if (key_marker)
			params[r.nparams++] = (struct sigv4_param){"key-marker", key_marker};
		if (id_marker)
			params[r.nparams++] = (struct sigv4_param){"upload-id-marker", id_marker};
		memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
		if (perform(s, &r, NULL, e))
			goto out;
		if (s3_xml_parse_uploads(resp.data, resp.len, &acc, e)) {
			err_prefix(e, "%s", w);
			goto out;
		}
		if (!acc.truncated)
			break;
		if (!acc.next_key_marker || !*acc.next_key_marker) {
			err_set(e, ERR_SERVER, "%s: truncated listing without NextKeyMarker", w);
			goto out;
		}
		free(key_marker);
		free(id_marker);
		key_marker = acc.next_key_marker;
		id_marker = acc.next_upload_id_marker;
		acc.next_key_marker = acc.next_upload_id_marker = NULL;
	}
	*out = acc.v;
	*n = acc.n;
	acc.v = NULL;
	acc.n = 0;
	rc = 0;
out:
	s3_xml_uploads_free(&acc);
	free(key_marker);
	free(id_marker);
	buf_free(&resp);
	return rc;
}

/* ---------------------------------------------------------------- list */

/* Drop the entries of a page that do not start with the prefix asked for.  A
 * compliant server never sends them, but a listing is input: callers strip
 * the prefix off every key, and a foreign key must not become a name (or a
 * deletion) under it. */
static void keep_prefixed(struct s3_xml_list *acc, size_t objs_from, size_t prefixes_from,
                          const char *prefix)
{
	size_t pl = prefix ? strlen(prefix) : 0, w;
	if (!pl)
		return;
	for (w = objs_from; objs_from < acc->nobjs; objs_from++) {
		struct s3_object *o = &acc->objs[objs_from];
		if (!strncmp(o->key, prefix, pl)) {
			acc->objs[w++] = *o;
			continue;
		}
		log_debug("listing of '%s': dropping key '%s' (outside the prefix)", prefix,
		          o->key);
		free(o->key);
	}
	acc->nobjs = w;
	for (w = prefixes_from; prefixes_from < acc->nprefixes; prefixes_from++) {
		char *p = acc->prefixes[prefixes_from];
		if (!strncmp(p, prefix, pl)) {
			acc->prefixes[w++] = p;
			continue;
		}
		log_debug("listing of '%s': dropping common prefix '%s' (outside the prefix)",
		          prefix, p);
		free(p);
	}
	acc->nprefixes = w;
}

/* Where the next page of a truncated listing starts: the continuation token,
 * or, from a server that says IsTruncated without one, after the greatest key
 * or common prefix so far (StartAfter, as ListObjects v1 goes on from its
 * last key without a NextMarker).  -1 with e set when that makes no progress. */
static int list_next_page(struct s3_xml_list *acc, char **token, char **start_after, const char *w,
                          struct err *e)
{
	const char *last = acc->nobjs ? acc->objs[acc->nobjs - 1].key : NULL;
	char *dup;
	if (acc->next_token && *acc->next_token) {
		if (*token && !strcmp(*token, acc->next_token))
			return err_set(e, ERR_SERVER,
			               "%s: truncated listing without a new continuation token", w);
		free(*token);
		*token = acc->next_token;
		acc->next_token = NULL;
		free(*start_after);
		*start_after = NULL;
		return 0;
	}
	if (acc->nprefixes && (!last || strcmp(acc->prefixes[acc->nprefixes - 1], last) > 0))
		last = acc->prefixes[acc->nprefixes - 1];
	if (!last || (*start_after && strcmp(last, *start_after) <= 0))
		return err_set(e, ERR_SERVER,
		               "%s: truncated listing without a continuation token or new keys", w);
	if (!(dup = strdup(last)))
		return err_set(e, ERR_IO, "out of memory");
	free(*token);
	*token = NULL;
	free(*start_after);
	*start_after = dup;
	return 0;
}

int s3_list(struct s3 *s, const char *prefix, const char *delimiter, struct s3_object **objs,
            size_t *nobjs, char ***prefixes, size_t *nprefixes, struct err *e)
{
	struct s3_xml_list acc = {0};
	struct buf resp = BUF_INIT;
	char *token = NULL, *start_after = NULL, w[WHAT_MAX];
	int rc = -1;
	if (objs)
		*objs = NULL;
	if (nobjs)
		*nobjs = 0;
	if (prefixes)
		*prefixes = NULL;
	if (nprefixes)
		*nprefixes = 0;
	snprintf(w, sizeof(w), "ListObjectsV2 of bucket %s (prefix '%s')", s->cfg.bucket,
	         prefix ? prefix : "");
	for (;;) {
		struct sigv4_param params[5];
		struct req r = {.method = "GET", .params = params, .out = &resp, .what = w};
		size_t objs_from = acc.nobjs, prefixes_from = acc.nprefixes; /* this page's */
		params[r.nparams++] = (struct sigv4_param){"list-type", "2"};
		if (prefix && *prefix)
			params[r.nparams++] = (struct sigv4_param){"prefix", prefix};
		if (delimiter && *delimiter)
			params[r.nparams++] = (struct sigv4_param){"delimiter", delimiter};
		if (token)
			params[r.nparams++] = (struct sigv4_param){"continuation-token", token};
		if (start_after)
			params[r.nparams++] = (struct sigv4_param){"start-after", start_after};
		memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
		if (perform(s, &r, NULL, e))
			goto out;
		if (s3_xml_parse_list(resp.data, resp.len, &acc, e)) {
			err_prefix(e, "%s", w);
			goto out;
		}
		keep_prefixed(&acc, objs_from, prefixes_from, prefix);
		if (!acc.truncated)
			break;
		if (list_next_page(&acc, &token, &start_after, w, e))
			goto out;
	}
	if (objs) {
		*objs = acc.objs;
		*nobjs = acc.nobjs;
		acc.objs = NULL;
		acc.nobjs = 0;
	}
	if (prefixes) {
		*prefixes = acc.prefixes;
		*nprefixes = acc.nprefixes;
		acc.prefixes = NULL;
		acc.nprefixes = 0;
	}
	rc = 0;
out:
	s3_xml_list_free(&acc);
	free(token);
	free(start_after);
	buf_free(&resp);
	return rc;
}

/* ---------------------------------------------------------------- copy */

/* One copy request: CopyObject (upload_id NULL) or UploadPartCopy of
 * [off, off+len).  The answer is parsed even under a 200: a copy can fail
 * after the server has started answering. */
static int copy_request(struct s3 *s, const char *source, const char *if_match, const char *dst_key,
                        const char *upload_id, int number, uint64_t off, uint64_t len,
                        char etag[S3_ETAG_MAX], struct err *e)
{
	char num[16], range[64], w[WHAT_MAX], code[96] = "", msg[400] = "";
	struct sigv4_param params[] = {{"partNumber", num}, {"uploadId", upload_id}};
	struct buf resp = BUF_INIT;
	struct req r = {.method = "PUT", .key = dst_key, .out = &resp, .server_work = 1};
	int is_error = 0, rc = -1;

	if (upload_id) {
		snprintf(num, sizeof(num), "%d", number);
		snprintf(range, sizeof(range), "bytes=%llu-%llu", (unsigned long long)off,
		         (unsigned long long)(off + len - 1));
		r.params = params;
		r.nparams = 2;
		r.extra[r.nextra++] = (struct sigv4_header){"x-amz-copy-source-range", range};
		snprintf(w, sizeof(w), "UploadPartCopy %d of %s", number, dst_key);
	} else {
		snprintf(w, sizeof(w), "CopyObject to %s", dst_key);
	}
	r.what = w;
	memcpy(r.payload_sha, SIGV4_EMPTY_SHA256, 65);
	r.extra[r.nextra++] = (struct sigv4_header){"x-amz-copy-source", source};
	if (if_match && *if_match)
		r.extra[r.nextra++] = (struct sigv4_header){"x-amz-copy-source-if-match", if_match};
	if (perform(s, &r, NULL, e))
		goto out;
	if (s3_xml_parse_copy(resp.data, resp.len,
	                      upload_id ? "CopyPartResult" : "CopyObjectResult", etag, &is_error,
	                      code, sizeof(code), msg, sizeof(msg), e)) {
		if (is_error)
			err_set(e, ERR_SERVER, "%s: %s: %s", w, code, msg);
		else
			err_prefix(e, "%s", w);
		goto out;
	}
	rc = 0;
out:
	buf_free(&resp);
	return rc;
}

/* Parts of UploadPartCopy: large enough that 10,000 of them reach 5 TiB. */
#define COPY_PART_SIZE (1024ull * 1024 * 1024)

static int copy_multipart(struct s3 *s, const char *source, const char *if_match, uint64_t size,
                          const char *dst_key, char etag[S3_ETAG_MAX], struct err *e)
{
	struct s3_part *parts = NULL;
	char *upload_id = NULL;
	size_t nparts = (size_t)((size + COPY_PART_SIZE - 1) / COPY_PART_SIZE);
	int rc = -1;

	parts = calloc(nparts, sizeof(*parts));
	if (!parts) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (s3_mpu_create(s, dst_key, "application/octet-stream", &upload_id, e))
		goto out;
	for (size_t i = 0; i < nparts; i++) {
		uint64_t off = i * COPY_PART_SIZE;
		uint64_t len = size - off < COPY_PART_SIZE ? size - off : COPY_PART_SIZE;
		parts[i].number = (int)i + 1;
		if (copy_request(s, source, if_match, dst_key, upload_id, (int)i + 1, off, len,
		                 parts[i].etag, e))
			goto out;
		if (!parts[i].etag[0]) {
			err_set(e, ERR_SERVER, "UploadPartCopy %zu of %s: the server sent no ETag",
			        i + 1, dst_key);
			goto out;
		}
	}
	if (s3_mpu_complete(s, dst_key, upload_id, parts, nparts, etag, e))
		goto out;
	free(upload_id);
	upload_id = NULL;
	rc = 0;
out:
	if (upload_id) {
		struct err ae = {0};
		if (s3_mpu_abort(s, dst_key, upload_id, &ae))
			log_warn("could not abort the copy upload to %s: %s", dst_key, ae.msg);
	}
	free(upload_id);
	free(parts);
	return rc;
}

int s3_copy(struct s3 *s, const char *src_key, const char *if_match, uint64_t size, int in_parts,
            const char *dst_key, char etag_out[S3_ETAG_MAX], struct err *e)
{
	struct buf source = BUF_INIT;
	struct s3_object obj = {0};
	char etag[S3_ETAG_MAX] = "";
	int rc = -1;

	if (buf_append(&source, "/", 1) ||
	    sigv4_uri_encode(&source, s->cfg.bucket, strlen(s->cfg.bucket), 0) ||
	    buf_append(&source, "/", 1) || sigv4_uri_encode(&source, src_key, strlen(src_key), 1)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	if (size > S3_COPY_MAX_SINGLE || (in_parts && size > 0)
	            ? copy_multipart(s, source.data, if_match, size, dst_key, etag, e)
	            : copy_request(s, source.data, if_match, dst_key, NULL, 0, 0, 0, etag, e)) {
		err_prefix(e, "copying %s to %s", src_key, dst_key);
		goto out;
	}
	/* The ETag readers will see is the HEAD's: some servers leave it out of
	 * the answer, others quote it differently. */
	if (s3_head(s, dst_key, &obj, e)) {
		err_prefix(e, "copying %s to %s: reading the copy back", src_key, dst_key);
		goto out;
	}
	if (obj.size != size || !obj.etag[0]) {
		rc = err_set(e, ERR_SERVER,
		             "copying %s to %s: the copy has %llu bytes and ETag '%s' (%llu "
		             "bytes expected)",
		             src_key, dst_key, (unsigned long long)obj.size, obj.etag,
		             (unsigned long long)size);
		goto out;
	}
	copy_etag(etag_out, obj.etag);
	rc = 0;
out:
	free(obj.key);
	buf_free(&source);
	return rc;
}
