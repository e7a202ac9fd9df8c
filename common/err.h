/* One error convention for all of imgstore.
 *
 * A function that can fail returns 0 on success and -1 on failure, and fills
 * the `struct err *` passed as its last argument (which may be NULL when the
 * caller does not care why).  The message names what failed and, when it
 * helps, what to do about it.  Callers add context on the way up with
 * err_prefix(), so the final text reads "uploading x.qcow2: PUT ...: 403 ...".
 *
 * Messages must never contain secrets: pass keys, tokens and decrypted values
 * to no err_* function. */
#ifndef IMGSTORE_COMMON_ERR_H
#define IMGSTORE_COMMON_ERR_H

#include <stdarg.h>

enum err_code {
	ERR_OK = 0,
	ERR_USAGE,        /* bad command line: exit 2 */
	ERR_INVALID,      /* bad input file (manifest, record, SOPS): exit 2 */
	ERR_IO,           /* local I/O, out of memory */
	ERR_NET,          /* network, timeout, 5xx after retries */
	ERR_AUTH,         /* 401/403, bad credentials */
	ERR_NOTFOUND,     /* 404, missing file or key */
	ERR_PRECONDITION, /* 412: the object changed under us (If-Match) */
	ERR_INTEGRITY,    /* checksum or MAC mismatch */
	ERR_SERVER,       /* other S3 error response */
};

#define ERR_MSG_MAX 1024

struct err {
	enum err_code code;
	int http_status; /* 0 unless the error came from an HTTP response */
	char msg[ERR_MSG_MAX];
};

/* Set code and message; always returns -1 so callers can `return err_set(...)`. */
int err_set(struct err *e, enum err_code code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
int err_vset(struct err *e, enum err_code code, const char *fmt, va_list ap);
/* Set from errno: "<what>: strerror(errno)", code ERR_IO (or ERR_NOTFOUND for ENOENT). */
int err_errno(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend context "<ctx>: " to the current message; returns -1. */
int err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void err_clear(struct err *e);
const char *err_code_name(enum err_code code);
/* The CLI exit code for an error: 2 for usage/invalid input, else 1. */
int err_exit_code(const struct err *e);

#endif
