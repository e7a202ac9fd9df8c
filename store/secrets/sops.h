/* SOPS-encrypted YAML (and JSON, which is YAML too): decryption with the MAC
 * check exactly as sops does it, and an encryptor whose files sops accepts.
 *
 * The algorithm is the one in tests/data/sops/README.md:
 *   - metadata: the top-level `sops` map of the first document;
 *   - data key (32 bytes): from any `sops.age[]` entry (our age.c with an
 *     X25519 identity file) or any `sops.pgp[]` entry (`gpg --decrypt`, run
 *     with an argument vector and no shell, the armored message on stdin);
 *   - values: ENC[AES256_GCM,data:,iv:,tag:,type:] with a 32-byte IV, the
 *     key path "a:b:c:" as AAD (list items add nothing), types
 *     str/int/float/bool/bytes/time;
 *   - which leaves are encrypted: unencrypted_suffix (default "_unencrypted"),
 *     encrypted_suffix, unencrypted_regex, encrypted_regex, tested against
 *     every key on the path;
 *   - MAC: SHA-512 over every non-null leaf in file order (sops' ToBytes),
 *     upper-case hex, compared with sops.mac decrypted with AAD lastmodified.
 *     A missing or wrong MAC refuses the file.
 *
 * Not supported (clear errors): Shamir key groups (more than one group),
 * cloud KMS keys alone, *_comment_regex rules, INI and dotenv files, YAML
 * aliases (*name) in the data (sops expands them when it writes a file).
 *
 * Decrypted values and the data key live only in memory and are wiped
 * (OPENSSL_cleanse) when freed.  No message names a value or a key. */
#ifndef IMGSTORE_STORE_SOPS_H
#define IMGSTORE_STORE_SOPS_H

#include "common/buf.h"
#include "common/err.h"

#include <stddef.h>
#include <time.h>

#define SOPS_DATA_KEY_LEN 32
#define SOPS_VERSION      "3.9.0" /* what the encryptor writes */

/* A parsed SOPS file (YAML tree + metadata), not yet decrypted. */
struct sops_file;

/* Parse text / a file.  `name` names the file in messages.  ERR_INVALID when
 * the text is not YAML, has no `sops` metadata, or uses what we do not
 * support; ERR_NOTFOUND / ERR_IO for a file that cannot be read. */
int sops_parse(const char *text, size_t len, const char *name, struct sops_file **out,
               struct err *e);
int sops_load(const char *path, struct sops_file **out, struct err *e);
void sops_file_free(struct sops_file *f);

/* The recipients in the metadata, for messages: "age1..., age1..." and
 * "FPR, FPR" (empty strings when none).  Pointers valid until free. */
const char *sops_file_age_recipients(const struct sops_file *f);
const char *sops_file_pgp_fingerprints(const struct sops_file *f);
const char *sops_file_lastmodified(const struct sops_file *f);

/* Where the data key may come from. */
struct sops_keys {
	const char *age_key_file; /* identity file (--sops-age-key-file / SOPS_AGE_KEY_FILE) */
	const char *age_key_text; /* identities as text (env SOPS_AGE_KEY); may be NULL */
	int no_gpg;               /* 1: do not try the sops.pgp[] entries */
	const char *gpg;          /* gpg program; NULL: env SOPS_GPG_EXEC, else "gpg" */
};

/* Find the data key: age entries first (no prompts), then PGP through gpg.
 * `used` (may be NULL) gets "age:age1..." or "pgp:FPR" of the entry that
 * opened it.  ERR_AUTH when no entry could be decrypted: the message lists the
 * file's recipients, the identity file tried and gpg's summarized stderr. */
int sops_data_key(const struct sops_file *f, const struct sops_keys *k,
                  unsigned char key[SOPS_DATA_KEY_LEN], char *used, size_t usedlen, struct err *e);

/* One decrypted leaf, in file order. */
struct sops_leaf {
	char *aad;        /* the key path as SOPS' AAD: "a:b:c:" */
	char *value;      /* plaintext (NUL-terminated; secret, wiped on free) */
	size_t value_len; /* bytes in value ("bytes" values may hold NULs) */
	char type[8];     /* ENC type ("str", "int", ...); "" for a leaf stored in the clear */
	int encrypted; /* 1 when the leaf is encrypted in the file (or is "" where it would be) */
	int in_list;   /* 1 when the leaf is (inside) a list item */
	int depth;     /* number of map keys on its path (1 = top level) */
};

struct sops_tree {
	struct sops_leaf *leaves;
	size_t n;
	/* Encrypted comments (SOPS_COMMENTS): aad = path of the enclosing map or
	 * list, value = the comment text, type "comment". */
	struct sops_leaf *comments;
	size_t ncomments;
	char mac[129];        /* the verified MAC (upper-case hex) */
	char key_source[160]; /* "age:age1..." / "pgp:FPR" / "" when a key was given */
};

/* Flags for sops_decrypt. */
#define SOPS_COMMENTS 1u /* also decrypt "#ENC[...]" comment lines (best effort placement) */

/* Decrypt every leaf with the data key and verify the MAC.  ERR_INVALID when a
 * value does not decrypt or the MAC is missing or wrong (nothing is returned
 * then).  Free with sops_tree_free. */
int sops_decrypt(const struct sops_file *f, const unsigned char key[SOPS_DATA_KEY_LEN],
                 unsigned flags, struct sops_tree *out, struct err *e);
/* sops_load + sops_data_key + sops_decrypt; errors are prefixed with the file
 * name and the failing step. */
int sops_decrypt_file(const char *path, const struct sops_keys *k, unsigned flags,
                      struct sops_tree *out, struct err *e);
void sops_tree_free(struct sops_tree *t);
/* A top-level scalar ("access_key"), or NULL when absent, not a scalar, or null. */
const struct sops_leaf *sops_tree_get(const struct sops_tree *t, const char *key);

/* Encrypt a plaintext YAML document (maps, lists and scalars; no `sops` key)
 * for age recipients and/or PGP fingerprints.  Writes a SOPS file (version
 * SOPS_VERSION, unencrypted_suffix "_unencrypted": keys ending in it stay in
 * the clear) to out.  ERR_USAGE for bad recipients, ERR_INVALID for a
 * plaintext we cannot take, ERR_AUTH/ERR_IO when gpg fails. */
struct sops_encrypt_opts {
	const char *const *age; /* "age1..." */
	size_t nage;
	const char *const *pgp; /* 40 (or 64) hex-digit fingerprints */
	size_t npgp;
	const char *gpg; /* as in sops_keys */
	time_t now;      /* lastmodified / created_at; 0 = time(NULL) */
	/* Only leaves under a key matching this (PCRE2) are encrypted, as sops'
	 * encrypted_regex; NULL: every leaf but those under *_unencrypted keys. */
	const char *encrypted_regex;
};
int sops_encrypt(const char *plain, size_t len, const char *name, const struct sops_encrypt_opts *o,
                 struct buf *out, struct err *e);

#endif
