#ifndef IMGSTORE_COMMON_HEX_H
#define IMGSTORE_COMMON_HEX_H

#include <stddef.h>

/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void hex_encode(const unsigned char *in, size_t n, char *out);
/* Parse exactly 2n hex digits (either case) into n bytes; 0 or -1. */
int hex_decode(const char *in, size_t n, unsigned char *out);
/* 1 when s is exactly `digits` lower-case hex digits. */
int hex_is_lower(const char *s, size_t digits);

#endif
