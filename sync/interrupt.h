/* SIGINT / SIGTERM during sync and upload: the handler only records the
 * signal; the transfer loops (and curl, through its progress callback and
 * s3_set_cancel) see the flag, stop, abort the multipart uploads in flight
 * and leave every image as it was; the command then exits 128 + signal. */
#ifndef IMGSTORE_SYNC_INTERRUPT_H
#define IMGSTORE_SYNC_INTERRUPT_H

#include <signal.h>

/* Catch SIGINT and SIGTERM (no SA_RESTART: a blocking read returns EINTR). */
void interrupt_install(void);
/* The signal caught, or 0. */
int interrupted(void);
/* The flag itself, for s3_set_cancel(). */
const volatile sig_atomic_t *interrupt_flag(void);
/* The exit status for the signal caught: 130 (SIGINT), 143 (SIGTERM). */
int interrupt_status(void);

#endif
