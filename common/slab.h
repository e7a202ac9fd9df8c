/* Fixed-size buffers carved out of one private anonymous mapping.
 *
 * For buffers of one size that are taken and given back all the time by
 * different threads (imgfs's 1 MiB block buffers): from malloc, glibc spread
 * them over its per-thread arenas and kept the freed ones there, fragmented
 * among smaller chunks, so a full-cache mount's heap grew to twice the
 * memory in use.  A slab's pages are touched once, then reused; it never
 * holds more than `count` buffers.
 *
 * Not thread-safe: the owner locks.  Under AddressSanitizer a buffer is
 * poisoned while it is free, as freed heap memory would be. */
#ifndef IMGSTORE_COMMON_SLAB_H
#define IMGSTORE_COMMON_SLAB_H

#include <stddef.h>

struct slab {
	unsigned char *base;
	size_t len;   /* of one buffer */
	size_t count; /* buffers in the mapping */
	size_t fresh; /* buffers base[0 .. fresh) have been handed out at least once */
	void *free;   /* given back, linked through their first bytes */
	size_t nfree;
};

/* 0, or -1 when the mapping fails (the slab is then empty: slab_get gives
 * NULL).  len is rounded up to a multiple of the pointer size. */
int slab_init(struct slab *s, size_t len, size_t count);
/* A buffer of s->len bytes (contents undefined), or NULL when all are out. */
void *slab_get(struct slab *s);
/* 1: p is a buffer of the slab (as slab_get gave it) and is back in it;
 * 0: it is not (free it). */
int slab_put(struct slab *s, void *p);
/* Buffers handed out and not given back. */
size_t slab_used(const struct slab *s);
void slab_destroy(struct slab *s);

#endif
