/* AWS Signature Version 4 (see sigv4.h for why this is not CURLOPT_AWS_SIGV4). */
#include "store/s3/sigv4.h"

#include "common/hex.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '~';
}

int sigv4_uri_encode(struct buf *out, const char *s, size_t n, int keep_slash)
{
	static const char hx[] = "0123456789ABCDEF";
	size_t i, run;
	if (buf_reserve(out, n))
		return -1;
	for (i = 0; i < n;) {
		/* copy runs of bytes that need no escaping in one go */
		for (run = i; run < n &&
		              (unreserved((unsigned char)s[run]) || (keep_slash && s[run] == '/'));
		     run++)
			;
		if (run > i && buf_append(out, s + i, run - i))
			return -1;
		if (run >= n)
			break;
		unsigned char c = (unsigned char)s[run];
		char esc[3] = {'%', hx[c >> 4], hx[c & 15]};
		if (buf_append(out, esc, 3))
			return -1;
		i = run + 1;
	}
	return 0;
}

struct enc_param {
	char *name, *value; /* encoded; value NULL when valueless */
};

static int cmp_param(const void *a, const void *b)
{
	const struct enc_param *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	if (c)
		return c;
	return strcmp(x->value ? x->value : "", y->value ? y->value : "");
}

static char *encode_dup(const char *s)
{
	struct buf b = BUF_INIT;
	if (sigv4_uri_encode(&b, s, strlen(s), 0) || buf_append(&b, "", 0)) {
		buf_free(&b);
		return NULL;
	}
	return buf_steal(&b);
}

int sigv4_query(const struct sigv4_param *p, size_t n, struct buf *canonical, struct buf *url_query)
{
	struct enc_param *v = NULL;
	size_t i;
	int rc = -1;
	if (canonical && buf_append(canonical, "", 0))
		return -1;
	if (url_query && buf_append(url_query, "", 0))
		return -1;
	if (!n)
		return 0;
	v = calloc(n, sizeof(*v));
	if (!v)
		return -1;
	for (i = 0; i < n; i++) {
		v[i].name = encode_dup(p[i].name);
		v[i].value = p[i].value ? encode_dup(p[i].value) : NULL;
		if (!v[i].name || (p[i].value && !v[i].value))
			goto out;
	}
	qsort(v, n, sizeof(*v), cmp_param);
	for (i = 0; i < n; i++) {
		const char *sep = i ? "&" : "";
		const char *val = v[i].value ? v[i].value : "";
		if (canonical && buf_appendf(canonical, "%s%s=%s", sep, v[i].name, val))
			goto out;
		if (url_query &&
		    (v[i].value ? buf_appendf(url_query, "%s%s=%s", sep, v[i].name, val)
		                : buf_appendf(url_query, "%s%s", sep, v[i].name)))
			goto out;
	}
	rc = 0;
out:
	for (i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].value);
	}
	free(v);
	return rc;
}

struct canon_header {
	char *name;        /* lower-cased copy */
	const char *value; /* the caller's */
};

static int cmp_header(const void *a, const void *b)
{
	return strcmp(((const struct canon_header *)a)->name,
	              ((const struct canon_header *)b)->name);
}

/* value trimmed, runs of spaces/tabs collapsed to one space */
static int append_trimmed(struct buf *out, const char *v)
{
	int pending_space = 0, any = 0;
	for (; *v; v++) {
		if (*v == ' ' || *v == '\t') {
			pending_space = any;
			continue;
		}
		if (pending_space && buf_append(out, " ", 1))
			return -1;
		pending_space = 0;
		any = 1;
		if (buf_append(out, v, 1))
			return -1;
	}
	return 0;
}

int sigv4_canonical_request(const char *method, const char *canonical_uri,
                            const char *canonical_query, const struct sigv4_header *h, size_t nh,
                            const char *payload_sha256_hex, struct buf *out,
                            struct buf *signed_headers)
{
	struct canon_header *v = calloc(nh ? nh : 1, sizeof(*v));
	size_t i, j, mark;
	int rc = -1;
	if (!v)
		return -1;
	for (i = 0; i < nh; i++) {
		v[i].name = strdup(h[i].name);
		if (!v[i].name)
			goto out;
		for (j = 0; v[i].name[j]; j++)
			if (v[i].name[j] >= 'A' && v[i].name[j] <= 'Z')
				v[i].name[j] = (char)(v[i].name[j] - 'A' + 'a');
		v[i].value = h[i].value ? h[i].value : "";
	}
	qsort(v, nh, sizeof(*v), cmp_header);
	if (buf_appendf(out, "%s\n%s\n%s\n", method, canonical_uri,
	                canonical_query ? canonical_query : ""))
		goto out;
	for (i = 0; i < nh; i++)
		if (buf_appendf(out, "%s:", v[i].name) || append_trimmed(out, v[i].value) ||
		    buf_append(out, "\n", 1))
			goto out;
	if (buf_append(out, "\n", 1))
		goto out;
	mark = out->len;
	for (i = 0; i < nh; i++)
		if (buf_appendf(out, "%s%s", i ? ";" : "", v[i].name))
			goto out;
	if (signed_headers && buf_append(signed_headers, out->data + mark, out->len - mark))
		goto out;
	if (buf_appendf(out, "\n%s", payload_sha256_hex))
		goto out;
	rc = 0;
out:
	for (i = 0; i < nh; i++)
		free(v[i].name);
	free(v);
	return rc;
}

int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service,
                         const char *canonical_request, size_t creq_len, struct buf *out)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	char hex[2 * SHA256_DIGEST_LENGTH + 1];
	if (strlen(amz_date) < 8)
		return -1;
	if (!EVP_Digest(canonical_request, creq_len, md, NULL, EVP_sha256(), NULL))
		return -1;
	hex_encode(md, sizeof(md), hex);
	return buf_appendf(out, "AWS4-HMAC-SHA256\n%s\n%.8s/%s/%s/aws4_request\n%s", amz_date,
	                   amz_date, region, service, hex);
}

static int hmac(const void *key, size_t klen, const void *data, size_t n, unsigned char out[32])
{
	unsigned int len = 32;
	return HMAC(EVP_sha256(), key, (int)klen, data, n, out, &len) && len == 32 ? 0 : -1;
}

int sigv4_signing_key(const char *secret_key, const char *date8, const char *region,
                      const char *service, unsigned char key[32])
{
	struct buf k = BUF_INIT;
	unsigned char a[32], b[32];
	int rc = -1;
	if (buf_appendf(&k, "AWS4%s", secret_key))
		goto out;
	if (hmac(k.data, k.len, date8, 8, a) || hmac(a, 32, region, strlen(region), b) ||
	    hmac(b, 32, service, strlen(service), a) || hmac(a, 32, "aws4_request", 12, key))
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(a, sizeof(a));
	OPENSSL_cleanse(b, sizeof(b));
	buf_free_secure(&k);
	return rc;
}

int sigv4_signature(const unsigned char key[32], const char *string_to_sign, size_t sts_len,
                    char sig_hex[65])
{
	unsigned char md[32];
	if (hmac(key, 32, string_to_sign, sts_len, md))
		return -1;
	hex_encode(md, sizeof(md), sig_hex);
	return 0;
}

int sigv4_authorization(const char *access_key, const char *amz_date, const char *region,
                        const char *service, const char *signed_headers, const char *sig_hex,
                        struct buf *out)
{
	return buf_appendf(out,
	                   "AWS4-HMAC-SHA256 Credential=%s/%.8s/%s/%s/aws4_request, "
	                   "SignedHeaders=%s, Signature=%s",
	                   access_key, amz_date, region, service, signed_headers, sig_hex);
}

void sigv4_amz_date(long long t, char out[17])
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}
