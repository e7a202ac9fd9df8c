/* Bucket settings and credentials: environment, command line, SOPS file.
 *
 * Precedence, per field (first match wins):
 *   endpoint, bucket:         --endpoint/--bucket (cred_opts.endpoint/.bucket)
 *                             > E2_ENDPOINT / E2_BUCKET > the SOPS file;
 *   access_key, secret_key:   E2_ACCESS_KEY / E2_SECRET_KEY > the SOPS file;
 *   region:                   E2_REGION > the SOPS file > "us-east-1".
 * CLI.md puts the environment before --credentials; a flag typed on this very
 * command line (imgfs --endpoint/--bucket) is more specific than either, so it
 * wins over both.  The SOPS file is decrypted only when a required field is
 * still missing after the flags and the environment (so a fully configured
 * environment needs no key), and then it must decrypt and verify.
 *
 * The age identity file is cred_opts.age_key_file (--sops-age-key-file), else
 * env SOPS_AGE_KEY_FILE, else $XDG_CONFIG_HOME/sops/age/keys.txt
 * (~/.config/sops/age/keys.txt) when it exists; env SOPS_AGE_KEY (identities
 * as text) is used as well.  PGP entries go through gpg (gpg-agent).
 *
 * Secrets are kept only in memory and wiped when freed; errors name the file
 * and the failing step, never a key or a value. */
#ifndef IMGSTORE_STORE_CREDENTIALS_H
#define IMGSTORE_STORE_CREDENTIALS_H

#include "common/err.h"
#include "store/s3/s3.h"

struct cred_opts {
	const char *credentials_path; /* --credentials, may be NULL */
	const char *age_key_file;     /* --sops-age-key-file, else env SOPS_AGE_KEY_FILE */
	const char *endpoint,
	        *bucket;       /* command-line overrides (imgfs --endpoint/--bucket), may be NULL */
	const char *ca_bundle; /* --ca-bundle, may be NULL */
};

/* The command-line options that fill a struct cred_opts, shared by labctl and
 * imgfs: entries for a table of common/opt.h (each program picks the ones it
 * takes) and the one place their values are stored.  Ids are far from any
 * program's own. */
enum {
	CRED_OPT_CREDENTIALS = 0x1000,
	CRED_OPT_AGE_KEY_FILE,
	CRED_OPT_ENDPOINT,
	CRED_OPT_BUCKET,
	CRED_OPT_CA_BUNDLE,
};

#define CRED_OPTDEF_CREDENTIALS                                                                    \
	{                                                                                          \
		"credentials", CRED_OPT_CREDENTIALS, 1, "PATH",                                    \
		        "SOPS-encrypted YAML with the bucket credentials (used when the E2_* "     \
		        "variables are not set)"                                                   \
	}
#define CRED_OPTDEF_AGE_KEY_FILE                                                                   \
	{                                                                                          \
		"sops-age-key-file", CRED_OPT_AGE_KEY_FILE, 1, "PATH",                             \
		        "age identity file for --credentials (default: $SOPS_AGE_KEY_FILE)"        \
	}
#define CRED_OPTDEF_ENDPOINT                                                                       \
	{                                                                                          \
		"endpoint", CRED_OPT_ENDPOINT, 1, "URL",                                           \
		        "S3 endpoint (else E2_ENDPOINT, else the credentials file)"                \
	}
#define CRED_OPTDEF_BUCKET                                                                         \
	{                                                                                          \
		"bucket", CRED_OPT_BUCKET, 1, "NAME",                                              \
		        "bucket (else E2_BUCKET, else the credentials file)"                       \
	}
#define CRED_OPTDEF_CA_BUNDLE                                                                      \
	{                                                                                          \
		"ca-bundle", CRED_OPT_CA_BUNDLE, 1, "FILE",                                        \
		        "an extra CA certificate file to trust (S3 endpoint and HTTPS sources)"    \
	}

/* Store the value of option `id` in o: 1 when id is a CRED_OPT_*, else 0. */
int cred_opt_set(struct cred_opts *o, int id, const char *value);

/* Resolve the bucket config into *out (zeroed first; every string malloc'd:
 * release with s3_config_free, or credentials_config_clear when s3.c is not
 * linked).  Timeouts are set to the defaults documented in s3.h.
 * Errors: ERR_USAGE naming each missing field and both ways to provide it;
 * ERR_INVALID (malformed / tampered file: bad MAC, missing access_key ...) or
 * ERR_AUTH (no key opens it) with the file and the failing step; ERR_NOTFOUND
 * when the file does not exist. */
int credentials_resolve(const struct cred_opts *o, struct s3_config *out, struct err *e);

/* Wipe and free the strings of a config filled by credentials_resolve. */
void credentials_config_clear(struct s3_config *cfg);

/* What a SOPS credentials file holds (for `labctl credentials check`). */
struct cred_file {
	char *endpoint, *bucket, *access_key, *secret_key, *region; /* NULL when absent */
	char key_source[160];   /* "age:age1..." or "pgp:FPR": the entry that opened it */
	char age_key_file[512]; /* the identity file that was used/tried ("" if none) */
};

/* The merge step of credentials_resolve with an already decrypted file
 * (`file` may be NULL): flags, environment, file, defaults; ERR_USAGE for
 * missing fields (naming o->credentials_path when set). */
int credentials_merge(const struct cred_opts *o, const struct cred_file *file,
                      struct s3_config *out, struct err *e);

/* Decrypt and verify path with the age identity file (NULL: SOPS_AGE_KEY_FILE,
 * then the default file) or gpg.  Missing fields are not an error here. */
int credentials_load_file(const char *path, const char *age_key_file, struct cred_file *out,
                          struct err *e);
void credentials_file_free(struct cred_file *f);

/* The identity file that would be used: explicit, else SOPS_AGE_KEY_FILE,
 * else the sops default path if it exists, else NULL.  buf holds the default
 * path when that is the answer. */
const char *credentials_age_key_file(const char *explicit_path, char *buf, size_t cap);

#endif
