#include "sync/fetch.h"

#include "sync/interrupt.h"

#include "common/log.h"
#include "common/timefmt.h"

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#ifndef IMGSTORE_VERSION
#define IMGSTORE_VERSION "0"
#endif

#define USER_AGENT "labctl/" IMGSTORE_VERSION

struct xfer {
	const struct fetch_opts *o;
	fetch_sink_fn sink;
	fetch_size_fn on_size;
	void *ud;
	struct err *e;
	int sink_failed;
	/* of the current response (reset on every status line: redirects) */
	long status;
	char etag[256];
	char last_modified[128];
	int have_range;
	uint64_t range_start;
	uint64_t content_length; /* UINT64_MAX when unknown */
	/* across attempts */
	uint64_t delivered; /* body bytes given to the sink */
	uint64_t skip;      /* bytes of a full 200 response to drop (server ignored Range) */
	uint64_t got_now;   /* bytes of body received in this attempt */
	char first_etag[256];
	char first_lm[128];
	int checked; /* the current response's headers were judged */
	int reject;  /* the current response cannot continue the download */
	char reject_msg[256];
};

static void trim_value(const char *v, size_t n, char *out, size_t cap)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
		n--;
	if (n >= cap)
		n = cap - 1;
	memcpy(out, v, n);
	out[n] = '\0';
}

static size_t on_header(char *data, size_t size, size_t nitems, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nitems;
	char val[256];
	if (n >= 5 && !strncmp(data, "HTTP/", 5)) {
		const char *sp = memchr(data, ' ', n);
		x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		x->etag[0] = x->last_modified[0] = '\0';
		x->have_range = 0;
		x->content_length = UINT64_MAX;
		return n;
	}
	if (n > 5 && !strncasecmp(data, "ETag:", 5)) {
		trim_value(data + 5, n - 5, x->etag, sizeof(x->etag));
	} else if (n > 14 && !strncasecmp(data, "Last-Modified:", 14)) {
		trim_value(data + 14, n - 14, x->last_modified, sizeof(x->last_modified));
	} else if (n > 15 && !strncasecmp(data, "Content-Length:", 15)) {
		trim_value(data + 15, n - 15, val, sizeof(val));
		x->content_length = strtoull(val, NULL, 10);
	} else if (n > 14 && !strncasecmp(data, "Content-Range:", 14)) {
		unsigned long long a;
		trim_value(data + 14, n - 14, val, sizeof(val));
		if (sscanf(val, "bytes %llu-", &a) == 1) {
			x->have_range = 1;
			x->range_start = a;
		}
	}
	return n;
}

/* Judge the final response before its first body byte. */
static void check_response(struct xfer *x)
{
	x->checked = 1;
	if (x->status == 206) {
		if (!x->have_range || x->range_start != x->delivered) {
			x->reject = 1;
			snprintf(x->reject_msg, sizeof(x->reject_msg),
			         "the server resumed at the wrong offset");
		}
		return;
	}
	if (x->status != 200)
		return; /* an HTTP error: the body is not the image */
	if (x->delivered == 0) {
		snprintf(x->first_etag, sizeof(x->first_etag), "%s", x->etag);
		snprintf(x->first_lm, sizeof(x->first_lm), "%s", x->last_modified);
		if (x->on_size && x->content_length != UINT64_MAX)
			x->on_size(x->ud, x->content_length);
		return;
	}
	/* a full response to a ranged re-request: the server ignores Range (fine:
	 * skip what we have) or the file changed (If-Range failed: give up) */
	if (strcmp(x->etag, x->first_etag) || strcmp(x->last_modified, x->first_lm)) {
		x->reject = 1;
		snprintf(x->reject_msg, sizeof(x->reject_msg),
		         "the source changed while it was downloaded");
		return;
	}
	x->skip = x->delivered;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;
	if (!x->checked)
		check_response(x);
	if (x->reject)
		return 0;
	if (x->status != 200 && x->status != 206)
		return n; /* error page: count nothing, the status decides */
	x->got_now += n;
	if (x->skip) {
		size_t k = x->skip < n ? (size_t)x->skip : n;
		x->skip -= k;
		data += k;
		n -= k;
		if (!n)
			return size * nmemb;
	}
	if (x->sink(x->ud, data, n, x->e)) {
		x->sink_failed = 1;
		return 0;
	}
	x->delivered += n;
	return size * nmemb;
}

struct ca_ctx {
	const char *extra;
};

static CURLcode add_ca(CURL *curl, void *sslctx, void *arg)
{
	X509_STORE *store = SSL_CTX_get_cert_store((SSL_CTX *)sslctx);
	(void)curl;
	if (!X509_STORE_load_file(store, ((struct ca_ctx *)arg)->extra))
		return CURLE_SSL_CACERT_BADFILE;
	return CURLE_OK;
}

/* SIGINT / SIGTERM: curl stops the download (not retried) */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)ud;
	(void)dt;
	(void)dn;
	(void)ut;
	(void)un;
	return interrupted() != 0;
}

static int setup(CURL *c, const struct fetch_opts *o, struct ca_ctx *ca, char *errbuf)
{
	const char *bundle = getenv("CURL_CA_BUNDLE");
	double ct = o->connect_timeout_s > 0 ? o->connect_timeout_s : 15;
	double ls = o->low_speed_timeout_s > 0 ? o->low_speed_timeout_s : 30;
	curl_easy_setopt(c, CURLOPT_URL, o->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, USER_AGENT);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(ct * 1000));
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(ls < 1 ? 1 : ls));
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (!bundle || !*bundle)
		bundle = getenv("SSL_CERT_FILE");
	if (bundle && *bundle && access(bundle, R_OK) == 0)
		curl_easy_setopt(c, CURLOPT_CAINFO, bundle);
	if (o->ca_bundle) {
		ca->extra = o->ca_bundle;
		curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, add_ca);
		curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, ca);
	}
	return 0;
}

static int check_ca(const struct fetch_opts *o, struct err *e)
{
	if (o->ca_bundle && access(o->ca_bundle, R_OK))
		return err_errno(e, "--ca-bundle %s", o->ca_bundle);
	return 0;
}

static int retryable_curl(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR: return 1;
	default: return 0;
	}
}

static int retryable_status(long s)
{
	return s == 408 || s == 429 || s >= 500;
}

static enum err_code status_code(long s)
{
	if (s == 404 || s == 410)
		return ERR_NOTFOUND;
	if (s == 401 || s == 403)
		return ERR_AUTH;
	return ERR_NET;
}

static void backoff(const struct fetch_opts *o, int failures)
{
	double base = o->backoff_s > 0 ? o->backoff_s : 0.5;
	double d = base * (1 << (failures > 6 ? 6 : failures - 1));
	struct timespec ts;
	d *= 0.75 + 0.5 * ((double)rand() / RAND_MAX); /* jitter */
	ts.tv_sec = (time_t)d;
	ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

int fetch_get(const struct fetch_opts *o, fetch_sink_fn sink, fetch_size_fn on_size, void *ud,
              struct fetch_stats *stats, struct err *e)
{
	struct xfer x = {0};
	struct ca_ctx ca = {0};
	char errbuf[CURL_ERROR_SIZE];
	int max_attempts = o->max_attempts > 0 ? o->max_attempts : 5;
	int failures = 0, attempts = 0, resumes = 0, rc = -1;
	CURL *c;

	if (check_ca(o, e))
		return -1;
	c = curl_easy_init();
	if (!c)
		return err_set(e, ERR_IO, "out of memory");
	x.o = o;
	x.sink = sink;
	x.on_size = on_size;
	x.ud = ud;
	x.e = e;
	setup(c, o, &ca, errbuf);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 256L * 1024);
	for (;;) {
		struct curl_slist *hdrs = NULL;
		char range[64], ifrange[300];
		CURLcode cc;
		uint64_t before = x.delivered;
		errbuf[0] = '\0';
		x.checked = x.reject = 0;
		x.got_now = 0;
		x.skip = 0;
		x.status = 0;
		if (x.delivered) {
			snprintf(range, sizeof(range), "%llu-", (unsigned long long)x.delivered);
			curl_easy_setopt(c, CURLOPT_RANGE, range);
			/* If-Range: only a strong validator (else the server would send 200 anyway)
			 */
			if (x.first_etag[0] && strncmp(x.first_etag, "W/", 2))
				snprintf(ifrange, sizeof(ifrange), "If-Range: %s", x.first_etag);
			else if (x.first_lm[0])
				snprintf(ifrange, sizeof(ifrange), "If-Range: %s", x.first_lm);
			else
				ifrange[0] = '\0';
			if (ifrange[0])
				hdrs = curl_slist_append(NULL, ifrange);
			curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
			resumes++;
			log_info("%s: connection lost after %llu bytes; resuming", o->url,
			         (unsigned long long)x.delivered);
		}
		attempts++;
		cc = curl_easy_perform(c);
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
		curl_slist_free_all(hdrs);
		if (x.sink_failed)
			goto out; /* e set by the sink */
		if (x.reject) {
			err_set(e, ERR_NET, "downloading %s: %s", o->url, x.reject_msg);
			goto out;
		}
		if (cc == CURLE_OK && (x.status == 200 || x.status == 206)) {
			if (x.skip) {
				err_set(e, ERR_NET, "downloading %s: the body ended early", o->url);
				goto out;
			}
			rc = 0;
			goto out;
		}
		if (x.delivered > before)
			failures = 0; /* progress: a drop, not a dead server */
		failures++;
		if (cc == CURLE_OK) {
			if (!retryable_status(x.status) || failures >= max_attempts) {
				err_set(e, status_code(x.status), "downloading %s: HTTP %ld%s",
				        o->url, x.status,
				        x.status == 404
				                ? " (not found: check the URL in the manifest)"
				                : "");
				if (e)
					e->http_status = (int)x.status;
				goto out;
			}
		} else if (!retryable_curl(cc) || failures >= max_attempts) {
			err_set(e, ERR_NET, "downloading %s: %s%s", o->url,
			        errbuf[0] ? errbuf : curl_easy_strerror(cc),
			        failures >= max_attempts ? " (gave up after retries)" : "");
			goto out;
		}
		log_debug("%s: attempt %d failed (%s, HTTP %ld); retrying", o->url, attempts,
		          errbuf[0] ? errbuf : curl_easy_strerror(cc), x.status);
		backoff(o, failures);
	}
out:
	if (stats) {
		stats->bytes = x.delivered;
		stats->resumes = resumes;
		stats->attempts = attempts;
		stats->status = x.status;
	}
	curl_easy_cleanup(c);
	return rc;
}

static size_t discard(char *d, size_t s, size_t n, void *u)
{
	(void)d;
	(void)u;
	return s * n;
}

int fetch_head(const struct fetch_opts *o, long *status, uint64_t *size, struct err *e)
{
	struct ca_ctx ca = {0};
	char errbuf[CURL_ERROR_SIZE];
	int max_attempts = o->max_attempts > 0 ? o->max_attempts : 3;
	int rc = -1;
	CURL *c;
	if (check_ca(o, e))
		return -1;
	c = curl_easy_init();
	if (!c)
		return err_set(e, ERR_IO, "out of memory");
	setup(c, o, &ca, errbuf);
	curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	for (int attempt = 1;; attempt++) {
		CURLcode cc;
		curl_off_t len = -1;
		errbuf[0] = '\0';
		cc = curl_easy_perform(c);
		if (cc == CURLE_OK) {
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
			if (retryable_status(*status) && attempt < max_attempts) {
				backoff(o, attempt);
				continue;
			}
			curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
			*size = len >= 0 ? (uint64_t)len : UINT64_MAX;
			rc = 0;
			break;
		}
		if (!retryable_curl(cc) || attempt >= max_attempts) {
			err_set(e, ERR_NET, "%s: %s", o->url,
			        errbuf[0] ? errbuf : curl_easy_strerror(cc));
			break;
		}
		backoff(o, attempt);
	}
	curl_easy_cleanup(c);
	return rc;
}
