/* AWS Signature Version 4 for S3, on OpenSSL (internal to store/).
 *
 * Hand-written rather than libcurl's CURLOPT_AWS_SIGV4: the curl 7.88 that
 * Debian 12 ships sends no x-amz-content-sha256 header (Swift's s3api rejects
 * the request), neither sorts nor encodes query parameters (ListObjectsV2
 * continuation tokens hold '+', '/', '='), and signs `?uploads` as `uploads`
 * instead of `uploads=`.  Those were fixed in curl 8.0-8.9.
 *
 * The pieces are exposed one by one so that tests can feed the exact inputs
 * of published examples (canonical request, string to sign, signature). */
#ifndef IMGSTORE_STORE_SIGV4_H
#define IMGSTORE_STORE_SIGV4_H

#include "common/buf.h"

#include <stddef.h>

/* SHA-256 of the empty string, the payload hash of GET/HEAD/DELETE. */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* x-amz-content-sha256 of a body that is not signed (the canonical request
 * carries this string instead of the hash) */
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

struct sigv4_header {
	const char *name; /* any case; lower-cased when signing */
	const char *value;
};

struct sigv4_param {
	const char *name;  /* raw (not encoded) */
	const char *value; /* raw; NULL for a valueless sub-resource (`?uploads`) */
};

/* Append the RFC 3986 encoding AWS wants: A-Z a-z 0-9 - _ . ~ stay, every
 * other byte becomes %XX (upper-case hex); '/' stays when keep_slash. */
int sigv4_uri_encode(struct buf *out, const char *s, size_t n, int keep_slash);

/* The canonical query string of params (raw names/values): each encoded,
 * valueless ones as `name=`, sorted by encoded name then value, joined by '&'.
 * When url_query is not NULL it receives the same string for the request URL,
 * where valueless parameters stay bare (`uploads`).  Either may be empty. */
int sigv4_query(const struct sigv4_param *p, size_t n, struct buf *canonical,
                struct buf *url_query);

/* Canonical request.  canonical_uri and canonical_query are already encoded.
 * Headers: names lower-cased, values trimmed with inner runs of spaces
 * collapsed, sorted by name.  signed_headers (may be NULL) receives the
 * `a;b;c` list.  Header names must be unique. */
int sigv4_canonical_request(const char *method, const char *canonical_uri,
                            const char *canonical_query, const struct sigv4_header *h, size_t nh,
                            const char *payload_sha256_hex, struct buf *out,
                            struct buf *signed_headers);

/* "AWS4-HMAC-SHA256\n<amz_date>\n<date>/<region>/<service>/aws4_request\n<hex sha256(creq)>" */
int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service,
                         const char *canonical_request, size_t creq_len, struct buf *out);

/* The signing key: HMAC chain over "AWS4"+secret, date (YYYYMMDD), region,
 * service, "aws4_request".  A secret: callers wipe it (OPENSSL_cleanse). */
int sigv4_signing_key(const char *secret_key, const char *date8, const char *region,
                      const char *service, unsigned char key[32]);

/* hex(HMAC-SHA256(key, string_to_sign)) into sig_hex (65 bytes). */
int sigv4_signature(const unsigned char key[32], const char *string_to_sign, size_t sts_len,
                    char sig_hex[65]);

/* "AWS4-HMAC-SHA256 Credential=<ak>/<date>/<region>/<service>/aws4_request,
 * SignedHeaders=<sh>, Signature=<sig>" appended to out. */
int sigv4_authorization(const char *access_key, const char *amz_date, const char *region,
                        const char *service, const char *signed_headers, const char *sig_hex,
                        struct buf *out);

/* "YYYYMMDDTHHMMSSZ" (17 bytes with the NUL) for t (UTC). */
void sigv4_amz_date(long long t, char out[17]);

#endif
