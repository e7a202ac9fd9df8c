/* A small S3 client on libcurl: path-style addressing, SigV4 signing,
 * bounded retries.  One `struct s3` is one connection (one curl easy
 * handle, reused across requests): it is NOT thread-safe.  Threads that work
 * in parallel each open their own from the same `struct s3_config`. */
#ifndef IMGSTORE_STORE_S3_H
#define IMGSTORE_STORE_S3_H

#include "common/err.h"
#include "store/s3/s3_types.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct s3_config {
	char *endpoint; /* "https://s3.example.com" or "http://127.0.0.1:8080" */
	char *bucket;
	char *access_key;           /* secret-ish: never logged */
	char *secret_key;           /* secret: never logged; inside `shared` when that is set */
	char *region;               /* default "us-east-1" */
	char *ca_bundle;            /* extra CA file, or NULL */
	char *session_token;        /* secret: STS/OIDC token, sent as X-Amz-Security-Token */
	double retry_budget_s;      /* total time one call may spend retrying; default 30 */
	int max_attempts;           /* per call; default 5 */
	double connect_timeout_s;   /* default 10 */
	double low_speed_timeout_s; /* abort a transfer stalled this long; default 30 */
	struct s3_secret *shared;   /* the one copy of the secret key, or NULL (see below) */
};

/* Fill defaults for fields left zero/NULL (region, timeouts). */
void s3_config_defaults(struct s3_config *cfg);
/* Deep copy / free (free wipes the secret).  The secret key of a config
 * that s3_config_share_secret() prepared is not copied: every copy (one per
 * connection, per reader, per pipeline) points to the same bytes, which the
 * last s3_config_free wipes.  A config built by hand gets its own copy. */
int s3_config_copy(struct s3_config *dst, const struct s3_config *src, struct err *e);
void s3_config_free(struct s3_config *cfg);
/* Move cfg->secret_key into one reference-counted heap copy (the string it
 * had is wiped and freed); a no-op when it is shared already or unset. */
int s3_config_share_secret(struct s3_config *cfg, struct err *e);

struct s3;

/* 1 when object bodies (PUT, UploadPart) go out as UNSIGNED-PAYLOAD: over
 * https, or with IMGSTORE_PAYLOAD_SIGNING=unsigned; =signed forces signing. */
int s3_payload_unsigned(const struct s3 *s);

/* s3_open copies cfg.  Environment overrides, for tests (a small budget
 * makes "server down" fail fast): IMGSTORE_RETRY_BUDGET (seconds),
 * IMGSTORE_MAX_ATTEMPTS, IMGSTORE_LOW_SPEED_TIMEOUT (seconds, >= 1).
 * Retries: 5xx, 429, 408, timeouts, resets and refused connections, with
 * exponential backoff and full jitter (never sooner than a Retry-After
 * header asks), at most max_attempts and within retry_budget_s; a GET that
 * made progress starts both afresh (a budget is for being stuck, not for a
 * long download).  Other 4xx are not retried.
 * Errors: 404 ERR_NOTFOUND, 401/403 ERR_AUTH, 412 ERR_PRECONDITION,
 * network and still-failing 5xx/429 ERR_NET, other answers ERR_SERVER;
 * e->http_status holds the status; the text carries S3's Code and Message,
 * and what to do: the region a 301/400 names (x-amz-bucket-region or
 * <Region>), the clock when the server's Date is off (RequestTimeTooSkewed). */
struct s3 *s3_open(const struct s3_config *cfg, struct err *e);
/* While *flag is non-zero (a signal handler sets it), requests on s stop
 * where they are and fail without a retry ("interrupted").  NULL: never. */
void s3_set_cancel(struct s3 *s, const volatile sig_atomic_t *flag);
/* Body bytes sent on s are added to *counter (shared by several
 * connections; a retried attempt takes its bytes back).  NULL: not counted. */
void s3_count_sent(struct s3 *s, _Atomic uint64_t *counter);
void s3_close(struct s3 *s);

/* HEAD: ERR_NOTFOUND when missing.  out->key is left NULL. */
int s3_head(struct s3 *s, const char *key, struct s3_object *out, struct err *e);

/* Streaming GET of [off, off+len) (len UINT64_MAX = to the end).  if_match
 * (an ETag with quotes) may be NULL; a changed object gives ERR_PRECONDITION.
 * The callback returns 0 to go on, non-zero to abort (error ERR_IO unless the
 * callback set e).  A retried GET resumes where the callback left off (with
 * If-Match on the first answer's ETag, so two versions are never mixed).  A
 * range that starts at or past the end delivers nothing and succeeds; an
 * answer with more than the range (a server that ignores Range) is read up
 * to the end of the range only. */
typedef int (*s3_sink_fn)(void *ud, const void *data, size_t n);
int s3_get(struct s3 *s, const char *key, uint64_t off, uint64_t len, const char *if_match,
           s3_sink_fn sink, void *ud, struct err *e);
/* GET a range into a caller buffer; *got = bytes received (short only at EOF). */
int s3_get_range(struct s3 *s, const char *key, uint64_t off, size_t len, const char *if_match,
                 void *buf, size_t *got, struct err *e);
/* Whole small object into a malloc'd, NUL-terminated buffer.  An object of
 * more than max bytes (by its Content-Length, or by what arrives) is not
 * read: ERR_INVALID, and the transfer stops. */
int s3_get_all(struct s3 *s, const char *key, size_t max, char **data, size_t *len,
               char etag[S3_ETAG_MAX], struct err *e);

/* PUT a buffer. etag_out may be NULL. */
int s3_put(struct s3 *s, const char *key, const void *data, size_t n, const char *content_type,
           char etag_out[S3_ETAG_MAX], struct err *e);

int s3_delete(struct s3 *s, const char *key, struct err *e);
/* DeleteObjects in batches of up to 1000 keys; fails if any key failed. */
int s3_delete_many(struct s3 *s, char *const *keys, size_t n, struct err *e);

/* Multipart upload (struct s3_part is in s3_types.h). */
int s3_mpu_create(struct s3 *s, const char *key, const char *content_type, char **upload_id,
                  struct err *e);
/* payload_sha: the body's SHA-256 in hex, when the caller has it (a signed
 * body needs it in the request's signature); NULL: computed here if needed
 * (s3_payload_unsigned() says whether bodies are signed at all). */
int s3_mpu_put_part(struct s3 *s, const char *key, const char *upload_id, int number,
                    const void *data, size_t n, const char *payload_sha, char etag_out[S3_ETAG_MAX],
                    struct err *e);
/* The part is n bytes of fd from offset, read (pread) as they are sent:
 * the file must not change meanwhile.  When bodies are signed
 * (!s3_payload_unsigned()), payload_sha is required: ERR_INVALID without it. */
int s3_mpu_put_part_file(struct s3 *s, const char *key, const char *upload_id, int number, int fd,
                         uint64_t offset, size_t n, const char *payload_sha,
                         char etag_out[S3_ETAG_MAX], struct err *e);
/* etag_out (may be NULL) is the ETag the Complete answer gave this upload;
 * only when the answer has none (radosgw 16.2's <ETag></ETag>, a retried
 * request) is it read back with HEAD. */
int s3_mpu_complete(struct s3 *s, const char *key, const char *upload_id,
                    const struct s3_part *parts, size_t nparts, char etag_out[S3_ETAG_MAX],
                    struct err *e);
int s3_mpu_abort(struct s3 *s, const char *key, const char *upload_id, struct err *e);

/* ListMultipartUploads under prefix (all pages). Free with s3_uploads_free. */
int s3_mpu_list(struct s3 *s, const char *prefix, struct s3_upload **out, size_t *n, struct err *e);

/* ListObjectsV2 (all pages). delimiter may be NULL; with one, common
 * prefixes come back in *prefixes. Free with s3_objects_free/s3_strings_free. */
int s3_list(struct s3 *s, const char *prefix, const char *delimiter, struct s3_object **objs,
            size_t *nobjs, char ***prefixes, size_t *nprefixes, struct err *e);

/* Server-side copy of src_key to dst_key in the same bucket (no bytes
 * travel): CopyObject, or UploadPartCopy in ranges when size (the source's,
 * from a HEAD) is above 5 GiB.  if_match (the source's ETag, quotes
 * included) may be NULL; a changed source gives ERR_PRECONDITION.  An
 * <Error> body under a 200 is a failure.  etag_out (may be NULL) receives
 * the copy's ETag, read back with a HEAD when the answer lacks it.
 * in_parts: copy with UploadPartCopy whatever the size, for a multipart
 * source: Swift's s3api lists a CopyObject copy of a multipart object with
 * the MD5 of its bytes but answers HEAD and If-Match with the source's
 * "...-N" ETag, so no one ETag names that copy; a copy in parts is a
 * multipart object like its source, with one ETag everywhere. */
#define S3_COPY_MAX_SINGLE (5ull * 1024 * 1024 * 1024)
int s3_copy(struct s3 *s, const char *src_key, const char *if_match, uint64_t size, int in_parts,
            const char *dst_key, char etag_out[S3_ETAG_MAX], struct err *e);

/* Counters for stats and tests (per connection). */
struct s3_stats {
	uint64_t requests;
	uint64_t retries;
	uint64_t bytes_in;
	uint64_t bytes_out;
};
void s3_get_stats(const struct s3 *s, struct s3_stats *out);

/* Call once per process before any thread opens a connection. */
int s3_global_init(struct err *e);
void s3_global_cleanup(void);

#endif
