/* HTTPS downloads of source images: a streaming GET that resumes with Range
 * after a dropped connection, and the HEAD check of `validate`.  Redirects
 * are followed (https only); TLS is verified, --ca-bundle adds a CA. */
#ifndef IMGSTORE_SYNC_FETCH_H
#define IMGSTORE_SYNC_FETCH_H

#include "common/err.h"

#include <stddef.h>
#include <stdint.h>

struct fetch_opts {
	const char *url;
	const char *ca_bundle;      /* extra CA file, or NULL */
	int max_attempts;           /* attempts in a row without progress; default 5 */
	double connect_timeout_s;   /* default 15 */
	double low_speed_timeout_s; /* abort a transfer stalled this long; default 30 */
	double backoff_s;           /* first retry delay; default 0.5 (doubles) */
};

/* Gets the body in order, each byte once (also across resumes).  Return 0
 * to go on, -1 (with e set) to stop the download. */
typedef int (*fetch_sink_fn)(void *ud, const void *data, size_t n, struct err *e);
/* Told the total size when the server announces it (may not be called). */
typedef void (*fetch_size_fn)(void *ud, uint64_t total);

struct fetch_stats {
	uint64_t bytes; /* body bytes delivered */
	int resumes;    /* ranged re-requests after a drop */
	int attempts;   /* requests made */
	long status;    /* last HTTP status */
};

int fetch_get(const struct fetch_opts *o, fetch_sink_fn sink, fetch_size_fn on_size, void *ud,
              struct fetch_stats *stats, struct err *e);

/* HEAD (redirects followed): 0 with the final status in *status (2xx/3xx/4xx
 * all return 0) and the size when known (else UINT64_MAX); -1 when the server
 * could not be reached after retries. */
int fetch_head(const struct fetch_opts *o, long *status, uint64_t *size, struct err *e);

#endif
