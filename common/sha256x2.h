/* SHA-256 of two or three byte streams advanced together: the upload hashes
 * every byte twice (the whole-file checksum and the 1 MiB block map), three
 * times over plain HTTP (and its part's signed payload hash), and on a CPU
 * with the SHA extensions interleaved streams cost little more than one.
 *
 * Use common/hash.h for everything else; this is only for the hot path that
 * hashes the same (or equally long) data into two digests.
 *
 * The upload's use: one running state for the whole file, and for each block
 *
 *	struct sha256_state *whole = sha256_state_new();   (NULL: out of memory)
 *	for each block:
 *		sha256x2_block(whole, block, block_len, block_digest);
 *	sha256_final(whole, file_digest);
 *	sha256_state_free(whole);
 *
 * Any lengths work; the fastest case is a running state at a multiple of 64
 * bytes (1 MiB blocks), where both streams read the same 64-byte blocks and
 * share one message schedule (about 5% faster than two different streams).
 *
 * On x86-64 with SHA-NI and SSE4.1 the states are hashed by hand-written
 * code; elsewhere, or with IMGSTORE_SHA_NI=off in the environment, by
 * OpenSSL.  Both are decided once per process, at the first
 * sha256_state_new() or sha256_accelerated().  The digests are the same
 * either way.  A state is used by one thread at a time; different states are
 * independent.
 */
#ifndef IMGSTORE_COMMON_SHA256X2_H
#define IMGSTORE_COMMON_SHA256X2_H

#include <stddef.h>

struct sha256_state;

/* A fresh state (the hash of nothing so far); NULL on ENOMEM. */
struct sha256_state *sha256_state_new(void);
void sha256_state_free(struct sha256_state *s);

/* Feed n bytes to one state. */
void sha256_update(struct sha256_state *s, const void *p, size_t n);

/* Feed n bytes from pa to a and n bytes from pb to b (pa may equal pb; a and
 * b must be different states).  The states may be at any offsets. */
void sha256x2_update(struct sha256_state *a, const void *pa, struct sha256_state *b, const void *pb,
                     size_t n);

/* Write the digest and reset the state to fresh, for reuse. */
void sha256_final(struct sha256_state *s, unsigned char out[32]);

/* SHA-256 of the n bytes at p into out, feeding the same bytes to the running
 * state `run` in the same pass. */
void sha256x2_block(struct sha256_state *run, const void *p, size_t n, unsigned char out[32]);

/* The same, feeding the bytes to a second running state `part` too (a signed
 * upload's part, whose SHA-256 goes into its request's signature): three
 * digests of the same bytes in one pass, at about 1.5 times the cost of
 * sha256x2_block instead of 2.  run and part must be different states. */
void sha256x3_block(struct sha256_state *run, struct sha256_state *part, const void *p, size_t n,
                    unsigned char out[32]);

/* 1 when states are hashed with SHA-NI, 0 when by OpenSSL (for logs and tests). */
int sha256_accelerated(void);

#endif
