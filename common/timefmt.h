#ifndef IMGSTORE_COMMON_TIMEFMT_H
#define IMGSTORE_COMMON_TIMEFMT_H

#include <time.h>

/* "2024-12-20T10:00:00Z" into out (at least 21 bytes). */
void time_format_rfc3339(time_t t, char *out);
/* Parse RFC 3339 / ISO 8601 UTC ("...Z", optional fraction, or +00:00 offsets). */
int time_parse_rfc3339(const char *s, time_t *out);
/* Monotonic seconds, for timeouts and rates. */
double time_mono(void);
/* CPU seconds this process has used (all threads), for the benchmarks. */
double time_cpu(void);
/* The time `seconds` from now on `clock`, for pthread_cond_timedwait (the
 * clock the condition variable was made with). */
void time_deadline(clockid_t clock, double seconds, struct timespec *ts);

#endif
