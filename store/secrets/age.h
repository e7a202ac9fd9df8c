/* age (age-encryption.org/v1) on OpenSSL 3: X25519 recipients only.
 *
 * Enough of age for SOPS: the `enc` field of a `sops.age[]` entry is an
 * ASCII-armored age file whose payload is the 32-byte SOPS data key.
 *
 *   decrypt: identity file ("AGE-SECRET-KEY-1...") -> X25519 stanza -> file key
 *            -> header MAC (HMAC-SHA-256) -> STREAM payload (ChaCha20-Poly1305)
 *   encrypt: recipients ("age1...") -> one X25519 stanza each -> armored or binary file
 *
 * Not supported: scrypt (passphrase) files, plugin and SSH identities, the
 * post-quantum hybrid type.  Unknown stanza types are skipped, as the spec asks.
 *
 * Secrets (identities, file keys, plaintexts) live only in memory and are
 * wiped (OPENSSL_cleanse) before release; no error message contains one. */
#ifndef IMGSTORE_STORE_AGE_H
#define IMGSTORE_STORE_AGE_H

#include "common/buf.h"
#include "common/err.h"

#include <stddef.h>

#define AGE_X25519_LEN    32
#define AGE_RECIPIENT_MAX 80 /* "age1" + 58 chars + NUL, with room to spare */
#define AGE_IDENTITY_MAX  80 /* "AGE-SECRET-KEY-1" + 58 chars + NUL */

struct age_identity {
	unsigned char secret[AGE_X25519_LEN]; /* secret scalar: wiped on free */
	unsigned char pub[AGE_X25519_LEN];    /* X25519(secret, basepoint) */
};

struct age_identities {
	struct age_identity *v;
	size_t n;
};

/* Parse an identity file's text: one "AGE-SECRET-KEY-1..." per line, blank
 * lines and "#" comments ignored.  `source` names the file in messages.
 * Identities are appended to ids (so several sources can be combined).
 * Any other non-comment line is an error (ERR_INVALID, naming the line number
 * but never its content). */
int age_identities_parse(struct age_identities *ids, const char *text, size_t len,
                         const char *source, struct err *e);
/* Read and parse an identity file; ERR_NOTFOUND when it does not exist. */
int age_identities_load(struct age_identities *ids, const char *path, struct err *e);
void age_identities_free(struct age_identities *ids);
/* Comma-separated recipients ("age1...") of the identities, for messages. */
int age_identities_describe(const struct age_identities *ids, struct buf *out);

/* "age1..." <-> 32-byte X25519 public key (Bech32, HRP "age"). */
int age_recipient_parse(const char *s, unsigned char pub[AGE_X25519_LEN], struct err *e);
void age_recipient_format(const unsigned char pub[AGE_X25519_LEN], char out[AGE_RECIPIENT_MAX]);
/* A fresh identity: "AGE-SECRET-KEY-1..." and its "age1..." recipient.
 * identity_out is a secret: wipe it with OPENSSL_cleanse after use. */
int age_keygen(char identity_out[AGE_IDENTITY_MAX], char recipient_out[AGE_RECIPIENT_MAX],
               struct err *e);

/* Decrypt an age file (armored or binary, detected) with any of the
 * identities.  The plaintext is appended to out (wipe it with
 * buf_free_secure).  Errors: ERR_AUTH when no identity matches a stanza;
 * ERR_INVALID for a malformed file, a bad header MAC or a corrupt payload. */
int age_decrypt(const struct age_identities *ids, const void *in, size_t inlen, struct buf *out,
                struct err *e);

/* Encrypt to one or more "age1..." recipients; armor != 0 gives the ASCII
 * armor ("-----BEGIN AGE ENCRYPTED FILE-----"), else the binary format. */
int age_encrypt(const char *const *recipients, size_t nrecipients, const void *in, size_t inlen,
                int armor, struct buf *out, struct err *e);

/* Base64 helpers shared with sops.c.  Standard alphabet (RFC 4648 section 4).
 * padded != 0: "=" padding required (SOPS, age armor); else no padding (age
 * header).  Decoding is canonical: non-zero trailing bits, stray characters
 * and wrong padding are rejected.  Returns 0 or -1; *outlen gets the length. */
size_t age_b64_decoded_max(size_t inlen);
int age_b64_decode(const char *in, size_t inlen, int padded, unsigned char *out, size_t *outlen);
int age_b64_encode(const unsigned char *in, size_t inlen, int padded, struct buf *out);

#endif
