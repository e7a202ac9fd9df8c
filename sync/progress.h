/* Progress of the transfers of one labctl run: on a terminal, a live line
 * per transfer (bytes, rate, ETA) redrawn in place; otherwise a plain log
 * line now and then.  Thread-safe. */
#ifndef IMGSTORE_SYNC_PROGRESS_H
#define IMGSTORE_SYNC_PROGRESS_H

#include <stdint.h>

struct progress;

/* total 0 when unknown. NULL only when out of memory (then calls are no-ops). */
struct progress *progress_start(const char *label, uint64_t total);
void progress_update(struct progress *p, uint64_t done);
/* Final line ("uploaded", "failed", ...), then the item leaves the display. */
void progress_end(struct progress *p, const char *status);
/* A log line that does not tear the live display. */
void progress_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "12.3 MB/s" style rate and "1m05s" style durations, into out (>= 16 bytes). */
void progress_rate(double bytes_per_s, char *out, unsigned outlen);
void progress_duration(double seconds, char *out, unsigned outlen);

#endif
