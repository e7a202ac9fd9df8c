/* Streaming SHA-256 / SHA-512 on OpenSSL EVP. */
#ifndef IMGSTORE_COMMON_HASH_H
#define IMGSTORE_COMMON_HASH_H

#include <stddef.h>

enum hash_alg { HASH_SHA256 = 0, HASH_SHA512 };

#define HASH_MAX_LEN 64
#define HASH_MAX_HEX (2 * HASH_MAX_LEN + 1)

struct hash;

struct hash *hash_new(enum hash_alg alg); /* NULL on ENOMEM */
void hash_update(struct hash *h, const void *data, size_t n);
/* Write the digest as lower-case hex into hex (HASH_MAX_HEX) and reset for reuse. */
void hash_final_hex(struct hash *h, char *hex);
/* Raw digest; returns its length. Resets for reuse. */
size_t hash_final(struct hash *h, unsigned char *out);
void hash_free(struct hash *h);

size_t hash_len(enum hash_alg alg);
const char *hash_alg_name(enum hash_alg alg); /* "sha256" */
int hash_alg_parse(const char *name, enum hash_alg *out);
/* One-shot SHA-256 to hex (65 bytes). */
void hash_sha256_hex(const void *data, size_t n, char *hex);
void hash_sha256(const void *data, size_t n, unsigned char out[32]);

/* "sha256:<hex>" -> alg + hex (lower-cased); 0 or -1 when malformed. */
int hash_checksum_parse(const char *s, enum hash_alg *alg, char *hex);

#endif
