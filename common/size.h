/* Parsing of the SIZE and SECONDS arguments of CLI.md. */
#ifndef IMGSTORE_COMMON_SIZE_H
#define IMGSTORE_COMMON_SIZE_H

#include <stdint.h>

/* "10G", "512M", "4096", "1.5G": K/M/G/T are powers of 1024 (an optional
 * trailing "B" or "iB" is accepted).  Rejects garbage, negatives, overflow. */
int size_parse(const char *s, uint64_t *out);
/* A whole number of seconds in [min, max]. */
int seconds_parse(const char *s, long min, long max, long *out);
/* "1.5 GiB" style, into out (at least 16 bytes). */
void size_format(uint64_t n, char *out, unsigned outlen);

#endif
